"""`pretrain`'s architecture, head and warm-up flags, and every command's numeric flags
range-checked, with errors that name the flags (through the real command)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import keras_vitmsn as kv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHITECTURE = [
    "--image-size", "32", "--hidden-dim", "16", "--num-layers", "1", "--num-heads", "2",
    "--intermediate-dim", "32",
]  # fmt: skip
HEAD = ["--head-hidden-dim", "16", "--head-output-dim", "8", "--num-prototypes", "4"]


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "keras_vitmsn", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def error_line(result):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1, result.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    for name in ("cat", "dog"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(2):
            pixels = np.random.default_rng(i).integers(0, 256, (36, 36, 3)).astype("uint8")
            Image.fromarray(pixels).save(root / "train" / name / f"{i}.png")
    backbone = kv.ViTMSNBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
    )
    backbone.save_to_preset(str(root / "preset"))
    # A pretrain output: its MSN head (the file's content is not read before the check).
    backbone.save_to_preset(str(root / "with_head"))
    (root / "with_head" / "msn_head.weights.h5").write_bytes(b"a head")
    return {name: str(root / name) for name in ("train", "preset", "with_head")} | {
        "root": str(root)
    }


def test_a_small_model_from_a_builtin_preset_offline(world, tmp_path):
    """`--preset NAME --from-scratch` takes the table's architecture (no download), the
    architecture and head flags change it, and `--epochs 1` runs with the recipe's share
    of warm-up and a note, not an error about `warmup_epochs`."""
    out = str(tmp_path / "small")
    offline = {"HF_HUB_OFFLINE": "1", "KERAS_HOME": str(tmp_path / "keras_home")}
    result = run_cli(
        "pretrain", "--data", world["train"], "--preset", "vit_msn_small", "--from-scratch",
        "--epochs", "1", "--batch-size", "4", "--focal-size", "16", "--num-focal-views", "1",
        *ARCHITECTURE, *HEAD, "--output", out, env=offline,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warming up for the same share, 0.0187 epochs (--warmup-epochs sets it)" in (
        result.stderr
    )
    assert "warmup_epochs" not in result.stderr
    backbone = kv.ViTMSNBackbone.from_preset(out)
    assert backbone.patch_size == 16 and backbone.hidden_dim == 16  # table's patch, flag's width
    pretrainer = kv.msn.MSNPretrainer.from_preset(out)
    assert pretrainer.projection_head.hidden_dim == 16
    assert pretrainer.prototypes.num_prototypes == 4
    size = sum(os.path.getsize(os.path.join(out, name)) for name in os.listdir(out))
    assert size < 1_000_000, size  # not the recipe's 2048-2048-256 head (~60 MB)
    # Nothing fetched or cached (HF_HUB_OFFLINE=1 would also fail a download).
    cached = [name for _, _, names in os.walk(tmp_path / "keras_home") for name in names]
    assert not [name for name in cached if name.endswith((".h5", ".safetensors", ".bin"))]


# (id, argv after the command, what the error line must say)
BAD = [
    ("me-max-weight", ["--me-max-weight", "-1"], "argument --me-max-weight: must be a number >= 0"),
    ("mask-ratio", ["--mask-ratio", "1"], "argument --mask-ratio: must be a number in [0, 1)"),
    ("warmup", ["--warmup-epochs", "-1"], "argument --warmup-epochs: must be a number >= 0"),
    ("views", ["--num-focal-views", "-2"], "argument --num-focal-views: must be an integer >= 0"),
    ("ipe-scale", ["--ipe-scale", "0.5"], "argument --ipe-scale: must be a number >= 1"),
    ("seed", ["--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295]"),
    ("head", ["--head-hidden-dim", "0"], "argument --head-hidden-dim: must be a positive integer"),
    ("heads", ["--num-heads", "0"], "argument --num-heads: must be a positive integer"),
]


@pytest.mark.parametrize("argv, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_pretrain_numeric_flags_are_range_checked(world, argv, message):
    # A short run, should a check be missing.
    short = ["--epochs", "1", "--batch-size", "4", "--num-focal-views", "0", "--image-size", "32"]
    out = ["--output", world["root"] + "/o"]
    line = error_line(run_cli("pretrain", "--data", world["train"], *short, *out, *argv))
    assert message in line, line
    assert not os.path.exists(world["root"] + "/o")


OTHERS = [
    ("demo-seed", ["demo", "--seed", "-3"], "argument --seed: must be an integer"),
    ("finetune-seed", ["finetune", "--preset", "p", "--train", "t", "--output", "m.keras",
                       "--seed", "2.5"], "argument --seed: must be an integer"),
    ("lowshot-seed", ["lowshot", "--preset", "p", "--train", "t", "--test", "t", "--seed",
                      "-1"], "argument --seed: must be an integer"),
    ("lowshot-shots", ["lowshot", "--preset", "{preset}", "--train", "{train}", "--test",
                       "{train}", "--shots", "0"], "--shots takes images per class >= 1"),
    ("lowshot-fraction", ["lowshot", "--preset", "{preset}", "--train", "{train}", "--test",
                          "{train}", "--shots", "1.5"], "label fractions in (0, 1]; got 1.5"),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", [o[1:] for o in OTHERS], ids=[o[0] for o in OTHERS])
def test_other_commands_range_check_their_flags(world, argv, message):
    line = error_line(run_cli(*[arg.format(**world) for arg in argv]))
    assert message in line, line


CROSS = [
    # the report's case: focal views larger than the 32-px global views
    ("focal-above-global", ["--focal-size", "64"], "--focal-size 64 must be below --image-size 32"),
    ("warmup-too-long", ["--warmup-epochs", "1"], "--warmup-epochs 1 must be below"),
    ("heads-divide", ["--num-heads", "3"], "--hidden-dim 16 must be a multiple of --num-heads 3"),
    ("patch-grid", ["--patch-size", "5"], "--image-size 32 must be a multiple of --patch-size 5"),
    ("architecture-with-preset", ["--preset", "{preset}"],
     "--hidden-dim, --num-layers, --num-heads, --intermediate-dim set the architecture"),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", [c[1:] for c in CROSS], ids=[c[0] for c in CROSS])
def test_pretrain_cross_checks_name_the_flags(world, argv, message):
    argv = [arg.format(**world) for arg in argv]
    base = ["pretrain", "--data", world["train"], "--epochs", "1", *ARCHITECTURE]
    line = error_line(run_cli(*base, *argv, "--output", world["root"] + "/o"))
    assert message in line, line
    assert "_" not in line.replace(world["root"], ""), line  # no Python argument names
    assert not os.path.exists(world["root"] + "/o")


def test_head_flags_with_a_preset_that_holds_a_head_are_refused(world):
    # The run would continue the preset's head: the flags would be silently ignored.
    line = error_line(
        run_cli(
            "pretrain",
            "--data",
            world["train"],
            "--preset",
            world["with_head"],
            "--head-output-dim",
            "8",
            "--num-prototypes",
            "4",
            "--output",
            world["root"] + "/o",
        )  # fmt: skip
    )
    assert (
        f"--head-output-dim, --num-prototypes size a new MSN head; --preset "
        f"{world['with_head']} holds one" in line
    ), line


def test_finetune_image_size_off_the_patch_grid_names_the_flag(world, tmp_path):
    line = error_line(
        run_cli(
            "finetune",
            "--preset",
            world["preset"],
            "--train",
            world["train"],
            "--epochs",
            "1",
            "--image-size",
            "20",
            "--output",
            str(tmp_path / "m.keras"),
        )  # fmt: skip
    )
    assert f"--image-size 20 must be a multiple of the patch size 8 of {world['preset']}" in line
    assert "_" not in line.replace(world["preset"], ""), line
    assert os.listdir(tmp_path) == []
