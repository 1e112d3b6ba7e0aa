"""The package's shape: no import cycle, a top level of public entry points only."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "keras_vitmsn")


def _run_graph(root):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "import_graph.py"), "--root", str(root)],
        capture_output=True,
        text=True,
    )


def test_package_import_graph_has_no_cycle():
    result = _run_graph(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 cycles" in result.stdout


def test_import_graph_finds_a_cycle_hidden_in_a_function(tmp_path):
    package = tmp_path / "keras_vitmsn"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from keras_vitmsn.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from keras_vitmsn import a\n")
    result = _run_graph(tmp_path)
    assert result.returncode == 1
    assert "cycle: keras_vitmsn.a <-> keras_vitmsn.sub.b" in result.stdout


def test_top_level_holds_entry_points_only():
    """Everything else lives in a subpackage named for its role."""
    modules = sorted(n for n in os.listdir(PACKAGE) if n.endswith(".py"))
    assert modules == [
        "__init__.py",
        "__main__.py",
        "environment.py",
        "errors.py",
        "utils.py",
        "version.py",
    ], modules
