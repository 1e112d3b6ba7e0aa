"""The original MSN's start for a ViT pretrained from scratch.

A ViTMSNBackbone built fresh starts as transformers' ``ViTMSNModel`` does: CLS token
and position table at zero. facebookresearch/msn (``src/deit.py``) instead draws both
with ``trunc_normal_(std=0.02)``; its bounds are absolute (``a=-2, b=2``, i.e. 100
standard deviations), so in practice this is a normal of std 0.02, not Keras'
``TruncatedNormal``, which cuts at 2 standard deviations. Pretraining from scratch
(``MSNPretrainer.from_recipe`` without a backbone, ``from_preset(...,
load_weights=False)``, ``keras-vitmsn pretrain --from-scratch``) uses the original's
start; every other fresh model keeps the transformers-compatible zeros.
"""

import keras

MSN_EMBEDDING_STD = 0.02
# trunc_normal_'s default bounds in the original (absolute values, not multiples of std).
MSN_TRUNCATION = 2.0


def init_embeddings_like_msn(backbone, seed=None):
    """Draw ``backbone``'s CLS token and position embeddings as the original MSN does.

    Args:
        backbone: a :class:`keras_vitmsn.ViTMSNBackbone` (changed in place).
        seed: int for a reproducible draw; None follows Keras' global seed
            (``keras.utils.set_random_seed``).

    Returns:
        ``backbone``.

    Example:
    >>> import numpy as np
    >>> import keras_vitmsn as kv
    >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8, hidden_dim=64,
    ...                              num_layers=1, num_heads=4, intermediate_dim=128)
    >>> float(np.abs(keras.ops.convert_to_numpy(backbone.embeddings.cls_token)).max())
    0.0
    >>> std = keras.ops.convert_to_numpy(
    ...     init_embeddings_like_msn(backbone, seed=0).embeddings.position_embeddings).std()
    >>> 0.015 < float(std) < 0.025
    True
    """
    generator = keras.random.SeedGenerator(seed)
    embeddings = backbone.embeddings
    for variable in (embeddings.cls_token, embeddings.position_embeddings):
        value = keras.random.normal(
            variable.shape, stddev=MSN_EMBEDDING_STD, dtype="float32", seed=generator
        )
        value = keras.ops.clip(value, -MSN_TRUNCATION, MSN_TRUNCATION)
        variable.assign(keras.ops.cast(value, variable.dtype))
    return backbone
