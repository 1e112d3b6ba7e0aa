"""Token dropping for MSN's masked anchor views: the helper and the backbone path."""

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers reference needs torch")

from helpers import BACKEND
from helpers import max_abs_diff
from helpers import nchw_to_nhwc
from helpers import to_numpy
from hf_reference import keras_backbone_from
from hf_reference import make_hf_model

import keras_vitmsn as kv
from keras_vitmsn import msn

TINY_KWARGS = dict(
    image_shape=(32, 32, 3),
    patch_size=8,
    hidden_dim=32,
    num_layers=2,
    num_heads=4,
    intermediate_dim=64,
)
# The paper's geometry scaled down: 14x14 patches for full views, 6x6 for focal views
# (224 and 96 px at patch 16 there; 112 and 48 px at patch 8 here).
FOCAL_HF = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=112,
    patch_size=8,
)


def randomized_backbone(seed=0, **overrides):
    backbone = kv.ViTMSNBackbone.from_config(dict(TINY_KWARGS, **overrides))
    rng = np.random.default_rng(seed)
    for v in backbone.weights:
        v.assign((0.1 * rng.standard_normal(v.shape)).astype(v.dtype))
    return backbone


def gather_tokens(tokens, keep):
    """NumPy: CLS + tokens 1 + keep[b] for every row b."""
    tokens = np.asarray(tokens)
    idx = np.concatenate([np.zeros((keep.shape[0], 1), int), np.asarray(keep) + 1], axis=1)
    return np.take_along_axis(tokens, idx[:, :, None], axis=1)


# -- the helper --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, r, keep",
    [(196, 0.3, 137), (196, 0.15, 166), (49, 0.7, 14), (10, 0.9, 1), (36, 0.0, 36), (16, 0.5, 8)],
)
def test_num_kept_patches_is_floor_n_times_one_minus_r(n, r, keep):
    assert msn.num_kept_patches(n, r) == keep


@pytest.mark.parametrize("n, r", [(196, 0.3), (36, 0.5), (16, 0.0), (10, 0.9)])
def test_random_keep_indices_shape_range_order(n, r):
    idx = to_numpy(msn.random_patch_keep_indices(8, n, r, seed=1)).astype(int)
    assert idx.shape == (8, msn.num_kept_patches(n, r))
    assert (
        keras.backend.standardize_dtype(msn.random_patch_keep_indices(2, n, r, seed=1).dtype)
        == "int32"
    )
    assert idx.min() >= 0 and idx.max() < n
    assert np.all(np.diff(idx, axis=1) > 0)  # sorted, hence no repeats
    if r == 0.0:
        np.testing.assert_array_equal(idx, np.tile(np.arange(n), (8, 1)))
    elif n > 16:
        assert len({tuple(row) for row in idx}) > 1  # each view draws its own subset


def test_random_keep_indices_seeding():
    a = to_numpy(msn.random_patch_keep_indices(4, 36, 0.5, seed=3))
    b = to_numpy(msn.random_patch_keep_indices(4, 36, 0.5, seed=3))
    np.testing.assert_array_equal(a, b)
    gen = keras.random.SeedGenerator(0)
    c = to_numpy(msn.random_patch_keep_indices(4, 36, 0.5, seed=gen))
    d = to_numpy(msn.random_patch_keep_indices(4, 36, 0.5, seed=gen))
    assert not np.array_equal(c, d)  # a generator advances: new masks every step
    # Roughly uniform: every patch is kept about half of the time over many draws.
    many = to_numpy(msn.random_patch_keep_indices(2000, 36, 0.5, seed=7)).astype(int)
    freq = np.bincount(many.ravel(), minlength=36) / 2000
    assert np.all(np.abs(freq - 0.5) < 0.06)


@pytest.mark.parametrize(
    "args, match",
    [
        ((2, 16, 1.0), r"mask_ratio.*\[0, 1\)"),
        ((2, 16, -0.1), r"mask_ratio.*\[0, 1\)"),
        ((2, 16, "a"), "mask_ratio"),
        ((2, 4, 0.8), "keeps floor"),
        ((0, 16, 0.5), "batch_size"),
        ((2, 0, 0.5), "num_patches"),
        ((2, 3.5, 0.5), "num_patches"),
    ],
)
def test_helper_errors(args, match):
    with pytest.raises(ValueError, match=match):
        msn.random_patch_keep_indices(*args, seed=0)


