"""The notebooks run end to end on a tiny local preset and a generated image folder.

Each notebook's ``parameters`` cell is replaced (papermill's convention) so that it uses
the backend under test, skips the pip install, and reads the tiny preset.
"""

import os

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
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="notebooks execute in the JAX pass only"
)

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


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


@pytest.mark.parametrize(
    "name", ["01_quickstart.ipynb", "02_finetune_tfdata.ipynb", "03_low_shot.ipynb"]
)
def test_notebook_runs(tmp_path, tiny_preset, name):
    images = write_toy_image_folder(tmp_path / "images", num_classes=3, per_class=12, size=48)
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "each notebook needs exactly one 'parameters' cell"
    params[0].source = (
        f"PRESET = {tiny_preset!r}\nBACKEND = {keras.backend.backend()!r}\n"
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
