"""Every keras-vitmsn command, walked through its bad inputs: each ends with exit status
2, one ``error:`` line (the last on stderr), no traceback, nothing on stdout, and no
file or folder written, replaced or left behind."""

import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest
from PIL import Image

import keras_vitmsn as kv
from keras_vitmsn.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs of every kind, good and bad, in one folder: ``{name: path}``."""
    root = tmp_path_factory.mktemp("cli_errors")
    backbone = kv.ViTMSNBackbone(
        image_shape=(16, 16, 3),
        patch_size=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
    )
    backbone.save_to_preset(str(root / "preset"))
    kv.ViTMSNImageConverter(image_size=(16, 16)).save_to_preset(str(root / "preset"))
    for name in ("cat", "dog"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((20, 20, 3), 40 * i, "uint8")).save(
                root / "train" / name / f"{i}.png"
            )
    model = kv.ViTMSNClassifier(backbone, num_classes=3)
    model.save(str(root / "three.keras"))
    _rewrite_config(root / "three.keras", root / "two_names.keras", class_names=["cat", "dog"])
    _rewrite_config(
        root / "three.keras",
        root / "newer.keras",
        top=dict(
            class_name="ViTMSNFromTheFuture", registered_name="keras_vitmsn>ViTMSNFromTheFuture"
        ),
    )
    (root / "garbage.pth.tar").write_bytes(np.random.default_rng(0).bytes(2000))
    (root / "corrupt.keras").write_bytes(b"PK\x03\x04" + b"\0" * 300)
    (root / "bert").mkdir()
    (root / "bert" / "config.json").write_text(
        json.dumps({"model_type": "bert", "hidden_size": 16})
    )
    (root / "a_file").write_text("not a folder")
    (root / "folder.keras").mkdir()
    paths = {
        name.replace(".", "_"): str(root / name)
        for name in (
            "preset",
            "train",
            "three.keras",
            "two_names.keras",
            "newer.keras",
            "garbage.pth.tar",
            "corrupt.keras",
            "bert",
            "a_file",
            "folder.keras",
        )
    }
    paths["root"] = str(root)
    paths["image"] = str(root / "train" / "cat" / "0.png")
    paths["unwritable"] = _unwritable_folder(root)
    return paths


def _rewrite_config(source, target, top=(), **changes):
    """Copy the .keras ``source`` to ``target`` with its model config changed by hand."""
    with zipfile.ZipFile(source) as z:
        files = {name: z.read(name) for name in z.namelist()}
    config = json.loads(files["config.json"])
    config.update(top)
    config["config"].update(changes)
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


def _unwritable_folder(root):
    folder = root / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:  # root ignores permissions: use a folder no one can create files in
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return str(folder)
    folder.chmod(0o755)
    folder.rmdir()
    return "/proc"


FINETUNE = [
    "finetune",
    "--preset",
    "{preset}",
    "--train",
    "{train}",
    "--output",
    "{root}/new.keras",
]
CONVERT = ["convert", "--source", "{preset}", "--output", "{root}/converted"]
PREDICT = ["predict", "--model", "{three_keras}", "{image}"]
LOWSHOT = ["lowshot", "--preset", "{preset}", "--train", "{train}", "--test", "{train}"]

# (id, argv, what the error line must say); "{name}" is a path from `world`.
CASES = [
    ("convert-output-is-a-file", CONVERT[:-1] + ["{a_file}"], "exists and is a file"),
    ("convert-output-unwritable", CONVERT[:-1] + ["{unwritable}/sub/out"], "is not writable"),
    ("convert-output-below-a-file", CONVERT[:-1] + ["{a_file}/out"], "is a file, not a folder"),
    (
        "convert-source-missing-path",
        ["convert", "--source", "{root}/missing/path", "--output", "{root}/converted"],
        "No such file or directory",
    ),
    (
        "convert-source-missing-name",
        ["convert", "--source", "no_such_preset", "--output", "{root}/converted"],
        "No file or directory 'no_such_preset'",
    ),
    (
        "convert-source-garbage-pth",
        ["convert", "--source", "{garbage_pth_tar}", "--output", "{root}/converted"],
        "is not a readable torch checkpoint",
    ),
    (
        "convert-source-bert",
        ["convert", "--source", "{bert}", "--output", "{root}/converted"],
        "has model_type 'bert': keras-vitmsn reads transformers checkpoints of ViT-MSN only",
    ),
    (
        "finetune-batch-size-0",
        FINETUNE + ["--batch-size", "0"],
        "--batch-size: must be a positive integer; got 0",
    ),
    (
        "finetune-batch-size-negative",
        FINETUNE + ["--batch-size", "-3"],
        "--batch-size: must be a positive integer; got -3",
    ),
    (
        "finetune-batch-size-not-a-number",
        FINETUNE + ["--batch-size", "many"],
        "--batch-size: must be a positive integer; got 'many'",
    ),
    ("finetune-epochs-0", FINETUNE + ["--epochs", "0"], "--epochs: must be a positive integer"),
    (
        "finetune-epochs-negative",
        FINETUNE + ["--epochs", "-2"],
        "--epochs: must be a positive integer",
    ),
    (
        "finetune-learning-rate-0",
        FINETUNE + ["--learning-rate", "0"],
        "--learning-rate: must be a positive number; got 0",
    ),
    (
        "finetune-learning-rate-negative",
        FINETUNE + ["--learning-rate", "-0.001"],
        "--learning-rate: must be a positive number",
    ),
    (
        "finetune-learning-rate-nan",
        FINETUNE + ["--learning-rate", "nan"],
        "--learning-rate: must be a positive number",
    ),
    (
        "finetune-weight-decay-negative",
        FINETUNE + ["--weight-decay", "-0.1"],
        "--weight-decay: must be a number >= 0",
    ),
    ("finetune-output-is-a-folder", FINETUNE[:-1] + ["{folder_keras}"], "is a folder"),
    ("finetune-output-not-keras", FINETUNE[:-1] + ["{root}/model.h5"], "must end in .keras"),
    ("finetune-output-unwritable", FINETUNE[:-1] + ["{unwritable}/m.keras"], "is not writable"),
    (
        "finetune-output-below-a-file",
        FINETUNE[:-1] + ["{a_file}/m.keras"],
        "is a file, not a folder",
    ),
    ("finetune-output-missing", FINETUNE[:-2], "the following arguments are required: --output"),
    (
        "predict-fewer-names-than-classes",
        ["predict", "--model", "{two_names_keras}", "{image}"],
        "cannot be loaded: `class_names` has 2 names for 3 classes",
    ),
    ("predict-top-k-negative", PREDICT + ["--top-k", "-1"], "--top-k: must be a positive integer"),
    ("predict-top-k-0", PREDICT + ["--top-k", "0"], "--top-k: must be a positive integer"),
    (
        "predict-class-of-another-version",
        ["predict", "--model", "{newer_keras}", "{image}"],
        f"holds keras_vitmsn's ViTMSNFromTheFuture, which this keras-vitmsn "
        f"({kv.__version__}) does not have",
    ),
    (
        "predict-image-is-a-folder",
        ["predict", "--model", "{three_keras}", "{train}"],
        "is a folder; predict takes image files",
    ),
    (
        "predict-image-missing",
        ["predict", "--model", "{three_keras}", "{root}/nope.png"],
        "does not exist",
    ),
    (
        "predict-corrupt-keras",
        ["predict", "--model", "{corrupt_keras}", "{image}"],
        "is not a readable Keras model",
    ),
    (
        "predict-missing-keras",
        ["predict", "--model", "{root}/nope.keras", "{image}"],
        "does not exist",
    ),
    (
        "predict-model-is-a-folder",
        ["predict", "--model", "{folder_keras}", "{image}"],
        "is a folder",
    ),
    (
        "predict-backbone-only-preset",
        ["predict", "--model", "{preset}", "{image}"],
        "no classification head, so it cannot predict classes: fine-tune it first",
    ),
    (
        "demo-epochs-negative",
        ["demo", "--epochs", "-1", "--output", "{root}/demo"],
        "--epochs: must be a positive integer; got -1",
    ),
    (
        "supervised-demo-epochs-0",
        ["supervised-demo", "--epochs", "0", "--output", "{root}/demo.keras"],
        "--epochs: must be a positive integer",
    ),
    ("lowshot-splits-0", LOWSHOT + ["--splits", "0"], "--splits: must be a positive integer"),
    (
        "lowshot-batch-size-0",
        LOWSHOT + ["--batch-size", "0"],
        "--batch-size: must be a positive integer",
    ),
    (
        "pretrain-learning-rate-0",
        [
            "pretrain",
            "--data",
            "{train}",
            "--preset",
            "{preset}",
            "--output",
            "{root}/pretrained",
            "--learning-rate",
            "0",
        ],
        "--learning-rate: must be a positive number",
    ),
    # A pretraining run's output is checked before the run, not after it.
    (
        "pretrain-output-is-a-file",
        ["pretrain", "--data", "{train}", "--preset", "{preset}", "--output", "{a_file}"],
        "pretrain writes a preset FOLDER",
    ),
    (
        "pretrain-output-foreign-folder",
        ["pretrain", "--data", "{train}", "--preset", "{preset}", "--output", "{train}"],
        "is not a keras-vitmsn preset",
    ),
    (
        "pretrain-output-unwritable",
        ["pretrain", "--data", "{train}", "--preset", "{preset}", "--output", "{unwritable}/run"],
        "cannot be written",
    ),
    ("unknown-command", ["train"], "invalid choice: 'train'"),
]


def snapshot(root):
    """Every path under ``root`` with its size and modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            stat = os.lstat(path)
            found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.mark.parametrize("argv, message", [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(world, capsys, argv, message):
    if "{garbage_pth_tar}" in argv:
        pytest.importorskip("torch", reason="reading a .pth.tar needs torch")
    argv = [arg.format(**world) for arg in argv]
    before = snapshot(world["root"])
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err and out == "", (out, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: "), err
    assert sum(line.startswith("error") for line in lines) == 1, err
    assert message in lines[-1], lines[-1]
    assert snapshot(world["root"]) == before, "a file was written, replaced or left behind"


def test_predict_on_a_backbone_does_not_suggest_an_option_the_cli_lacks(world, capsys):
    assert main(["predict", "--model", world["preset"], world["image"]]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "num_classes" not in line and "keras-vitmsn finetune --preset" in line


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"keras-vitmsn {kv.__version__}"


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "keras_vitmsn", *args], capture_output=True, text=True, timeout=300
    )


def test_a_real_process_exits_2_with_the_error_last(world):
    result = _run(*[arg.format(**world) for arg in FINETUNE + ["--batch-size", "0"]])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: argument --batch-size")
    assert result.stdout == ""


def test_version_in_a_real_process():
    result = _run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"keras-vitmsn {kv.__version__}"


def test_version_imports_no_framework():
    """`keras-vitmsn --version` answers without importing keras (it stays fast)."""
    code = (
        "import sys\n"
        "from keras_vitmsn.cli import main\n"
        "sys.argv = ['keras-vitmsn', '--version']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [f"keras-vitmsn {kv.__version__}", "[]"]


def test_an_interrupted_save_keeps_the_previous_model(tmp_path, monkeypatch):
    import keras

    from keras_vitmsn.cli.files import save_model

    backbone = kv.ViTMSNBackbone(
        image_shape=(16, 16, 3),
        patch_size=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
    )
    path = str(tmp_path / "m.keras")
    save_model(kv.ViTMSNClassifier(backbone, 2, class_names=["cat", "dog"]), path)
    assert keras.saving.load_model(path).class_names == ["cat", "dog"]
    assert os.listdir(tmp_path) == ["m.keras"]  # no side file: the names are inside
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    before = snapshot(str(tmp_path))

    model = kv.ViTMSNClassifier(backbone, 3, class_names=["ant", "bee", "cow"])

    def save_half_then_stop(filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"PK half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save", save_half_then_stop)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, path)
    assert snapshot(str(tmp_path)) == before  # the old model (and its names), no temporary file


def test_predict_ignores_a_legacy_class_names_file_and_says_so(world, tmp_path, capsys):
    # Names beside a model could belong to another one; only the model's own count.
    legacy = tmp_path / "old.keras"
    legacy.write_bytes(open(world["three_keras"], "rb").read())
    (tmp_path / "old.keras.classes.json").write_text(json.dumps(["ant", "bee", "cow"]))
    assert main(["predict", "--model", str(legacy), world["image"], "--top-k", "9"]) == 0
    out, err = capsys.readouterr()
    scores = out.strip().split("\t")[1]
    assert sorted(s.split(":")[0] for s in scores.split(", ")) == ["0", "1", "2"]
    assert (
        "holds no class names" in err and "old.keras.classes.json" in err and "is not read" in err
    )


def test_unknown_class_messages(monkeypatch):
    from keras_vitmsn.cli.files import unknown_class_message

    def keras_error(module, name):
        return TypeError(
            f"Could not locate class '{name}'. Make sure custom classes ... Full object "
            f"config: {{'module': '{module}', 'class_name': '{name}', 'config': {{}}}}"
        )

    assert unknown_class_message("m.keras", ValueError("something else")) is None
    newer = unknown_class_message("m.keras", keras_error("keras_vitmsn.models.x", "ViTMSNNew"))
    assert f"this keras-vitmsn ({kv.__version__}) does not have" in newer
    other = unknown_class_message("m.keras", keras_error("my_pkg.models", "MyNet"))
    assert "holds a MyNet from my_pkg.models, not a keras-vitmsn model" in other
    # A script that did not import keras_vitmsn (the CLI always has).
    monkeypatch.delitem(sys.modules, "keras_vitmsn")
    fresh = unknown_class_message(
        "m.keras", keras_error("keras_vitmsn.models.classifier", "ViTMSNClassifier")
    )
    assert "import keras_vitmsn first" in fresh