# -- the backbone path --------------------------------------------------------------------


def test_cls_kept_and_tokens_gathered_after_position_embeddings(rng):
    backbone = randomized_backbone()
    images = rng.standard_normal((3, 32, 32, 3)).astype("float32")
    keep = msn.random_patch_keep_indices(3, backbone.num_patches, 0.5, seed=0)
    full = backbone(images, output_hidden_states=True)
    dropped = backbone(images, patch_keep_indices=keep, output_hidden_states=True)
    num_keep = msn.num_kept_patches(backbone.num_patches, 0.5)
    assert tuple(dropped["last_hidden_state"].shape) == (3, 1 + num_keep, 32)
    assert all(tuple(h.shape) == (3, 1 + num_keep, 32) for h in dropped["hidden_states"])
    # The embeddings output (position embeddings included) is exactly the full one,
    # gathered: CLS first, then the kept patches; nothing else is changed.
    expected = gather_tokens(to_numpy(full["hidden_states"][0]), to_numpy(keep).astype(int))
    assert max_abs_diff(dropped["hidden_states"][0], expected) <= 1e-6
    assert (
        max_abs_diff(dropped["hidden_states"][0][:, 0], to_numpy(full["hidden_states"][0])[:, 0])
        == 0.0
    )
    # ... and the blocks see fewer tokens, so the CLS output differs from the full view.
    assert (
        max_abs_diff(dropped["last_hidden_state"][:, 0], to_numpy(full["last_hidden_state"])[:, 0])
        > 1e-4
    )


def test_keep_everything_equals_the_plain_forward(rng):
    backbone = randomized_backbone()
    images = rng.standard_normal((2, 32, 32, 3)).astype("float32")
    plain = to_numpy(backbone(images)["last_hidden_state"])
    keep = msn.random_patch_keep_indices(2, backbone.num_patches, 0.0, seed=0)
    assert (
        max_abs_diff(backbone(images, patch_keep_indices=keep)["last_hidden_state"], plain) <= 1e-6
    )
    # With no blocks, dropping commutes with the (per-token) final LayerNorm.
    shallow = randomized_backbone(num_layers=0)
    keep = msn.random_patch_keep_indices(2, shallow.num_patches, 0.25, seed=2)
    expected = gather_tokens(
        to_numpy(shallow(images)["last_hidden_state"]), to_numpy(keep).astype(int)
    )
    assert (
        max_abs_diff(shallow(images, patch_keep_indices=keep)["last_hidden_state"], expected)
        <= 1e-6
    )


def test_order_of_kept_patches_does_not_matter_for_cls(rng):
    # Position information is in the tokens once the embeddings are added, so the
    # transformer is permutation-equivariant on them: CLS is the same for any order.
    backbone = randomized_backbone()
    images = rng.standard_normal((2, 32, 32, 3)).astype("float32")
    keep = to_numpy(msn.random_patch_keep_indices(2, backbone.num_patches, 0.5, seed=4)).astype(
        "int32"
    )
    shuffled = keep[:, ::-1].copy()
    a = backbone(images, patch_keep_indices=keep)["last_hidden_state"][:, 0]
    b = backbone(images, patch_keep_indices=shuffled)["last_hidden_state"][:, 0]
    assert max_abs_diff(a, to_numpy(b)) <= 1e-5


