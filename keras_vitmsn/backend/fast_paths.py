"""Backend-specific fast paths of the model's math: the one module that dispatches on the
backend for speed (:mod:`keras_vitmsn.backend.fast_updates` does it for updates of variables).

Each function computes what its ``keras.ops`` formulation computes (the formulation
every other backend runs), up to float rounding, only with fewer, larger kernels
where a backend has them; ``tests/test_fast_paths.py``, (half precision)
``tests/test_fast_paths_half.py`` and (TensorFlow's fusions)
``tests/test_fast_paths_tf.py`` check both against each other.

- :func:`matmul_add` (``x @ kernel + bias``): on torch one ``addmm``, so the bias is
  added inside the GEMM instead of by a separate pass over the output, and its
  gradient comes out of autograd's ``addmm`` backward (transformers' ``nn.Linear``
  does the same): 3.7% faster per training step on torch (vit_msn_small, batch 8,
  2 CPUs). In float32 on AMD CPUs, oneDNN's GEMM instead (``torch_gemm``: torch's
  MKL is 2.3x slower there). On TensorFlow a ``MatMul`` on the tokens
  flattened to rows, then ``BiasAdd``: the pair TensorFlow's graph optimizer fuses
  into one oneDNN ``_FusedMatMul`` (Keras' ``matmul`` of a 3-D input reshapes between
  the two, so they stay apart). XLA fuses the add into the dot already.
- :func:`mlp_on_token_rows` (a layout choice): on TensorFlow the blocks run their MLP
  on ``(batch * tokens, hidden)`` rows, so that ``MatMul -> BiasAdd -> GELU`` has no
  reshape inside it and the optimizer fuses the exact GELU into the first MLP matmul
  as well (inference; in training the GELU's input is kept for its gradient).
- :func:`mlp_activation` in bfloat16 inference on TensorFlow: the exact GELU written
  in bfloat16 (``tensorflow_graphs.half_precision_exact_gelu``), which grappler fuses
  into the first MLP matmul as it fuses the float32 one; the float32 formulation (casts
  around every op) stays as separate ops, 6 passes over the MLP's widest tensor.
  vit_msn_small bf16 inference, batch 8, on a Zen 5 EPYC (2 CPUs, same-process A/B):
  139 -> 125 ms per batch (1.11x), no less exact against float32. Not under
  ``jit_compile`` (XLA runs the bfloat16 ops as written: no faster, less exact).
- :func:`dot_product_attention` on TensorFlow: batched matmuls on head-major copies
  instead of Keras' token-major einsums, which transpose inside each call forward and
  backward; in float32 the scale goes on ``q`` (tokens x head_dim) rather than on the
  scores (tokens x tokens). Attention alone at vit_msn_small (8x197x6x64): forward
  6.0 -> 4.7 ms, forward + backward 19.5 -> 14 ms.
  The three together, vit_msn_small at batch 8 on an Intel Xeon without AMX (2 CPUs,
  same-process A/B, float32): inference 1.12-1.14x, training 1.04x.
- :func:`head_major_attention` (a layout choice, not a function of values): whether
  attention projects straight into ``(batch, heads, tokens, head_dim)`` with one
  einsum over the fused qkv kernel and attends in that layout, instead of a Dense
  projection to ``(batch, tokens, 3 * hidden)`` whose reshaped thirds the attention
  dots transpose (``keras.ops.dot_product_attention``'s layout). On JAX, XLA writes
  the einsum's output head-major directly; the other layout costs transposing copies
  forward and backward. Measured on vit_msn_small's attention sub-layer (fwd + bwd,
  batch 8, 2 CPUs, AVX2 AMD EPYC, interleaved): 127 -> 86 ms; the whole training
  step 1.21x, inference 1.12x (same-process A/B). On TensorFlow the same layout
  made training slower (0.92x, and 0.95x under ``jit_compile=True``), and torch's
  ``scaled_dot_product_attention`` takes the token-major layout's strided views, so
  both keep the Dense projection.

- :func:`matmul_add` and :func:`einsum` in bfloat16 / float16 on JAX's CPU backend:
  the contraction asks XLA for a float32 result (``preferred_element_type``), then
  rounds once. XLA:CPU runs a half-precision dot that returns half precision by
  converting both operands to float32 and running a float32 dot; asked for a float32
  result it runs the bfloat16 kernel itself (AMX tiles on Intel Xeons that have
  them). The products of half-precision values are exact in float32 and both
  accumulate in float32, so only the bias add moves before the rounding. Measured
  on an Intel Xeon with AMX (1576x384 @ 384x1536, bf16): 7.4 -> 1.1 ms.
- :func:`layer_norm` on torch: ``torch.nn.functional.layer_norm`` on the input as it
  comes (bfloat16 input with float32 scale and offset included), which accumulates in
  float32 internally. Keras' formulation casts the input to float32 and the result
  back: two more passes over every token per LayerNorm in half precision.
- :func:`dot_product_attention` on torch: ``scaled_dot_product_attention`` on the
  strided head-major views of the token-major ``q``, ``k``, ``v``, as transformers
  calls it; Keras' torch ``dot_product_attention`` copies each of them contiguous
  first. Measured with :func:`layer_norm`, vit_msn_small bf16 inference on an Intel
  Xeon with AMX (batch 8, 2 CPUs, same-process A/B): 1.14x; float32: no change.
"""

