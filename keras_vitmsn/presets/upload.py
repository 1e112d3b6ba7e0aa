"""``upload_preset``: a Keras preset directory of ours, checked, sent to the Hugging Face
hub or Kaggle Models (keras-hub's ``upload_preset``).

Nothing is sent before the whole preset has been checked: every file is one a preset of
ours holds, the required ones are there, ``metadata.json`` records the preset layout
this version writes, and the models it describes load with their weights. What passed
is staged (hard links, or copies across file systems) in a temporary folder and that
folder is uploaded, so a file written into the preset meanwhile is never sent
unchecked. The hub clients are optional dependencies: ``huggingface_hub`` (installed
with the package) and ``kagglehub`` (``pip install kagglehub``).
"""

import os
import shutil
import tempfile

import h5py

from keras_vitmsn.conversion import hub
from keras_vitmsn.msn.head_state import load_msn_pretraining_state
from keras_vitmsn.presets import file_format as ff
from keras_vitmsn.presets import kaggle
from keras_vitmsn.presets.mixin import preset_class
from keras_vitmsn.presets.sources import CLASSIFIER_TASK
from keras_vitmsn.presets.sources import KerasPresetSource
from keras_vitmsn.utils import read_json

REQUIRED_FILES = (ff.CONFIG_FILE, ff.MODEL_WEIGHTS_FILE, ff.METADATA_FILE)
TRAINING_STATE_CHOICES = ("refuse", "exclude", "include")


def upload_preset(uri, preset_dir, training_state="refuse"):
    """Upload a Keras preset directory of ours to the Hugging Face hub or Kaggle Models.

    Args:
        uri: ``"hf://org/repo"`` (the repository is created if missing; needs
            ``hf auth login`` or ``HF_TOKEN``) or
            ``"kaggle://owner/model/keras/variation"`` (no version: Kaggle numbers
            each upload; needs ``pip install kagglehub`` and Kaggle credentials).
        preset_dir: a folder written by ``save_to_preset``, ``convert_to_preset`` or
            MSN pretraining.
        training_state: what to do with ``msn_training_state.h5`` (the online
            encoder, optimizer moments and schedule position of an MSN pretraining
            run: several times the model's size, read by nothing but an exact resume):
            ``"refuse"`` (default: raise, so it is never published by accident),
            ``"exclude"`` (upload the rest) or ``"include"``.

    Returns:
        The names of the files uploaded, sorted.

    Raises:
        ValueError: a malformed ``uri``, or a folder that is not a complete, loadable
            preset of ours (the message says what is wrong); nothing is sent.
        ImportError: the hub's client is not installed.

    Example:
    >>> import tempfile
    >>> import keras_vitmsn as kv
    >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8,
    ...     hidden_dim=32, num_layers=1, num_heads=4, intermediate_dim=64)
    >>> preset_dir = tempfile.mkdtemp()
    >>> backbone.save_to_preset(preset_dir)
    >>> kv.upload_preset("hf://me/vit-msn-tiny", preset_dir)  # doctest: +SKIP
    ['config.json', 'metadata.json', 'model.weights.h5']
    >>> check_preset(preset_dir)  # what upload_preset checks before sending anything
    ['config.json', 'metadata.json', 'model.weights.h5']
    """
    if training_state not in TRAINING_STATE_CHOICES:
        raise ValueError(
            f"training_state={training_state!r}: expected one of "
            f"{', '.join(map(repr, TRAINING_STATE_CHOICES))}."
        )
    send = _sender(os.fspath(uri) if isinstance(uri, os.PathLike) else uri)
    files = check_preset(preset_dir, training_state=training_state)
    with tempfile.TemporaryDirectory(prefix="keras_vitmsn_upload_") as staged:
        for name in files:
            _stage(os.path.join(preset_dir, name), os.path.join(staged, name))
        send(staged, files)
    return files


def _sender(uri):
    """``send(folder, files)`` for ``uri``, after parsing it and importing its client
    (so a bad handle or a missing client fails before the preset is read)."""
    if not isinstance(uri, str):
        raise TypeError(f"`uri` must be a string, got {type(uri).__name__}: {uri!r}.")
    if uri.startswith("hf://"):
        repo_id = hub.parse_hf_handle(uri)
        import huggingface_hub

        def send_hf(folder, files):
            api = huggingface_hub.HfApi()
            api.create_repo(repo_id, repo_type="model", exist_ok=True)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                repo_type="model",
                commit_message=f"Upload keras-vitmsn preset ({', '.join(files)})",
            )

        return send_hf
    if uri.startswith(kaggle.KAGGLE_PREFIX):
        slugs, _ = kaggle.parse_kaggle_handle(uri, frameworks=("keras",), versioned=False)
        kagglehub = kaggle.import_kagglehub()

        def send_kaggle(folder, files):
            kagglehub.model_upload(
                "/".join(slugs),
                folder,
                version_notes=f"keras-vitmsn preset ({', '.join(files)})",
            )

        return send_kaggle
    raise ValueError(
        f"Cannot upload to {uri!r}: expected 'hf://org/repo' or "
        "'kaggle://owner/model/keras/variation'."
    )


