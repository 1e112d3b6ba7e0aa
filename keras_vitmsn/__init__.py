"""ViT-MSN (Masked Siamese Networks) vision transformers for Keras 3."""

from keras_vitmsn import layers
from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.models.classifier import ViTMSNClassifier
from keras_vitmsn.resampling import resample_position_embeddings
from keras_vitmsn.version import __version__
