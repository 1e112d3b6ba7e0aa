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
"""

import math

import keras
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
