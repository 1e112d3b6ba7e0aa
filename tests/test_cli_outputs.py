"""What the command line writes: outputs that hold training state are replaced only with
--overwrite, one output is written by one run at a time (OUTPUT.lock), files and folders
follow the user's umask, and the help and README say what the parser does."""

import json
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import keras_vitmsn as kv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    image_shape=(16, 16, 3), patch_size=8, hidden_dim=16, num_layers=1, num_heads=2,
    intermediate_dim=32,
)  # fmt: skip
# A from-scratch pretraining run of a few seconds.
PRETRAIN = [
    "pretrain", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4",
    "--image-size", "16", "--patch-size", "8", "--hidden-dim", "16", "--num-layers", "1",
    "--num-heads", "2", "--intermediate-dim", "32", "--head-hidden-dim", "16",
    "--head-output-dim", "8", "--num-prototypes", "4", "--num-focal-views", "0",
]  # fmt: skip


def run_cli(*args, umask=0o022, env=None):
    return subprocess.run(
        [sys.executable, "-m", "keras_vitmsn", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        preexec_fn=lambda: os.umask(umask),
    )


def popen_cli(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "keras_vitmsn", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=lambda: os.umask(0o022),
    )


def error_line(result):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1, result.stderr
    assert lines[-1].startswith("error: "), result.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("source") / "preset")
    kv.ViTMSNBackbone(**TINY).save_to_preset(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for i in range(4):
        pixels = np.random.default_rng(i).integers(0, 256, (20, 20, 3)).astype("uint8")
        Image.fromarray(pixels).save(root / f"{i}.png")
    return str(root)


def preset_with_training_state(path, source):
    """A preset folder as `pretrain` leaves it (the state file's content is not read)."""
    kv.ViTMSNBackbone.from_preset(source).save_to_preset(path)
    with open(os.path.join(path, "msn_training_state.h5"), "wb") as f:
        f.write(b"a run to continue")


def snapshot(folder):
    return {
        name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
    }


def test_convert_replaces_a_preset_with_training_state_only_with_overwrite(tmp_path, source):
    out = str(tmp_path / "run")
    preset_with_training_state(out, source)
    before = snapshot(out)
    line = error_line(run_cli("convert", "--source", source, "--output", out))
    assert out in line and "--overwrite" in line and "msn_training_state.h5" in line, line
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no lock, no temporary folder left
    result = run_cli("convert", "--source", source, "--output", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert "msn_training_state.h5" not in os.listdir(out)
    # A preset without training state is replaced as before.
    assert run_cli("convert", "--source", source, "--output", out).returncode == 0


def test_pretrain_refuses_an_existing_preset_without_overwrite(tmp_path, source, images):
    out = str(tmp_path / "run")
    kv.ViTMSNBackbone.from_preset(source).save_to_preset(out)
    before = snapshot(out)
    line = error_line(run_cli(*PRETRAIN, "--data", images, "--output", out))
    assert f"--output {out} already holds a preset" in line and "--overwrite" in line, line
    assert snapshot(out) == before


def test_two_concurrent_pretrains_into_one_folder_one_is_refused(tmp_path, images):
    out = str(tmp_path / "run")
    runs = [popen_cli(*PRETRAIN, "--data", images, "--output", out) for _ in range(2)]
    results = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err for _, _, err in results]
    _, _, err = next(r for r in results if r[0] == 2)
    last = err.strip().splitlines()[-1]
    # Refused by the lock while the other runs, or by the preset it has written.
    assert re.search(r"is in use by process \d+ \(pretrain|already holds a preset", last), last
    assert sorted(os.listdir(tmp_path)) == ["run"]
    # Every file and folder of the output follows the umask (022 here), the temporary
    # folders' 0700 and the JSON files' 0600 included: files 0666 & ~umask, folders
    # (the checkpoints' among them) 0777 & ~umask.
    modes = {}
    for root, folders, files in os.walk(out):
        for name in folders + files:
            path = os.path.join(root, name)
            modes[os.path.relpath(path, out)] = stat.S_IMODE(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
    assert "msn_training_state.h5" in modes and "checkpoints" in modes
    wrong = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o755 if os.path.isdir(os.path.join(out, name)) else 0o644)
    }
    assert not wrong, wrong


