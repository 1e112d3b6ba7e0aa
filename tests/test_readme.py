"""Every Python snippet of README.md runs as written, offline, on tiny stand-ins.

Each built-in preset's hf:// cache entry is pre-filled with a tiny backbone of the
same image size and patch size (what a download would have cached), ``my_images/``
holds a few PNGs, and each snippet runs in its own process (they set backends and
distributions). The only edits are listed in ``SUBSTITUTIONS``: run lengths.
"""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_vitmsn as kv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSTITUTIONS = {"epochs=100, batch_size=64": "epochs=1, warmup_epochs=0, batch_size=4"}


def python_snippets():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", text, flags=re.S | re.M)
    snippets = []
    for indent, body in blocks:
        lines = [line[len(indent):] for line in body.splitlines()]
        snippets.append("\n".join(lines) + "\n")
    return snippets


SNIPPETS = python_snippets()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from PIL import Image

    from keras_vitmsn.conversion.hub import cache_dir_for

    root = tmp_path_factory.mktemp("readme")
    home = root / "keras_home"
    for name, info in kv.presets.list_presets().items():
        arch = info["architecture"]
        backbone = kv.ViTMSNBackbone(
            image_shape=tuple(arch["image_shape"]), patch_size=arch["patch_size"],
            hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
        )
        entry = cache_dir_for(info["hf_handle"][len("hf://"):]).replace(
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


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, workspace):
    code = SNIPPETS[index]
    for old, new in SUBSTITUTIONS.items():
        code = code.replace(old, new)
    env = dict(
        os.environ,
        KERAS_HOME=str(workspace / "keras_home"),
        HF_HUB_OFFLINE="1",
        KERAS_BACKEND=keras.backend.backend(),
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=workspace, env=env, capture_output=True, text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"snippet {index}:\n{code}\n{result.stderr[-4000:]}"
