"""Checkpoints of an MSN run in its output folder, and resuming from them.

The authors' ``src/msn_train.py`` (facebookresearch/msn) writes ``latest.pth.tar`` at
every epoch and continues from it; here an MSN run (:func:`build_msn_training` with
``checkpoint_dir``, or ``keras-vitmsn pretrain``) keeps its checkpoints in
``<output>/checkpoints/``::

    checkpoints/step-000000018/preset/    MSNPretrainer.save_to_preset, training state
                                          included: both encoders, both heads,
                                          prototypes, optimizer moments and step,
                                          schedule position, mask-seed state
    checkpoints/step-000000018/run.json   what the run was (recipe, data, batch, seed)
                                          and where it stands (epoch, step)

Each checkpoint is written complete in a hidden temporary folder, then renamed into
place (one atomic rename of a new name: no earlier checkpoint is ever touched), and
only then are the oldest beyond ``keep`` deleted. A kill at any instant leaves the
previous checkpoints readable; leftover temporary folders are removed at the next
start. The data order and the views are not stored: they are a function of the seed
and the step (:func:`keras_vitmsn.msn.msn_multiview_dataset` is deterministic for a
seed), so a resumed run starts the pipeline at its step (``start_batch``): the
images and seeds of the batches already trained on are skipped, never rendered.
"""

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

import keras

from keras_vitmsn.presets.file_format import PRESET_FILES
from keras_vitmsn.utils import apply_umask

CHECKPOINTS_DIR = "checkpoints"
RUN_FILE = "run.json"
PRESET_DIR = "preset"
_FORMAT = "keras_vitmsn.msn_run/1"
_PREFIX = "step-"
_TMP_PREFIX = ".tmp-"
# What run.json records of a run and a new run must repeat to continue it.
IDENTITY_KEYS = ("data", "num_images", "batch_size", "seed", "preset", "recipe")


class TrainingInterrupted(Exception):
    """A run stopped by SIGINT or SIGTERM after its step in flight, with a checkpoint
    written; ``exit_status`` is ``128 + signal`` (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum, epoch, step, checkpoint):
        self.signum = signum
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint
        self.exit_status = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped after step {step} (epoch {epoch + 1}); checkpoint {checkpoint}"
        )


class RunCheckpoints:
    """The checkpoints of one run in ``directory/checkpoints``.

    Args:
        directory: the run's output folder.
        keep: how many checkpoints to keep (the newest; >= 1).

    Example:
    >>> import tempfile
    >>> checkpoints = RunCheckpoints(tempfile.mkdtemp(), keep=2)
    >>> checkpoints.latest() is None
    True
    """

    def __init__(self, directory, keep=3):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`keep` must be a positive int; got {keep!r}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.root = os.path.join(self.directory, CHECKPOINTS_DIR)
        self.keep = keep

    def exists(self):
        return os.path.isdir(self.root)

    def paths(self):
        """Complete checkpoints, oldest first."""
        if not os.path.isdir(self.root):
            return []
        names = sorted(
            n
            for n in os.listdir(self.root)
            if n.startswith(_PREFIX) and os.path.isfile(os.path.join(self.root, n, RUN_FILE))
        )
        return [os.path.join(self.root, n) for n in names]

    def latest(self):
        """``(path, run)`` of the newest checkpoint (``run``: its ``run.json``), or None."""
        paths = self.paths()
        if not paths:
            return None
        return paths[-1], read_run(paths[-1])

    def remove_leftovers(self):
        """Delete the temporary folders of checkpoints a kill interrupted."""
        if os.path.isdir(self.root):
            for name in os.listdir(self.root):
                if name.startswith(_TMP_PREFIX):
                    shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def clear(self):
        """Delete every checkpoint (a run that starts over)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def save(self, pretrainer, run):
        """Write a checkpoint of ``pretrainer`` with ``run`` (dict, ``epoch`` and ``step``
        included) as its ``run.json``; returns its path."""
        os.makedirs(self.root, exist_ok=True)
        final = os.path.join(self.root, f"{_PREFIX}{int(run['step']):09d}")
        tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.root)
        try:
            pretrainer.save_to_preset(os.path.join(tmp, PRESET_DIR))
            with open(os.path.join(tmp, RUN_FILE), "w") as f:
                json.dump({"format": _FORMAT, **run}, f, indent=1, sort_keys=True)
            if os.path.isdir(final):
                # The same step again (a resumed run stopped before its next step):
                # the new one is identical; keep the old.
                shutil.rmtree(tmp)
            else:
                apply_umask(tmp)  # mkdtemp's 0700 and the JSON's 0600: a plain mkdir's
                os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.paths()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final


