"""The exact GELU (transformers' "gelu"): the erf formula, rounded once in half
precision, and on JAX without the erfc that jax.nn.gelu evaluates."""

import math

import keras
import ml_dtypes
import numpy as np
import pytest
from helpers import BACKEND
from helpers import keras_gradients
from helpers import to_numpy

from keras_vitmsn.backend import portable
from keras_vitmsn.layers.core import exact_gelu
from keras_vitmsn.layers.core import get_activation


def reference_gelu(x):
    erf = np.vectorize(math.erf)
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def sample(rng):
    # Both tails and the middle; bfloat16-representable so only the GELU rounds.
    x = np.concatenate([rng.standard_normal(4000) * 3.0, np.linspace(-9.0, 9.0, 1001)])
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def test_float32_gelu_is_the_erf_formula(rng):
    x = sample(rng)
    out = exact_gelu(keras.ops.convert_to_tensor(x))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert np.max(np.abs(to_numpy(out) - reference_gelu(x))) <= 2e-6


def test_bfloat16_gelu_rounds_once(rng):
    # One rounding of the float32 formula: within half a bfloat16 spacing of the exact
    # value, plus the float32 formula's own error in the negative
    # tail, where 1 + erf cancels (as in torch's kernel). jax.nn.gelu rounds after each
    # of its ops (0.6% off measured).
    x = sample(rng)
    out = exact_gelu(keras.ops.convert_to_tensor(x, dtype="bfloat16"))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    exact = reference_gelu(x)
    spacing = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(exact), 1e-30))) - 7)
    bound = 0.5 * spacing * 1.001 + 1e-6
    assert np.all(np.abs(to_numpy(out) - exact) <= bound)


@pytest.mark.skipif(BACKEND == "jax", reason="JAX has no float64 without jax_enable_x64")
def test_float64_gelu_stays_float64(rng):
    x = rng.standard_normal(64) * 3.0
    out = exact_gelu(keras.ops.convert_to_tensor(x, dtype="float64"))
    assert keras.backend.standardize_dtype(out.dtype) == "float64"
    assert np.max(np.abs(keras.ops.convert_to_numpy(out) - reference_gelu(x))) <= 1e-12


@pytest.mark.skipif(BACKEND != "jax", reason="the XLA program JAX traces")
def test_jax_gelu_traces_erf_not_erfc():
    import jax

    program = str(jax.make_jaxpr(exact_gelu)(np.ones((4,), np.float32)))
    assert "erf " in program or "erf[" in program
    assert "erfc" not in program


@pytest.mark.skipif(BACKEND != "jax", reason="the XLA program JAX traces")
def test_jax_gelu_traces_erfc_inside_the_export_scope(rng):
    # For TensorFlow runtimes that cannot read JAX's serialised erf (test_export.py
    # reloads a jax2tf SavedModel through it).
    import jax

    from keras_vitmsn.backend.jax import erfc_gelu_on_jax

    def trace():  # a new function each time: make_jaxpr caches traces per function
        return str(jax.make_jaxpr(lambda x: exact_gelu(x))(np.ones((4,), np.float32)))

    with erfc_gelu_on_jax():
        program = trace()
        x = sample(rng)
        inside = to_numpy(exact_gelu(keras.ops.convert_to_tensor(x)))
    assert "erfc" in program
    assert "erfc" not in trace()
    assert np.max(np.abs(inside - reference_gelu(x))) <= 2e-6


def test_gelu_gradient_is_the_derivative_of_the_erf_formula(rng):
    x = np.linspace(-6.0, 6.0, 49).astype(np.float32)

    class Gelu(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight((49,), initializer="zeros")
            self.w.assign(x)

        def call(self, inputs, training=None):
            return exact_gelu(self.w)

    layer = Gelu()
    layer(x)
    (grad,) = keras_gradients(layer, x, keras.ops.sum).values()
    x64 = x.astype(np.float64)
    pdf = np.exp(-0.5 * x64**2) / math.sqrt(2.0 * math.pi)
    expected = (reference_gelu(x64) / np.where(x64 == 0, 1, x64)) + x64 * pdf
    expected[x64 == 0] = 0.5
    assert np.max(np.abs(to_numpy(grad) - expected)) <= 1e-5


def test_gelu_name_is_the_exact_gelu():
    assert get_activation("gelu") is exact_gelu


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gelu_is_the_portable_formula(rng, dtype):
    # torch's fused kernel against the formula written in keras.ops.
    x = keras.ops.convert_to_tensor(sample(rng), dtype=dtype)
    got, want = to_numpy(exact_gelu(x)), to_numpy(portable.exact_gelu(x))
    tolerance = 2e-6 if dtype == "float32" else 2.0**-8 * np.abs(want).max()
    assert np.max(np.abs(got - want)) <= tolerance
