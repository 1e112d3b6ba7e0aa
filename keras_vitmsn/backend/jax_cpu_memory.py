"""JAX on CPU: reuse each step's scratch memory instead of page-faulting it afresh.

XLA:CPU gives every run of a compiled step one scratch buffer (about 1 GB for a
vit_msn_small training step at batch 8). Allocated on a worker thread, glibc serves
it with a fresh ``mmap`` each time: ~290,000 page faults, a quarter of the step on 2
cores (docs/performance.md). :func:`enable` makes two process-wide choices that
together remove them (neither alone helps):

1. ``jax_cpu_enable_async_dispatch = False``: the buffer comes from the calling
   thread's heap. JAX reads it when it creates its CPU client, so call this before
   the first JAX computation.
2. glibc's ``mallopt``: no ``mmap`` for large blocks and freed memory never trimmed
   (a finite threshold caps at 2**31 - 1 bytes, less than an MSN step's scratch).

The costs: Python no longer runs ahead of the computation, and the process keeps its
peak heap. Small models lose (the digits demo ran 1.17x slower), so it is opt-in:
``keras_vitmsn.backend.enable_jax_cpu_memory()`` (a no-op saying why on other
backends and without glibc), or ``KERAS_VITMSN_JAX_CPU_MEMORY=1`` for the command
line. JAX's check of whether its client exists is private; where it is gone the
settings are applied regardless and the result says so.
"""

import ctypes
import dataclasses
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# -1 is glibc's documented "never trim"; any count would cap what is kept at 2**31 - 1
# bytes (mallopt takes a C int), less than one MSN step's scratch.
_NEVER_TRIM = -1


@dataclasses.dataclass(frozen=True)
class Result:
    """What :func:`enable` changed. True when both settings apply; ``reason`` says
    why not otherwise (or what could not be checked)."""

    inline_dispatch: bool
    glibc_keeps_freed_memory: bool
    reason: str = ""

    def __bool__(self):
        return self.inline_dispatch and self.glibc_keeps_freed_memory


def _glibc():
    """glibc, where it is the allocator ``malloc`` resolves to; else ``(None, why)``."""
    if not sys.platform.startswith("linux"):
        return None, f"mallopt is glibc's; this is {sys.platform}"
    try:
        process = ctypes.CDLL(None)
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
    except (OSError, AttributeError):
        return None, "the C library is not glibc"

    def address(function):
        return ctypes.cast(function, ctypes.c_void_p).value

    if address(process.malloc) != address(libc.malloc):  # e.g. LD_PRELOAD=libtcmalloc
        return None, "malloc is not glibc's (an allocator such as tcmalloc is preloaded)"
    return libc, ""


def _jax_backends_exist():
    """True/False, or None where JAX's private check is not there."""
    try:
        from jax._src import xla_bridge
    except ImportError:
        return None
    check = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(check()) if callable(check) else None


def enable():
    """Apply both settings (see the module docstring), on the JAX backend: the entry
    point for any backend is ``keras_vitmsn.backend.enable_jax_cpu_memory()``. Call
    it before the first JAX computation, i.e. before building or loading a model.

    Returns:
        A :class:`Result`, true when both settings apply; without glibc's allocator
        it changes nothing and says why.

    Raises:
        RuntimeError: JAX's CPU client already exists, so JAX would ignore the
            dispatch setting (nothing is changed).
    """
    libc, why = _glibc()
    if libc is None:
        return Result(False, False, why)
    exists = _jax_backends_exist()
    if exists:
        raise RuntimeError(
            "jax_cpu_memory.enable() must run before the first JAX computation in the "
            "process (before building or loading a model): JAX's CPU client already "
            "exists and keeps its dispatch mode."
        )
    if libc.mallopt(_M_MMAP_MAX, 0) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) != 1:
        raise RuntimeError("glibc's mallopt refused M_MMAP_MAX / M_TRIM_THRESHOLD")
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    note = (
        ""
        if exists is False
        else "JAX's private check for an existing CPU client is gone: not verified"
    )
    return Result(True, True, note)


SWITCH = "KERAS_VITMSN_JAX_CPU_MEMORY"


def requested():
    """Whether ``KERAS_VITMSN_JAX_CPU_MEMORY=1`` asks the command line to :func:`enable`.

    Raises:
        ValueError: the variable holds anything but ``0`` or ``1``.

    Example:
    >>> isinstance(requested(), bool)
    True
    """
    value = os.environ.get(SWITCH, "0")
    if value not in ("0", "1"):
        raise ValueError(f"{SWITCH}={value!r}: use 1 (on) or 0 (off, the default)")
    return value == "1"
