"""Only ``keras_vitmsn/backend/`` asks which Keras backend runs: everywhere else calls
the seam's operations, so no module outside it compares the backend's name."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "keras_vitmsn")
SEAM = os.path.join(PACKAGE, "backend")


def _is_backend_name(node):
    """``keras.backend.backend()``, ``backend.backend()``, ``keras.config.backend()``
    or the seam's ``backend.NAME``."""
    if isinstance(node, ast.Attribute) and node.attr == "NAME":
        return isinstance(node.value, ast.Name) and node.value.id == "backend"
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    if node.func.attr != "backend":
        return False
    owner = node.func.value
    if isinstance(owner, ast.Name):
        return owner.id in ("backend", "config")
    return isinstance(owner, ast.Attribute) and owner.attr in ("backend", "config")


def backend_comparisons(source, filename="<string>"):
    """Line numbers of comparisons with the backend's name in ``source``."""
    lines = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Compare):
            if any(_is_backend_name(n) for n in [node.left, *node.comparators]):
                lines.append(node.lineno)
    return lines


def test_the_check_finds_comparisons():
    source = (
        "import keras\n"
        "from keras_vitmsn import backend\n"
        "a = keras.backend.backend() == 'jax'\n"
        "b = 'torch' != backend.backend()\n"
        "c = keras.config.backend() in ('jax',)\n"
        "d = backend.NAME == 'tensorflow'\n"
        "print(keras.backend.backend())\n"
        "e = {'backend': keras.backend.backend()}\n"
    )
    assert backend_comparisons(source) == [3, 4, 5, 6]


def test_no_backend_comparison_outside_the_seam():
    found = []
    for folder, _, files in os.walk(PACKAGE):
        if os.path.commonpath([folder, SEAM]) == SEAM:
            continue
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    lines = backend_comparisons(f.read(), path)
                found += [f"{os.path.relpath(path, ROOT)}:{line}" for line in lines]
    assert not found, "compare through keras_vitmsn.backend instead: " + ", ".join(found)
