"""An int8 layer's GEMM on the backend's int8 kernel (``backend.int8_matmul``): the
same outputs as Keras' own int8 ``Dense``, the same gradients, its fallbacks, and a
quantised model's outputs, saving and ONNX export through it."""

import os
import warnings

import keras
import numpy as np
import pytest
from helpers import BACKEND
from helpers import keras_gradients
from helpers import randomize
from helpers import tiny_backbone
from helpers import to_numpy

import keras_vitmsn as kv
from keras_vitmsn import backend
from keras_vitmsn.backend import keras_internals
from keras_vitmsn.backend import portable
from keras_vitmsn.layers.core import ViTMSNDense

# (inputs shape, in, out): token batches, one row, sizes no multiple of 8,
# and an MLP-sized K beyond which JAX's float32 sums of int8 products round.
SHAPES = [
    ((2, 17, 32), 32, 48),
    ((1, 64), 64, 16),
    ((3, 5, 13), 13, 7),
    ((2, 9, 1536), 1536, 24),
]


def quantized_dense(units, in_dim, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    layer = ViTMSNDense(units, **kwargs)
    layer.build((None, in_dim))
    layer.kernel.assign(rng.normal(0.0, 0.1, (in_dim, units)).astype("float32"))
    if layer.bias is not None:
        layer.bias.assign(rng.normal(0.0, 0.1, (units,)).astype("float32"))
    layer.quantize("int8")
    return layer


def inputs(shape, seed=1, scale=2.0):
    x = np.random.default_rng(seed).normal(0.0, scale, shape).astype("float32")
    return keras.ops.convert_to_tensor(x)


def keras_own(layer, x):
    """Keras' int8 Dense forward, untouched."""
    return to_numpy(keras.layers.Dense._int8_call(layer, x))


def assert_same(got, expected, k):
    if BACKEND == "jax" and k > 1040:
        # XLA:CPU's float32 sums of the exact bf16 products round above 2**24, where
        # the int32 sums (then cast to float32 once) do not: a few float32 ulps.
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, expected)


def test_probe_finds_keras_int8_dense():
    assert keras_internals.probe_int8_call() is True


@pytest.mark.parametrize("shape,in_dim,units", SHAPES)
def test_fast_path_equals_portable_and_keras(shape, in_dim, units):
    layer = quantized_dense(units, in_dim, activation="gelu")
    x = inputs(shape)
    fast = to_numpy(layer(x))
    reference = to_numpy(keras_internals._int8_call(layer, x, portable.int8_matmul))
    expected = keras_own(layer, x)
    assert fast.shape == expected.shape == shape[:-1] + (units,)
    # The portable formulation is Keras' computation, op for op.
    np.testing.assert_array_equal(reference, expected)
    assert_same(fast, expected, in_dim)


def test_lora_on_an_int8_layer_equals_keras():
    layer = quantized_dense(16, 24)
    layer.enable_lora(2, b_initializer="ones")
    layer.lora_kernel_a.assign(np.full((24, 2), 0.25, "float32"))
    x = inputs((3, 4, 24))
    expected = keras_own(layer, x)
    np.testing.assert_array_equal(to_numpy(layer(x)), expected)
    # The LoRA term is in the result (not only the int8 kernel's product).
    layer.lora_kernel_b.assign(np.zeros((2, 16), "float32"))
    assert not np.array_equal(to_numpy(layer(x)), expected)


def test_seam_function_equals_keras_forward():
    layer = quantized_dense(24, 40, use_bias=False)
    x = inputs((3, 7, 40))
    args = (x, layer._kernel, layer.kernel_scale, layer.inputs_quantizer, "float32")
    np.testing.assert_array_equal(to_numpy(backend.int8_matmul(*args)), keras_own(layer, x))
    np.testing.assert_array_equal(to_numpy(portable.int8_matmul(*args)), keras_own(layer, x))


def test_fast_kernel_runs(monkeypatch):
    """The backend's int8 kernel computes the GEMM (not Keras' int32 matmul)."""
    calls = []
    if BACKEND == "torch":
        import torch

        real = torch._int_mm
        monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(1) or real(a, b))
    elif BACKEND == "tensorflow":
        from keras_vitmsn.backend import tensorflow as module

        real = module._quantized_matmul
        monkeypatch.setattr(module, "_quantized_matmul", lambda a, b: calls.append(1) or real(a, b))
    elif BACKEND == "jax":
        import jax.numpy as jnp

        real = jnp.matmul

        def spy(a, b, **kwargs):
            if a.dtype == jnp.bfloat16 and kwargs.get("preferred_element_type") == jnp.float32:
                calls.append(1)
            return real(a, b, **kwargs)

        monkeypatch.setattr(jnp, "matmul", spy)
    else:
        pytest.skip(f"no int8 kernel on the {BACKEND} backend")
    layer = quantized_dense(16, 32)
    layer(inputs((4, 32)))
    assert calls, "the int8 layer did not reach the backend's int8 kernel"


