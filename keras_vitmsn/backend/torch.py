"""torch's fast paths: torch's own fused kernels where Keras composes several.

- ``matmul_add``: one ``addmm`` (the bias added inside the GEMM, as ``nn.Linear``;
  3.7% per training step), or oneDNN's GEMM in float32 on CPUs where it measured
  faster (:mod:`keras_vitmsn.backend.torch_gemm`).
- ``layer_norm``: ``torch.nn.functional.layer_norm`` on the input as it comes, which
  accumulates half precision in float32 without Keras' two extra cast passes.
- ``dot_product_attention``: ``scaled_dot_product_attention`` on strided head-major
  views, without Keras' contiguous copies (bf16 inference 1.14x with ``layer_norm``).
- Variable updates (optimizer, EMA, clipping): torch's multi-tensor kernels in place,
  as ``torch.optim.AdamW`` and ``clip_grad_norm_`` run them (training 1.08x).
  ``torch._foreach_*`` is private: probed at import, with a per-tensor fallback.
- ``int8_matmul``: ``torch._int_mm`` (oneDNN's int8 GEMM) where Keras' matmul runs
  int8 x int8 as an int32 matmul on CPU, with Keras' abs-max input quantiser and
  descaling in fewer passes (same values); exported to ONNX as ``MatMulInteger``.
- ``export``: ONNX through torch.onnx's dynamo exporter, ``.pt2`` with a dynamic batch.
"""

import math
import os
import tempfile

import keras
import torch
from keras import ops

from keras_vitmsn.backend import portable
from keras_vitmsn.backend import torch_gemm
from keras_vitmsn.backend.keras_internals import in_stateless_scope

# -- the model's math -----------------------------------------------------------------


def matmul_add(x, kernel, bias):
    x, kernel, bias = (ops.convert_to_tensor(t) for t in (x, kernel, bias))
    if x.ndim < 2 or x.dtype != kernel.dtype or bias.dtype != kernel.dtype:
        # keras.ops' matmul promotes mixed dtypes and takes 1-D inputs; addmm does not.
        return portable.matmul_add(x, kernel, bias)
    rows = x.flatten(0, -2)
    if torch_gemm.applies(rows, kernel, bias):
        out = torch_gemm.linear(rows, kernel, bias)
    else:
        out = torch.addmm(bias, rows, kernel)
    return out.reshape(*x.shape[:-1], kernel.shape[-1])


def _probe_int_mm():
    """Whether ``torch._int_mm`` gives the exact int32 products on this CPU on
    :func:`~keras_vitmsn.backend.portable.int8_gemm_worst_case` (where a CPU without
    VNNI saturates); checked once, at import, as the foreach probe below. Where it is
    not exact, Keras' int32 matmul runs."""
    rows, kernel = (torch.from_numpy(t) for t in portable.int8_gemm_worst_case())
    try:
        got = torch._int_mm(rows, kernel)
        return bool(torch.equal(got, rows.to(torch.int32) @ kernel.to(torch.int32)))
    except (RuntimeError, AttributeError):  # no int8 GEMM for this CPU in this torch
        return False


INT_MM_EXACT_ON_CPU = _probe_int_mm()


def int8_speed_note():
    if INT_MM_EXACT_ON_CPU:
        return None
    return (
        "int8 layers run Keras' int8 matmul on this CPU (an int32 matmul): torch's int8 "
        "GEMM is missing or saturates here (no VNNI). Measured 0.22x the float32 "
        "inference speed (vit_msn_small, batch 8, 2-core AMD Zen 4 CPU; "
        "benchmarks/quantize_benchmark.py); int8 still makes the model 4x smaller."
    )


def _int_mm_applies(rows, kernel):
    if rows.dtype != torch.int8 or kernel.dtype != torch.int8 or kernel.ndim != 2:
        return False
    if rows.device.type == "cpu":
        return INT_MM_EXACT_ON_CPU
    # CUDA's kernel takes fewer shapes (the ones Keras' own matmul checks for).
    m, k = rows.shape
    n = kernel.shape[1]
    return m > 16 and k >= 16 and k % 8 == 0 and n % 8 == 0


def _int8_gemm(x, kernel):
    # Keras' matmul computes int8 x int8 on CPU as an int32 torch.matmul (vit_msn_small
    # int8 inference 0.22x float32); torch._int_mm is oneDNN's int8 GEMM (VNNI where
    # the CPU has it): vit_msn_small's projections 4.7-6.2x faster than float32 on a
    # Zen 4 CPU, and int8 inference 1.85x float32.
    x, kernel = ops.convert_to_tensor(x), ops.convert_to_tensor(kernel)
    if x.ndim >= 1:
        rows = x.reshape(-1, x.shape[-1])
        if _int_mm_applies(rows, kernel):
            try:
                out = torch._int_mm(rows, kernel)
            except RuntimeError:  # a shape or device this torch's kernel refuses
                pass
            else:
                return out.reshape(*x.shape[:-1], kernel.shape[-1])
    return ops.matmul(x, kernel)


