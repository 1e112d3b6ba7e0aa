"""The files ``keras-vitmsn finetune`` writes and ``predict`` reads: a ``.keras`` model
that holds its class names (``ViTMSNClassifier.class_names``, in its config)."""

import os
import re
import sys
import tempfile
import zipfile

from keras_vitmsn.cli.args import UsageError
from keras_vitmsn.errors import CheckpointError
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


def check_preset_output(path, command):
    """Check a preset ``--output`` folder (``pretrain``) before any work.

    The rules ``save_to_preset`` applies at the end, checked up front so that a long
    run is not lost: not a file; an existing folder empty or one of our presets (then
    replaced whole); the nearest existing parent writable.
    """
    from keras_vitmsn.presets.file_format import check_replaceable

    if os.path.isfile(path):
        raise UsageError(
            f"--output {path} is a file; {command} writes a preset FOLDER. Choose another name."
        )
    if os.path.isdir(path) and os.listdir(path):
        try:
            check_replaceable(path)
        except FileExistsError as e:
            raise UsageError(f"--output: {e}") from None
    try:
        check_can_create(path)
    except (NotADirectoryError, PermissionError) as e:
        raise UsageError(f"--output {path} cannot be written: {e}") from None


def _temporary(folder, prefix, suffix):
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    # mkstemp creates the file private (0600); a saved model gets the usual mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
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
