"""TensorFlow's fast paths: formulations its graph optimizer (grappler) fuses into
oneDNN kernels, which Keras' own ops keep apart.

- ``matmul_add``: ``MatMul`` on the tokens flattened to rows, then ``BiasAdd``: one
  ``_FusedMatMul`` (Keras' 3-D ``matmul`` reshapes between the two).
- The MLP runs on ``(batch * tokens, hidden)`` rows, so ``MatMul -> BiasAdd -> GELU``
  has no reshape inside and the exact GELU fuses into the first MLP matmul too; in
  bfloat16 inference the GELU is written in bfloat16 for the same fusion (vit_msn_small
  bf16 inference 1.11x, no less exact against float32).
- ``dot_product_attention``: batched matmuls on head-major copies instead of token-major
  einsums that transpose inside each call (attention forward + backward 19.5 -> 14 ms).
Together: vit_msn_small float32 inference 1.12-1.14x, training 1.04x on CPU.

``int8_matmul``: oneDNN's int8 GEMM (``QuantizedMatMulWithBias``) for an int8 layer,
where Keras' int8 ``MatMul`` runs Eigen's integer GEMM (2.3x the float32 time).
"""

import contextvars
import math

import keras
import numpy as np
import tensorflow as tf

from keras_vitmsn.backend import portable


def _one_float_dtype(*tensors):
    dtypes = {keras.backend.standardize_dtype(t.dtype) for t in tensors}
    return len(dtypes) == 1 and dtypes <= {"float16", "bfloat16", "float32", "float64"}


def matmul_add(x, kernel, bias):
    x, kernel, bias = (keras.ops.convert_to_tensor(t) for t in (x, kernel, bias))
    if len(x.shape) >= 2 and _one_float_dtype(x, kernel, bias):
        return matmul_bias_add(x, kernel, bias)
    return portable.matmul_add(x, kernel, bias)


def matmul_bias_add(x, kernel, bias):
    """``MatMul`` then ``BiasAdd`` on the tokens flattened to rows (the pair grappler
    fuses, with a GELU after it when one follows on the rows)."""
    rows = tf.nn.bias_add(tf.matmul(tf.reshape(x, (-1, kernel.shape[0])), kernel), bias)
    if len(x.shape) == 2:
        return rows
    # Static sizes where known, so that shape inference keeps them.
    dims = [d if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape[:-1])]
    return tf.reshape(rows, dims + [kernel.shape[-1]])


# oneDNN's int8 GEMM, as the one TensorFlow op on CPU that reaches it: Keras' int8
# MatMul (output_type=int32) runs Eigen's integer GEMM, 2.3x the time of float32.
# QuantizedMatMulWithBias takes uint8 x int8 and, with min_a=-128, subtracts the
# 128 zero point itself, so the int8 inputs XOR 0x80 (+128) give the exact int32
# product. It exists only in oneDNN builds and XLA has no kernel for it: probed once,
# and a graph XLA compiles, or an export (tf2onnx and other runtimes know no such
# op), takes Keras' MatMul.
_QUANTIZED_MATMUL = None
_PORTABLE_INT8 = contextvars.ContextVar("keras_vitmsn_portable_int8_on_tf", default=False)


def _quantized_matmul(rows, kernel):
    shifted = tf.bitwise.bitwise_xor(tf.bitcast(rows, tf.uint8), tf.constant(128, tf.uint8))
    out, _, _ = tf.raw_ops.QuantizedMatMulWithBias(
        a=tf.bitcast(shifted, tf.quint8),
        b=tf.bitcast(kernel, tf.qint8),
        bias=tf.zeros([kernel.shape[-1]], tf.float32),
        min_a=-128.0,
        max_a=127.0,
        min_b=-127.0,
        max_b=127.0,
        Toutput=tf.qint32,
    )
    return tf.bitcast(out, tf.int32)


def _quantized_matmul_runs():
    if tf.config.list_logical_devices("GPU"):
        return False  # a CPU-only kernel: TensorFlow would copy a GPU's tensors to it
    # Exact on the case a CPU without VNNI saturates, or Keras' MatMul runs.
    a, b = portable.int8_gemm_worst_case()
    try:
        out = _quantized_matmul(tf.constant(a), tf.constant(b)).numpy()
        return bool(np.array_equal(out, a.astype(np.int32) @ b))
    except Exception:  # no oneDNN kernel in this build, or it is turned off
        return False


def _probe_quantized_matmul():
    global _QUANTIZED_MATMUL
    if _QUANTIZED_MATMUL is None:
        with tf.init_scope():  # eagerly, also when first reached inside a tf.function
            _QUANTIZED_MATMUL = _quantized_matmul_runs()
    return _QUANTIZED_MATMUL


