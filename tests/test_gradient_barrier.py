"""The residual-gradient fusion barrier: an exact identity, and what it does to XLA."""

import re

import keras
import numpy as np
import pytest
from helpers import BACKEND
from helpers import keras_gradients
from helpers import to_numpy

import keras_vitmsn as kv
from keras_vitmsn import backend
from keras_vitmsn.backend import portable


@pytest.mark.parametrize(
    "barrier", [backend.gradient_fusion_barrier, portable.gradient_fusion_barrier]
)
def test_forward_and_gradient_are_identity(rng, barrier):
    x = rng.standard_normal((2, 5, 8)).astype("float32")
    weight = rng.standard_normal((2, 5, 8)).astype("float32")
    np.testing.assert_array_equal(to_numpy(barrier(x)), x)

    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=shape[1:], initializer="ones")

        def call(self, inputs):
            return barrier(inputs * self.w)

    layer = Scale()
    model = keras.Sequential([keras.Input((5, 8)), layer])
    grads = keras_gradients(model, x, lambda y: keras.ops.sum(keras.ops.multiply(y, weight)))
    # d/dw sum(x * w * weight) = sum over the batch of x * weight, exactly.
    np.testing.assert_allclose(grads[layer.w.path], np.sum(x * weight, axis=0), rtol=1e-6)


def _largest_fusion_operands(num_layers, monkeypatch=None):
    """Most operands of any fusion in the compiled JAX gradient of a tiny backbone."""
    import jax
    import jax.numpy as jnp

    backbone = kv.ViTMSNBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        hidden_dim=32,
        num_layers=num_layers,
        num_heads=4,
        intermediate_dim=64,
    )
    images = jnp.zeros((2, 32, 32, 3))
    frozen = [v.value for v in backbone.non_trainable_variables]

    def loss(values):
        outputs, _ = backbone.stateless_call(values, frozen, images, training=True)
        return jnp.sum(outputs["last_hidden_state"] ** 2)

    values = [v.value for v in backbone.trainable_variables]
    hlo = jax.jit(jax.grad(loss)).lower(values).compile().as_text()
    counts = [
        line.split(" fusion(", 1)[1].split("kind=", 1)[0].count("%")
        for line in hlo.splitlines()
        if re.match(r"\s+%\S+ = \S+ fusion\(", line)
    ]
    return max(counts), hlo.count(" scatter(")


@pytest.mark.skipif(BACKEND != "jax", reason="the barrier only acts under XLA (JAX)")
def test_jax_gradient_fusions_do_not_grow_with_depth(monkeypatch):
    shallow, scatters_shallow = _largest_fusion_operands(2)
    deep, scatters_deep = _largest_fusion_operands(8)
    assert scatters_deep >= 8 > scatters_shallow
    # With the barrier every block's gradient is written once, so no fusion reads
    # more inputs in a deeper network.
    assert deep == shallow, f"largest gradient fusion: {shallow} operands at depth 2, {deep} at 8"

    # Without it, XLA:CPU chains the residual gradient of every block above into each
    # consumer: fusion inputs grow with depth (the quadratic backward this prevents).
    monkeypatch.setattr(backend, "gradient_fusion_barrier", portable.gradient_fusion_barrier)
    unbarred_shallow, _ = _largest_fusion_operands(2)
    unbarred_deep, _ = _largest_fusion_operands(8)
    import jax

    if jax.devices()[0].platform == "cpu":
        assert unbarred_deep > unbarred_shallow + 10, (unbarred_shallow, unbarred_deep)