@pytest.mark.parametrize("size", [112, 48])  # full view, and a focal view with interpolation
def test_dropped_forward_matches_transformers_with_dropped_embeddings(tmp_path, rng, size):
    """Reference: transformers' ViTMSNModel whose embeddings output is gathered by a
    forward hook, i.e. the original MSN masking grafted onto the reference network."""
    ref, state, config = make_hf_model(tmp_path, FOCAL_HF)
    backbone = keras_backbone_from(state, config)
    pixels = rng.standard_normal((3, 3, size, size)).astype("float32")
    num_patches = (size // 8) ** 2
    keep = to_numpy(msn.random_patch_keep_indices(3, num_patches, 0.3, seed=5)).astype("int64")
    token_idx = torch.from_numpy(np.concatenate([np.zeros((3, 1), "int64"), keep + 1], axis=1))

    def drop(module, args, output):
        return torch.gather(output, 1, token_idx[:, :, None].expand(-1, -1, output.shape[-1]))

    handle = ref.embeddings.register_forward_hook(drop)
    try:
        with torch.no_grad():
            expected = ref(
                torch.from_numpy(pixels), interpolate_pos_encoding=size != 112
            ).last_hidden_state.numpy()
    finally:
        handle.remove()
    got = backbone(
        nchw_to_nhwc(pixels), patch_keep_indices=keep, interpolate_pos_encoding=size != 112
    )
    diff = max_abs_diff(got["last_hidden_state"], expected)
    print(f"\n[msn masking {BACKEND} {size}px keep {keep.shape[1]}/{num_patches}] {diff:.2e}")
    assert expected.shape == (3, 1 + keep.shape[1], 32)
    assert diff <= 1e-4


def test_works_with_channels_first_and_mask_token(rng):
    backbone = randomized_backbone(data_format="channels_first", use_mask_token=True)
    images = rng.standard_normal((2, 3, 32, 32)).astype("float32")
    keep = msn.random_patch_keep_indices(2, 16, 0.5, seed=0)
    bool_masked_pos = np.zeros((2, 16), bool)
    out = backbone(images, patch_keep_indices=keep, bool_masked_pos=bool_masked_pos)
    assert tuple(out["last_hidden_state"].shape) == (2, 9, 32)


def test_inside_a_compiled_train_step(rng):
    """Fresh masks drawn inside the traced step (SeedGenerator), trained with fit()."""

    class Masked(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.backbone = kv.ViTMSNBackbone(**TINY_KWARGS)
            self.seed_generator = keras.random.SeedGenerator(0)
            self.out = keras.layers.Dense(1)

        def call(self, images):
            # The batch size as the traced graph knows it (None -> a tensor in TF).
            batch = images.shape[0] or keras.ops.shape(images)[0]
            keep = msn.random_patch_keep_indices(
                batch, self.backbone.num_patches, 0.5, seed=self.seed_generator
            )
            cls = self.backbone(images, patch_keep_indices=keep)["last_hidden_state"][:, 0]
            return self.out(cls)

    model = Masked()
    x = rng.standard_normal((8, 32, 32, 3)).astype("float32")
    y = rng.standard_normal((8, 1)).astype("float32")
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    # A partial last batch (unknown batch size at trace time in TF) works too.
    history = model.fit(x[:7], y[:7], batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_config_unchanged():
    backbone = kv.ViTMSNBackbone(**TINY_KWARGS)
    assert "patch_keep_indices" not in backbone.get_config()
    assert "patch_keep_indices" not in backbone.embeddings.get_config()


def test_bad_indices_are_rejected(rng):
    backbone = randomized_backbone()
    images = rng.standard_normal((2, 32, 32, 3)).astype("float32")
    with pytest.raises(ValueError, match=r"shape \(batch, num_keep\)"):
        backbone(images, patch_keep_indices=np.arange(4, dtype="int32"))
    with pytest.raises(ValueError, match=r"1 <= num_keep <= 16"):
        backbone(images, patch_keep_indices=np.zeros((2, 17), "int32"))
    with pytest.raises(ValueError, match="must be integers"):
        backbone(images, patch_keep_indices=np.zeros((2, 4), "float32"))
    with pytest.raises(ValueError, match="3 rows but the batch has 2"):
        backbone(images, patch_keep_indices=np.zeros((3, 4), "int32"))
    # The limit follows the input's grid: 16x16 images have 4 patches.
    small = rng.standard_normal((2, 16, 16, 3)).astype("float32")
    with pytest.raises(ValueError, match=r"1 <= num_keep <= 4 \(the 2x2 patch grid\)"):
        backbone(small, patch_keep_indices=np.zeros((2, 8), "int32"), interpolate_pos_encoding=True)
