"""TensorFlow formulations that TensorFlow's graph optimizer (grappler) fuses into
oneDNN kernels; :mod:`keras_vitmsn.fast_paths` chooses when they run, and
``tests/test_fast_paths_tf.py`` checks the fusions in the optimized graph."""

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