def test_an_output_locked_by_a_live_process_is_refused(tmp_path, source):
    from keras_vitmsn.cli.files import output_lock

    out = str(tmp_path / "new" / "preset")
    with output_lock(out, "pretrain"):
        holder = json.load(open(out + ".lock"))
        assert holder["pid"] == os.getpid() and holder["command"] == "pretrain"
        assert {"hostname", "started"} <= set(holder)
        line = error_line(run_cli("convert", "--source", source, "--output", out))
        assert f"--output {out} is in use by process {os.getpid()} (pretrain" in line, line
        assert os.listdir(tmp_path / "new") == ["preset.lock"]
    assert not os.path.exists(tmp_path / "new")  # the folder the lock needed is gone too


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, source):
    out = str(tmp_path / "preset")
    code = "import os; print(os.getpid())"
    pid = int(subprocess.run([sys.executable, "-c", code], capture_output=True).stdout)
    with open(out + ".lock", "w") as f:
        json.dump({"pid": pid, "hostname": os.uname().nodename, "command": "convert"}, f)
    result = run_cli("convert", "--source", source, "--output", out)
    assert result.returncode == 0, result.stderr
    assert f"note: taking over the stale lock {out}.lock of process {pid}" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["preset"]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, ValueError])
def test_the_lock_is_removed_on_an_error_or_ctrl_c(tmp_path, interrupt):
    from keras_vitmsn.cli.args import UsageError
    from keras_vitmsn.cli.files import output_lock

    out = str(tmp_path / "a" / "b" / "out.keras")
    with pytest.raises(interrupt):
        with output_lock(out, "finetune"):
            assert os.path.exists(out + ".lock")
            raise interrupt()
    assert os.listdir(tmp_path) == []
    with output_lock(out, "finetune"):
        with pytest.raises(UsageError, match=f"is in use by process {os.getpid()}"):
            with output_lock(out, "finetune"):
                pass


def test_a_written_preset_follows_the_umask(tmp_path, source):
    out = str(tmp_path / "converted")
    result = run_cli("convert", "--source", source, "--output", out, umask=0o002)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o775
    for name in os.listdir(out):
        assert stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) == 0o664, name


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_mixed_precision_help_says_it_is_off_by_default(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "(default mixed_bfloat16)" not in text
    assert "default: off, float32; the flag alone means mixed_bfloat16" in text


def _readme_synopsis():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Command line", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = {}
    for line in block.replace("\\\n", " ").splitlines():
        words = line.split()
        commands[words[1]] = " ".join(words[2:])
    return commands


def _parser_options():
    from keras_vitmsn.cli.main import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "pretrain" in a.choices)
    return {
        name: {
            flag: action
            for action in sub._actions
            for flag in action.option_strings
            if flag not in ("-h", "--help")
        }
        for name, sub in subparsers.choices.items()
    }


def test_readme_synopsis_matches_the_parser():
    """Every command and flag of the parser is in the README's synopsis and nothing else;
    a value shown as `[--flag VALUE]` (not a placeholder like N) is the parser's default."""
    synopsis = _readme_synopsis()
    options = _parser_options()
    assert sorted(synopsis) == sorted(options)
    for command, text in synopsis.items():
        shown = set(re.findall(r"(--[a-z][a-z-]*)", text))
        assert shown == set(options[command]), (command, shown ^ set(options[command]))
        for flag, value in re.findall(r"\[(--[a-z-]+) ([^\]\s|]+)\]", text):
            if value.isupper() or value.startswith("["):
                continue  # a placeholder: no default claimed
            default = options[command][flag].default
            try:
                same = float(value) == float(default)
            except (TypeError, ValueError):
                same = value == str(default)
            assert same, f"README shows {command} [{flag} {value}]; the default is {default!r}"
