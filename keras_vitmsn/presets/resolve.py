"""Resolve a ``from_preset`` argument (a built-in name, ``hf://org/repo``,
``kaggle://owner/model/framework/variation/version``, a directory or an MSN checkpoint
file) to a source: :class:`KerasPresetSource` or :class:`ConvertedSource`."""

import os

from keras_vitmsn.conversion import checkpoints
from keras_vitmsn.conversion import msn_checkpoint
from keras_vitmsn.presets import file_format as ff
from keras_vitmsn.presets import hub_cache
from keras_vitmsn.presets import kaggle
from keras_vitmsn.presets import table
from keras_vitmsn.presets.sources import ConvertedSource
from keras_vitmsn.presets.sources import KerasPresetSource
from keras_vitmsn.utils import read_json


def resolve_preset(preset, load_weights=True, classes=None):
    """Turn a ``from_preset`` argument into a source (see the module docstring).

    ``classes`` is ``role -> class`` (``keras_vitmsn.presets.mixin.preset_class``),
    needed when an hf:// checkpoint is converted and written to the cache.
    """
    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str):
        raise TypeError(
            f"`preset` must be a string or path, got {type(preset).__name__}: {preset!r}."
        )
    if preset.startswith("hf://"):
        return hub_cache.load_hf_source(preset, load_weights, classes)
    if preset.startswith(kaggle.KAGGLE_PREFIX):
        return kaggle.load_kaggle_source(preset, load_weights, classes)
    # Built-in names win over a same-named local folder (pass "./name" for that).
    if table.is_preset_name(preset):
        handle = table.get_preset(preset)["hf_handle"]
        return hub_cache.load_hf_source(handle, load_weights, classes)
    if os.path.isdir(preset):
        return directory_source(preset, load_weights)
    if os.path.isfile(preset):
        if msn_checkpoint.is_msn_checkpoint_path(preset):
            return ConvertedSource(checkpoints.load_msn_checkpoint(preset, load_weights))
        raise ValueError(
            f"{preset} is a file, but from_preset only reads original MSN checkpoints "
            f"({', '.join(msn_checkpoint.MSN_SUFFIXES)}) as single files; pass the "
            "directory holding a transformers checkpoint or a Keras preset instead."
        )
    if "://" in preset:
        raise ValueError(
            f"Unsupported preset handle {preset!r}: only 'hf://org/repo' and "
            "'kaggle://owner/model/framework/variation/version' are supported."
        )
    if os.sep in preset or preset.startswith(".") or (os.altsep and os.altsep in preset):
        raise FileNotFoundError(
            f"No such file or directory: {preset!r} (a preset is a built-in name, "
            "'hf://org/repo', 'kaggle://owner/model/framework/variation/version', a "
            "preset or checkpoint directory, or an MSN .pth.tar file)."
        )
    # Neither a built-in name nor an existing path: the error lists the valid names.
    try:
        table.get_preset(preset)
    except ValueError as e:
        raise ValueError(
            f"{e} No file or directory {preset!r} exists in {os.getcwd()} either."
        ) from None


def directory_source(path, load_weights):
    config_path = os.path.join(path, ff.CONFIG_FILE)
    if os.path.exists(config_path):
        config = read_json(config_path, "config")
        if isinstance(config, dict) and "model_type" in config:
            return ConvertedSource(
                checkpoints.load_transformers_checkpoint(path, load_weights=load_weights)
            )
        if isinstance(config, dict) and "class_name" in config and "config" in config:
            return KerasPresetSource(path)
        raise ValueError(
            f"{config_path} is neither a transformers config (with 'model_type') nor a "
            "serialised Keras backbone (with 'class_name' and 'config')."
        )
    if os.path.exists(os.path.join(path, ff.IMAGE_CONVERTER_FILE)):
        return KerasPresetSource(path)
    raise ValueError(
        f"{path} holds neither a Keras preset (config.json, model.weights.h5, "
        "metadata.json; written by save_to_preset) nor a transformers checkpoint "
        "(config.json with model_type 'vit_msn' + model.safetensors or "
        "pytorch_model.bin; written by save_pretrained)."
    )
