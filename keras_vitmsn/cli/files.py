"""The files the commands write and read: a ``.keras`` model that holds its class names
(``ViTMSNClassifier.class_names``, in its config; ``finetune`` writes it, ``predict``
reads it), the checks of a preset ``--output`` folder, and the lock that keeps two runs
out of one output (:func:`output_lock`)."""

import contextlib
import datetime
import json
import os
import re
import socket
import sys
import tempfile
import zipfile

from keras_vitmsn.cli.args import UsageError
from keras_vitmsn.errors import CheckpointError
from keras_vitmsn.utils import apply_umask
from keras_vitmsn.utils import check_can_create

# Written by earlier keras-vitmsn beside the model; never read, since nothing ties it
# to the model next to it.
LEGACY_CLASSES_SUFFIX = ".classes.json"


def check_model_output(path):
    """Check ``finetune --output`` before any work; returns whether it exists.

    The rules: the name ends in ``.keras``; an existing file of that name is
    replaced, atomically and only once the new model is complete (as
    ``model.save`` and ``cp`` replace theirs); a folder of that name is refused;
    missing parent folders are created, as
    ``convert`` and ``pretrain`` create theirs, so the nearest existing one must be
    writable.
    """
    if not path.endswith(".keras"):
        raise UsageError(f"--output must end in .keras, got {path!r}.")
    if os.path.isdir(path):
        raise UsageError(
            f"--output {path} is a folder; finetune writes a FILE.keras. Choose another name."
        )
    check_can_create(path)
    return os.path.exists(path)


def check_preset_output(path, command, overwrite=False, refuse_any_preset=False):
    """Check a preset ``--output`` folder (``pretrain``, ``convert``, ``demo``) before
    any work.

    The rules ``save_to_preset`` applies at the end, checked up front so that a long
    run is not lost: not a file; an existing folder empty or one of our presets (then
    replaced whole); the nearest existing parent writable. Replacing a preset that
    holds MSN training state (``msn_training_state.h5``: a run that can be continued),
    or any preset when ``refuse_any_preset``, needs ``overwrite`` (``--overwrite``).
    """
    from keras_vitmsn.presets.file_format import MSN_TRAINING_STATE_FILE
    from keras_vitmsn.presets.file_format import check_replaceable

    if os.path.isfile(path):
        raise UsageError(
            f"--output {path} exists and is a file; {command} writes a preset FOLDER. "
            "Choose another name."
        )
    if os.path.isdir(path) and os.listdir(path):
        try:
            check_replaceable(path)
        except FileExistsError as e:
            raise UsageError(f"--output: {e}") from None
        has_state = os.path.exists(os.path.join(path, MSN_TRAINING_STATE_FILE))
        if not overwrite and (has_state or refuse_any_preset):
            held = (
                f"a preset with MSN training state ({MSN_TRAINING_STATE_FILE})"
                if has_state
                else "a preset"
            )
            raise UsageError(
                f"--output {path} already holds {held}; pass --overwrite to replace it, "
                "or choose another --output."
            )
    try:
        check_can_create(path)
    except (NotADirectoryError, PermissionError) as e:
        raise UsageError(f"--output {path} cannot be written: {e}") from None


LOCK_SUFFIX = ".lock"


