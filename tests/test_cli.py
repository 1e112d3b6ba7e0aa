"""The keras-vitmsn command line end to end, on a tiny preset and image folders made here."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import max_abs_diff
from helpers import to_numpy
from PIL import Image

import keras_vitmsn as kv
from keras_vitmsn.cli import main

SIZE = 32


def write_folder(root, classes=("cat", "dog"), per_class=4, seed=0):
    """Classes told apart by colour, so a few steps can learn them."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (40, 48, 3)).astype("uint8")
            image[..., c % 3] += 180
            Image.fromarray(image).save(root / name / f"{i}.png")
    return str(root)


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    path = tmp_path_factory.mktemp("preset")
    backbone = kv.ViTMSNBackbone(
        image_shape=(SIZE, SIZE, 3),
        patch_size=8,
        hidden_dim=32,
        num_layers=2,
        num_heads=4,
        intermediate_dim=64,
    )
    backbone.save_to_preset(str(path))
    kv.ViTMSNImageConverter(image_size=(SIZE, SIZE)).save_to_preset(str(path))
    return str(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return write_folder(root / "train", per_class=4), write_folder(
        root / "test", per_class=3, seed=1
    )


def test_presets_lists_every_release(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in (
        "vit_msn_small",
        "vit_msn_base",
        "vit_msn_large",
        "vit_msn_base_4",
        "vit_msn_large_7",
    ):
        assert name in out
    assert "hf://facebook/vit-msn-base-4" in out


def test_finetune_then_predict(tmp_path, preset, folders, capsys):
    train, test = folders
    output = str(tmp_path / "model.keras")
    code = main(
        [
            "finetune",
            "--preset",
            preset,
            "--train",
            train,
            "--val",
            test,
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--learning-rate",
            "1e-3",
            "--output",
            output,
        ]
    )
    assert code == 0
    assert os.path.isfile(output)
    import keras

    # The folder names are stored inside the model; no side file.
    assert keras.saving.load_model(output).class_names == ["cat", "dog"]
    assert os.listdir(tmp_path) == ["model.keras"]
    images = [os.path.join(test, "cat", "0.png"), os.path.join(test, "dog", "1.png")]
    capsys.readouterr()
    assert main(["predict", "--model", output, *images, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, path in zip(lines, images):
        name, scores = line.split("\t")
        assert name == path
        assert scores.startswith(("cat: ", "dog: ")) and ", " in scores


def test_finetune_linear_probe_at_another_size(tmp_path, preset, folders):
    train, _ = folders
    output = str(tmp_path / "probe.keras")
    assert (
        main(
            [
                "finetune",
                "--preset",
                preset,
                "--train",
                train,
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--image-size",
                "48",
                "--linear-probe",
                "--output",
                output,
            ]
        )
        == 0
    )
    import keras

    model = keras.saving.load_model(output)
    assert model.backbone.image_shape == (48, 48, 3)
    assert not model.backbone.trainable


def test_lowshot_prints_a_table(preset, folders, capsys):
    train, test = folders
    assert (
        main(
            [
                "lowshot",
                "--preset",
                preset,
                "--train",
                train,
                "--test",
                test,
                "--shots",
                "1,2",
                "--splits",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Low-shot top-1" in out
    table = out[out.index("Low-shot top-1") :].splitlines()
    assert table[1].split()[:2] == ["shots", "splits"]
    rows = [line.split() for line in table[2:] if line.strip()]
    assert [r[0] for r in rows] == ["1/class", "2/class"]
    for row in rows:
        assert 0.0 <= float(row[3]) <= 100.0 and row[4] == "+-"


def test_convert_transformers_checkpoint(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTMSNConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    transformers.ViTMSNModel(config).save_pretrained(tmp_path / "hf")
    out_dir = str(tmp_path / "preset")
    assert main(["convert", "--source", str(tmp_path / "hf"), "--output", out_dir]) == 0
    assert kv.ViTMSNBackbone.from_preset(out_dir).hidden_dim == 32


def expect_user_error(capsys, argv, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert pattern in lines[0], lines[0]


def test_lowshot_paper_preprocessing_loads_centre_crops(preset, folders, capsys, monkeypatch):
    from keras_vitmsn.images.folders import ImageFolder

    modes = []
    load = ImageFolder.load

    def spy(self, size, indices=None, channels=3, resize_mode="hub"):
        modes.append(resize_mode)
        return load(self, size, indices, channels, resize_mode)

    monkeypatch.setattr(ImageFolder, "load", spy)
    train, test = folders
    assert (
        main(
            [
                "lowshot",
                "--preset",
                preset,
                "--train",
                train,
                "--test",
                test,
                "--shots",
                "1",
                "--splits",
                "1",
                "--preprocess",
                "paper",
            ]
        )
        == 0
    )
    assert modes == ["paper", "paper"]
    assert "Low-shot top-1" in capsys.readouterr().out


def test_pretrain_then_lowshot_on_the_result(tmp_path, preset, folders, capsys):
    # MSN pretraining on an unlabelled folder (class sub-folders are ignored), continuing
    # from a preset, then the exported preset goes straight into lowshot.
    train, test = folders
    output = str(tmp_path / "pretrained")
    code = main(
        [
            "pretrain",
            "--data",
            train,
            "--preset",
            preset,
            "--epochs",
            "2",
            "--warmup-epochs",
            "1",
            "--batch-size",
            "4",
            "--focal-size",
            "16",
            "--num-focal-views",
            "2",
            "--num-prototypes",
            "8",
            "--output",
            output,
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "Wrote the pretrained target encoder" in capsys.readouterr().out
    pretrained = kv.ViTMSNBackbone.from_preset(output)
    start = kv.ViTMSNBackbone.from_preset(preset)
    assert pretrained.get_config() == start.get_config()
    moved = max(max_abs_diff(a, b) for a, b in zip(pretrained.weights, start.weights))
    assert moved > 0  # the EMA target followed the trained encoder
    resumed = kv.msn.MSNPretrainer.from_preset(output)
    assert resumed.prototypes.num_prototypes == 8
    # The rest of the msn_vits16 recipe applies: Sinkhorn on, 2048-256 head, mask 0.15.
    assert resumed.use_sinkhorn and resumed.mask_ratio == 0.15
    assert resumed.projection_head.hidden_dim == 2048 and resumed.total_steps == 4
    # Continue that run to 3 epochs: optimizer, schedules and masks where they stopped.
    more = str(tmp_path / "more")
    code = main(
        [
            "pretrain",
            "--data",
            train,
            "--preset",
            output,
            "--restore-optimizer",
            "--epochs",
            "3",
            "--warmup-epochs",
            "1",
            "--batch-size",
            "4",
            "--focal-size",
            "16",
            "--num-focal-views",
            "2",
            "--output",
            more,
        ]
    )
    assert code == 0, capsys.readouterr().err
    continued = kv.msn.MSNPretrainer.from_preset(more, restore_optimizer=True)
    assert int(to_numpy(continued.optimizer.iterations)) == 4 + 2
    assert continued.total_steps == 6
    assert (
        main(
            [
                "lowshot",
                "--preset",
                output,
                "--train",
                train,
                "--test",
                test,
                "--shots",
                "1",
                "--splits",
                "2",
            ]
        )
        == 0
    )
    assert "1/class" in capsys.readouterr().out


def test_pretrain_from_scratch_at_another_size(tmp_path, preset, folders, capsys):
    train, _ = folders
    output = str(tmp_path / "scratch")
    code = main(
        [
            "pretrain",
            "--data",
            train,
            "--preset",
            preset,
            "--from-scratch",
            "--image-size",
            "16",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--batch-size",
            "8",
            "--num-focal-views",
            "0",
            "--num-prototypes",
            "4",
            "--output",
            output,
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert kv.ViTMSNBackbone.from_preset(output).image_shape == (16, 16, 3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "MISSING"], "does not exist or is not a directory"),
        (["--epochs", "0"], "argument --epochs: must be a positive integer; got 0"),
        (["--focal-size", "12"], "--focal-size 12 must be a multiple of the patch size 8"),
        (["--warmup-epochs", "1"], "--warmup-epochs 1 must be below the run's 1 epochs (--epochs)"),
        (["--focal-size", "40"], "--focal-size 40 must be below the global view size 32"),
    ],
)
def test_pretrain_errors(capsys, preset, folders, tmp_path, args, message):
    train, _ = folders
    base = {
        "--data": train,
        "--preset": preset,
        "--output": str(tmp_path / "out"),
        "--num-focal-views": "1",
        "--epochs": "1",
        "--warmup-epochs": "0",
    }
    for key, value in zip(args[::2], args[1::2]):
        base[key] = str(tmp_path / value) if value == "MISSING" else value
    argv = ["pretrain"] + [x for kv_pair in base.items() for x in kv_pair]
    assert main(argv) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("error:") and message in last_line, last_line
    assert not os.path.exists(tmp_path / "out")


def test_pretrain_from_scratch_needs_a_preset(capsys, folders, tmp_path):
    argv = ["pretrain", "--data", folders[0], "--from-scratch", "--output", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--from-scratch takes the architecture of --preset" in capsys.readouterr().err


def test_missing_folder(capsys, preset, tmp_path):
    expect_user_error(
        capsys,
        ["lowshot", "--preset", preset, "--train", str(tmp_path / "nope"), "--test", str(tmp_path)],
        "does not exist",
    )


def test_single_class_folder(capsys, preset, tmp_path):
    root = write_folder(tmp_path / "one", classes=("only",))
    expect_user_error(
        capsys,
        ["finetune", "--preset", preset, "--train", root, "--output", str(tmp_path / "m.keras")],
        "at least 2 are needed",
    )


def test_unreadable_image(capsys, preset, tmp_path):
    root = write_folder(tmp_path / "bad")
    (tmp_path / "bad" / "cat" / "broken.png").write_bytes(b"not a png")
    expect_user_error(
        capsys,
        [
            "finetune",
            "--preset",
            preset,
            "--train",
            root,
            "--epochs",
            "1",
            "--output",
            str(tmp_path / "m.keras"),
        ],
        "broken.png",
    )


def test_unknown_preset(capsys, folders, tmp_path):
    train, _ = folders
    expect_user_error(
        capsys,
        [
            "finetune",
            "--preset",
            "vit_msn_tiny",
            "--train",
            train,
            "--output",
            str(tmp_path / "m.keras"),
        ],
        "vit_msn_small",
    )


def test_too_many_shots(capsys, preset, folders):
    train, test = folders
    expect_user_error(
        capsys,
        ["lowshot", "--preset", preset, "--train", train, "--test", test, "--shots", "1,5"],
        "class 'cat'",
    )


def test_bad_shots_syntax(capsys, preset, folders):
    train, test = folders
    expect_user_error(
        capsys,
        ["lowshot", "--preset", preset, "--train", train, "--test", test, "--shots", "one"],
        "--shots takes",
    )


def test_error_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_vitmsn",
            "lowshot",
            "--preset",
            "x",
            "--train",
            str(tmp_path / "missing"),
            "--test",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: Image folder" in result.stderr


def write_bad_images(root):
    """A PNG of random bytes and a JPEG cut in half, in two class folders."""
    (root / "cat" / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(300))
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3)).astype("uint8")).save(
        root / "dog" / "truncated.jpg", quality=95
    )
    data = (root / "dog" / "truncated.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return [str(root / "cat" / "corrupt.png"), str(root / "dog" / "truncated.jpg")]


@pytest.mark.parametrize("command", ["pretrain", "finetune", "lowshot"])
def test_bad_images_end_in_one_error_naming_them_all(capsys, preset, tmp_path, command):
    root = write_folder(tmp_path / "bad")
    bad = write_bad_images(tmp_path / "bad")
    output = str(tmp_path / "out")
    argv = {
        "pretrain": [
            "--data",
            root,
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--batch-size",
            "4",
            "--num-focal-views",
            "0",
            "--num-prototypes",
            "4",
            "--output",
            output,
        ],
        "finetune": ["--train", root, "--epochs", "1", "--output", output + ".keras"],
        "lowshot": ["--train", root, "--test", root, "--shots", "1", "--splits", "1"],
    }[command]
    assert main([command, "--preset", preset, *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "2 of 10 image file(s)" in lines[0] and all(path in lines[0] for path in bad)
    assert "--skip-bad-images" in lines[0]
    assert not os.path.exists(output) and not os.path.exists(output + ".keras")


def test_pretrain_skip_bad_images(capsys, preset, tmp_path):
    root = write_folder(tmp_path / "bad")
    bad = write_bad_images(tmp_path / "bad")
    output = str(tmp_path / "out")
    with pytest.warns(UserWarning, match="Skipping 2 of 10") as caught:
        code = main(
            [
                "pretrain",
                "--data",
                root,
                "--preset",
                preset,
                "--epochs",
                "1",
                "--warmup-epochs",
                "0",
                "--batch-size",
                "8",
                "--num-focal-views",
                "0",
                "--num-prototypes",
                "4",
                "--skip-bad-images",
                "--output",
                output,
            ]
        )
    assert code == 0, capsys.readouterr().err
    assert "8 images from" in capsys.readouterr().err
    assert any(all(path in str(w.message) for path in bad) for w in caught)
    assert kv.ViTMSNBackbone.from_preset(output).image_shape == (SIZE, SIZE, 3)


def test_no_progress_bar_redraws_when_output_is_not_a_terminal(tmp_path, preset, folders, capsys):
    # Keras' progress bars redraw with backspaces / carriage returns whenever Python
    # runs on POSIX, terminal or not: in a log file they are garbage. capsys is no
    # terminal, as a redirected log is not.
    train, test = folders
    assert (
        main(
            [
                "finetune",
                "--preset",
                preset,
                "--train",
                train,
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--output",
                str(tmp_path / "m.keras"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "lowshot",
                "--preset",
                preset,
                "--train",
                train,
                "--test",
                test,
                "--shots",
                "1",
                "--splits",
                "1",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    for stream in (captured.out, captured.err):
        assert not any(code in stream for code in ("\r", "\b", "\x1b[")), repr(stream[-500:])
    assert " - loss: " in captured.out  # one summary line per epoch
