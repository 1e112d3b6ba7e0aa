"""Let JAX on CPU reuse each step's scratch memory instead of page-faulting it afresh.

XLA:CPU gives every execution of a compiled step one temporary buffer for its
intermediates (about 1 GB for a vit_msn_small training step at batch 8). By default
JAX dispatches CPU work asynchronously and the buffer is allocated on one of XLA's
worker threads; glibc serves a request that large with a fresh ``mmap`` and unmaps it
on free, so every step touches ~1 GB of new pages: ~290,000 page faults and ~0.7 s of
kernel time per step, a quarter of the step, measured on the 2-core machine this
project runs on (benchmarks/README.md).

:func:`enable` makes two process-wide choices that together remove them:

1. ``jax_cpu_enable_async_dispatch = False``: CPU computations run on the calling
   thread (XLA still uses its thread pool inside each computation), so the buffer
   comes from the main thread's heap. This is a choice made when JAX creates its CPU
   client, i.e. before the first JAX computation in the process.
2. glibc's ``mallopt``: no ``mmap`` for large blocks (``M_MMAP_MAX = 0``) and freed
   heap memory never handed back to the system (``M_TRIM_THRESHOLD = -1``), so the
   next step's buffer is the pages of the last one. A finite threshold is not enough:
   mallopt takes a C int, and an MSN step at vits16 settings has 2.7 GB of scratch,
   more than 2**31 - 1 bytes, so glibc trimmed it after every step and the next one
   faulted 660,000 pages in again (6.3 s per step against 4.3 s without trimming).

Neither alone helps (measured: 2.16 and 2.23 s per step against 2.17 s); together the
step takes 1.45-1.75 s with no page faults and the same peak memory. The costs: a JAX
call on CPU returns once its result is computed, so Python no longer prepares the
next step while this one runs, and the process keeps its peak heap until it exits
(freed memory is reused by the process, not returned to the system). Small models
lose: ``keras-vitmsn demo`` (a tiny ViT fed by ``tf.data``, 37 ms steps, no faults to
save) ran 1.17x slower with it, so nothing turns it on by default. Only Linux with
glibc's allocator can apply it; elsewhere nothing changes and the result says why. A
program opts in::

    import keras_vitmsn
    from keras_vitmsn.backend import jax_cpu_memory

    print(jax_cpu_memory.enable())  # before building any model

and the ``keras-vitmsn`` command line does when ``KERAS_VITMSN_JAX_CPU_MEMORY=1``.

JAX's own check of whether its backends exist is private
(``jax._src.xla_bridge.backends_are_initialized``); where it is gone, :func:`enable`
cannot tell a late call from an early one and applies the settings regardless (a late
call then changes only glibc's settings), saying so in its result.
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
    """Apply both settings (see the module docstring). Call it before the process
    runs its first JAX computation, i.e. before building or loading a model.

    Returns:
        A :class:`Result`, true when both settings apply. On a Keras backend other
        than JAX, or without glibc's allocator, it changes nothing and says why.

    Raises:
        RuntimeError: JAX's CPU client already exists, so JAX would ignore the
            dispatch setting (nothing is changed).

    Example (in a fresh process, on JAX)::

        import keras_vitmsn
        from keras_vitmsn.backend import jax_cpu_memory

        assert jax_cpu_memory.enable()
    """
    import keras

    if keras.backend.backend() != "jax":
        return Result(False, False, f"the Keras backend is {keras.backend.backend()}, not jax")
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
    note = "" if exists is False else "JAX's private check for an existing CPU client is gone: not verified"
    return Result(True, True, note)


SWITCH = "KERAS_VITMSN_JAX_CPU_MEMORY"


def enable_for_command_line():
    """The command line's choice: :func:`enable` when ``KERAS_VITMSN_JAX_CPU_MEMORY=1``.

    Returns:
        The :class:`Result`, or None when the variable is unset or ``0``.

    Raises:
        ValueError: the variable holds anything else.
    """
    value = os.environ.get(SWITCH, "0")
    if value not in ("0", "1"):
        raise ValueError(f"{SWITCH}={value!r}: use 1 (on) or 0 (off, the default)")
    return enable() if value == "1" else None
