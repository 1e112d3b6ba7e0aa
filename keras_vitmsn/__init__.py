"""ViT-MSN (Masked Siamese Networks) vision transformers for Keras 3."""

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
