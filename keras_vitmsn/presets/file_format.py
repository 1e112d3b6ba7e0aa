"""The Keras preset directory: its files, and writing / reading them.

A preset is a directory (keras-hub's layout):

- ``config.json``: ``keras.saving.serialize_keras_object(backbone)``;
- ``model.weights.h5``: ``backbone.save_weights``;
- ``metadata.json``: versions, parameter count, date, source;
- tasks add ``task.json`` (the serialised classifier) and ``task.weights.h5`` (the
  head's variables only, keyed by their path inside the task, e.g.
  ``classifier/kernel``);
- ``image_converter.json``: the serialised :class:`ViTMSNImageConverter`;
- MSN pretraining state adds ``msn_head.weights.h5`` (projection head and prototypes;
  written and read by :mod:`keras_vitmsn.msn.head_state`) and
  ``msn_training_state.h5`` (the rest of a run: :mod:`keras_vitmsn.msn.resume`).
"""

import datetime
import json
import os

import h5py
import keras

from keras_vitmsn.errors import CheckpointError
from keras_vitmsn.utils import write_json
from keras_vitmsn.version import __version__

CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
TASK_CONFIG_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
IMAGE_CONVERTER_FILE = "image_converter.json"
MSN_HEAD_FILE = "msn_head.weights.h5"
MSN_TRAINING_STATE_FILE = "msn_training_state.h5"
# The weights layout of the presets this version writes (metadata.json's
# "preset_format"): a cached hf:// entry in any other layout is converted again.
PRESET_FORMAT_VERSION = 2
# Every file a preset of ours may hold: what replacing one of ours may remove.
PRESET_FILES = (
    CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    METADATA_FILE,
    TASK_CONFIG_FILE,
    TASK_WEIGHTS_FILE,
    IMAGE_CONVERTER_FILE,
    MSN_HEAD_FILE,
    MSN_TRAINING_STATE_FILE,
)


def _serialize(layer, drop_data_format=False):
    config = keras.saving.serialize_keras_object(layer)
    # Not part of a preset: the layer is rebuilt (and compiled) on load.
    config.pop("build_config", None)
    config.pop("compile_config", None)
    if drop_data_format:
        config["config"].pop("data_format", None)
    return config


def write_backbone(
    backbone, preset_dir, metadata=None, drop_data_format=False, config_overrides=None
):
    """Write config.json, model.weights.h5 and metadata.json.

    ``drop_data_format=True`` leaves the layout to the loading machine's
    ``keras.config.image_data_format()`` (converted checkpoints, the hf:// cache).
    ``config_overrides`` replaces config entries (e.g. the name of an EMA copy).
    """
    os.makedirs(preset_dir, exist_ok=True)
    config = _serialize(backbone, drop_data_format)
    config["config"].update(config_overrides or {})
    write_json(config, os.path.join(preset_dir, CONFIG_FILE))
    backbone.save_weights(os.path.join(preset_dir, MODEL_WEIGHTS_FILE))
    meta = {
        "preset_format": PRESET_FORMAT_VERSION,
        "keras_version": keras.__version__,
        "keras_vitmsn_version": __version__,
        "parameter_count": int(backbone.count_params()),
        "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(metadata or {})
    write_json(meta, os.path.join(preset_dir, METADATA_FILE))


def write_image_converter(converter, preset_dir, drop_data_format=False):
    os.makedirs(preset_dir, exist_ok=True)
    write_json(
        _serialize(converter, drop_data_format),
        os.path.join(preset_dir, IMAGE_CONVERTER_FILE),
    )


def task_variables(task):
    """``{path_inside_task: variable}`` for the task's own variables (not the
    backbone's, not the preprocessor's)."""
    shared = {id(v) for v in task.backbone.weights}
    if getattr(task, "preprocessor", None) is not None:
        shared |= {id(v) for v in task.preprocessor.weights}
    out = {}
    for variable in task.weights:
        if id(variable) in shared:
            continue
        out[variable.path.split("/", 1)[1]] = variable
    return out


def write_task(task, preset_dir, drop_data_format=False):
    """Write task.json and task.weights.h5 (plus image_converter.json if any)."""
    os.makedirs(preset_dir, exist_ok=True)
    config = _serialize(task)
    if drop_data_format:
        config["config"]["backbone"]["config"].pop("data_format", None)
        if config["config"].get("preprocessor"):
            config["config"]["preprocessor"]["config"].pop("data_format", None)
    write_json(config, os.path.join(preset_dir, TASK_CONFIG_FILE))
    # The head is a handful of arrays keyed by path: a flat h5 file keeps the preset
    # readable without building the task (Keras' save_weights would key them by the
    # task's layer structure, backbone included).
    with h5py.File(os.path.join(preset_dir, TASK_WEIGHTS_FILE), "w") as f:
        f.attrs["format"] = "keras_vitmsn.task_weights/1"
        for key, variable in task_variables(task).items():
            f.create_dataset(key, data=keras.ops.convert_to_numpy(variable))
    if getattr(task, "preprocessor", None) is not None:
        # A task preprocessor wraps the converter; the preset stores the converter.
        converter = getattr(task.preprocessor, "image_converter", task.preprocessor)
        write_image_converter(converter, preset_dir, drop_data_format)


def read_task_weights(task, path):
    """Assign task.weights.h5 to the task's head, strictly (names and shapes)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: the preset's head weights are needed.")
    expected = task_variables(task)
    stored = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, obj: (
                    stored.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
                )
            )
    except OSError as e:
        raise CheckpointError(f"{path} is truncated or corrupted: {e}") from e
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mismatched = [
        f"{k}: file {tuple(stored[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(stored))
        if tuple(stored[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{path} does not fit the task: missing {missing or 'none'}, unexpected "
            f"{unexpected or 'none'}, shape mismatches {mismatched or 'none'}."
        )
    for key, variable in expected.items():
        variable.assign(stored[key])


def preset_format(folder):
    """The ``preset_format`` in ``folder``'s metadata.json, or None when it is not
    recorded or the file is missing or unreadable."""
    try:
        with open(os.path.join(folder, METADATA_FILE), encoding="utf-8") as f:
            metadata = json.load(f)
    except (OSError, ValueError):
        return None
    return metadata.get("preset_format") if isinstance(metadata, dict) else None


def check_replaceable(path):
    """Raise unless the existing directory ``path`` holds only a preset of ours."""
    names = set(os.listdir(path))
    foreign = sorted(names - set(PRESET_FILES))
    if foreign or CONFIG_FILE not in names and IMAGE_CONVERTER_FILE not in names:
        raise FileExistsError(
            f"{path} exists and is not a keras-vitmsn preset (it holds "
            f"{', '.join(foreign or sorted(names))}); choose an empty or new directory."
        )
