"""TensorFlow formulations that TensorFlow's graph optimizer (grappler) fuses into
oneDNN kernels; :mod:`keras_vitmsn.backend.fast_paths` chooses when they run, and
``tests/test_fast_paths_tf.py`` checks the fusions in the optimized graph."""

import math

import keras


def matmul_bias_add(x, kernel, bias):
    """``MatMul`` then ``BiasAdd`` on the tokens flattened to rows: the pair
    TensorFlow's graph optimizer fuses into one oneDNN call (with a GELU after it,
    when one follows on the rows). Keras' ``matmul`` of a 3-D input reshapes the
    product back to 3-D before the ``add``, which keeps them apart."""
    import tensorflow as tf

    rows = tf.nn.bias_add(tf.matmul(tf.reshape(x, (-1, kernel.shape[0])), kernel), bias)
    if len(x.shape) == 2:
        return rows
    # Static sizes where known, so that shape inference keeps them.
    dims = [d if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape[:-1])]
    return tf.reshape(rows, dims + [kernel.shape[-1]])


def dot_product_attention(query, key, value):
    """Keras' TensorFlow attention with batched matmuls on head-major copies instead
    of its two token-major einsums (which transpose inside every call, forward and
    backward), and in float32 (float64) the scale applied to ``q`` (tokens x head_dim
    values) instead of to the scores (tokens x tokens). Logits and softmax in at
    least float32, as Keras computes them."""
    import tensorflow as tf

    scale = query.shape[-1] ** -0.5
    q, k, v = (tf.transpose(t, (0, 2, 1, 3)) for t in (query, key, value))
    compute = keras.backend.result_type(q.dtype, "float32")
    if keras.backend.standardize_dtype(q.dtype) == compute:
        logits = tf.matmul(q * scale, k, transpose_b=True)
    else:
        logits = tf.cast(tf.matmul(q, k, transpose_b=True), compute) * scale
    probs = tf.cast(tf.nn.softmax(logits, axis=-1), key.dtype)
    return tf.transpose(tf.matmul(probs, v), (0, 2, 1, 3))


def fuses_half_precision_gelu(x):
    """Whether grappler will fuse an exact GELU of ``x`` written in ``x``'s dtype into
    the oneDNN matmul that produced it: ``x`` is bfloat16 (oneDNN's fused GELU takes
    float32 and bfloat16; this is for bfloat16 only), the code is being traced into a
    graph (grappler never sees eager ops) that XLA does not compile (``jit_compile``:
    XLA runs each bfloat16 op as written, measured slower and less exact), and
    TensorFlow runs its oneDNN rewrites (``TF_ENABLE_ONEDNN_OPTS``). The last two are
    only readable through internal functions; without them the answer is False, and
    the GELU stays in float32."""
    import tensorflow as tf

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
    """``x * 0.5 * (1 + erf(x / sqrt(2)))`` in ``x``'s own dtype, op for op the pattern
    grappler's remapper replaces (with the ``MatMul -> BiasAdd`` feeding it) by one
    ``_FusedMatMul`` whose oneDNN kernel evaluates the GELU in float32 and rounds once.
    Unfused, each of these ops would round to bfloat16: call it only where
    :func:`fuses_half_precision_gelu` holds and nothing else reads the matmul's output
    (inference: training keeps it for the gradient)."""
    import tensorflow as tf

    return x * (0.5 * (1.0 + tf.math.erf(x * (1.0 / math.sqrt(2.0)))))