def _read_lock(lock):
    try:
        with open(lock, encoding="utf-8") as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _create_lock(lock, command):
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    holder = {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "command": command,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(holder, f)
        f.write("\n")


@contextlib.contextmanager
def output_lock(path, command):
    """Hold ``<path>.lock`` while a command writes ``path``, so that two runs never
    write one output.

    The lock file is created atomically (``O_CREAT | O_EXCL``) beside ``path`` and holds
    the process id, host name, command and start time. A lock held by a live process
    (or by any process on another host, which cannot be checked from here) raises
    :class:`UsageError` naming it; a lock whose process on this host is gone (a run
    that was killed) is taken over with a note on stderr. The lock is removed when the
    block ends, also on an error or Ctrl-C, and so are the parent folders it had to
    create, if still empty.

    Example:
    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "run")
    >>> with output_lock(out, "pretrain"):
    ...     os.path.exists(out + ".lock")
    True
    >>> os.path.exists(out + ".lock")
    False
    """
    path = os.path.abspath(os.fspath(path))
    lock = path + LOCK_SUFFIX
    created = []
    parent = os.path.dirname(lock)
    while not os.path.isdir(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    try:
        _acquire(lock, path, command)
        try:
            yield lock
        finally:
            holder = _read_lock(lock)
            if holder is not None and holder.get("pid") == os.getpid():
                os.remove(lock)
    finally:
        for folder in created:  # deepest first
            try:
                os.rmdir(folder)
            except OSError:
                break  # the command wrote into it


def _acquire(lock, path, command):
    for _ in range(2):
        try:
            _create_lock(lock, command)
            return
        except FileExistsError:
            pass
        holder = _read_lock(lock)
        if holder is None:
            raise UsageError(
                f"--output {path} is locked by {lock}, which cannot be read (another run "
                f"may be starting); if no keras-vitmsn run writes {path}, remove {lock}."
            )
        pid, host = holder.get("pid"), holder.get("hostname")
        who = f"process {pid} ({holder.get('command')}, started {holder.get('started')}"
        if host != socket.gethostname():
            raise UsageError(
                f"--output {path} is in use by {who} on host {host}); wait for it to "
                f"end, or remove {lock} if that run is gone."
            )
        if isinstance(pid, int) and _alive(pid):
            raise UsageError(
                f"--output {path} is in use by {who}); wait for it to end or choose "
                "another --output."
            )
        print(
            f"note: taking over the stale lock {lock} of {who}), which has ended",
            file=sys.stderr,
        )
        try:
            os.remove(lock)
        except FileNotFoundError:
            pass  # another run took it over first: try to create it again
    raise UsageError(f"--output {path} is locked by {lock}; another run took it over.")


def _temporary(folder, prefix, suffix):
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    apply_umask(path)  # mkstemp's file is private (0600); a saved model gets the usual mode
    return path


def save_model(model, path):
    """Write ``model`` (with its class names inside) to ``path``, atomically.

    The model is written in full to a temporary file in the same folder first, so an
    error or interruption while saving leaves any previous model as it was.
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = _temporary(folder, f".{os.path.basename(path)}.tmp-", ".keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_classifier(model):
    """``predict --model``: a FILE.keras from finetune, or a classifier preset."""
    import keras_vitmsn as kv

    if model.endswith(".keras"):
        kv._load_all()  # Keras finds the saved classes only once their modules are loaded
        classifier = load_model_file(model)
    else:
        try:
            classifier = kv.ViTMSNClassifier.from_preset(model)
        except kv.MissingHeadError:
            raise UsageError(
                f"{model} has no classification head, so it cannot predict classes: "
                f"fine-tune it first (keras-vitmsn finetune --preset {model} --train "
                "FOLDER --output model.keras), then predict with --model model.keras."
            ) from None
    if not isinstance(classifier, kv.ViTMSNClassifier):
        raise UsageError(f"{model!r} holds a {type(classifier).__name__}, not a ViTMSNClassifier.")
    return classifier


def load_model_file(path):
    """The model in a ``.keras`` file, with a clear error for a bad path or file."""
    import keras

    if os.path.isdir(path):
        raise UsageError(f"--model {path} is a folder; pass the FILE.keras written by finetune.")
    if not os.path.isfile(path):
        raise UsageError(f"Model file {path!r} does not exist.")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a readable Keras model: a .keras file is a zip archive, and "
            "this one is truncated or corrupted (or not a .keras file at all)."
        )
    try:
        return keras.saving.load_model(path)
    except (zipfile.BadZipFile, EOFError, KeyError, OSError) as e:
        raise CheckpointError(f"{path} is truncated or corrupted: {e}") from e
    except ValueError as e:  # e.g. a config edited by hand that the model refuses
        raise CheckpointError(f"{path} cannot be loaded: {e}") from e
    except TypeError as e:
        message = unknown_class_message(path, e)
        if message is None:
            raise
        raise CheckpointError(message) from e


def unknown_class_message(path, error):
    """What to do about Keras' "Could not locate class" while loading ``path``, or
    None for another error.

    Keras finds a saved class only if the module that registers it was imported in
    this process; the message says whether that is the cause (keras_vitmsn not
    imported, or imported before keras, when it loads its classes only on first use),
    the class is keras_vitmsn's but not this version's, or the file holds another
    package's model.
    """
    found = re.search(
        r"Could not locate class '([^']+)'.*?Full object config: \{'module': '([^']*)'",
        str(error),
        re.S,
    )
    if found is None:
        return None
    name, module = found.groups()
    if module.split(".")[0] != "keras_vitmsn":
        return (
            f"{path} holds a {name} from {module or 'an unknown module'}, not a keras-vitmsn "
            "model; keras-vitmsn predict reads ViTMSNClassifier models (in a script, import "
            f"the package that defines {name} before keras.saving.load_model)."
        )
    # The package or the subpackage that would define the class not loaded yet:
    # keras_vitmsn was not imported, or was imported before keras (then it loads its
    # modules on first use).
    if "keras_vitmsn" not in sys.modules or module.rpartition(".")[0] not in sys.modules:
        return (
            f"{path} holds keras_vitmsn's {name}, which Keras only finds once the package is "
            "imported: import keras_vitmsn first (after keras), then keras.saving.load_model."
        )
    from keras_vitmsn.version import __version__

    return (
        f"{path} holds keras_vitmsn's {name}, which this keras-vitmsn ({__version__}) does "
        "not have: load it with the keras-vitmsn version that saved it."
    )


def legacy_class_names_note(model_path, model):
    """A note for a model without class names that has a side file from an older
    keras-vitmsn beside it (those names are not used: nothing ties them to this
    model), or None."""
    legacy = model_path + LEGACY_CLASSES_SUFFIX
    if model.class_names is not None or not os.path.isfile(legacy):
        return None
    return (
        f"predict: {model_path} holds no class names, so classes are shown by index; "
        f"{legacy} (written by an older keras-vitmsn) is not read. To store names in the "
        "model: clf = keras.saving.load_model(PATH); clf.class_names = [...]; clf.save(PATH)"
    )
