"""Backend-specific fast paths for updating many variables at once (the optimizer's
and the MSN target encoder's steps); :mod:`keras_vitmsn.backend.fast_paths` holds those of the
forward and backward math. Each computes what its per-variable ``keras.ops``
formulation computes; ``tests/test_fast_paths.py`` checks both against each other.

- :func:`ema_update` (``target <- m * target + (1 - m) * source`` for many variables):
  on torch two multi-tensor (``torch._foreach_*``) kernels over all variables, as
  torch's and Keras' torch optimizers update parameters, instead of four per variable.
  Both run in place (``mul_``, then ``add_`` with ``alpha = 1 - m``).
- :func:`adam_update` and :func:`clip_by_global_norm` (``ScheduledAdamW``'s step): on
  torch the kernels of ``torch.optim.AdamW`` and ``clip_grad_norm_`` (in place),
  which round as torch does; the other backends run the formulas per variable. On
  CPU the denominator is made one variable at a time and autograd's gradient buffers
  are clipped in place: fresh copies of every variable page-fault on each step.
"""

import math

import keras
from keras import ops

from keras_vitmsn.backend.keras_internals.scopes import in_stateless_scope


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


def batched_updates_available():
    """Whether :func:`adam_update` applies updates here (else it returns False)."""
    return _torch_in_place()


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