import keras
from keras import ops

from keras_vitmsn.backend import tensorflow_graphs
from keras_vitmsn.backend import torch_gemm


def _torch():
    return keras.backend.backend() == "torch"


def _tensorflow():
    return keras.backend.backend() == "tensorflow"


def _one_float_dtype(*tensors):
    dtypes = {keras.backend.standardize_dtype(t.dtype) for t in tensors}
    return len(dtypes) == 1 and dtypes <= {"float16", "bfloat16", "float32", "float64"}


def mlp_on_token_rows():
    """Whether the blocks should run their MLP on ``(batch * tokens, hidden)`` rows
    (TensorFlow), so that each ``Dense -> GELU`` is a ``MatMul -> BiasAdd -> GELU``
    chain with no reshape inside it, the pattern TensorFlow's graph optimizer fuses.

    Example:
    >>> mlp_on_token_rows() == (keras.backend.backend() == "tensorflow")
    True
    """
    return _tensorflow()


def mlp_activation(x, activation, hidden_act, training):
    """``activation(x)`` on the MLP's first projection (token rows). In bfloat16
    inference traced by TensorFlow with oneDNN, the exact GELU is instead written in
    bfloat16, the pattern grappler fuses into that projection's ``_FusedMatMul``,
    which evaluates it in float32 and rounds once, as the float32 formulation does.

    Example:
    >>> y = mlp_activation(keras.ops.ones((2, 3)), keras.ops.relu, "relu", False)
    >>> tuple(y.shape), float(y[0, 0])
    ((2, 3), 1.0)
    """
    if (
        _tensorflow()
        and hidden_act == "gelu"
        and not training
        and tensorflow_graphs.fuses_half_precision_gelu(x)
    ):
        return tensorflow_graphs.half_precision_exact_gelu(x)
    return activation(x)


def head_major_attention():
    """Whether attention should project and attend head-major on this backend (JAX).

    Example:
    >>> head_major_attention() == (keras.backend.backend() == "jax")
    True
    """
    return keras.backend.backend() == "jax"


_HALF = ("bfloat16", "float16")


