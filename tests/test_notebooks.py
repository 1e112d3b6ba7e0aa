"""The notebooks run end to end on a tiny preset and a generated image folder.

Each notebook's ``parameters`` cell is replaced (papermill's convention) so that it uses
the backend under test, skips the pip install, and reads the tiny preset: as the
kaggle:// handle of a model attached to the notebook (served by kagglehub from a local
cache, offline) in the quickstart and the low-shot notebook, and as the non-Kaggle
fallback (``HF_PRESET``, here a local folder) in the fine-tuning one.
"""

import os
import shutil
import sys

import keras
import pytest

import keras_vitmsn as kv
from keras_vitmsn.images.folders import write_toy_image_folder

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

# Executing a notebook starts a kernel and imports every backend it touches (~40 s
# each), so they run in the JAX pass of the suite only. Their other-backend paths are
# covered elsewhere: the quickstart's "switch backend" cell itself runs torch and
# tensorflow in subprocesses (asserted below), and tests/test_fit_workflows.py fits on
# tf.data under every backend.
jax_pass_only = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="notebooks execute in the JAX pass only"
)

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NAMES = ["01_quickstart.ipynb", "02_finetune_tfdata.ipynb", "03_low_shot.ipynb"]
KAGGLE_HANDLE = "kaggle://ci/vit-msn/keras/tiny/1"


def test_notebooks_are_what_the_builder_writes():
    """The committed .ipynb files are build_notebooks.py's output (rebuild after edits),
    and each takes its model the Kaggle way first."""
    sys.path.insert(0, NOTEBOOKS)
    try:
        import build_notebooks
    finally:
        sys.path.remove(NOTEBOOKS)
    built = dict(
        zip(NAMES, [build_notebooks.QUICKSTART, build_notebooks.FINETUNE, build_notebooks.LOWSHOT])
    )
    for name, nb in built.items():
        with open(os.path.join(NOTEBOOKS, name), encoding="utf-8") as f:
            assert f.read() == nbformat.writes(nb) + "\n", f"{name} is stale: rebuild it"
        source = "".join(c.source for c in nb.cells)
        assert 'KAGGLE_PRESET = ""' in source and "PRESET = KAGGLE_PRESET or HF_PRESET" in source


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("preset"))
    kv.ViTMSNBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        hidden_dim=32,
        num_layers=2,
        num_heads=4,
        intermediate_dim=64,
    ).save_to_preset(path)
    kv.ViTMSNImageConverter(image_size=(32, 32)).save_to_preset(path)
    return path


@jax_pass_only
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(tmp_path, tiny_preset, name, monkeypatch):
    pytest.importorskip("kagglehub")
    images = write_toy_image_folder(tmp_path / "images", num_classes=3, per_class=12, size=48)
    # The tiny preset, attached as a Kaggle model would be: in kagglehub's cache (the
    # kernel and its subprocesses inherit KAGGLEHUB_CACHE), so it loads offline.
    cache = tmp_path / "kagglehub"
    base = cache / "models" / "ci" / "vit-msn" / "keras" / "tiny"
    shutil.copytree(tiny_preset, base / "1")
    (base / "1.complete").touch()
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    # The kernel imports this working tree's package, wherever (or whether) it is installed.
    root = os.path.dirname(NOTEBOOKS)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    kaggle_preset = "" if name.startswith("02") else KAGGLE_HANDLE
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "each notebook needs exactly one 'parameters' cell"
    params[0].source = (
        f"KAGGLE_PRESET = {kaggle_preset!r}\nHF_PRESET = {tiny_preset!r}\n"
        f"BACKEND = {keras.backend.backend()!r}\n"
        f"IMAGE_DIR = {images!r}\nINSTALL = False\n"
    )
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert f"backend {keras.backend.backend()}" in text
    assert f"preset: {kaggle_preset or tiny_preset}" in text
    if name.startswith("01"):
        for other in ("torch", "tensorflow"):
            assert f"{other}: max abs difference of CLS features" in text, text
        diffs = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if "max abs difference" in line
        ]
        assert max(diffs) < 1e-4, diffs
    figures = [f for f in os.listdir(tmp_path) if f.endswith(".png")]
    assert figures, "the notebook should save its plot"
