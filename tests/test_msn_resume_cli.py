"""``keras-vitmsn pretrain`` killed (SIGKILL) or stopped (SIGINT) and run again
continues from its last checkpoint and ends as an uninterrupted run."""

import os
import re
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

EPOCHS = 12  # long enough to be caught mid-run; each epoch is 3 tiny steps


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(12):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype="uint8")
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return str(folder)


def command(data, output):
    tiny = {
        "--epochs": EPOCHS,
        "--warmup-epochs": 1,
        "--batch-size": 4,
        "--image-size": 32,
        "--focal-size": 16,
        "--num-focal-views": 1,
        "--patch-size": 16,
        "--hidden-dim": 16,
        "--num-layers": 1,
        "--num-heads": 2,
        "--intermediate-dim": 32,
        "--head-hidden-dim": 16,
        "--head-output-dim": 8,
        "--num-prototypes": 8,
    }
    args = [sys.executable, "-m", "keras_vitmsn", "pretrain", "--data", data, "--output", output]
    for flag, value in tiny.items():
        args += [flag, str(value)]
    return args + ["--checkpoint-every-epoch"]


ENV = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _default_sigint():
    # A child inherits an ignored SIGINT (pytest-xdist's workers ignore it) and Python
    # then keeps ignoring it; the command is tested as a terminal starts it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(args):
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=_default_sigint,
    )


def run(args, timeout=600):
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=timeout)


def steps_saved(output):
    root = os.path.join(output, "checkpoints")
    if not os.path.isdir(root):
        return []
    return sorted(int(n[5:]) for n in os.listdir(root) if n.startswith("step-"))


def start_and_wait_for_a_checkpoint_after(args, output, step, timeout=600):
    proc = popen(args)
    deadline = time.monotonic() + timeout
    while not any(s > step for s in steps_saved(output)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def h5_arrays(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return out


def test_pretrain_killed_then_interrupted_then_resumed_equals_an_uninterrupted_run(data, tmp_path):
    reference = str(tmp_path / "reference")
    done = run(command(data, reference))
    assert done.returncode == 0, done.stderr[-3000:]

    output = str(tmp_path / "interrupted")
    args = command(data, output)
    # SIGKILL mid-run: the checkpoints on disk stay complete.
    proc = start_and_wait_for_a_checkpoint_after(args, output, 0)
    proc.kill()
    proc.communicate()
    killed_at = steps_saved(output)[-1]
    assert killed_at < 3 * EPOCHS

    # Run again: it continues from there; Ctrl-C (SIGINT) stops it after the step in
    # flight with a checkpoint and a one-line message, exit status 130.
    proc = start_and_wait_for_a_checkpoint_after(args, output, killed_at)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-3000:]
    assert f"resuming from epoch {killed_at // 3 + 1}, step {killed_at}" in err
    assert "Traceback" not in err
    stopped = re.search(r"stopped at epoch \d+, step (\d+)", err)
    assert stopped, err[-3000:]
    stopped_at = int(stopped.group(1))
    assert steps_saved(output)[-1] == stopped_at < 3 * EPOCHS
    assert "run the same command again to continue" in err

    done = run(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"step {stopped_at}" in done.stderr
    for name in ("model.weights.h5", "msn_head.weights.h5", "msn_training_state.h5"):
        expected = h5_arrays(os.path.join(reference, name))
        got = h5_arrays(os.path.join(output, name))
        assert set(got) == set(expected), name
        for key in expected:
            if np.issubdtype(np.asarray(expected[key]).dtype, np.number):
                np.testing.assert_allclose(got[key], expected[key], atol=1e-5, err_msg=key)
    assert os.path.isfile(os.path.join(output, "metrics.csv"))


def test_finetune_stopped_by_ctrl_c_continues_when_run_again(tmp_path):
    import threading

    import keras_vitmsn as kv
    from keras_vitmsn.cli import main
    from keras_vitmsn.images.folders import write_toy_image_folder

    preset = str(tmp_path / "tiny")
    kv.ViTMSNBackbone(
        image_shape=(32, 32, 3),
        patch_size=16,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
    ).save_to_preset(preset)
    kv.ViTMSNImageConverter(image_size=(32, 32)).save_to_preset(preset)
    train = write_toy_image_folder(str(tmp_path / "train"), per_class=4, size=32)
    output = str(tmp_path / "model.keras")
    backup = output + ".checkpoint"
    argv = ["finetune", "--preset", preset, "--train", train, "--epochs", "30"]
    argv += ["--batch-size", "4", "--output", output]

    def interrupt_after_first_epoch():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if os.path.isfile(os.path.join(backup, "training_metadata.json")):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=interrupt_after_first_epoch)
    watcher.start()
    assert main(argv) == 130
    watcher.join()
    assert not os.path.exists(output)
    with open(os.path.join(backup, "training_metadata.json")) as f:
        done = int(re.search(r'"epoch": (\d+)', f.read()).group(1))
    assert 1 <= done < 30
    assert main(argv) == 0
    assert os.path.isfile(output) and not os.path.exists(backup)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_training_ends_in_one_line_without_a_traceback(data, tmp_path, signum):
    output = str(tmp_path / "out")
    proc = popen(command(data, output))
    # The banner is printed once the output is claimed, before the run is built
    # (seconds of model building and tracing, for a signal sent at once).
    lines = []
    while not lines or not lines[-1].startswith("Keras "):
        line = proc.stderr.readline()
        assert line, "".join(lines) + proc.communicate()[1]
        lines.append(line)
    proc.send_signal(signum)
    _, rest = proc.communicate(timeout=600)
    err = "".join(lines) + rest
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "pretrain: recipe" not in err  # stopped while building, not training
    name = signal.Signals(signum).name
    assert [line for line in rest.splitlines() if line.strip()] == [
        f"{'interrupted' if signum == signal.SIGINT else 'terminated'} ({name}): stopped"
    ]
    assert not steps_saved(output)
