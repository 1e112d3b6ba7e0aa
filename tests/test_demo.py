"""The README's first command: `keras-vitmsn demo` runs end to end and learns."""

import subprocess
import sys

import keras

from keras_vitmsn.cli import main


def test_demo_learns_and_saves(tmp_path):
    output = tmp_path / "demo.keras"
    assert main(["demo", "--epochs", "6", "--output", str(output)]) == 0
    loaded = keras.saving.load_model(output)
    from keras_vitmsn.demo import quadrant_dataset

    x, y = quadrant_dataset(256, seed=1)
    accuracy = (loaded.predict(x, verbose=0).argmax(-1) == y).mean()
    assert accuracy > 0.6, accuracy


def test_module_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "keras_vitmsn", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "demo" in result.stdout