def read_run(path):
    """The ``run.json`` of a checkpoint folder."""
    file = os.path.join(path, RUN_FILE)
    try:
        with open(file) as f:
            run = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{file} is not a readable MSN run record: {e}.") from e
    if run.get("format") != _FORMAT:
        raise ValueError(f"{file} is not an MSN run record ({_FORMAT}).")
    return run


def preset_of(path):
    """The preset folder inside a checkpoint."""
    return os.path.join(path, PRESET_DIR)


def check_same_run(saved, wanted, where):
    """Raise ValueError naming the first differences between a checkpoint's run and
    the run asked for (``IDENTITY_KEYS`` of both)."""
    differences = []
    for key in IDENTITY_KEYS:
        if key == "recipe":
            a, b = saved.get(key) or {}, wanted.get(key) or {}
            differences += [
                f"{k}={b.get(k)!r} (checkpoint: {a.get(k)!r})"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        elif saved.get(key) != wanted.get(key):
            differences.append(f"{key}={wanted.get(key)!r} (checkpoint: {saved.get(key)!r})")
    if differences:
        raise ValueError(
            f"{where} holds the checkpoints of another run: this one asks for "
            f"{', '.join(differences)}. Repeat the run's settings to continue it, or "
            "start over (restart=True; keras-vitmsn pretrain --overwrite) or use another "
            "output folder."
        )


def write_preset_in_place(pretrainer, directory):
    """Write the final preset into the run's output folder, beside its checkpoints and
    logs: each preset file is written complete, then renamed over the old one."""
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=directory)
    try:
        new = os.path.join(tmp, PRESET_DIR)
        pretrainer.save_to_preset(new)
        written = set(os.listdir(new))
        for name in PRESET_FILES:
            if name in written:
                os.replace(os.path.join(new, name), os.path.join(directory, name))
            elif os.path.isfile(os.path.join(directory, name)):
                os.remove(os.path.join(directory, name))  # a stale file of an older preset
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- Keras callbacks -----------------------------------------------------------------