def _abs_max_rows(x, quantizer):
    """Keras' ``AbsMaxQuantizer`` per row of float32 ``x`` in four torch passes (Keras'
    ops take eight): the same int8 values and scales."""
    top = x.abs().amax(dim=-1, keepdim=True)  # torch.aminmax: 15x slower
    # A true division: torch's ``127 / tensor`` multiplies by the reciprocal.
    scale = torch.div(x.new_tensor(127.0), top + quantizer.epsilon)
    # No clip to +-127: |x| <= top < top + epsilon, so |x * scale| rounds to at most 127.
    return torch.round_(x * scale).to(torch.int8), scale


def _is_keras_abs_max(quantizer):
    return (
        type(quantizer) is keras.quantizers.AbsMaxQuantizer
        and tuple(quantizer.value_range) == (-127, 127)
        and quantizer.output_dtype == "int8"
    )


def int8_matmul(inputs, kernel, kernel_scale, inputs_quantizer, compute_dtype):
    x, kernel = ops.convert_to_tensor(inputs), ops.convert_to_tensor(kernel)
    if not (
        _is_keras_abs_max(inputs_quantizer)
        and x.dtype == torch.float32
        and x.ndim >= 1
        and compute_dtype == "float32"
    ):
        return portable.int8_matmul_with(
            _int8_gemm, inputs, kernel, kernel_scale, inputs_quantizer, compute_dtype
        )
    values, inputs_scale = _abs_max_rows(x, inputs_quantizer)
    out = _int8_gemm(values, kernel)
    # Keras' cast then divide; dividing the int32 tensor directly converts per element
    # inside the division (1.4x the time).
    return out.to(torch.float32).div_(ops.convert_to_tensor(kernel_scale) * inputs_scale)


def layer_norm(x, gamma, beta, epsilon):
    x, gamma, beta = (ops.convert_to_tensor(t) for t in (x, gamma, beta))
    # torch's kernel accumulates half-precision inputs in float32 and takes float32
    # scale and offset with them (mixed precision).
    if gamma.dtype == beta.dtype and gamma.dtype in (x.dtype, torch.float32):
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), gamma, beta, epsilon)
    return portable.layer_norm(x, gamma, beta, epsilon)


def dot_product_attention(query, key, value):
    q, k, v = (ops.convert_to_tensor(t).transpose(1, 2) for t in (query, key, value))
    if not (q.dtype == k.dtype == v.dtype):
        return portable.dot_product_attention(query, key, value)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def exact_gelu(x):
    # torch's kernel computes the erf formula, internally in float32.
    return keras.activations.gelu(x, approximate=False)


# -- torch's multi-tensor kernels, and their per-tensor fallback -----------------------


class _Foreach:
    """``torch._foreach_<name>`` (private torch) as ``<name>``, looked up per call."""

    def __getattr__(self, name):
        return getattr(torch, f"_foreach_{name}")


class _PerTensor:
    """The same operations one tensor at a time (public torch)."""

    @staticmethod
    def mul_(tensors, scalar):
        for t in tensors:
            t.mul_(scalar)

    @staticmethod
    def mul(tensors, scalar):
        return [t * scalar for t in tensors]

    @staticmethod
    def add_(tensors, other, alpha=1):
        for i, t in enumerate(tensors):
            if isinstance(other, (list, tuple)):
                t.add_(other[i], alpha=alpha)
            else:
                t.add_(other)

    @staticmethod
    def div_(tensors, scalar):
        for t in tensors:
            t.div_(scalar)

    @staticmethod
    def lerp_(tensors, ends, weight):
        for t, end in zip(tensors, ends):
            t.lerp_(end, weight)

    @staticmethod
    def addcmul_(tensors, a, b, value):
        for t, x, y in zip(tensors, a, b):
            t.addcmul_(x, y, value=value)

    @staticmethod
    def addcdiv_(tensors, a, b, value):
        for t, x, y in zip(tensors, a, b):
            t.addcdiv_(x, y, value=value)

    @staticmethod
    def maximum_(tensors, others):
        for t, other in zip(tensors, others):
            torch.maximum(t, other, out=t)

    @staticmethod
    def sqrt(tensors):
        return [t.sqrt() for t in tensors]

    @staticmethod
    def norm(tensors):
        return [torch.linalg.vector_norm(t) for t in tensors]