def test_fallback_where_the_kernel_refuses(monkeypatch):
    """Where the backend's kernel is unavailable (or refuses a shape), Keras' matmul
    computes the same values."""
    if BACKEND == "torch":
        import torch

        def refuse(a, b):
            raise RuntimeError("_int_mm: unsupported shape")

        monkeypatch.setattr(torch, "_int_mm", refuse)
    elif BACKEND == "tensorflow":
        from keras_vitmsn.backend import tensorflow as module

        monkeypatch.setattr(module, "_QUANTIZED_MATMUL", False)
    else:
        pytest.skip(f"the {BACKEND} backend's int8 GEMM has no runtime fallback")
    layer = quantized_dense(12, 20)
    x = inputs((2, 6, 20))
    np.testing.assert_array_equal(to_numpy(layer(x)), keras_own(layer, x))


def test_unquantized_inputs_and_half_precision_take_keras_math():
    """A weight-only int8 layer (no input quantiser) and a bfloat16 one."""
    config = keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
    rng = np.random.default_rng(0)
    layer = ViTMSNDense(8)
    layer.build((None, 16))
    layer.kernel.assign(rng.normal(0.0, 0.1, (16, 8)).astype("float32"))
    layer.quantize("int8", config=config)
    assert layer.inputs_quantizer is None
    x = inputs((3, 16))
    np.testing.assert_array_equal(to_numpy(layer(x)), keras_own(layer, x))

    half = ViTMSNDense(8, dtype="bfloat16")
    half.build((None, 16))
    half.quantize("int8")
    x = keras.ops.cast(inputs((3, 16)), "bfloat16")
    np.testing.assert_array_equal(to_numpy(half(x)), keras_own(half, x))


def test_keras_call_runs_when_the_probe_fails(monkeypatch):
    monkeypatch.setattr(keras_internals, "INT8_CALL_IS_PRIVATE", False, raising=False)
    layer = quantized_dense(8, 16)
    x = inputs((2, 16))
    used = []
    real = keras.layers.Dense._int8_call

    def spy(self, *args, **kwargs):
        used.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Dense, "_int8_call", spy)
    np.testing.assert_array_equal(to_numpy(layer(x)), to_numpy(real(layer, x)))
    assert used


def test_probe_refuses_a_changed_int8_call(monkeypatch):
    monkeypatch.setattr(keras.layers.Dense, "_int8_call", lambda self, inputs, mask=None: inputs)
    assert keras_internals._probe_int8_call() is False


def test_gradient_through_a_quantised_layer_equals_keras(monkeypatch):
    """The custom gradient (dequantised kernel) is Keras': the float layer before the
    int8 one gets the same gradients on either path."""
    model = keras.Sequential(
        [keras.Input((5, 16)), keras.layers.Dense(16, name="before"), ViTMSNDense(8, name="q")]
    )
    randomize(model)
    model.get_layer("q").quantize("int8")
    x = inputs((2, 5, 16))

    def loss(y):
        return keras.ops.sum(keras.ops.square(y))

    fast = keras_gradients(model, x, loss)
    monkeypatch.setattr(keras_internals, "INT8_CALL_IS_PRIVATE", False, raising=False)
    keras_path = keras_gradients(model, x, loss)
    assert sorted(fast) == sorted(keras_path) and fast
    for path, grad in keras_path.items():
        np.testing.assert_allclose(fast[path], grad, rtol=1e-6, atol=1e-6, err_msg=path)


def quantized_backbone():
    backbone = tiny_backbone()
    randomize(backbone)
    backbone.quantize("int8")
    return backbone


def test_quantized_backbone_equals_keras_path(monkeypatch):
    backbone = quantized_backbone()
    images = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
    fast = to_numpy(backbone(images)["last_hidden_state"])
    predicted = to_numpy(backbone.predict_on_batch(images)["last_hidden_state"])
    monkeypatch.setattr(keras_internals, "INT8_CALL_IS_PRIVATE", False, raising=False)
    expected = to_numpy(backbone(images)["last_hidden_state"])
    np.testing.assert_array_equal(fast, expected)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-5)


def test_quantized_model_saves_and_reloads(tmp_path):
    backbone = quantized_backbone()
    images = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype("float32")
    path = os.path.join(tmp_path, "q.keras")
    backbone.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.encoder_layers[0].attention.qkv.kernel.dtype == "int8"
    np.testing.assert_array_equal(
        to_numpy(reloaded(images)["last_hidden_state"]),
        to_numpy(backbone(images)["last_hidden_state"]),
    )


