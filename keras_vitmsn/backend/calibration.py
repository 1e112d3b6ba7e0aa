"""Choices between kernels that compute the same thing, decided by timing them on the
machine at hand and remembered per machine and library versions.

Which of two equivalent kernels is faster depends on the CPU generation, not on its
vendor: torch's oneDNN GEMM beats its MKL ``addmm`` by 2.3x on an AMD Zen 5 and loses
by 24% on a Zen 3. So a choice is measured once, on first use, with the kernels
interleaved and each one's fastest run compared (the minimum is what other load on the
machine disturbs least), and the winner is written to a small JSON file keyed by
everything that could change the answer: the CPU model and its vector extensions, the
library versions and the thread count. Later processes read the answer back.

The file is ``$KERAS_HOME/keras_vitmsn/calibration.json`` (``~/.keras`` when
``KERAS_HOME`` is unset); set ``KERAS_VITMSN_CALIBRATION`` to another path to move it,
or to ``off`` to measure in every process without reading or writing a file. Deleting
the file measures again. Each choice also has its own environment variable that skips
the measurement (see the module that makes the choice, e.g.
:mod:`keras_vitmsn.backend.torch_gemm`).
"""

import json
import os
import platform
import threading
import time

from keras_vitmsn.utils import keras_home
from keras_vitmsn.utils import write_json

LOCATION = "KERAS_VITMSN_CALIBRATION"
FORMAT = "keras_vitmsn.calibration/1"
# The vector extensions that decide which kernels are fast; the full flag list would
# also change with microcode and virtualisation details that do not matter.
_ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)
_lock = threading.Lock()


def cache_path():
    """The calibration file, or None when ``KERAS_VITMSN_CALIBRATION=off``.

    Example:
    >>> path = cache_path()
    >>> path is None or path.endswith(".json")
    True
    """
    value = os.environ.get(LOCATION, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return os.path.abspath(os.path.expanduser(value))
    return os.path.join(keras_home(), "keras_vitmsn", "calibration.json")


def cpu_description(cpuinfo="/proc/cpuinfo"):
    """``"<model name> [<vector extensions>]"`` of this CPU, e.g. ``"AMD EPYC 9R14
    [avx2 avx512f fma]"``; ``platform.processor()`` (or the machine type) where
    ``cpuinfo`` cannot be read.

    Example:
    >>> isinstance(cpu_description(), str) and len(cpu_description()) > 0
    True
    """
    model, flags = "", set()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key == "CPU part" and not model:  # ARM: no model name
                    model = f"arm part {value.strip()}"
                if model and flags:
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown cpu"
    return f"{model} [{' '.join(sorted(flags.intersection(_ISA_FLAGS)))}]"


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}  # missing or damaged: measured again and rewritten
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    choices = data.get("choices")
    return choices if isinstance(choices, dict) else {}


def _write(path, choices):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json({"format": FORMAT, "choices": choices}, path)
    except OSError:
        # A read-only home only costs the next process the same short measurement.
        pass


_memory = {}


def decide(name, key, candidates, measure):
    """The candidate to use for ``name`` on this machine: read from the calibration
    file under ``key``, else ``measure()`` and remembered.

    Args:
        name: what is being chosen, e.g. ``"torch_cpu_gemm"``.
        key: a string naming everything the answer depends on besides the CPU (library
            versions, thread count); :func:`cpu_description` is added to it.
        candidates: the answers allowed; a remembered answer outside them (written by
            another version) is measured again.
        measure: a function of no arguments returning one of ``candidates``.

    Example:
    >>> import os
    >>> os.environ["KERAS_VITMSN_CALIBRATION"] = "off"
    >>> decide("example", "v1", ("a", "b"), lambda: "b")
    'b'
    >>> del os.environ["KERAS_VITMSN_CALIBRATION"]
    """
    entry = f"{name} | {cpu_description()} | {key}"
    with _lock:
        if entry in _memory:
            return _memory[entry]
        path = cache_path()
        choices = _read(path) if path else {}
        remembered = choices.get(entry)
        if isinstance(remembered, dict) and remembered.get("choice") in candidates:
            _memory[entry] = remembered["choice"]
            return _memory[entry]
        choice = measure()
        if choice not in candidates:
            raise ValueError(f"calibration of {name} returned {choice!r}, not one of {candidates}")
        _memory[entry] = choice
        if path:
            choices = _read(path)  # another process may have added entries meanwhile
            choices[entry] = {"choice": choice, "measured": time.strftime("%Y-%m-%d")}
            _write(path, choices)
        return choice


def fastest(kernels, repeats=7, margin=0.05):
    """Time the ``{name: function}`` kernels interleaved, ``repeats`` runs each after
    one warm-up run, and return the name of the fastest by its best run; the first
    name is kept unless another is faster by more than ``margin`` (a fraction), so a
    near tie keeps the default.

    Example:
    >>> fastest({"slow": lambda: time.sleep(0.002), "fast": lambda: None}, repeats=3)
    'fast'
    """
    names = list(kernels)
    best = dict.fromkeys(names, float("inf"))
    for name in names:
        kernels[name]()
    for _ in range(repeats):
        for name in names:
            start = time.perf_counter()
            kernels[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    default = names[0]
    winner = min(names, key=best.get)
    return winner if best[winner] < best[default] * (1 - margin) else default


def clear_memory():
    """Forget the choices made in this process (tests; the file is left as it is)."""
    with _lock:
        _memory.clear()