def current_step(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class CheckpointEveryEpoch(keras.callbacks.Callback):
    """Writes a checkpoint at the end of every epoch, and every ``every_minutes``
    within an epoch when given.

    ``max_overhead`` (a fraction, or None) bounds the share of the run spent writing
    them: an epoch end is skipped while the time since the last checkpoint is under
    its writing time / ``max_overhead``. Epochs of real runs (minutes) are all
    checkpointed; a tiny run's epochs of milliseconds are not each worth a write of
    the whole state. The last epoch and an interrupted one are always written.
    """

    def __init__(self, checkpoints, run, steps_per_epoch, every_minutes=None, max_overhead=None):
        super().__init__()
        self.checkpoints = checkpoints
        self.run = dict(run)
        self.steps_per_epoch = steps_per_epoch
        self.every_seconds = None if every_minutes is None else 60.0 * every_minutes
        self.max_overhead = max_overhead
        self.last_saved_step = None
        self.last_path = None
        self._last_time = time.monotonic()
        self._last_duration = 0.0

    def save(self):
        step = current_step(self.model)
        if step == self.last_saved_step:
            return self.last_path
        start = time.monotonic()
        self.last_path = self.checkpoints.save(
            self.model, {**self.run, "step": step, "epoch": step // self.steps_per_epoch}
        )
        self.last_saved_step = step
        self._last_time = time.monotonic()
        self._last_duration = self._last_time - start
        return self.last_path

    def on_train_begin(self, logs=None):
        self._last_time = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if self.every_seconds is not None and (
            time.monotonic() - self._last_time >= self.every_seconds
        ):
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        last = self.run.get("epochs") is not None and epoch + 1 >= self.run["epochs"]
        since = time.monotonic() - self._last_time
        if (
            self.max_overhead is None
            or last
            or self.model.stop_training
            or since * self.max_overhead >= self._last_duration
        ):
            self.save()


class StopOnSignal(keras.callbacks.Callback):
    """SIGINT / SIGTERM stop training after the step in flight (``stop_training``);
    a second signal ends the process at once (the checkpoints on disk are complete:
    each is renamed into place only once written)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        super().__init__()
        self.signum = None
        self._previous = {}

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return False  # signal handlers can only be set from the main thread
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._first)
        return True

    def uninstall(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _first(self, signum, frame):
        # Only noted here: the handler runs between any two bytecodes of the main
        # thread, and on JAX setting `stop_training` while Keras fetches a batch left
        # every variable of the model deleted (its state never synced back); the
        # message could also re-enter a write to stderr in flight.
        self.signum = signum
        for s in self.SIGNALS:
            signal.signal(s, self._second)

    def _second(self, signum, frame):
        print(
            f"{signal.Signals(signum).name} again: stopped at once; the last complete "
            "checkpoint is kept",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)

    def on_train_batch_end(self, batch, logs=None):
        if self.signum is not None and not self.model.stop_training:
            self.model.stop_training = True
            print(
                f"\n{signal.Signals(self.signum).name}: stopping after this step and writing "
                "a checkpoint (again to stop at once)",
                file=sys.stderr,
                flush=True,
            )


# -- any Keras model (keras-vitmsn finetune) -----------------------------------------


class _EpochBackup(keras.callbacks.BackupAndRestore):
    # An epoch cut short by a signal is not written: it would be resumed as complete.
    def on_epoch_end(self, epoch, logs=None):
        if not self.model.stop_training:
            super().on_epoch_end(epoch, logs)


def backup_epoch(directory):
    """Epochs completed by the backup in ``directory`` (0 when there is none)."""
    try:
        with open(os.path.join(directory, "training_metadata.json")) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def resumable_fit(model, data, directory, run, epochs, handle_signals=False, **kwargs):
    """``model.fit(data, epochs=epochs, ...)`` that continues from, and keeps, a backup
    of the model and its optimizer in ``directory`` at every epoch end (Keras'
    ``BackupAndRestore``, with its previous copy kept while writing).

    ``run`` (a JSON-able dict: what the run is) is stored beside it; a backup of
    another run is refused (ValueError naming the differences). ``data`` must be
    deterministic for its seed: a dataset with ``set_epoch`` (``ImageFolder.as_dataset``,
    whose order is a function of the seed and the epoch) is set to the first epoch
    to run; any other ``keras.utils.PyDataset`` has the ``on_epoch_end`` reshuffles of
    the epochs done replayed. So a resumed run's epoch k sees the order an
    uninterrupted run's does. With ``handle_signals``, SIGINT / SIGTERM stop after the
    step in flight and raise :class:`TrainingInterrupted` (the epoch in progress is
    redone on resume). The backup stays when training ends: delete ``directory`` once
    the model is saved.

    Returns:
        ``(history, initial_epoch)``.
    """
    if kwargs.pop("shuffle", False):
        raise ValueError(
            "resumable_fit takes no `shuffle=True`: Keras would shuffle the batches with "
            "Python's global `random`, which a resumed run cannot repeat. Shuffle in the "
            "dataset (ImageFolder.as_dataset(..., shuffle=True, seed=...))."
        )
    os.makedirs(directory, exist_ok=True)
    record = os.path.join(directory, RUN_FILE)
    done = backup_epoch(directory)
    if done and os.path.isfile(record):
        with open(record) as f:
            saved = json.load(f)
        differences = [
            f"{k}={run.get(k)!r} (backup: {saved.get(k)!r})"
            for k in sorted(set(saved) | set(run))
            if saved.get(k) != run.get(k)
        ]
        if differences:
            raise ValueError(
                f"{directory} holds the backup of another run: this one asks for "
                f"{', '.join(differences)}. Repeat the run's settings to continue it, or "
                "delete that folder to start over."
            )
    with open(record, "w") as f:
        json.dump(run, f, sort_keys=True)
    if hasattr(data, "set_epoch"):
        data.set_epoch(done)  # ImageFolderDataset: its order is a function of the epoch
    else:
        for _ in range(done):
            data.on_epoch_end()
    callbacks = list(kwargs.pop("callbacks", None) or [])
    callbacks.append(_EpochBackup(directory, delete_checkpoint=False, double_checkpoint=True))
    stopper = StopOnSignal() if handle_signals else None
    if stopper is not None and stopper.install():
        # Last: a signal that lands during another callback's batch end still
        # stops after this step.
        callbacks.append(stopper)
    else:
        stopper = None
    try:
        # shuffle=False: the dataset's own order is the one a resumed run repeats.
        history = model.fit(data, epochs=epochs, callbacks=callbacks, shuffle=False, **kwargs)
    finally:
        if stopper is not None:
            stopper.uninstall()
    if stopper is not None and stopper.signum is not None:
        epoch = backup_epoch(directory)
        raise TrainingInterrupted(stopper.signum, epoch, current_step(model), directory)
    return history, done
