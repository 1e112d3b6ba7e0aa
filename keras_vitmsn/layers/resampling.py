"""Position-embedding resampling, shared by the embeddings layer and the converter.

transformers (5.x) resizes the patch position table with
``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``. That is a
separable cubic convolution with coefficient A = -0.75, source coordinates
``(dst + 0.5) * in / out - 0.5`` (not clamped for cubic) and neighbour indices
clamped to the edge, without antialiasing. ``keras.ops.image.resize`` uses
A = -0.5 on JAX and TensorFlow, so it cannot reproduce those numbers; instead we
build the two 1-D interpolation matrices from the static sizes in NumPy and apply
them with one einsum, which any backend (or NumPy itself) can run.
"""

import functools

import numpy as np

_CUBIC_A = -0.75  # PyTorch's bicubic coefficient.


def _cubic_weights(t):
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional position t."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def bicubic_resize_matrix(in_size, out_size):
    """(out_size, in_size) float64 matrix M with ``resized = M @ signal``.

    Matches ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``
    along one axis when the output size (not a scale factor) is given.
    The result is cached and must not be modified.
    """
    in_size, out_size = int(in_size), int(out_size)
    if in_size < 1 or out_size < 1:
        raise ValueError(
            f"Resize sizes must be positive, got in_size={in_size}, out_size={out_size}."
        )
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(src)
    weights = _cubic_weights(src - base)  # (out, 4)
    taps = base[:, None].astype(np.int64) + np.arange(-1, 3)[None, :]
    taps = np.clip(taps, 0, in_size - 1)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.repeat(np.arange(out_size), 4)
    np.add.at(matrix, (rows, taps.reshape(-1)), weights.reshape(-1))
    matrix.setflags(write=False)
    return matrix


def resample_position_embeddings(position_embeddings, source_grid, target_grid):
    """Resize a ViT position table from one patch grid to another.

    Args:
        position_embeddings: array of shape ``(1, 1 + gh * gw, dim)``: the CLS row
            first, then the patch rows in row-major order. A NumPy array gives a
            NumPy result (used by the checkpoint converter); a backend tensor or
            Keras variable gives a backend tensor (used inside the model).
        source_grid: ``(gh, gw)`` of the table.
        target_grid: ``(new_gh, new_gw)`` wanted.

    Returns:
        Array of shape ``(1, 1 + new_gh * new_gw, dim)``. The CLS row is unchanged.
        When the grids are equal the input is returned as is (the interpolation
        would be the identity: at scale 1 every tap weight is 0 or 1).

    Example:
    >>> import numpy as np
    >>> table = np.random.rand(1, 1 + 14 * 14, 8).astype("float32")
    >>> resample_position_embeddings(table, (14, 14), (24, 20)).shape
    (1, 481, 8)
    """
    source_grid = tuple(int(s) for s in source_grid)
    target_grid = tuple(int(s) for s in target_grid)
    if source_grid == target_grid:
        return position_embeddings
    gh, gw = source_grid
    num_rows = position_embeddings.shape[1]
    if num_rows != 1 + gh * gw:
        raise ValueError(
            f"A position table for a {gh}x{gw} grid needs 1 + {gh * gw} rows, "
            f"got {num_rows} (table shape {tuple(position_embeddings.shape)})."
        )
    mh = bicubic_resize_matrix(gh, target_grid[0])
    mw = bicubic_resize_matrix(gw, target_grid[1])
    dim = position_embeddings.shape[-1]
    if isinstance(position_embeddings, np.ndarray):
        dtype = position_embeddings.dtype
        cls_row = position_embeddings[:, :1]
        grid = position_embeddings[:, 1:].reshape(gh, gw, dim).astype(np.float64)
        patches = np.einsum("hi,wj,ijd->hwd", mh, mw, grid).astype(dtype)
        return np.concatenate([cls_row, patches.reshape(1, -1, dim)], axis=1)

    from keras import ops

    dtype = position_embeddings.dtype
    cls_row = position_embeddings[:, :1]
    grid = ops.reshape(position_embeddings[:, 1:], (gh, gw, dim))
    # Two small matmuls rather than one 3-operand einsum: the backends' einsum
    # path choice is not guaranteed to contract the separable axes one at a time.
    grid = ops.einsum("hi,iwd->hwd", ops.convert_to_tensor(mh, dtype), grid)
    grid = ops.einsum("wj,hjd->hwd", ops.convert_to_tensor(mw, dtype), grid)
    patches = ops.reshape(grid, (1, target_grid[0] * target_grid[1], dim))
    return ops.concatenate([cls_row, patches], axis=1)
