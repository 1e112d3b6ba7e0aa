"""Random patch dropping for MSN's masked anchor views.

MSN masks an anchor view by DROPPING patch tokens after the position embeddings are
added (the CLS token is always kept; there is no mask token): the encoder then runs on
``1 + floor(N * (1 - r))`` tokens, which is also what makes MSN cheap. The backbone
does the dropping when given ``patch_keep_indices`` (see
``ViTMSNBackbone.call``); this module draws those indices.
"""

import math
import numbers

import keras
from keras import ops


def num_kept_patches(num_patches, mask_ratio):
    """``floor(N * (1 - r))``: how many patches a masked view keeps.

    The floor is taken on the exact value: a rounding error of ``1 - r`` (e.g.
    ``10 * (1 - 0.9) = 0.999...``) does not drop one more patch.

    Example:
    >>> num_kept_patches(196, 0.3), num_kept_patches(10, 0.9), num_kept_patches(36, 0.0)
    (137, 1, 36)
    """
    num_patches = _check_num_patches(num_patches)
    mask_ratio = _check_mask_ratio(mask_ratio)
    # Round to 9 decimals first so float noise (1 - 0.9 = 0.09999...) cannot lose a patch.
    num_keep = math.floor(round(num_patches * (1.0 - mask_ratio), 9))
    if num_keep < 1:
        raise ValueError(
            f"mask_ratio={mask_ratio} keeps floor({num_patches} * (1 - {mask_ratio})) = 0 "
            f"of {num_patches} patches; use a smaller ratio."
        )
    return num_keep


def random_patch_keep_indices(batch_size, num_patches, mask_ratio, seed=None):
    """Indices of the patches each masked view keeps, drawn uniformly without replacement.

    Every example gets its own random subset of ``floor(N * (1 - r))`` patches (the
    original code draws one permutation for the whole batch; independent draws per
    example are the same distribution per view and mix better). Indices count patches
    only (0 is the first patch, not CLS) and are sorted, so ``mask_ratio=0`` gives
    ``0 .. N-1`` in order and the masked forward equals the plain one.

    Args:
        batch_size: int, number of views (``ops.shape(images)[0]``; a scalar tensor
            is accepted where the batch size is unknown at trace time).
        num_patches: int, ``N`` patches of the view's grid (e.g. 36 for a 96-px focal
            view with 16-px patches; the backbone's ``num_patches`` for full views).
        mask_ratio: float in ``[0, 1)``, the fraction ``r`` of patches dropped.
        seed: ``None``, an int, or a ``keras.random.SeedGenerator`` (pass a generator
            inside a traced train step so each step draws new masks).

    Returns:
        ``(batch_size, floor(N * (1 - r)))`` int32 tensor, each row strictly increasing
        in ``[0, N)``; pass it as ``patch_keep_indices`` to ``ViTMSNBackbone``.

    Example:
    >>> idx = random_patch_keep_indices(2, 16, 0.25, seed=0)
    >>> tuple(idx.shape)
    (2, 12)
    >>> import keras_vitmsn as kv, numpy as np
    >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8, hidden_dim=32,
    ...                              num_layers=1, num_heads=2, intermediate_dim=64)
    >>> out = backbone(np.zeros((2, 32, 32, 3), "float32"), patch_keep_indices=idx)
    >>> tuple(out["last_hidden_state"].shape)   # CLS + 12 kept patches
    (2, 13, 32)
    """
    if isinstance(batch_size, numbers.Number):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
        batch_size = int(batch_size)
    # else: a scalar tensor, e.g. ops.shape(images)[0] of a TensorFlow graph traced with
    # an unknown batch size (JAX and torch always give a Python int).
    num_keep = num_kept_patches(num_patches, mask_ratio)
    # A uniformly random permutation per row: the argsort of i.i.d. uniform keys.
    keys = keras.random.uniform((batch_size, int(num_patches)), seed=seed)
    order = ops.argsort(keys, axis=-1)
    # Keep the first num_keep of the permutation, in patch order (readable, and the
    # transformer is permutation-equivariant once position embeddings are added).
    return ops.cast(ops.sort(order[:, :num_keep], axis=-1), "int32")


def _check_num_patches(num_patches):
    if int(num_patches) != num_patches or num_patches < 1:
        raise ValueError(f"`num_patches` must be a positive int; got {num_patches!r}.")
    return int(num_patches)


def _check_mask_ratio(mask_ratio):
    try:
        ratio = float(mask_ratio)
    except (TypeError, ValueError):
        raise ValueError(f"`mask_ratio` must be a float in [0, 1); got {mask_ratio!r}.") from None
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"`mask_ratio` must be in [0, 1); got {mask_ratio!r}.")
    return ratio