def test_xla_compiled_call_takes_keras_matmul():
    """XLA has no kernel for TensorFlow's oneDNN int8 op: a jit-compiled call falls
    back to Keras' int8 MatMul."""
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow's XLA fallback")
    import tensorflow as tf

    layer = quantized_dense(16, 32)
    x = inputs((3, 32))
    compiled = tf.function(layer, jit_compile=True)
    np.testing.assert_array_equal(to_numpy(compiled(x)), keras_own(layer, x))


def test_int8_speed_note_warns_only_without_a_fast_kernel(monkeypatch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_backbone().quantize("int8")
    slow = [w for w in caught if "float32 inference speed" in str(w.message)]
    assert bool(slow) == (backend.int8_speed_note() is not None)
    if BACKEND == "tensorflow":
        from keras_vitmsn.backend import tensorflow as module

        monkeypatch.setattr(module, "_QUANTIZED_MATMUL", False)
        ratio = "0.37x"
    elif BACKEND == "torch":
        from keras_vitmsn.backend import torch as module

        monkeypatch.setattr(module, "INT_MM_EXACT_ON_CPU", False)
        ratio = "0.22x"
    else:
        return
    with pytest.warns(UserWarning, match=rf"{ratio} the float32 inference speed"):
        tiny_backbone().quantize("int8")


def test_onnx_export_uses_integer_matmul(tmp_path):
    if BACKEND != "torch":
        pytest.skip("ONNX through torch.onnx: the torch backend")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    clf = kv.ViTMSNClassifier(quantized_backbone(), num_classes=3)
    path = os.path.join(tmp_path, "q.onnx")
    clf.export(path, format="onnx", verbose=False)
    ops_used = {node.op_type for node in onnx.load(path).graph.node}
    assert "MatMulInteger" in ops_used
    images = np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype("float32")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: images})
    np.testing.assert_allclose(got, to_numpy(clf(images)), rtol=1e-5, atol=1e-5)


def test_probe_answers_no_for_public_keras_only(monkeypatch):
    monkeypatch.setattr(keras_internals, "PUBLIC_ONLY", True)
    assert keras_internals._probe_int8_call() is False


# -- CPUs without VNNI: an int8 GEMM that saturates is not used -----------------------


def saturating_u8s8_matmul(a, b):
    """The products of an int8 GEMM that, as AVX2's ``vpmaddubsw``, multiplies
    ``a + 128`` (uint8) by ``b`` (int8), sums each pair of products into a saturating
    int16, then removes the 128 zero point: what an int8 GEMM without VNNI computes."""
    a = np.asarray(a, np.int64) + 128
    b = np.asarray(b, np.int64)
    pairs = a[:, 0::2, None] * b[None, 0::2] + a[:, 1::2, None] * b[None, 1::2]
    sums = np.clip(pairs, -(2**15), 2**15 - 1).sum(axis=1)
    return (sums - 128 * b.sum(axis=0)).astype(np.int32)


def test_the_saturation_model_is_exact_where_nothing_saturates():
    a = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    b = np.arange(16, dtype=np.int8).reshape(8, 2) - 8
    np.testing.assert_array_equal(saturating_u8s8_matmul(a, b), a.astype(np.int32) @ b)


@pytest.mark.skipif(BACKEND != "torch", reason="torch's int8 GEMM probe")
def test_torch_int8_gemm_that_saturates_is_not_used(monkeypatch):
    import torch

    from keras_vitmsn.backend import torch as torch_backend

    if not torch_backend.INT_MM_EXACT_ON_CPU:
        pytest.skip("this CPU's int8 GEMM is not exact: Keras' matmul already runs")
    monkeypatch.setattr(
        torch, "_int_mm", lambda a, b: torch.from_numpy(saturating_u8s8_matmul(a, b))
    )
    assert not torch_backend._probe_int_mm()


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's int8 GEMM probe")
def test_tensorflow_int8_gemm_that_saturates_is_not_used(monkeypatch):
    import tensorflow as tf

    from keras_vitmsn.backend import tensorflow as tf_backend

    if not tf_backend._quantized_matmul_runs():
        pytest.skip("no exact oneDNN int8 GEMM here: Keras' MatMul already runs")
    monkeypatch.setattr(
        tf_backend,
        "_quantized_matmul",
        lambda a, b: tf.constant(saturating_u8s8_matmul(a.numpy(), b.numpy())),
    )
    assert not tf_backend._quantized_matmul_runs()
