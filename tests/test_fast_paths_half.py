"""The half-precision fast paths (backend.einsum / matmul_add on XLA:CPU, layer_norm
and dot_product_attention on torch) compute what the portable formulation computes."""

import keras
import ml_dtypes
import numpy as np
import pytest
from helpers import BACKEND
from helpers import keras_gradients
from helpers import max_abs_diff
from helpers import to_numpy

from keras_vitmsn import backend
from keras_vitmsn.backend import portable
from keras_vitmsn.layers.core import ViTMSNLayerNorm

BF16_ULP = 2.0**-8  # relative spacing of bfloat16 (8 significand bits)


def bf16(x):
    return keras.ops.convert_to_tensor(np.asarray(x, np.float32), dtype="bfloat16")


def rounded(x):
    """float32 values rounded once to bfloat16, back as float32."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def assert_within_bf16(out, reference, ulps=1.0):
    reference = np.asarray(reference, np.float32)
    bound = ulps * BF16_ULP * np.maximum(np.abs(reference), 1e-3) + 1e-6
    assert np.all(np.abs(to_numpy(out) - reference) <= bound)


def test_half_matmul_add_is_within_bf16_rounding_of_the_exact_result(rng):
    x, kernel, bias = (
        rounded(rng.standard_normal(shape)) for shape in ((2, 7, 16), (16, 12), (12,))
    )
    out = backend.matmul_add(bf16(x), bf16(kernel), bf16(bias))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    product = x @ kernel
    # matmul then add: two roundings, and oneDNN's bf16 GEMM (TensorFlow) rounds more
    # than once on the way (up to ~0.9 of a bf16 spacing measured).
    err = np.abs(to_numpy(out) - (product + bias))
    assert np.all(err <= 2 * BF16_ULP * (np.abs(product) + np.abs(bias)) + 1e-6)
    if BACKEND == "jax":  # the bias is added in float32, before the one rounding
        assert np.mean(to_numpy(out) == rounded(product + bias)) >= 0.99


def test_half_einsum_accumulates_in_float32(rng):
    q, k = rounded(rng.standard_normal((2, 3, 5, 8))), rounded(rng.standard_normal((2, 3, 6, 8)))
    exact = np.einsum("bhqd,bhkd->bhqk", q, k)
    out = backend.einsum("bhqd,bhkd->bhqk", bf16(q), bf16(k))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert_within_bf16(out, exact, ulps=2.0)
    wide = backend.einsum("bhqd,bhkd->bhqk", bf16(q), bf16(k), dtype="float32")
    assert keras.backend.standardize_dtype(wide.dtype) == "float32"
    if BACKEND == "jax":  # float32 accumulation, not a bfloat16 result cast up
        assert max_abs_diff(wide, exact) <= 1e-4
    assert (
        max_abs_diff(backend.einsum("ij,jk->ik", q[0, 0], k[0, 0].T), q[0, 0] @ k[0, 0].T) <= 1e-5
    )


@pytest.mark.skipif(BACKEND != "jax", reason="XLA:CPU's half-precision dots: JAX only")
def test_half_dots_ask_xla_for_a_float32_result(rng):
    # XLA:CPU runs a bf16-result dot as a float32 dot on converted operands; a float32
    # result (preferred_element_type) is what runs its bf16 kernels.
    import jax

    x, kernel, bias = bf16(np.ones((4, 8))), bf16(np.ones((8, 3))), bf16(np.ones((3,)))
    for fn in (
        lambda: backend.matmul_add(x, kernel, bias),
        lambda: backend.einsum("ij,jk->ik", x, kernel),
    ):
        dots = [e for e in jax.make_jaxpr(fn)().eqns if e.primitive.name == "dot_general"]
        assert [str(e.params["preferred_element_type"]) for e in dots] == ["float32"]


def test_layer_norm_matches_keras_in_float32_bfloat16_and_mixed(rng):
    x = rng.standard_normal((2, 5, 16)).astype("float32") * 3 + 1
    gamma, beta = (
        rng.standard_normal(16).astype("float32"),
        rng.standard_normal(16).astype("float32"),
    )
    reference = portable.layer_norm(x, gamma, beta, 1e-6)
    assert max_abs_diff(backend.layer_norm(x, gamma, beta, 1e-6), to_numpy(reference)) <= 1e-5
    xb = rounded(x)
    exact = to_numpy(keras.ops.layer_normalization(xb, rounded(gamma), rounded(beta), epsilon=1e-6))
    for g, b in ((bf16(gamma), bf16(beta)), (rounded(gamma), rounded(beta))):  # bf16, mixed
        out = backend.layer_norm(bf16(xb), g, b, 1e-6)
        assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
        assert_within_bf16(out, exact, ulps=2.0)


@pytest.mark.skipif(BACKEND != "torch", reason="the fused LayerNorm kernel is torch's")
def test_layer_norm_is_one_torch_kernel_without_float32_copies(monkeypatch):
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("Keras' formulation ran")

    monkeypatch.setattr(keras.ops, "layer_normalization", refuse)
    out = backend.layer_norm(bf16(np.ones((2, 4))), torch.ones(4), torch.zeros(4), 1e-6)
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("policy", ["float32", "bfloat16", "mixed_bfloat16"])
def test_layer_norm_layer_is_keras_layer_normalization(rng, policy):
    fast = ViTMSNLayerNorm(epsilon=1e-6, dtype=policy, name="ln")
    plain = keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy, name="ln")
    for layer in (fast, plain):
        layer.build((None, 3, 8))
    for a, b in zip(fast.weights, plain.weights):
        value = rng.standard_normal(tuple(a.shape)).astype("float32")
        a.assign(value)
        b.assign(value)
    assert (
        [w.path for w in fast.weights] == [w.path for w in plain.weights] == ["ln/gamma", "ln/beta"]
    )
    x = rng.standard_normal((2, 3, 8)).astype("float32")
    out = fast(x)
    assert keras.backend.standardize_dtype(out.dtype) == fast.compute_dtype
    tolerance = 1e-5 if policy == "float32" else 2 * BF16_ULP * 4
    assert max_abs_diff(out, to_numpy(plain(x))) <= tolerance
    if policy == "float32":

        def loss(y):
            return keras.ops.sum(y * keras.ops.arange(8, dtype="float32"))

        models = [keras.Sequential([keras.Input((3, 8)), layer]) for layer in (fast, plain)]
        grads_fast, grads_plain = (keras_gradients(m, x, loss) for m in models)
        for a, b in zip(fast.trainable_variables, plain.trainable_variables):
            assert max_abs_diff(grads_fast[a.path], grads_plain[b.path]) <= 1e-5
    clone = ViTMSNLayerNorm.from_config(fast.get_config())
    assert clone.get_config() == fast.get_config()


def test_layer_norm_layer_leaves_other_axes_and_no_offset_to_keras(rng):
    x = rng.standard_normal((2, 3, 8)).astype("float32")
    for kwargs in ({"axis": [1, 2]}, {"center": False}, {"scale": False}):
        fast, plain = ViTMSNLayerNorm(**kwargs), keras.layers.LayerNormalization(**kwargs)
        assert max_abs_diff(fast(x), to_numpy(plain(x))) <= 1e-5


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dot_product_attention_on_strided_views_is_keras_attention(rng, dtype):
    # Token-major thirds of one fused qkv tensor: strided, as the attention layer has them.
    qkv = rounded(rng.standard_normal((2, 7, 3, 4, 8)))
    qkv_t = keras.ops.convert_to_tensor(qkv, dtype=dtype)
    q, k, v = keras.ops.unstack(qkv_t, num=3, axis=2)
    out = backend.dot_product_attention(q, k, v)
    reference = portable.dot_product_attention(
        *[keras.ops.convert_to_tensor(t) for t in np.moveaxis(qkv, 2, 0)]
    )
    assert tuple(out.shape) == (2, 7, 4, 8)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    assert max_abs_diff(out, to_numpy(reference)) <= (1e-5 if dtype == "float32" else 0.05)


@pytest.mark.skipif(BACKEND != "torch", reason="the strided SDPA call is torch's")
def test_dot_product_attention_calls_sdpa_without_keras_copies(monkeypatch):
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("Keras' dot_product_attention ran")

    monkeypatch.setattr(keras.ops, "dot_product_attention", refuse)
    qkv = torch.randn(2, 7, 3, 4, 8, requires_grad=True)
    out = backend.dot_product_attention(*qkv.unbind(2))
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape


def test_bfloat16_block_outputs_match_float32_within_bf16_error(rng):
    # The whole block in bfloat16 through every fast path above, against float32.
    from keras_vitmsn.layers.transformer_block import ViTMSNTransformerBlock

    blocks = {
        p: ViTMSNTransformerBlock(32, 4, 64, dtype=p, name="b") for p in ("float32", "bfloat16")
    }
    for block in blocks.values():
        block.build((None, 5, 32))
    for a, b in zip(blocks["float32"].weights, blocks["bfloat16"].weights):
        value = rounded(rng.standard_normal(tuple(a.shape)) * 0.2)
        a.assign(value)
        b.assign(value)
    x = rounded(rng.standard_normal((2, 5, 32)))
    full, _ = blocks["float32"](x)
    half, _ = blocks["bfloat16"](x)
    err = np.abs(to_numpy(half) - to_numpy(full))
    assert float(np.mean(err)) <= 0.02 and float(np.max(err)) <= 0.15


def test_docstring_examples_run():
    import doctest

    from keras_vitmsn.layers import core as layer_norm

    result = doctest.testmod(layer_norm)
    assert result.attempted and not result.failed