def _exercise(kernels):
    """Every kernel the updates below use, on small tensors: the values they end at."""
    a = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([4.0])]
    b = [torch.tensor([3.0, 0.5, -1.0]), torch.tensor([2.0])]
    kernels.mul_(a, 0.5)
    kernels.add_(a, b, alpha=0.25)
    kernels.lerp_(a, b, 0.5)
    kernels.addcmul_(a, b, b, 0.5)
    kernels.maximum_(a, b)
    denominator = kernels.sqrt(a)
    kernels.div_(denominator, 2.0)
    kernels.add_(denominator, 1e-3)
    kernels.addcdiv_(a, b, denominator, -0.1)
    return [*a, *denominator, *kernels.norm(a), *kernels.mul(a, torch.tensor(0.5))]


def _probe_foreach():
    try:
        got = _exercise(_Foreach())
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        return False
    want = _exercise(_PerTensor)
    return len(got) == len(want) and all(
        g.shape == w.shape and torch.allclose(g, w, rtol=1e-6, atol=0) for g, w in zip(got, want)
    )


#: Whether torch's private multi-tensor kernels are there and compute what the
#: per-tensor ops compute (else :class:`_PerTensor` runs the same updates).
FOREACH = _probe_foreach()


def _kernels():
    return _Foreach() if FOREACH else _PerTensor


# -- updates of many variables at once ------------------------------------------------


def _in_place():
    # Inside a keras.StatelessScope updates must be recorded through assign.
    return not in_stateless_scope()


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
    return _in_place()


def ema_update(targets, sources, momentum):
    targets, sources = portable.pair_targets(targets, sources)
    values = _storage(targets) if _in_place() and targets else None
    dtype = values and keras.backend.standardize_dtype(targets[0].dtype)
    if not values or any(keras.backend.standardize_dtype(s.dtype) != dtype for s in sources):
        return portable.ema_update(targets, sources, momentum)
    # A Python momentum (one host read per step, as torch.optim's own scalars) lets
    # both kernels run in place, without a temporary copy of every source.
    m = float(ops.convert_to_numpy(ops.cast(momentum, "float32")))
    kernels = _kernels()
    with torch.no_grad():
        kernels.mul_(values[0], m)
        kernels.add_(values[0], [ops.convert_to_tensor(s) for s in sources], alpha=1 - m)


def autograd_gradients(grads, variables):
    """Whether each of ``grads`` is its variable's ``.grad`` buffer (what Keras' torch
    trainer passes to ``apply``): the step's own, so it may be scaled in place."""
    if len(grads) != len(variables):
        return False
    for g, v in zip(grads, variables):
        buffer = getattr(getattr(v, "value", None), "grad", None)
        if buffer is None or g is not buffer:
            return False
    return True


def clip_by_global_norm(tensors, clip_norm, epsilon, in_place=False):
    tensors = [ops.convert_to_tensor(t) for t in tensors]
    if not tensors or len({t.dtype for t in tensors}) != 1:
        return portable.clip_by_global_norm(tensors, clip_norm, epsilon)
    kernels = _kernels()
    with torch.no_grad():
        # torch's clip_grad_norm_: the norm of the per-tensor norms.
        norms = kernels.norm([t.float() for t in tensors])
        norm = torch.linalg.vector_norm(torch.stack(norms))
        scale = torch.clamp(clip_norm / (norm + epsilon), max=1.0).to(tensors[0].dtype)
        if in_place:
            kernels.mul_(tensors, scale)
            return tensors
        return list(kernels.mul(tensors, scale))


