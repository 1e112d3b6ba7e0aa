"""Importing keras_vitmsn changes nothing in the process; setup_tensorflow() is opt-in.

Each check runs in a fresh interpreter under the suite's KERAS_BACKEND, so that what an
earlier test (or this suite's conftest) did to the process cannot hide a change.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF_VARIABLES = ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")

# Everything a library could change at import that reaches its users: environment,
# import machinery, the standard file descriptors, warnings filters, log levels,
# Keras' settings and the backend framework's global switches.
SNAPSHOT = r'''
import importlib
import json
import logging
import os
import pkgutil
import random
import signal
import sys
import warnings


def _name(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}@{id(obj):x}"


def _logger(logger):
    return {
        "level": logger.level,
        "handlers": [f"{_name(h)} level={h.level}" for h in logger.handlers],
        "propagate": logger.propagate,
        "disabled": logger.disabled,
        "filters": [_name(f) for f in logger.filters],
    }


def _framework():
    state = {}
    if "torch" in sys.modules:
        import torch

        state["torch"] = [
            torch.get_num_threads(), torch.get_num_interop_threads(),
            torch.get_float32_matmul_precision(), torch.backends.mkldnn.enabled,
            torch.are_deterministic_algorithms_enabled(), str(torch.get_default_dtype()),
            torch.is_grad_enabled(),
        ]
    if "jax" in sys.modules:
        import jax

        def read(name):  # flags with a context manager are attributes, others are read
            return str(getattr(jax.config, name)) if hasattr(jax.config, name) else str(
                jax.config.read(name))

        state["jax"] = [
            read(name) for name in
            ("jax_enable_x64", "jax_default_matmul_precision", "jax_cpu_enable_async_dispatch",
             "jax_platforms", "jax_disable_jit")
        ]
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        state["tensorflow"] = [
            tf.config.threading.get_inter_op_parallelism_threads(),
            tf.config.threading.get_intra_op_parallelism_threads(),
            str(tf.config.optimizer.get_jit()), tf.config.functions_run_eagerly(),
        ]
    return state


def snapshot():
    import numpy as np

    state = {
        "environ": dict(os.environ),
        "meta_path": [_name(f) for f in sys.meta_path],
        "path_hooks": [repr(h) for h in sys.path_hooks],
        "path": list(sys.path),
        "fds": [[os.fstat(fd).st_dev, os.fstat(fd).st_ino] for fd in (1, 2)],
        "streams": [_name(sys.stdout), _name(sys.stderr)],
        "hooks": [repr(sys.excepthook), repr(sys.displayhook), repr(signal.getsignal(2))],
        "warnings": [repr(f) for f in warnings.filters],
        "root_logger": _logger(logging.root),
        "logging_disable": logging.root.manager.disable,
        "loggers": {
            name: _logger(logger) for name, logger in logging.root.manager.loggerDict.items()
            if isinstance(logger, logging.Logger)
        },
        "random": [hash(random.getstate()), hash(np.random.get_state()[1].tobytes())],
        "numpy": [repr(np.geterr()), repr(np.get_printoptions())],
        "framework": _framework(),
    }
    if "absl.logging" in sys.modules:
        from absl import logging as absl_logging

        state["absl_verbosity"] = absl_logging.get_verbosity()
    if "keras" in sys.modules:
        import keras
        from keras.src.backend.common import global_state

        # The counters behind default layer names: a layer built at import renames the
        # user's (their first Dense becomes "dense_1").
        state["keras_name_uids"] = dict(global_state.get_global_attribute("object_name_uids", {}))
        state["keras"] = [
            keras.config.floatx(), keras.config.epsilon(), keras.config.image_data_format(),
            keras.config.backend(), keras.config.dtype_policy().name,
            keras.config.is_interactive_logging_enabled(),
        ]
    return state


def load_everything():
    """Every module of the package (but the entry point, which runs the CLI) and every
    public name."""
    import keras_vitmsn

    def fail(name):
        raise  # pkgutil calls this inside its except block: re-raise the import error

    modules = []
    for info in pkgutil.walk_packages(keras_vitmsn.__path__, "keras_vitmsn.", onerror=fail):
        if info.name != "keras_vitmsn.__main__":
            importlib.import_module(info.name)
            modules.append(info.name)
    for name in keras_vitmsn.__all__:
        getattr(keras_vitmsn, name)
    return modules
'''


def _run(code, env=None):
    """Run ``code`` after SNAPSHOT in a fresh interpreter; its last stdout line, as JSON."""
    if env is None:
        # Without the two TensorFlow variables: what a user who never set them has (this
        # suite's own process sets them, through setup_tensorflow).
        env = {k: v for k, v in os.environ.items() if k not in TF_VARIABLES}
    script = SNAPSHOT + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_unchanged(before, after):
    # Loggers created by the imports (getLogger(__name__)) are new, not changed.
    loggers = {k: v for k, v in after["loggers"].items() if k in before["loggers"]}
    after = dict(after, loggers=loggers)
    assert before.keys() == after.keys()
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    assert not changed, f"changed: {sorted(changed)}: {_short(changed)}"


def _short(changed):
    """What changed, without the whole environment: differing entries of dicts."""
    out = {}
    for key, (old, new) in changed.items():
        if isinstance(old, dict) and isinstance(new, dict):
            out[key] = {
                k: (old.get(k), new.get(k))
                for k in old.keys() | new.keys()
                if old.get(k) != new.get(k)
            }
        else:
            out[key] = (old, new)
    return out


def test_importing_every_module_changes_nothing_global():
    """keras, the backend's framework and TensorFlow (which every backend loads for
    tf.data) first, as in a user's process; then all of keras_vitmsn.

    The other frameworks are imported first too: loading every module also loads the
    backend seam's module for each framework (and so the framework, with what its own
    import changes).
    """
    got = _run("""
        import keras
        import numpy

        backend = keras.backend.backend()
        importlib.import_module({"jax": "jax", "torch": "torch"}.get(backend, "tensorflow"))
        for framework in ("tensorflow", "jax", "torch"):
            try:
                importlib.import_module(framework)
            except ImportError:
                pass
        before = snapshot()
        modules = load_everything()
        after = snapshot()
        own = {
            name: [logger["level"], logger["handlers"]]
            for name, logger in after["loggers"].items()
            if name.startswith("keras_vitmsn") and (logger["level"] or logger["handlers"])
        }
        print(json.dumps({"before": before, "after": after, "modules": modules, "own": own}))
    """)
    assert {"keras_vitmsn.cli.main", "keras_vitmsn.environment"} <= set(got["modules"])
    assert len(got["modules"]) > 50, got["modules"]
    _assert_unchanged(got["before"], got["after"])
    assert got["own"] == {}, "keras_vitmsn set a level or a handler on its own loggers"


def test_importing_the_package_alone_imports_no_framework():
    """`import keras_vitmsn` leaves keras unimported, so that setup_tensorflow() can still
    act; touching a model then loads it."""
    got = _run("""
        before = snapshot()
        import keras_vitmsn

        after = snapshot()
        loaded = [m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules]
        keras_vitmsn.ViTMSNBackbone
        print(json.dumps({"before": before, "after": after, "loaded": loaded,
                          "keras_after_use": "keras" in sys.modules}))
    """)
    assert got["loaded"] == []
    _assert_unchanged(got["before"], got["after"])
    assert got["keras_after_use"]


def test_public_names_and_subpackages_resolve():
    import keras_vitmsn as kv

    assert set(kv.__all__) <= set(dir(kv))
    for name in kv.__all__:
        assert getattr(kv, name) is not None, name
    assert kv.msn.MSNPretrainer is not None and kv.layers.ViTMSNAttention is not None
    assert kv.utils.keras_home()  # internal modules resolve too
    from keras_vitmsn import ViTMSNBackbone

    assert ViTMSNBackbone is kv.models.ViTMSNBackbone
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        kv.not_a_name
    with pytest.raises(AttributeError):
        kv.__main__  # never runs the command line


@pytest.mark.parametrize(
    "user, expected",
    [
        ({}, {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}),
        # a value the user set wins
        (
            {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "0"},
            {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "0"},
        ),
    ],
)
def test_setup_tensorflow_sets_defaults_a_user_value_wins(user, expected):
    env = {k: v for k, v in os.environ.items() if k not in TF_VARIABLES}
    env.update(user)
    got = _run(
        """
        import keras_vitmsn

        applied = keras_vitmsn.setup_tensorflow()
        finders = [type(f).__name__ for f in sys.meta_path]
        print(json.dumps({"applied": applied, "finders": finders, "loaded": "keras" in sys.modules,
                          "env": {k: os.environ.get(k) for k in %r}}))
    """
        % (TF_VARIABLES,),
        env=env,
    )
    assert got["applied"] is True
    assert got["env"] == expected
    assert "_QuietImportFinder" in got["finders"]
    assert not got["loaded"]


def test_setup_tensorflow_options_off_set_nothing():
    got = _run("""
        import keras_vitmsn

        before = snapshot()
        applied = keras_vitmsn.setup_tensorflow(quiet=False, onednn=False)
        print(json.dumps({"applied": applied, "before": before, "after": snapshot()}))
    """)
    assert got["applied"] is True
    _assert_unchanged(got["before"], got["after"])


def test_setup_tensorflow_after_tensorflow_changes_nothing_and_warns():
    pytest.importorskip("tensorflow")
    got = _run("""
        import tensorflow
        import keras_vitmsn

        before = snapshot()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            applied = keras_vitmsn.setup_tensorflow()
        print(json.dumps({"applied": applied, "before": before, "after": snapshot(),
                          "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
    """)
    assert got["applied"] is False
    _assert_unchanged(got["before"], got["after"])
    assert len(got["warnings"]) == 1
    assert got["warnings"][0].startswith("RuntimeWarning: keras_vitmsn.setup_tensorflow() changed")


@pytest.mark.parametrize("preset,expected", [(None, "True"), ("0", "False")])
def test_setup_tensorflow_turns_onednn_on_unless_set(preset, expected):
    """setup_tensorflow() before keras: TensorFlow starts with its oneDNN kernels."""
    pytest.importorskip("tensorflow")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    if preset is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = preset
    code = (
        "import keras_vitmsn\n"
        "keras_vitmsn.setup_tensorflow()\n"
        "import keras\n"
        "from tensorflow.python.util import _pywrap_util_port as port\n"
        "print(port.IsMklEnabled())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == expected


# What TensorFlow's C++ runtime writes to stderr at import on a CPU machine.
TF_STARTUP_NOISE = (
    "oneDNN custom operations",
    "failed call to cuInit",
    "Could not find cuda drivers",
    "absl::InitializeLog",
)


# Backend-independent (each case is a fresh process): run in one pass of the suite.
@pytest.mark.skipif(keras.backend.backend() != "torch", reason="runs in the torch pass only")
@pytest.mark.parametrize(
    "first,user_level,level",
    [
        ("", None, "3"),  # the default hides all of TensorFlow's C++ lines
        ("", "0", "0"),  # a user's level wins: TensorFlow prints everything
        ("import jax\n", None, "1"),  # JAX's default (INFO hidden) wins when JAX came first
    ],
)
def test_tensorflow_startup_lines_obey_tf_cpp_min_log_level(first, user_level, level):
    """setup_tensorflow() defaults TF_CPP_MIN_LOG_LEVEL to 3 and applies the level to the
    lines TensorFlow logs at import, which absl would otherwise always print."""
    pytest.importorskip("tensorflow")
    if first:
        pytest.importorskip("jax")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    # oneDNN on makes TensorFlow print its banner (INFO) at import: a line to look for.
    env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    if user_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = user_level
    code = first + (
        "import os, keras_vitmsn\n"
        "keras_vitmsn.setup_tensorflow()\n"
        "import tensorflow as tf\n"
        "tf.constant(1.0) + 1.0\n"  # the first op: where a CPU machine fails cuInit
        "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == level
    if level == "0":
        assert "oneDNN custom operations" in out.stderr, out.stderr[-2000:]
    else:
        shown = [line for line in TF_STARTUP_NOISE if line in out.stderr]
        if level == "1":  # errors still show at level 1
            shown = [line for line in shown if line != "failed call to cuInit"]
        assert not shown, out.stderr[-2000:]
