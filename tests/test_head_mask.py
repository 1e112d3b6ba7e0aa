"""head_mask semantics: 0 removes a head, exactly like zeroing that head's values."""

import numpy as np
import pytest
from helpers import max_abs_diff
from helpers import to_numpy

import keras_vitmsn as kv

HEADS, LAYERS, HEAD_DIM = 4, 2, 8


def tiny_backbone():
    backbone = kv.ViTMSNBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        hidden_dim=HEADS * HEAD_DIM,
        num_layers=LAYERS,
        num_heads=HEADS,
        intermediate_dim=64,
    )
    rng = np.random.default_rng(1)
    for v in backbone.weights:
        v.assign(0.1 * rng.standard_normal(v.shape).astype("float32"))
    return backbone


def zero_value_head(backbone, layer, head):
    # The fused qkv projection holds query, key then value columns.
    qkv = backbone.encoder_layers[layer].attention.qkv
    kernel, bias = to_numpy(qkv.kernel), to_numpy(qkv.bias)
    start = 2 * HEADS * HEAD_DIM + head * HEAD_DIM
    cols = slice(start, start + HEAD_DIM)
    kernel[:, cols] = 0.0
    bias[cols] = 0.0
    qkv.kernel.assign(kernel)
    qkv.bias.assign(bias)


@pytest.fixture
def images(rng):
    return rng.standard_normal((2, 32, 32, 3)).astype("float32")


def test_all_ones_equals_no_mask(images):
    backbone = tiny_backbone()
    plain = backbone(images)["last_hidden_state"]
    masked = backbone(images, head_mask=np.ones((HEADS,), "float32"))["last_hidden_state"]
    assert max_abs_diff(masked, to_numpy(plain)) < 1e-5


def test_one_dim_mask_equals_zeroed_values_in_every_layer(images):
    backbone = tiny_backbone()
    mask = np.array([1, 0, 1, 1], "float32")
    masked = to_numpy(backbone(images, head_mask=mask)["last_hidden_state"])
    for layer in range(LAYERS):
        zero_value_head(backbone, layer, head=1)
    zeroed = backbone(images)["last_hidden_state"]
    assert max_abs_diff(zeroed, masked) < 1e-5
    assert np.abs(masked - to_numpy(tiny_backbone()(images)["last_hidden_state"])).max() > 1e-3


def test_per_layer_mask_and_attention_maps(images):
    backbone = tiny_backbone()
    mask = np.ones((LAYERS, HEADS), "float32")
    mask[1, 3] = 0.0
    out = backbone(images, head_mask=mask, output_attentions=True)
    masked = to_numpy(out["last_hidden_state"])
    assert np.all(to_numpy(out["attentions"][1])[:, 3] == 0.0)
    assert np.all(to_numpy(out["attentions"][0]).sum(-1) > 0.99)
    zero_value_head(backbone, layer=1, head=3)
    assert max_abs_diff(backbone(images)["last_hidden_state"], masked) < 1e-5


@pytest.mark.parametrize("shape", [(3,), (LAYERS, HEADS, 1), (LAYERS + 1, HEADS)])
def test_bad_shape_is_reported(images, shape):
    with pytest.raises(ValueError, match=r"head_mask.*\(num_heads,\) = \(4,\).*\(2, 4\).*got"):
        tiny_backbone()(images, head_mask=np.ones(shape, "float32"))
