"""Foreign checkpoints (transformers, original MSN) read into NumPy.

A :class:`ConvertedCheckpoint` holds the NumPy weights of a checkpoint, already
re-keyed to transformers' hub names, and the Keras constructor arguments its config
implies. Building models from it is :class:`keras_vitmsn.presets.sources.ConvertedSource`'s.
"""

import os

import numpy as np

from keras_vitmsn.conversion import msn_checkpoint
from keras_vitmsn.conversion.hf_processor import RELEASED_PROCESSOR
from keras_vitmsn.conversion.hf_processor import image_converter_kwargs_from_hf
from keras_vitmsn.conversion.safetensors_io import load_safetensors
from keras_vitmsn.conversion.transformers_weights import backbone_kwargs_from_hf_config
from keras_vitmsn.conversion.transformers_weights import canonicalize_transformers_state
from keras_vitmsn.conversion.transformers_weights import check_model_type
from keras_vitmsn.conversion.transformers_weights import class_names_from_hf_config
from keras_vitmsn.conversion.transformers_weights import num_classes_from_hf_config
from keras_vitmsn.errors import CheckpointError
from keras_vitmsn.utils import read_json

_SHARD_INDEX = "model.safetensors.index.json"


def load_transformers_weights(path):
    """``{key: np.ndarray}`` from a safetensors file / shard index or a torch ``.bin``."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return load_safetensors(path)
    if path.endswith(".index.json"):
        index = read_json(path, "safetensors shard index")
        state = {}
        folder = os.path.dirname(path)
        for shard in sorted(set(index.get("weight_map", {}).values())):
            state.update(load_safetensors(os.path.join(folder, shard)))
        return state
    from keras_vitmsn.conversion.torch_io import load_torch_file

    state = load_torch_file(path)
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise CheckpointError(
            f"{path} is not a flat state dict of tensors (got {type(state).__name__})."
        )
    return state


def find_transformers_weights(directory):
    """The weights file of a transformers checkpoint directory (safetensors first)."""
    for name in ("model.safetensors", _SHARD_INDEX, "pytorch_model.bin"):
        candidate = os.path.join(directory, name)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(
        f"{directory} has a transformers config.json but no weights: expected "
        "model.safetensors, model.safetensors.index.json or pytorch_model.bin."
    )


class ConvertedCheckpoint:
    """A transformers or original MSN checkpoint converted to NumPy + Keras kwargs.

    Args:
        backbone_kwargs: ViTMSNBackbone constructor arguments.
        backbone_state: ``{hub_key: array}`` or None when weights were not read.
        converter_kwargs: ViTMSNImageConverter constructor arguments.
        head_state: ``{"classifier.weight", "classifier.bias"}`` or None.
        num_classes: outputs of that head, or None.
        class_names: the names of those outputs (transformers' ``id2label``), or None.
        key_names: ``{hub_key: key_in_the_file}`` for renamed keys (error messages).
        msn_state: projection head and prototypes of an MSN checkpoint, or None.
        origin: description of where it came from (metadata, messages).
    """

    def __init__(
        self,
        backbone_kwargs,
        backbone_state,
        converter_kwargs,
        head_state=None,
        num_classes=None,
        key_names=None,
        msn_state=None,
        origin=None,
        class_names=None,
    ):
        self.backbone_kwargs = dict(backbone_kwargs)
        self.backbone_state = backbone_state
        self.converter_kwargs = dict(converter_kwargs)
        self.head_state = head_state or None
        self.num_classes = num_classes
        self.class_names = class_names
        self.key_names = key_names or {}
        self.msn_state = msn_state
        self.origin = origin


def load_transformers_files(config_path, weights_path=None, preprocessor_path=None, origin=None):
    """A :class:`ConvertedCheckpoint` from the files of a transformers checkpoint.

    Args:
        config_path: its ``config.json`` (model_type "vit_msn").
        weights_path: ``model.safetensors`` (or shard index) / ``pytorch_model.bin``;
            None to read the architecture only.
        preprocessor_path: ``preprocessor_config.json`` or None (then the released
            ViT-MSN processor settings are used).
        origin: label for metadata and messages.
    """
    config = read_json(config_path, "transformers config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} is not a JSON object.")
    backbone_kwargs = backbone_kwargs_from_hf_config(config)
    preprocessor = None
    if preprocessor_path is not None:
        preprocessor = read_json(preprocessor_path, "image processor config")
    converter_kwargs = image_converter_kwargs_from_hf(preprocessor, config)
    backbone_state = head_state = key_names = num_classes = None
    if weights_path is not None:
        state = load_transformers_weights(weights_path)
        backbone_state, head_state, key_names = canonicalize_transformers_state(state)
        num_classes = num_classes_from_hf_config(config, head_state)
    return ConvertedCheckpoint(
        backbone_kwargs,
        backbone_state,
        converter_kwargs,
        head_state=head_state,
        num_classes=num_classes,
        key_names=key_names,
        origin=origin or os.path.dirname(os.path.abspath(config_path)),
        class_names=class_names_from_hf_config(config, num_classes),
    )


def load_transformers_checkpoint(directory, load_weights=True):
    """A :class:`ConvertedCheckpoint` from a ``save_pretrained`` directory."""
    directory = os.fspath(directory)
    config_path = os.path.join(directory, "config.json")
    # Before looking for weights: a checkpoint of another model says what it is.
    config = read_json(config_path, "transformers config")
    if isinstance(config, dict):
        check_model_type(config, config_path)
    preprocessor = os.path.join(directory, "preprocessor_config.json")
    return load_transformers_files(
        config_path,
        find_transformers_weights(directory) if load_weights else None,
        preprocessor if os.path.exists(preprocessor) else None,
        origin=os.path.abspath(directory),
    )


def load_msn_checkpoint(path, load_weights=True):
    """A :class:`ConvertedCheckpoint` from an original MSN ``*.pth.tar`` (needs torch).

    The architecture comes from the tensor shapes (the number of heads from the
    released models' widths, else from ``num_heads=``); the image converter is the
    released ViT-MSN processor at the checkpoint's resolution. ``load_weights=False``
    still reads the file, since the architecture is only recorded in the weights.
    """
    path = os.fspath(path)
    raw = msn_checkpoint.read_msn_checkpoint(path)
    backbone_kwargs = msn_checkpoint.msn_backbone_kwargs(raw["backbone_state"])
    msn_state = {
        "head": raw["head"],
        "prototypes": raw["prototypes"],
        "epoch": raw["epoch"],
        "encoder": raw["encoder"],
    }
    return ConvertedCheckpoint(
        backbone_kwargs,
        raw["backbone_state"] if load_weights else None,
        dict(RELEASED_PROCESSOR, image_size=backbone_kwargs["image_shape"][:2]),
        key_names=raw["key_names"],
        msn_state=msn_state,
        origin=os.path.abspath(path),
    )
