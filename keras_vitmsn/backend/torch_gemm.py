"""oneDNN's float32 GEMM for the torch backend's CPU projections: ``x @ kernel + bias``.

torch's x86 CPU wheels send float32 ``mm`` / ``addmm`` to Intel's MKL. torch also ships
oneDNN (the library TensorFlow runs its CPU matmuls on), whose GEMM torch reaches for
dense tensors through ``torch.ops.mkldnn._linear_pointwise``: the op torch's own
compiler (Inductor) emits for CPU linear layers. Which one is faster depends on the CPU
generation, not its vendor: 1576 x 384 @ 384 x 1536 in float32 (a vit_msn_small MLP
projection at batch 8) takes 8.3 ms in ``addmm`` and 3.6 ms in oneDNN on an AMD Zen 5
(AVX-512, 2 cores), while on a Zen 3 (AVX2) oneDNN is 24% slower than ``addmm``. So
the choice is measured, once per CPU model, torch version and thread count, and
remembered (:mod:`keras_vitmsn.backend.calibration`), or forced with the environment
variable ``KERAS_VITMSN_TORCH_CPU_GEMM``:

- ``auto`` (default): whichever of the two is faster on this machine, timed on that
  projection shape on first use (0.1-1 s, by the load on the machine) and remembered
  in the calibration file; ``addmm`` unless oneDNN is more than 5% faster.
- ``onednn``: oneDNN wherever the op exists.
- ``addmm``: torch's ``addmm`` always (what ``nn.Linear`` runs).

The op has no autograd formula, so :class:`_OneDNNLinear` supplies the backward:
both gradient GEMMs through the same op (on strided views, no copies) and the bias
gradient as a column sum. It is private torch: where it is missing, or the tensors
are not float32 on the CPU, or torch is tracing (``torch.compile``,
``torch.export``, ONNX), :func:`applies` is False and the caller runs ``addmm``.
Results equal ``addmm``'s up to float32 rounding (``tests/test_torch_gemm.py``).
"""

import functools
import os

from keras_vitmsn.backend import calibration

SWITCH = "KERAS_VITMSN_TORCH_CPU_GEMM"
CHOICES = ("auto", "onednn", "addmm")


def requested():
    """The value of ``KERAS_VITMSN_TORCH_CPU_GEMM`` (``"auto"`` when unset).

    Raises:
        ValueError: the variable holds anything but ``auto``, ``onednn`` or ``addmm``.

    Example:
    >>> requested() in CHOICES
    True
    """
    value = os.environ.get(SWITCH, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(
            f"{SWITCH}={os.environ[SWITCH]!r}: use auto (the faster of the two on this "
            "machine, measured once; the default), onednn or addmm"
        )
    return value


@functools.cache
def _op():
    """``torch.ops.mkldnn._linear_pointwise``, or None where this torch lacks it."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


# A vit_msn_small MLP projection at batch 8: the shape the models spend most time in.
CALIBRATION_SHAPE = (1576, 384, 1536)


def _measure():
    import torch

    rows, d_in, d_out = CALIBRATION_SHAPE
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d_in, generator=gen)
    kernel = torch.randn(d_in, d_out, generator=gen)
    bias = torch.randn(d_out, generator=gen)
    kernel_t = kernel.t().contiguous()
    with torch.no_grad():
        return calibration.fastest(
            {
                "addmm": lambda: torch.addmm(bias, x, kernel),
                "onednn": lambda: _gemm(x, kernel_t, bias),
            }
        )


@functools.cache
def _auto_prefers_onednn():
    import torch

    key = f"torch {torch.__version__} | {torch.get_num_threads()} threads"
    return calibration.decide("torch_cpu_gemm", key, ("addmm", "onednn"), _measure) == "onednn"


def enabled():
    """Whether float32 CPU projections on torch go to oneDNN in this process (the
    switch, the CPU and the op's presence; not the tensors: see :func:`applies`).

    Example:
    >>> isinstance(enabled(), bool)
    True
    """
    choice = requested()
    if choice == "addmm" or _op() is None:
        return False
    return choice == "onednn" or _auto_prefers_onednn()


def _tracing(torch):
    compiler = getattr(torch, "compiler", None)
    for probe in ("is_compiling", "is_exporting"):
        check = getattr(compiler, probe, None)
        if check is not None and check():
            return True
    return torch.jit.is_tracing()


def applies(x, kernel, bias):
    """Whether :func:`linear` should compute ``x @ kernel + bias`` for these torch
    tensors: float32 on the CPU, a 2-D kernel, none empty, :func:`enabled`, and no
    tracing."""
    import torch

    plain = (torch.Tensor, torch.nn.Parameter)
    tensors = (x, kernel) if bias is None else (x, kernel, bias)
    return (
        kernel.dim() == 2
        and x.dim() >= 2
        and x.numel() > 0  # oneDNN has no primitive for an empty GEMM
        and kernel.numel() > 0
        # Plain tensors only: tracing subclasses (fake, functional) take addmm.
        and all(
            type(t) in plain and t.dtype == torch.float32 and t.device.type == "cpu"
            for t in tensors
        )
        and enabled()
        and not _tracing(torch)
    )


def _gemm(a, b_t, bias=None):
    # a @ b_t.T (+ bias): the op takes the weight as (out_features, in_features).
    return _op()(a, b_t, bias, "none", [], "")


@functools.cache
def _autograd_function():
    import torch

    class _OneDNNLinear(torch.autograd.Function):
        """``x @ kernel + bias`` with ``x`` 2-D, forward and backward on oneDNN."""

        @staticmethod
        def forward(ctx, x, kernel, bias):
            ctx.save_for_backward(x, kernel)
            return _gemm(x, kernel.t(), bias)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            x, kernel = ctx.saved_tensors
            need_x, need_kernel, need_bias = ctx.needs_input_grad
            grad_x = _gemm(grad, kernel) if need_x else None  # grad @ kernel.T
            grad_kernel = _gemm(x.t(), grad.t()) if need_kernel else None  # x.T @ grad
            grad_bias = grad.sum(0) if need_bias else None
            return grad_x, grad_kernel, grad_bias

    return _OneDNNLinear


def linear(x, kernel, bias=None):
    """``x @ kernel + bias`` for a 2-D float32 CPU ``x`` and ``(in, out)`` ``kernel``
    on oneDNN, differentiable in all three. Call it where :func:`applies` is True.

    Example:
    >>> import torch
    >>> x, kernel, bias = torch.randn(5, 3), torch.randn(3, 4), torch.randn(4)
    >>> torch.allclose(linear(x, kernel, bias), torch.addmm(bias, x, kernel), atol=1e-6)
    True
    """
    import torch

    if not torch.is_grad_enabled() or not any(
        t is not None and t.requires_grad for t in (x, kernel, bias)
    ):
        return _gemm(x, kernel.t(), bias)
    return _autograd_function().apply(x, kernel, bias)
