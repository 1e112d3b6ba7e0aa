"""MSN runs keep checkpoints in their output folder and continue from them exactly."""

import csv
import os
import signal
import stat

import keras
import numpy as np
import pytest
from helpers import to_numpy

from keras_vitmsn.msn import checkpoints as ckpt
from keras_vitmsn.msn.training import build_msn_training

IMAGES = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype="uint8")
TINY = dict(
    epochs=3,
    warmup_epochs=1,
    batch_size=4,
    global_size=32,
    focal_size=16,
    num_focal_views=1,
    patch_size=8,
    hidden_dim=16,
    num_layers=1,
    num_heads=2,
    intermediate_dim=32,
    head_hidden_dim=16,
    head_output_dim=8,
    num_prototypes=6,
)


def build(checkpoint_dir=None, data=IMAGES, **kwargs):
    keras.utils.set_random_seed(0)
    return build_msn_training(
        data,
        seed=0,
        checkpoint_dir=checkpoint_dir,
        max_checkpoint_overhead=None,  # every epoch, however short
        **{**TINY, **kwargs},
    )


def weights(pretrainer):
    # Paths without the model's own (uniquified) name.
    return {v.path.split("/", 1)[-1]: to_numpy(v) for v in pretrainer.weights}


class SignalAtStep(keras.callbacks.Callback):
    def __init__(self, step, signum):
        super().__init__()
        self.step, self.signum = step, signum

    def on_train_batch_end(self, batch, logs=None):
        if int(to_numpy(self.model.optimizer.iterations)) == self.step:
            os.kill(os.getpid(), self.signum)


def test_a_run_stopped_mid_epoch_and_resumed_ends_as_an_uninterrupted_one(tmp_path):
    reference = build()
    reference.fit(verbose=0)
    uninterrupted = weights(reference.pretrainer)

    out = str(tmp_path / "run")
    run = build(out, keep_checkpoints=2)
    assert run.resumed_from is None
    # SIGTERM during epoch 2 of 3: the step finishes, a checkpoint is written.
    with pytest.raises(ckpt.TrainingInterrupted) as info:
        run.fit(verbose=0, callbacks=[SignalAtStep(5, signal.SIGTERM)], handle_signals=True)
    assert info.value.exit_status == 143 and info.value.step == 5
    assert info.value.checkpoint.endswith("step-000000005")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back
    root = os.path.join(out, "checkpoints")
    assert sorted(os.listdir(root)) == ["step-000000003", "step-000000005"]

    resumed = build(out, keep_checkpoints=2)
    assert {k: resumed.resumed_from[k] for k in ("epoch", "step")} == {"epoch": 1, "step": 5}
    resumed.fit(verbose=0)
    assert resumed.step == 9
    result = weights(resumed.pretrainer)
    assert set(result) == set(uninterrupted)
    worst = max(float(np.abs(result[k] - uninterrupted[k]).max()) for k in result)
    assert worst <= 1e-5, worst
    assert sorted(os.listdir(root)) == ["step-000000006", "step-000000009"]  # the newest 2

    # The logs: one row per epoch (the interrupted one in two), the curves plotted.
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["step"]) for r in rows] == [
        ("1", "3"),
        ("2", "5"),
        ("2", "6"),
        ("3", "9"),
    ]
    for key in ("ce", "me_max", "prototype_perplexity", "learning_rate", "images_per_second"):
        assert all(np.isfinite(float(r[key])) for r in rows), key
    assert os.path.getsize(os.path.join(out, "msn_curves.png")) > 1000

    # Settings that contradict the checkpoint stop before any model is built.
    with pytest.raises(ValueError, match=r"batch_size=3 \(checkpoint: 4\)"):
        build(out, batch_size=3)
    with pytest.raises(ValueError, match=r"hidden_dim=32 \(checkpoint: 16\)"):
        build(out, hidden_dim=32)
    with pytest.raises(ValueError, match=r"num_images=8 \(checkpoint: 12\)"):
        build(out, data=IMAGES[:8])
    # restart=True starts over.
    fresh = build(out, batch_size=3, restart=True)
    assert fresh.resumed_from is None and fresh.step == 0
    assert not os.path.exists(root)


