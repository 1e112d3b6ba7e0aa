"""Initialisers of a freshly built ViT-MSN (transformers' ViTMSNPreTrainedModel)."""

import keras

INITIALIZER_RANGE = 0.02


def kernel_initializer():
    return keras.initializers.TruncatedNormal(stddev=INITIALIZER_RANGE)