def _compiling_with_xla():
    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # can't tell: any graph may be one XLA compiles
        return True
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _int8_gemm(x, kernel):
    x, kernel = tf.convert_to_tensor(x), tf.convert_to_tensor(kernel)
    if (
        x.dtype == tf.int8
        and kernel.dtype == tf.int8
        and len(kernel.shape) == 2
        and len(x.shape) >= 2
        and not _PORTABLE_INT8.get()
        and not _compiling_with_xla()
        and _probe_quantized_matmul()
    ):
        rows = _quantized_matmul(tf.reshape(x, (-1, kernel.shape[0])), kernel)
        dims = [d if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape[:-1])]
        return tf.reshape(rows, dims + [kernel.shape[-1]])
    return keras.ops.matmul(x, kernel)


def int8_matmul(inputs, kernel, kernel_scale, inputs_quantizer, compute_dtype):
    return portable.int8_matmul_with(
        _int8_gemm, inputs, kernel, kernel_scale, inputs_quantizer, compute_dtype
    )


def int8_speed_note():
    if _probe_quantized_matmul() or tf.config.list_logical_devices("GPU"):
        return None
    return (
        "int8 layers run Keras' int8 MatMul on this TensorFlow, which has no oneDNN int8 "
        "kernel (TF_ENABLE_ONEDNN_OPTS=0, or a build without oneDNN): measured 0.37x the "
        "float32 inference speed (vit_msn_small, batch 8, 2-core AMD Zen 4 CPU; "
        "benchmarks/quantize_benchmark.py)."
    )


def export(parent_export, model, filepath, format, verbose=None, input_signature=None, **kwargs):
    token = _PORTABLE_INT8.set(True)  # the graph holds only ops every runtime knows
    try:
        return portable.export(
            parent_export, model, filepath, format, verbose, input_signature, **kwargs
        )
    finally:
        _PORTABLE_INT8.reset(token)


def mlp_on_token_rows():
    return True


def mlp_activation(x, activation, hidden_act, training):
    if hidden_act == "gelu" and not training and fuses_half_precision_gelu(x):
        return half_precision_exact_gelu(x)
    return activation(x)


def fuses_half_precision_gelu(x):
    """Whether grappler will fuse an exact GELU written in ``x``'s dtype into the
    oneDNN matmul that produced ``x``: bfloat16, traced into a graph that XLA does not
    compile (XLA runs each bfloat16 op as written: slower, less exact), with oneDNN's
    rewrites on. The last two are read through TensorFlow internals; where those are
    gone the answer is False and the GELU stays in float32."""
    if keras.backend.standardize_dtype(x.dtype) != "bfloat16" or tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.util import _pywrap_util_port

        if tf.__internal__.get_enclosing_xla_context() is not None:
            return False
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


def half_precision_exact_gelu(x):
    """``x * 0.5 * (1 + erf(x / sqrt(2)))`` in ``x``'s dtype, op for op the pattern
    grappler replaces (with the ``MatMul -> BiasAdd`` feeding it) by one
    ``_FusedMatMul`` that evaluates the GELU in float32 and rounds once. Unfused each
    op would round: only where :func:`fuses_half_precision_gelu` holds, in inference."""
    return x * (0.5 * (1.0 + tf.math.erf(x * (1.0 / math.sqrt(2.0)))))


def dot_product_attention(query, key, value):
    if not _one_float_dtype(query, key, value):
        return portable.dot_product_attention(query, key, value)
    # In float32 (float64) the scale goes on q (tokens x head_dim values), not on the
    # scores (tokens x tokens); logits and softmax in at least float32, as Keras.
    scale = query.shape[-1] ** -0.5
    q, k, v = (tf.transpose(t, (0, 2, 1, 3)) for t in (query, key, value))
    compute = keras.backend.result_type(q.dtype, "float32")
    if keras.backend.standardize_dtype(q.dtype) == compute:
        logits = tf.matmul(q * scale, k, transpose_b=True)
    else:
        logits = tf.cast(tf.matmul(q, k, transpose_b=True), compute) * scale
    probs = tf.cast(tf.nn.softmax(logits, axis=-1), key.dtype)
    return tf.transpose(tf.matmul(probs, v), (0, 2, 1, 3))


def antialiased_resize_compiles():
    # XLA has no kernel for TensorFlow's antialiased resize (ScaleAndTranslate).
    return False


def native_variables(variable):
    # Keras' TensorFlow optimizer hands update_step the tf.Variable inside.
    return (variable.value,)
