"""Every Python snippet of README.md and docs/*.md runs as written, offline, on tiny stand-ins.

Each built-in preset's hf:// cache entry is pre-filled with a tiny backbone of the
same image size and patch size (what a download would have cached), ``my_images/``
holds a few PNGs, and each snippet runs in its own process (they set backends and
distributions). The only edits are listed in ``SUBSTITUTIONS``: run lengths.

A snippet that cannot run offline (it needs the network or credentials) is preceded by
an HTML comment ``<!-- not run: REASON -->`` on the line just before its fence; it is
reported as skipped with that reason.
"""

import glob
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_vitmsn as kv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md"] + sorted(
    os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md"))
)
SUBSTITUTIONS = {"epochs=100, batch_size=64": "epochs=1, warmup_epochs=0, batch_size=4"}
FENCE = re.compile(
    r"^(?:<!-- not run: (?P<reason>[^\n]*?) -->\n)?"
    r"(?P<indent> *)```python\n(?P<body>.*?)^(?P=indent)```",
    flags=re.S | re.M,
)


def python_snippets(text):
    """(code, reason-not-run or None) for each ```python block, indentation removed."""
    snippets = []
    for match in FENCE.finditer(text):
        indent = len(match["indent"])
        lines = [line[indent:] for line in match["body"].splitlines()]
        snippets.append(("\n".join(lines) + "\n", match["reason"]))
    return snippets


def collect():
    params = []
    for document in DOCUMENTS:
        text = open(os.path.join(ROOT, document), encoding="utf-8").read()
        snippets = python_snippets(text)
        # Every fence is found: a block the pattern missed would silently go untested.
        assert len(snippets) == len(re.findall(r"^ *```python$", text, flags=re.M)), document
        for index, (code, reason) in enumerate(snippets):
            marks = [pytest.mark.skip(reason=f"not run: {reason}")] if reason else []
            params.append(pytest.param(code, id=f"{document}:{index}", marks=marks))
    return params


SNIPPETS = collect()


def run_snippet(code, workspace):
    for old, new in SUBSTITUTIONS.items():
        code = code.replace(old, new)
    env = dict(
        os.environ,
        KERAS_HOME=str(workspace / "keras_home"),
        HF_HUB_OFFLINE="1",
        KERAS_BACKEND=keras.backend.backend(),
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from PIL import Image

    from keras_vitmsn.conversion.hub import cache_dir_for

    root = tmp_path_factory.mktemp("readme")
    home = root / "keras_home"
    for name, info in kv.presets.list_presets().items():
        arch = info["architecture"]
        backbone = kv.ViTMSNBackbone(
            image_shape=tuple(arch["image_shape"]),
            patch_size=arch["patch_size"],
            hidden_dim=16,
            num_layers=1,
            num_heads=2,
            intermediate_dim=32,
        )
        entry = cache_dir_for(info["hf_handle"][len("hf://") :]).replace(
            kv.utils.keras_home(), str(home)
        )
        backbone.save_to_preset(entry)
        kv.ViTMSNImageConverter(image_size=tuple(arch["image_shape"][:2])).save_to_preset(entry)
    images = root / "my_images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3)).astype("uint8")).save(images / f"{i}.png")
    return root


def test_documents_have_python_snippets():
    ids = [param.id for param in SNIPPETS]
    assert sum(i.startswith("README.md:") for i in ids) >= 3
    assert {"docs/deploy.md", "docs/msn.md", "docs/performance.md", "docs/presets.md"} <= {
        i.split(":")[0] for i in ids
    }
    # Snippets marked not to run stay the exception.
    assert sum(bool(param.marks) for param in SNIPPETS) <= 3


def test_marker_and_failure_detection(tmp_path):
    text = (
        "```python\nprint(1)\n```\n\n<!-- not run: needs hub -->\n```python\nimport x\n```\n"
        "- item\n\n  ```python\n  assert False, 'broken'\n  ```\n"
    )
    snippets = python_snippets(text)
    assert snippets == [
        ("print(1)\n", None),
        ("import x\n", "needs hub"),
        ("assert False, 'broken'\n", None),
    ]
    # A broken snippet fails its run: the runner reports a non-zero exit status.
    (tmp_path / "keras_home").mkdir()
    assert run_snippet(snippets[2][0], tmp_path).returncode != 0
    assert run_snippet(snippets[0][0], tmp_path).returncode == 0


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code, workspace):
    result = run_snippet(code, workspace)
    assert result.returncode == 0, f"{code}\n{result.stderr[-4000:]}"