class FakePretrainer:
    def __init__(self, fail=False):
        self.fail = fail

    def save_to_preset(self, path):
        os.makedirs(path)
        with open(os.path.join(path, "config.json"), "w") as f:
            f.write("{}")
        if self.fail:
            raise KeyboardInterrupt  # interrupted while writing


def test_checkpoints_are_complete_or_absent_and_the_newest_are_kept(tmp_path):
    checkpoints = ckpt.RunCheckpoints(str(tmp_path), keep=2)
    for step in (3, 6, 9):
        checkpoints.save(FakePretrainer(), {"step": step, "epoch": step // 3})
    root = os.path.join(str(tmp_path), "checkpoints")
    assert sorted(os.listdir(root)) == ["step-000000006", "step-000000009"]
    # Modes of a plain mkdir / open (not mkdtemp's private 0700).
    umask = os.umask(0o022)
    os.umask(umask)
    newest = os.path.join(root, "step-000000009")
    assert stat.S_IMODE(os.stat(newest).st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(os.stat(os.path.join(newest, "run.json")).st_mode) == 0o666 & ~umask
    # Interrupted while writing: nothing of it is left, the previous ones intact.
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(FakePretrainer(fail=True), {"step": 12, "epoch": 4})
    assert sorted(os.listdir(root)) == ["step-000000006", "step-000000009"]
    # What a kill while writing leaves: a temporary folder, never resumed from (nor
    # a folder without its run.json); removed at the next start.
    os.makedirs(os.path.join(root, ".tmp-killed", "preset"))
    os.makedirs(os.path.join(root, "step-000000012", "preset"))
    latest, run = checkpoints.latest()
    assert latest.endswith("step-000000009") and run["epoch"] == 3
    checkpoints.remove_leftovers()
    assert not os.path.exists(os.path.join(root, ".tmp-killed"))


class WeightsAtEpochBegin(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.weights = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.weights = weights(self.model)
            self.weights["step"] = to_numpy(self.model.optimizer.iterations)
            for i, v in enumerate(self.model.optimizer.variables):
                self.weights[f"optimizer/{i}"] = to_numpy(v)


def test_a_classifier_fit_stopped_continues_from_its_last_epoch_backup(tmp_path):
    # keras-vitmsn finetune's loop: Keras' BackupAndRestore at epoch ends, with the
    # reshuffles of the epochs done replayed; a signal stops it after the step in
    # flight and the epoch it cut short is redone.
    import keras_vitmsn as kv
    from keras_vitmsn.images.folders import ImageFolder
    from keras_vitmsn.images.folders import write_toy_image_folder

    folder = ImageFolder(write_toy_image_folder(str(tmp_path / "toy"), per_class=4, size=32))
    backup = str(tmp_path / "backup")

    def fit(callbacks, run=None, directory=backup):
        keras.utils.set_random_seed(0)
        backbone = kv.ViTMSNBackbone(
            image_shape=(32, 32, 3),
            patch_size=16,
            hidden_dim=16,
            num_layers=1,
            num_heads=2,
            intermediate_dim=32,
        )
        model = kv.ViTMSNClassifier(
            backbone, num_classes=3, preprocessor=kv.ViTMSNImageConverter(image_size=(32, 32))
        )
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        data = folder.as_dataset((32, 32), batch_size=4, shuffle=True, seed=0)
        history, start = ckpt.resumable_fit(
            model,
            data,
            directory,
            run or {"train": "toy", "batch_size": 4},
            epochs=3,
            verbose=0,
            callbacks=callbacks,
            handle_signals=True,
        )
        return history, start, model

    seen = WeightsAtEpochBegin(1)
    with pytest.raises(ckpt.TrainingInterrupted) as info:
        fit([seen, SignalAtStep(5, signal.SIGINT)])  # 3 steps per epoch: in epoch 2
    assert info.value.exit_status == 130 and info.value.epoch == 1
    with pytest.raises(ValueError, match=r"batch_size=8 \(backup: 4\)"):
        fit([], {"train": "toy", "batch_size": 8})
    resumed = WeightsAtEpochBegin(1)
    history, start, model = fit([resumed])
    assert start == 1 and len(history.history["loss"]) == 2
    assert set(resumed.weights) == set(seen.weights)
    for key, value in seen.weights.items():
        np.testing.assert_array_equal(resumed.weights[key], value, err_msg=key)
    # The epochs after the resume see the batches, in the order, of a run never
    # stopped: it ends with the same weights.
    _, _, whole = fit([], directory=str(tmp_path / "whole"))
    for a, b in zip(model.weights, whole.weights, strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-5, rtol=0, err_msg=a.path)


def test_a_second_signal_stops_at_once(monkeypatch):
    class Exited(Exception):
        pass

    def exit_now(status):
        raise Exited(status)

    monkeypatch.setattr(ckpt.os, "_exit", exit_now)
    # What was there before (pytest-xdist workers ignore SIGINT) comes back after.
    before = signal.getsignal(signal.SIGINT)
    stopper = ckpt.StopOnSignal()
    assert stopper.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the first: noted, training goes on
        assert stopper.signum == signal.SIGINT
        with pytest.raises(Exited, match="130"):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stopper.uninstall()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_signal_while_a_batch_is_read_stops_cleanly_and_keeps_the_model_usable():
    # The signal lands while Keras fetches a batch (as Ctrl-C does while images are
    # decoded): on JAX, touching the model from the handler there left every variable
    # deleted after fit.
    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.reads = 0

        def __len__(self):
            return 3

        def __getitem__(self, index):
            self.reads += 1
            if self.reads == 5:
                os.kill(os.getpid(), signal.SIGINT)
            rng = np.random.default_rng(index)
            return rng.random((4, 3), dtype="float32"), rng.random((4, 1), dtype="float32")

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    stopper = ckpt.StopOnSignal()
    assert stopper.install()
    try:
        model.fit(Batches(), epochs=5, callbacks=[stopper], shuffle=False, verbose=0)
    finally:
        stopper.uninstall()
    assert stopper.signum == signal.SIGINT
    # Stopped early (where depends on how far ahead the backend's loader reads).
    assert 0 < int(to_numpy(model.optimizer.iterations)) < 15
    assert np.all(np.isfinite(to_numpy(model.layers[0].kernel)))


def small_bmp_folder(root, count=12):
    # BMP: decoded by Pillow through a Python function the test can count.
    from PIL import Image

    os.makedirs(root)
    rng = np.random.default_rng(1)
    for i in range(count):
        pixels = rng.integers(0, 256, (20, 20, 3), dtype="uint8")
        Image.fromarray(pixels).save(os.path.join(root, f"{i:02d}.bmp"))
    return root


def pipeline(source, **kwargs):
    from keras_vitmsn.msn.augment import MSNAugmentation
    from keras_vitmsn.msn.augment import msn_multiview_dataset

    augmentation = MSNAugmentation(global_size=16, focal_size=8, num_focal_views=1)
    return msn_multiview_dataset(
        source, 2, augmentation=augmentation, seed=0, repeat=True, **kwargs
    )


def test_a_pipeline_started_at_a_batch_is_the_tail_of_the_whole_one(tmp_path):
    folder = small_bmp_folder(str(tmp_path / "bmp"))
    for source in (folder, IMAGES[:, :20, :20]):
        whole = list(pipeline(source).skip(7).take(3))
        tail = list(pipeline(source, start_batch=7).take(3))
        for a, b in zip(whole, tail, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)
    with pytest.raises(ValueError, match="`start_batch` must be a non-negative int; got -1"):
        pipeline(IMAGES, start_batch=-1)


def test_a_pipeline_started_at_a_batch_decodes_none_of_the_batches_before(tmp_path, monkeypatch):
    from keras_vitmsn.msn.augment import dataset as dataset_module

    decoded = []

    def counting_decode(path):
        decoded.append(path)
        return decode(path)

    decode = dataset_module.decode_rgb
    monkeypatch.setattr(dataset_module, "decode_rgb", counting_decode)
    folder = small_bmp_folder(str(tmp_path / "bmp"))
    # 400 images skipped (33 passes over the folder); 4 trained on, a prefetch ahead.
    list(pipeline(folder, start_batch=200).take(2))
    assert 4 <= len(decoded) < 100, len(decoded)