def adam_update(
    variables,
    grads,
    exp_avgs,
    exp_avg_sqs,
    max_exp_avg_sqs,
    learning_rate,
    step,
    beta_1,
    beta_2,
    epsilon,
):
    """``torch.optim.AdamW``'s own kernel sequence (``lerp_``, ``addcmul_``,
    ``addcdiv_``), so it rounds as torch does."""
    if not _in_place() or not variables:
        return False
    groups = [variables, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if max_exp_avg_sqs else [])
    values = _storage(*groups)
    if values is None:
        return False
    params, m, v = values[:3]
    dtype = params[0].dtype
    # torch.optim.AdamW's sequence (foreach, not capturable): Python scalars, the bias
    # corrections in float64, every kernel in place but the denominator's.
    step = float(ops.convert_to_numpy(step))
    lr = float(ops.convert_to_numpy(ops.cast(learning_rate, "float32")))
    bias_correction1 = -math.expm1(step * math.log(beta_1))
    bias_correction2 = -math.expm1(step * math.log(beta_2))
    kernels = _kernels()
    with torch.no_grad():
        g = [ops.convert_to_tensor(t).to(dtype) for t in grads]
        kernels.lerp_(m, g, 1 - beta_1)
        kernels.mul_(v, beta_2)
        kernels.addcmul_(v, g, g, 1 - beta_2)
        if max_exp_avg_sqs:
            kernels.maximum_(values[3], v)
            v = values[3]
        # On CPU one variable at a time reuses the last denominator's memory; a fresh
        # copy of every variable would be page-faulted in again at each step.
        chunk = 1 if params[0].device.type == "cpu" else len(params)
        sqrt_bias_correction2, step_size = math.sqrt(bias_correction2), -lr / bias_correction1
        for i in range(0, len(params), chunk):
            denominator = kernels.sqrt(v[i : i + chunk])
            kernels.div_(denominator, sqrt_bias_correction2)
            kernels.add_(denominator, epsilon)
            kernels.addcdiv_(params[i : i + chunk], m[i : i + chunk], denominator, step_size)
    return True


# -- export ---------------------------------------------------------------------------


def _batch_dim():
    return torch.export.Dim("batch", min=1)


def export(parent_export, model, filepath, format, verbose=None, input_signature=None, **kwargs):
    if format == "onnx":
        unknown = sorted(set(kwargs) - {"opset_version"})
        if unknown:
            raise ValueError(
                f"Unsupported arguments for format='onnx' on torch: "
                f"{', '.join(unknown)}. Supported: opset_version."
            )
        return _export_onnx(model, filepath, input_signature, verbose, **kwargs)
    if format == "torch" and "dynamic_shapes" not in kwargs:
        if len(input_signature) == 1 and input_signature[0].shape[0] is None:
            kwargs["dynamic_shapes"] = {0: _batch_dim()}
    return portable.export(
        parent_export, model, filepath, format, verbose, input_signature, **kwargs
    )


def _onnx_translations():
    """ONNX for the aten operators torch.onnx has none for: ``_int_mm`` (an int8
    layer's GEMM, :func:`int8_matmul`) as ``MatMulInteger``."""
    import onnx
    from onnxscript import opset18 as op

    def int_mm(a, b):
        # onnxruntime's fast integer GEMM (VNNI) takes uint8 x int8: the int8 inputs
        # shifted by 128, with 128 as their zero point, are the same integers. Its
        # int8 x int8 kernel measured 10x slower (vit_msn_small's qkv GEMM, Zen 4).
        wide = op.Cast(a, to=onnx.TensorProto.INT16)
        shift = op.CastLike(op.Constant(value_int=128), wide)
        shifted = op.Cast(op.Add(wide, shift), to=onnx.TensorProto.UINT8)
        zero_point = op.Cast(op.Constant(value_int=128), to=onnx.TensorProto.UINT8)
        return op.MatMulInteger(shifted, b, zero_point)

    return {torch.ops.aten._int_mm.default: int_mm}


def _export_onnx(model, filepath, input_signature, verbose=None, opset_version=None):
    """ONNX with a dynamic batch through torch.onnx's dynamo exporter: Keras' torch
    path hands a dynamic dimension to the TorchScript exporter, which cannot trace
    Keras' LayerNormalization (a traced ``normalized_shape``)."""
    specs = list(input_signature)
    # Batch 2, not 1: torch.export specialises size-1 dimensions to constants.
    samples = tuple(
        keras.ops.zeros([2 if d is None else d for d in spec.shape], dtype=spec.dtype)
        for spec in specs
    )
    names = [getattr(spec, "name", None) or f"input_{i}" for i, spec in enumerate(specs)]
    batch = _batch_dim()
    dynamic = [{0: batch} if spec.shape[0] is None else None for spec in specs]
    model.eval()
    program = torch.onnx.export(
        model,
        samples,
        dynamo=True,
        custom_translation_table=_onnx_translations(),
        # Keras models take `*args`: one entry for the whole positional tuple.
        dynamic_shapes=[tuple(dynamic)],
        input_names=names,
        opset_version=opset_version,
        verbose=bool(verbose),
    )
    # Written next to the target, then renamed: no half-written file on failure.
    folder, name = os.path.split(os.path.abspath(os.fspath(filepath)))
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".onnx", dir=folder)
    os.close(handle)
    try:
        program.save(tmp)
        os.replace(tmp, filepath)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if verbose is None or verbose:
        print(f"Saved artifact at '{filepath}'.")