def _half_on_xla_cpu(*tensors):
    """Whether these tensors are all of one half-precision dtype, on JAX's CPU backend."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    dtypes = {keras.backend.standardize_dtype(t.dtype) for t in tensors}
    return len(dtypes) == 1 and dtypes <= set(_HALF) and jax.default_backend() == "cpu"


def einsum(subscripts, *operands, dtype=None):
    """``keras.ops.einsum``, with the result in ``dtype`` (default: the operands' dtype).

    Example:
    >>> y = einsum("ij,jk->ik", keras.ops.ones((2, 3), "bfloat16"), keras.ops.ones((3, 4), "bfloat16"))
    >>> tuple(y.shape), keras.backend.standardize_dtype(y.dtype), float(y[0, 0])
    ((2, 4), 'bfloat16', 3.0)
    """
    operands = [ops.convert_to_tensor(t) for t in operands]
    if _half_on_xla_cpu(*operands):
        import jax.numpy as jnp

        out = jnp.einsum(subscripts, *operands, preferred_element_type=jnp.float32)
        return out.astype(dtype or operands[0].dtype)
    out = ops.einsum(subscripts, *operands)
    return out if dtype is None else ops.cast(out, dtype)


def matmul_add(x, kernel, bias):
    """``x @ kernel + bias`` over the last axis of ``x`` (any leading shape).

    Example:
    >>> y = matmul_add(keras.ops.ones((2, 3, 4)), keras.ops.ones((4, 5)), keras.ops.ones((5,)))
    >>> tuple(y.shape), float(y[0, 0, 0])
    ((2, 3, 5), 5.0)
    """
    if not _torch():
        x, kernel, bias = (ops.convert_to_tensor(t) for t in (x, kernel, bias))
        if _half_on_xla_cpu(x, kernel, bias):
            import jax.numpy as jnp

            out = jnp.matmul(x, kernel, preferred_element_type=jnp.float32) + bias
            return out.astype(x.dtype)
        if _tensorflow() and len(x.shape) >= 2 and _one_float_dtype(x, kernel, bias):
            return tensorflow_graphs.matmul_bias_add(x, kernel, bias)
        return ops.add(ops.matmul(x, kernel), bias)
    import torch

    x = ops.convert_to_tensor(x)
    kernel = ops.convert_to_tensor(kernel)
    bias = ops.convert_to_tensor(bias)
    if x.ndim < 2 or x.dtype != kernel.dtype or bias.dtype != kernel.dtype:
        # keras.ops' matmul promotes mixed dtypes and takes 1-D inputs; addmm does not.
        return ops.add(ops.matmul(x, kernel), bias)
    rows = x.flatten(0, -2)
    if torch_gemm.applies(rows, kernel, bias):
        out = torch_gemm.linear(rows, kernel, bias)
    else:
        out = torch.addmm(bias, rows, kernel)
    return out.reshape(*x.shape[:-1], kernel.shape[-1])


def layer_norm(x, gamma, beta, epsilon):
    """LayerNorm over the last axis, as ``keras.ops.layer_normalization`` computes it
    (in at least float32), the result in ``x``'s dtype.

    Example:
    >>> y = layer_norm(keras.ops.convert_to_tensor([[1.0, 3.0]]), keras.ops.ones((2,)), keras.ops.zeros((2,)), 1e-6)
    >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(y)[0]]
    [-1.0, 1.0]
    """
    x, gamma, beta = (ops.convert_to_tensor(t) for t in (x, gamma, beta))
    if _torch():
        import torch

        # torch's kernel accumulates half-precision inputs in float32 and takes float32
        # scale and offset with them (mixed precision): tested on CPU here; on CUDA by
        # tests/test_gpu.py's mixed_bfloat16 run, which no GPU session has run yet.
        if gamma.dtype == beta.dtype and gamma.dtype in (x.dtype, torch.float32):
            return torch.nn.functional.layer_norm(x, (x.shape[-1],), gamma, beta, epsilon)
    out = ops.layer_normalization(x, gamma, beta, axis=-1, epsilon=epsilon)
    return ops.cast(out, keras.backend.standardize_dtype(x.dtype))


def dot_product_attention(query, key, value):
    """``keras.ops.dot_product_attention(query, key, value)``: softmax attention scaled
    by ``head_dim ** -0.5``, each argument and the result ``(batch, tokens, heads,
    head_dim)``.

    Example:
    >>> q = keras.ops.ones((2, 5, 4, 8))
    >>> tuple(dot_product_attention(q, q, q).shape)
    (2, 5, 4, 8)
    """
    if _tensorflow() and _one_float_dtype(query, key, value):
        return tensorflow_graphs.dot_product_attention(query, key, value)
    if not _torch():
        return ops.dot_product_attention(query, key, value)
    import torch

    q, k, v = (ops.convert_to_tensor(t).transpose(1, 2) for t in (query, key, value))
    if not (q.dtype == k.dtype == v.dtype):
        return ops.dot_product_attention(query, key, value)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
