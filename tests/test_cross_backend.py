"""Models saved on any backend load and predict on every other (the 3x3 matrix).

One test covers all nine pairs in subprocesses (a process cannot switch backends),
so it runs once, from the JAX suite, and is skipped in the other two.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

BACKENDS = ("jax", "torch", "tensorflow")

SAVE = """
import sys, numpy as np, keras, keras_vitmsn as kv
folder = sys.argv[1]
keras.utils.set_random_seed(0)
backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8, hidden_dim=32,
                             num_layers=2, num_heads=4, intermediate_dim=64)
clf = kv.ViTMSNClassifier(backbone, num_classes=3,
                          preprocessor=kv.ViTMSNImageConverter(image_size=(32, 32)))
images = np.load(folder + "/images.npy")
clf.fit(images, np.array([0, 1, 2]), epochs=1, verbose=0)  # compiled, trained, saved
out = np.asarray(clf.predict(images, verbose=0))
np.save(folder + "/out_" + keras.backend.backend() + ".npy", out)
clf.save(folder + "/" + keras.backend.backend() + ".keras")
"""

LOAD = """
import sys, numpy as np, keras, keras_vitmsn as kv
folder = sys.argv[1]
images = np.load(folder + "/images.npy")
for saved in ("jax", "torch", "tensorflow"):
    model = keras.saving.load_model(folder + "/" + saved + ".keras")
    out = np.asarray(model.predict(images, verbose=0))
    diff = float(np.max(np.abs(out - np.load(folder + "/out_" + saved + ".npy"))))
    print(saved, keras.backend.backend(), diff, model.jit_compile)
"""


def _run(script, backend, folder):
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", script, folder], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, f"{backend}:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="covers all three backends in subprocesses; runs once, from the JAX suite",
)
def test_save_on_each_backend_load_and_predict_on_each(tmp_path):
    # Odd-sized uint8 images: the converter resizes inside the model on every load.
    images = np.random.default_rng(0).integers(0, 256, (3, 37, 45, 3)).astype("uint8")
    np.save(tmp_path / "images.npy", images)
    for backend in BACKENDS:
        _run(SAVE, backend, str(tmp_path))
    rows = []
    for backend in BACKENDS:
        rows += [line.split() for line in _run(LOAD, backend, str(tmp_path)).splitlines() if line]
    assert len(rows) == 9, rows
    for saved, loaded, diff, jit in rows:
        assert float(diff) <= 1e-5, (saved, loaded, diff)
        # The loading backend decides (torch: no torch.compile; TF on CPU: no XLA).
        if loaded in ("torch", "tensorflow"):
            assert jit == "False", (saved, loaded, jit)
