"""ViT-MSN (Masked Siamese Networks) vision transformers for Keras 3."""

import os as _os

# TensorFlow turns its oneDNN kernels on by default only on some x86 CPUs; on others
# (the AVX2-only AMD EPYC this project is measured on) MatMul runs on Eigen, and
# vit_msn_small trained 1.4x slower (2.37 vs 1.71 s per batch of 8) and inferred
# 1.4x slower. TensorFlow reads the switch once, when it is first imported, so it
# is set here, before keras imports its backend; a value the user set wins, and it
# has no effect if TensorFlow was imported first. JAX and PyTorch ignore it.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from keras_vitmsn import layers
from keras_vitmsn import lowshot
from keras_vitmsn import msn
from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.models.classifier import ViTMSNClassifier
from keras_vitmsn.image_converter import ViTMSNImageConverter
from keras_vitmsn import conversion
from keras_vitmsn import presets
from keras_vitmsn.conversion import load_msn_pretraining_state
from keras_vitmsn.resampling import resample_position_embeddings
from keras_vitmsn.version import __version__
