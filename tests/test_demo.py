"""The README's first command, `keras-vitmsn demo` (MSN pretraining then low-shot on
digits), end to end in a reduced setting; and the supervised demo."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_vitmsn as kv
from keras_vitmsn.cli import main


def test_msn_demo_end_to_end_reduced(tmp_path, capsys):
    pytest.importorskip("sklearn")
    output = tmp_path / "msn_demo"
    assert main(["demo", "--epochs", "1", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "| 5/class |" in out and "random init top-1 (%)" in out and "MSN top-1 (%)" in out
    with open(output / "lowshot.json") as f:
        summary = json.load(f)
    assert summary["pool_images"] + summary["test_images"] == 1797
    for name in ("random init", "MSN"):
        assert sorted(summary["top1"][name]) == ["1/class", "2/class", "5/class"]
        for entry in summary["top1"][name].values():
            assert len(entry["splits"]) == 3 and 0 <= entry["mean"] <= 100
    assert os.path.exists(output / "lowshot.png")
    # The exported preset is a normal backbone preset, equal to the EMA target encoder.
    from keras_vitmsn.demos.msn_digits import DEMO_CONFIG

    backbone = kv.ViTMSNBackbone.from_preset(str(output / "preset"))
    assert backbone.image_shape == (DEMO_CONFIG["global_size"],) * 2 + (3,)


def test_digits_split_is_stratified_and_disjoint():
    pytest.importorskip("sklearn")
    from keras_vitmsn.demos.msn_digits import load_digits_images, split_pool_test

    images, labels = load_digits_images(16)
    assert images.shape == (1797, 16, 16, 3) and images.dtype == np.uint8
    pool, test = split_pool_test(labels)
    assert not set(pool) & set(test) and len(pool) + len(test) == 1797
    for c in range(10):
        share = np.mean(labels[test] == c) / np.mean(labels == c)
        assert 0.9 < share < 1.1


def test_supervised_demo_learns_and_saves(tmp_path):
    output = tmp_path / "demo.keras"
    assert main(["supervised-demo", "--epochs", "6", "--output", str(output)]) == 0
    loaded = keras.saving.load_model(output)
    from keras_vitmsn.demos.supervised import quadrant_dataset

    x, y = quadrant_dataset(256, seed=1)
    accuracy = (loaded.predict(x, verbose=0).argmax(-1) == y).mean()
    assert accuracy > 0.6, accuracy


def test_module_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "keras_vitmsn", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "demo" in result.stdout
