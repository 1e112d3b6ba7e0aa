"""The ViT-MSN layers (Keras layers with transformers' weight layout)."""

from keras_vitmsn.layers.attention import ViTMSNAttention
from keras_vitmsn.layers.embeddings import ViTMSNEmbeddings
from keras_vitmsn.layers.patch_embedding import ViTMSNPatchEmbedding
from keras_vitmsn.layers.transformer_block import ViTMSNTransformerBlock

__all__ = [
    "ViTMSNAttention",
    "ViTMSNEmbeddings",
    "ViTMSNPatchEmbedding",
    "ViTMSNTransformerBlock",
]
