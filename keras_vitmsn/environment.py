"""TensorFlow's process-wide settings, applied only when asked: :func:`setup_tensorflow`.

Importing keras_vitmsn changes nothing in the process. TensorFlow (which every backend
loads for ``tf.data`` and the MSN augmentation) reads two environment variables once,
at its first import, and this package's users usually want both:

- ``TF_ENABLE_ONEDNN_OPTS=1``: TensorFlow turns its oneDNN kernels on by default only on
  some x86 CPUs; elsewhere (an AVX2-only AMD EPYC, say) MatMul runs on Eigen, and
  vit_msn_small trains and infers 1.4x slower.
- ``TF_CPP_MIN_LOG_LEVEL=3``: hides the C++ lines no user can act on (the oneDNN banner
  and "Could not find cuda drivers" at import, "failed call to cuInit" at the first op
  on a CPU machine); real failures still raise Python exceptions.

What TensorFlow logs while its shared libraries load, before absl is initialised, goes
to stderr whatever ``TF_CPP_MIN_LOG_LEVEL`` says (abseil/abseil-cpp#1718), each time
after absl's "All log messages before absl::InitializeLog() ..." preamble. So
:func:`setup_tensorflow` also puts a one-shot finder on ``sys.meta_path``: TensorFlow's
first import, by anyone, runs with file descriptor 2 redirected to a temporary file;
afterwards everything captured is written back to stderr except the absl lines below
the level in force then (0: all pass; 1: INFO and the preamble are dropped; 2: also
WARNING; 3: also ERROR). FATAL lines, Python warnings and tracebacks always pass.

Example:
>>> _is_hidden(b"I0000 00:00:1795995325.565805    5911 cudart_stub.cc:31] Could not", 1)
True
>>> _is_hidden(b"E0000 00:00:1795995329.549319    5911 cuda_platform.cc:52] failed", 2)
False
>>> _is_hidden(b"UserWarning: something a user should see", 3)
False
"""

import importlib.abc
import os
import re
import sys
import tempfile
import warnings

# absl's prefix: severity, MMDD, time (hh:mm:ss.micro; "00:00:<epoch seconds>" before
# absl's clock is set up), thread id, file:line].
_ABSL_LINE = re.compile(rb"^([IWE])\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2}
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"


def setup_tensorflow(quiet=True, onednn=True):
    """Set TensorFlow up for this process: oneDNN kernels on, start-up log lines hidden.

    The one explicit call that configures anything: importing keras_vitmsn does not.
    Call it first thing, before ``import keras`` (with the TensorFlow backend keras
    imports TensorFlow, which reads these settings only at its first import). It
    imports neither keras nor TensorFlow. The ``keras-vitmsn`` command line calls it
    for its own process.

    A value already in the environment wins over the defaults set here (e.g.
    ``TF_CPP_MIN_LOG_LEVEL=0`` to see every line while debugging, or JAX's default of 1,
    which it sets when imported).

    Args:
        quiet: default ``TF_CPP_MIN_LOG_LEVEL`` to 3, and apply the level in force to
            the lines TensorFlow's first import writes to stderr.
        onednn: default ``TF_ENABLE_ONEDNN_OPTS`` to 1 (oneDNN kernels on every x86
            CPU). JAX and PyTorch ignore it.

    Returns:
        True when the settings will apply. False when TensorFlow is already imported:
        then nothing is changed, and a ``RuntimeWarning`` says so.

    Example (the first lines of a script):
    >>> import keras_vitmsn
    >>> keras_vitmsn.setup_tensorflow()  # doctest: +SKIP
    True
    >>> import keras  # TensorFlow starts quietly, with oneDNN on
    """
    if "tensorflow" in sys.modules:
        warnings.warn(
            "keras_vitmsn.setup_tensorflow() changed nothing: TensorFlow is already "
            "imported and reads its settings only at its first import. Call it before "
            "importing keras (or anything that imports TensorFlow).",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    if onednn:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        _filter_first_import("tensorflow")
    return True


def _min_log_level():
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:  # TensorFlow, too, treats anything else as 0
        return 0


def _is_hidden(line, level):
    match = _ABSL_LINE.match(line)
    if match:
        return _SEVERITY[match.group(1)] < level
    return level >= 1 and line.startswith(_ABSL_PREAMBLE)


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` through the other finders and wraps its loader, once."""

    def __init__(self, name):
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        # Stays installed until the import itself runs (_QuietLoader removes it):
        # availability checks (importlib.util.find_spec("tensorflow"), as some
        # libraries do at import) also come through here without loading anything.
        for finder in sys.meta_path:
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(spec.loader, self)
                return spec
        return None


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader, finder):
        self._loader = loader
        self._finder = finder

    def __getattr__(self, name):  # get_filename, is_package, get_resource_reader, ...
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        if self._finder in sys.meta_path:  # one-shot: the real import is happening
            sys.meta_path.remove(self._finder)
        # The real loader from the start: tensorflow's code may look at its own loader.
        module.__loader__ = module.__spec__.loader = self._loader
        level = _min_log_level()
        if level <= 0:
            self._loader.exec_module(module)
            return
        with _filtered_stderr(level):
            self._loader.exec_module(module)


class _filtered_stderr:
    """Redirects fd 2 to a temporary file; on exit writes back the lines not hidden."""

    def __init__(self, level):
        self.level = level

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._capture = tempfile.TemporaryFile()
        os.dup2(self._capture.fileno(), 2)
        return self

    def __exit__(self, *exc):
        try:
            sys.stderr.flush()
        finally:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        self._capture.seek(0)
        kept = [
            line
            for line in self._capture.read().splitlines(keepends=True)
            if not _is_hidden(line, self.level)
        ]
        self._capture.close()
        data = b"".join(kept)
        while data:
            data = data[os.write(2, data) :]
        return False


def _filter_first_import(module):
    """Filter the log lines of ``module``'s first import (no-op once it is loaded)."""
    if module in sys.modules:
        return
    try:
        os.fstat(2)
    except OSError:  # no stderr file descriptor: nothing reaches a terminal anyway
        return
    if not any(isinstance(f, _QuietImportFinder) and f.name == module for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder(module))
