"""Backend-specific fast paths: the one module that dispatches on the backend for speed.

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
- :func:`dot_product_attention` on TensorFlow: batched matmuls on head-major copies
  instead of Keras' token-major einsums, which transpose inside each call forward and
  backward; in float32 the scale goes on ``q`` (tokens x head_dim) rather than on the
  scores (tokens x tokens). Attention alone at vit_msn_small (8x197x6x64): forward
  6.0 -> 4.7 ms, forward + backward 19.5 -> 14 ms.
  The three together, vit_msn_small at batch 8 on an Intel Xeon without AMX (2 CPUs,
  same-process A/B, float32): inference 1.12-1.14x, training 1.04x.
- :func:`ema_update` (``target <- m * target + (1 - m) * source`` for many variables):
  on torch two multi-tensor (``torch._foreach_*``) kernels over all variables, as
  torch's and Keras' torch optimizers update parameters, instead of four per variable.
  Both run in place (``mul_``, then ``add_`` with ``alpha = 1 - m``).
- :func:`adam_update` and :func:`clip_by_global_norm` (``ScheduledAdamW``'s step): on
  torch the kernels of ``torch.optim.AdamW`` and ``clip_grad_norm_`` (in place),
  which round as torch does; the other backends run the formulas per variable. On
  CPU the denominator is made one variable at a time and autograd's gradient buffers
  are clipped in place: fresh copies of every variable page-fault on each step.

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

import math

import keras
from keras import ops

from keras_vitmsn import tensorflow_graphs
from keras_vitmsn import torch_gemm
from keras_vitmsn.keras_internals.scopes import in_stateless_scope


def _torch():
    return keras.backend.backend() == "torch"


def _torch_in_place():
    # In-place updates of variable storage: torch, outside any keras.StatelessScope
    # (inside one, updates must be recorded through assign).
    return _torch() and not in_stateless_scope()


def _storage(*groups):
    """The torch tensors holding these Keras variables (one list per group), or None
    unless all are of one dtype and each ``value`` is of its variable's dtype: under
    autocast a value is a cast copy, and updating copies in place would leave the
    variables where they were."""
    dtype = keras.backend.standardize_dtype(groups[0][0].dtype)
    values = [[v.value for v in group] for group in groups]
    for group, group_values in zip(groups, values):
        for variable, value in zip(group, group_values):
            if not (
                keras.backend.standardize_dtype(variable.dtype)
                == keras.backend.standardize_dtype(value.dtype)
                == dtype
            ):
                return None
    return values


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


def head_major_attention():
    """Whether attention should project and attend head-major on this backend (JAX).

    Example:
    >>> head_major_attention() == (keras.backend.backend() == "jax")
    True
    """
    return keras.backend.backend() == "jax"


def batched_updates_available():
    """Whether :func:`adam_update` applies updates here (else it returns False)."""
    return _torch_in_place()


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


def ema_update(targets, sources, momentum):
    """``target.assign(m * target + (1 - m) * source)`` for each pair of variables.

    Args:
        targets: Keras variables, updated in place.
        sources: Keras variables or tensors of the same shapes.
        momentum: ``m``, a float or a scalar tensor.

    Example:
    >>> t, s = keras.Variable([1.0, 2.0]), keras.Variable([3.0, 4.0])
    >>> ema_update([t], [s], 0.5)
    >>> keras.ops.convert_to_numpy(t).tolist()
    [2.0, 3.0]
    """
    targets, sources = list(targets), list(sources)
    if len(targets) != len(sources):
        raise ValueError(
            f"ema_update needs one source per target; got {len(targets)} targets and "
            f"{len(sources)} sources."
        )
    values = _storage(targets) if _torch_in_place() and targets else None
    dtype = values and keras.backend.standardize_dtype(targets[0].dtype)
    if values and all(keras.backend.standardize_dtype(s.dtype) == dtype for s in sources):
        import torch

        # A Python momentum (one host read per step, as torch.optim's own scalars) lets
        # both kernels run in place, without a temporary copy of every source.
        m = float(ops.convert_to_numpy(ops.cast(momentum, "float32")))
        with torch.no_grad():
            torch._foreach_mul_(values[0], m)
            torch._foreach_add_(values[0], [ops.convert_to_tensor(s) for s in sources], alpha=1 - m)
        return
    for target, source in zip(targets, sources):
        m = ops.cast(momentum, target.dtype)
        target.assign(m * target + (1 - m) * ops.cast(source, target.dtype))


def autograd_gradients(grads, variables):
    """Whether each of ``grads`` is its variable's ``.grad`` buffer (torch; what Keras'
    torch trainer passes to ``apply``): the step's own, replaced at the next step, so
    they may be scaled in place as ``clip_grad_norm_`` does. A caller's tensor is not.

    Example:
    >>> autograd_gradients([keras.ops.ones((2,))], [keras.Variable([1.0, 2.0])])
    False
    """
    if not _torch() or len(grads) != len(variables):
        return False
    for g, v in zip(grads, variables):
        buffer = getattr(getattr(v, "value", None), "grad", None)
        if buffer is None or g is not buffer:
            return False
    return True


def clip_by_global_norm(tensors, clip_norm, epsilon, in_place=False):
    """``[t * min(clip_norm / (norm + epsilon), 1)]`` with ``norm`` the global L2 norm
    of ``tensors`` (computed in float32), each result in its tensor's dtype.

    ``in_place=True`` (only for buffers nobody else reads, see
    :func:`autograd_gradients`) lets torch scale the tensors themselves and return
    them, as ``clip_grad_norm_`` does, instead of writing a copy of every gradient.

    Example:
    >>> out = clip_by_global_norm([keras.ops.ones((4,)) * 3.0], 3.0, 0.0)
    >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(out[0])]
    [1.5, 1.5, 1.5, 1.5]
    """
    tensors = [ops.convert_to_tensor(t) for t in tensors]
    if _torch() and tensors and len({t.dtype for t in tensors}) == 1:
        import torch

        with torch.no_grad():
            # torch's clip_grad_norm_: the norm of the per-tensor norms.
            norms = torch._foreach_norm([t.float() for t in tensors])
            norm = torch.linalg.vector_norm(torch.stack(norms))
            scale = torch.clamp(clip_norm / (norm + epsilon), max=1.0).to(tensors[0].dtype)
            if in_place:
                torch._foreach_mul_(tensors, scale)
                return tensors
            return list(torch._foreach_mul(tensors, scale))
    norm = ops.sqrt(sum(ops.sum(ops.square(ops.cast(t, "float32"))) for t in tensors))
    scale = ops.minimum(clip_norm / (norm + epsilon), 1.0)
    return [ops.cast(t * ops.cast(scale, t.dtype), t.dtype) for t in tensors]


def adam_update(
    variables, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, learning_rate, step,
    beta_1, beta_2, epsilon,
):
    """One Adam update of many variables at once, on torch; ``False`` elsewhere (the
    caller then runs its per-variable ``update_step``: the same math).

    On torch it is ``torch.optim.AdamW``'s own kernel sequence (``lerp_``,
    ``addcmul_``, ``addcdiv_``), so it rounds as torch does; the formulas, for each
    variable ``p`` with gradient ``g`` and moments ``m``, ``v``:
    ``m += (g - m) * (1 - beta_1)``; ``v += (g*g - v) * (1 - beta_2)``;
    (amsgrad: ``v_max = max(v_max, v)``, used for ``v``);
    ``p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + epsilon)``, with
    ``bc_i = 1 - beta_i ** step``.

    Args:
        variables, exp_avgs, exp_avg_sqs: Keras variables, updated in place.
        grads: tensors.
        max_exp_avg_sqs: Keras variables for amsgrad, or None.
        learning_rate, step: scalars (tensors or floats); ``step`` counts from 1.
        beta_1, beta_2, epsilon: floats.

    Returns:
        True when the update was applied.
    """
    if not _torch_in_place() or not variables:
        return False
    import torch

    groups = [variables, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if max_exp_avg_sqs else [])
    values = _storage(*groups)
    if values is None:
        return False
    params, m, v = values[:3]
    dtype = params[0].dtype
    # torch.optim.AdamW's own sequence (foreach, not capturable): Python scalars, the
    # bias corrections in float64, every kernel in place but the denominator's.
    step = float(ops.convert_to_numpy(step))
    lr = float(ops.convert_to_numpy(ops.cast(learning_rate, "float32")))
    bias_correction1 = -math.expm1(step * math.log(beta_1))
    bias_correction2 = -math.expm1(step * math.log(beta_2))
    with torch.no_grad():
        g = [ops.convert_to_tensor(t).to(dtype) for t in grads]
        torch._foreach_lerp_(m, g, 1 - beta_1)
        torch._foreach_mul_(v, beta_2)
        torch._foreach_addcmul_(v, g, g, 1 - beta_2)
        if max_exp_avg_sqs:
            torch._foreach_maximum_(values[3], v)
            v = values[3]
        # CPU foreach kernels loop over the tensors anyway, so there one variable at a
        # time reuses the last denominator's memory; a fresh copy of every variable is
        # returned to the system by glibc after each step and faulted in at the next.
        chunk = 1 if params[0].device.type == "cpu" else len(params)
        sqrt_bias_correction2, step_size = math.sqrt(bias_correction2), -lr / bias_correction1
        for i in range(0, len(params), chunk):
            denominator = torch._foreach_sqrt(v[i:i + chunk])
            torch._foreach_div_(denominator, sqrt_bias_correction2)
            torch._foreach_add_(denominator, epsilon)
            torch._foreach_addcdiv_(params[i:i + chunk], m[i:i + chunk], denominator, step_size)
    return True
