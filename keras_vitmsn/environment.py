"""Make ``TF_CPP_MIN_LOG_LEVEL`` apply to TensorFlow's import-time log lines too.

TensorFlow (which every backend loads for ``tf.data`` and the MSN augmentation) logs
through absl. What it logs while its shared libraries load, before absl is initialised,
goes to stderr whatever ``TF_CPP_MIN_LOG_LEVEL`` says (abseil/abseil-cpp#1718): the
oneDNN banner and "Could not find cuda drivers" (INFO), each after absl's "All log
messages before absl::InitializeLog() ..." preamble, twice (two libraries). Later lines
("failed call to cuInit", an ERROR at the first op on a CPU machine) do obey the level.

:func:`install` puts a one-shot import hook on ``sys.meta_path``: when ``tensorflow`` is
first imported, by anyone, its import runs with file descriptor 2 redirected to a
temporary file; afterwards everything captured is written back to stderr except the
absl lines below the level in force then (0: all pass; 1: INFO and the preamble are
dropped; 2: also WARNING; 3: also ERROR). FATAL lines, Python warnings and tracebacks
always pass.

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

# absl's prefix: severity, MMDD, time (hh:mm:ss.micro; "00:00:<epoch seconds>" before
# absl's clock is set up), thread id, file:line].
_ABSL_LINE = re.compile(rb"^([IWE])\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2}
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"


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
        kept = [line for line in self._capture.read().splitlines(keepends=True)
                if not _is_hidden(line, self.level)]
        self._capture.close()
        data = b"".join(kept)
        while data:
            data = data[os.write(2, data):]
        return False


def install(module="tensorflow"):
    """Filter the log lines of ``module``'s first import (no-op once it is loaded).

    Returns True when the hook was installed.
    """
    if module in sys.modules:
        return False
    try:
        os.fstat(2)
    except OSError:  # no stderr file descriptor: nothing reaches a terminal anyway
        return False
    if not any(isinstance(f, _QuietImportFinder) and f.name == module for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder(module))
    return True