def check_preset(preset_dir, training_state="refuse"):
    """Raise unless ``preset_dir`` is a complete, loadable Keras preset of ours; returns
    the names of the files to upload (``training_state`` as in :func:`upload_preset`)."""
    path = os.fspath(preset_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory: a preset is a folder.")
    names = sorted(os.listdir(path))
    foreign = [n for n in names if n not in ff.PRESET_FILES]
    if foreign:
        raise ValueError(
            f"{path} holds files that are not part of a keras-vitmsn preset: "
            f"{', '.join(foreign)} (a preset holds only {', '.join(ff.PRESET_FILES)}). "
            "Upload a folder written by save_to_preset or convert_to_preset."
        )
    missing = [n for n in REQUIRED_FILES if n not in names]
    if ff.TASK_CONFIG_FILE in names and ff.TASK_WEIGHTS_FILE not in names:
        task = read_json(os.path.join(path, ff.TASK_CONFIG_FILE), "task config")
        if isinstance(task, dict) and task.get("class_name") == CLASSIFIER_TASK:
            missing.append(ff.TASK_WEIGHTS_FILE)
    if missing:
        hint = ""
        if "model_type" in _json_or_empty(os.path.join(path, ff.CONFIG_FILE)):
            hint = (
                " It is a transformers checkpoint: convert it first, "
                "kv.convert_to_preset(DIR, PRESET_DIR)."
            )
        raise ValueError(
            f"{path} is not a complete keras-vitmsn preset: {', '.join(missing)} "
            f"missing (it holds {', '.join(names) or 'nothing'}).{hint}"
        )
    metadata = read_json(os.path.join(path, ff.METADATA_FILE), "metadata")
    found = metadata.get("preset_format") if isinstance(metadata, dict) else None
    if found != ff.PRESET_FORMAT_VERSION:
        raise ValueError(
            f"{path}/{ff.METADATA_FILE} records preset_format={found!r}, not "
            f"{ff.PRESET_FORMAT_VERSION} (the layout this version writes and reads "
            "from the hub): re-save it, kv.convert_to_preset(DIR, NEW_DIR)."
        )
    if ff.MSN_TRAINING_STATE_FILE in names:
        if training_state == "refuse":
            raise ValueError(
                f"{path} holds {ff.MSN_TRAINING_STATE_FILE}, the state of an MSN "
                "pretraining run (online encoder, optimizer moments: several times the "
                "model's size, needed only to resume that run). Pass "
                "training_state='exclude' to upload the preset without it, or "
                "training_state='include' to publish it too."
            )
        if training_state == "exclude":
            names.remove(ff.MSN_TRAINING_STATE_FILE)
        else:
            _check_h5(os.path.join(path, ff.MSN_TRAINING_STATE_FILE), "msn_training_state/")
    _check_loads(path, names)
    return names


def _json_or_empty(path):
    try:
        value = read_json(path, "config")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _check_h5(path, expected_format):
    try:
        with h5py.File(path, "r") as f:
            found = str(f.attrs.get("format", ""))
    except OSError as e:
        raise ValueError(f"{path} is truncated or corrupted: {e}") from e
    if expected_format not in found:
        raise ValueError(f"{path} is not a keras-vitmsn file (format {found!r}).")


def _check_loads(path, names):
    """Build every model the preset describes, with its weights (importing
    ``keras_vitmsn.msn.head_state`` above registered their classes, as in convert.py)."""
    source = KerasPresetSource(path)
    try:
        if source.task_class_name is not None:
            role = "classifier" if source.has_task else "feature_extractor"
            preset_class(role)._from_preset_source(source)
        else:
            preset_class("backbone")._from_preset_source(source)
        if source.has_image_converter:
            preset_class("image_converter")._from_preset_source(source)
        if ff.MSN_HEAD_FILE in names:
            load_msn_pretraining_state(os.path.join(path, ff.MSN_HEAD_FILE))
    except Exception as e:
        raise ValueError(
            f"{path} does not load, so it is not uploaded: {type(e).__name__}: {e}"
        ) from e


def _stage(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
