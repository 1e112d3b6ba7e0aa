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
    for row in ("| random init |", "| raw pixels |", "| MSN |"):
        assert row in out
    assert "| 1/class | 2/class | 5/class |" in out and "MSN minus raw pixels" in out
    with open(output / "lowshot.json") as f:
        summary = json.load(f)
    assert summary["pool_images"] + summary["test_images"] == 1797
    assert list(summary["top1"]) == ["random init", "raw pixels", "MSN"]
    for name in ("random init", "raw pixels", "MSN"):
        assert sorted(summary["top1"][name]) == ["1/class", "2/class", "5/class"]
        for entry in summary["top1"][name].values():
            assert len(entry["splits"]) == 3 and 0 <= entry["mean"] <= 100
    assert os.path.exists(output / "lowshot.png")
    _check_raw_pixel_row(summary)
    # The exported preset is a normal backbone preset, equal to the EMA target encoder.
    from keras_vitmsn.demos.msn_digits import DEMO_CONFIG

    backbone = kv.ViTMSNBackbone.from_preset(str(output / "preset"))
    assert backbone.image_shape == (DEMO_CONFIG["global_size"],) * 2 + (3,)


def _check_raw_pixel_row(summary):
    """The raw-pixel row is kv.lowshot.evaluate (the splits, centring, L2 norm and
    regression of the encoders' rows) on the flattened images the encoders see."""
    from keras_vitmsn.demos.msn_digits import load_digits_images
    from keras_vitmsn.demos.msn_digits import split_pool_test

    size = summary["config"]["global_size"]
    images, labels = load_digits_images(size)
    pool, test = split_pool_test(labels, seed=0)
    converter = kv.ViTMSNImageConverter(image_size=(size, size))
    pool_x, test_x = (
        keras.ops.convert_to_numpy(converter(images[idx])).reshape(len(idx), -1)
        for idx in (pool, test)
    )
    for seed in (0, 1):
        expected = kv.lowshot.evaluate(pool_x, labels[pool], test_x, labels[test], seed=seed)
        same = all(
            np.allclose(
                summary["top1"]["raw pixels"][r.label]["splits"],
                [100 * a for a in r.accuracies],
                atol=1e-6,
            )
            for r in expected.values()
        )
        # The demo's seed (0) gives its splits; another seed draws other labelled images.
        assert same == (seed == 0), seed


def test_comparison_table_has_one_row_per_method_and_the_margin():
    from keras_vitmsn.demos.msn_digits import format_comparison
    from keras_vitmsn.lowshot import ShotResult

    results = {
        name: {1: ShotResult(1, (a, a), (10, 10)), 5: ShotResult(5, (b, b), (50, 50))}
        for name, a, b in (("random init", 0.1, 0.2), ("raw pixels", 0.5, 0.8), ("MSN", 0.6, 0.7))
    }
    lines = format_comparison(results).splitlines()
    assert lines[0] == "| top-1 (%), mean +- std over splits | 1/class | 5/class |"
    assert lines[2:5] == [
        "| random init | 10.0 +- 0.0 | 20.0 +- 0.0 |",
        "| raw pixels | 50.0 +- 0.0 | 80.0 +- 0.0 |",
        "| MSN | 60.0 +- 0.0 | 70.0 +- 0.0 |",
    ]
    assert lines[5] == "MSN minus raw pixels (points): +10.0 at 1/class, -10.0 at 5/class"


def test_digits_split_is_stratified_and_disjoint():
    pytest.importorskip("sklearn")
    from keras_vitmsn.demos.msn_digits import load_digits_images
    from keras_vitmsn.demos.msn_digits import split_pool_test

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
        [sys.executable, "-m", "keras_vitmsn", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    assert "demo" in result.stdout
