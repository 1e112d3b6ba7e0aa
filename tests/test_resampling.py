"""The shared bicubic resampler against torch.nn.functional.interpolate."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers reference needs torch")

from helpers import max_abs_diff

from keras_vitmsn.layers.resampling import bicubic_resize_matrix
from keras_vitmsn.layers.resampling import resample_position_embeddings


def torch_reference(table, source_grid, target_grid):
    dim = table.shape[-1]
    grid = torch.from_numpy(table[:, 1:]).reshape(1, *source_grid, dim).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(
        grid, size=target_grid, mode="bicubic", align_corners=False
    )
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).numpy()
    return np.concatenate([table[:, :1], grid], axis=1)


CASES = [
    ((14, 14), (24, 24)),
    ((14, 14), (16, 20)),
    ((14, 14), (7, 9)),
    ((4, 6), (9, 5)),
    ((1, 1), (3, 2)),
]


@pytest.mark.parametrize("source,target", CASES)
def test_numpy_path_matches_torch(rng, source, target):
    table = rng.standard_normal((1, 1 + source[0] * source[1], 8)).astype("float32")
    out = resample_position_embeddings(table, source, target)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, torch_reference(table, source, target), atol=1e-5)


@pytest.mark.parametrize("source,target", CASES)
def test_backend_path_matches_torch(rng, source, target):
    import keras

    table = rng.standard_normal((1, 1 + source[0] * source[1], 8)).astype("float32")
    out = resample_position_embeddings(keras.ops.convert_to_tensor(table), source, target)
    assert max_abs_diff(out, torch_reference(table, source, target)) < 1e-5


def test_same_grid_is_identity(rng):
    table = rng.standard_normal((1, 1 + 16, 4)).astype("float32")
    assert resample_position_embeddings(table, (4, 4), (4, 4)) is table
    # The general path at scale 1 is the identity too, which is why skipping it is exact.
    np.testing.assert_array_equal(bicubic_resize_matrix(5, 5), np.eye(5))


def test_rows_sum_to_one():
    np.testing.assert_allclose(bicubic_resize_matrix(14, 37).sum(axis=1), 1.0, atol=1e-12)


def test_wrong_table_size_is_reported(rng):
    table = rng.standard_normal((1, 11, 4)).astype("float32")
    with pytest.raises(ValueError, match=r"3x3 grid needs 1 \+ 9 rows, got 11"):
        resample_position_embeddings(table, (3, 3), (4, 4))
