"""The files ``keras-vitmsn finetune`` writes and ``predict`` reads: a ``.keras`` model
and, beside it, its class names (``MODEL.keras.classes.json``, a JSON list)."""

import json
import os
import tempfile
import zipfile

from keras_vitmsn.cli_args import UsageError
from keras_vitmsn.errors import CheckpointError
from keras_vitmsn.utils import check_can_create
from keras_vitmsn.utils import read_json


def classes_path(model_path):
    return model_path + ".classes.json"


def check_model_output(path):
    """Check ``finetune --output`` before any work; returns whether it exists.

    The rules: the name ends in ``.keras``; an existing file of that name is
    replaced, atomically and only once the new model is complete (as
    ``model.save`` and ``cp`` replace theirs); a folder of that name (or of the
    class-names file's) is refused; missing parent folders are created, as
    ``convert`` and ``pretrain`` create theirs, so the nearest existing one must be
    writable.
    """
    if not path.endswith(".keras"):
        raise UsageError(f"--output must end in .keras, got {path!r}.")
    for target in (path, classes_path(path)):
        if os.path.isdir(target):
            raise UsageError(
                f"--output {path}: {target} is a folder; finetune writes a FILE.keras "
                "and its FILE.keras.classes.json. Choose another name."
            )
    check_can_create(path)
    return os.path.exists(path)


def _temporary(folder, prefix, suffix):
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    # mkstemp creates the file private (0600); a saved model gets the usual mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path


def save_model_with_class_names(model, path, class_names):
    """Write ``model`` to ``path`` and its class names beside it, atomically.

    Both are written in full to temporary files in the same folder first, so an
    error or interruption while saving leaves any previous model and names as
    they were.
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    model_tmp = _temporary(folder, f".{base}.tmp-", ".keras")
    names_tmp = _temporary(folder, f".{base}.classes.tmp-", ".json")
    try:
        model.save(model_tmp)
        with open(names_tmp, "w", encoding="utf-8") as f:
            json.dump(list(class_names), f)
        # Names first, the model last: the model is what users and scripts wait
        # for, so when a new one appears its names are already in place. An
        # interruption between these two renames leaves new names beside the old
        # model; predict refuses names whose count differs from the model's
        # classes, and rerunning finetune replaces both.
        os.replace(names_tmp, classes_path(path))
        os.replace(model_tmp, path)
    except BaseException:
        for tmp in (model_tmp, names_tmp):
            if os.path.exists(tmp):
                os.remove(tmp)
        raise


def load_classifier(model):
    """``predict --model``: a FILE.keras from finetune, or a classifier preset."""
    import keras_vitmsn as kv

    if model.endswith(".keras"):
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
        raise UsageError(
            f"--model {path} is a folder; pass the FILE.keras written by finetune."
        )
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


def read_class_names(model_path, num_classes):
    """The class names saved beside ``model_path``, or None when there are none.

    Raises:
        UsageError: the file is not a list of names, or names a different number
            of classes than the model has (the names belong to another model).
    """
    path = classes_path(model_path)
    if not os.path.isfile(path):
        return None
    names = read_json(path, "class names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UsageError(f"{path} must hold a JSON list of class names; got {names!r:.200}.")
    if len(names) != num_classes:
        raise UsageError(
            f"{path} lists {len(names)} class names but the model {model_path} has "
            f"{num_classes} classes: the names belong to another model. Restore the "
            "matching names, or remove the file to see class indices."
        )
    return names
