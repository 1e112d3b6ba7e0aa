"""Foreign checkpoints (transformers, original MSN) as sources for ``from_preset``.

A :class:`ConvertedCheckpoint` holds the NumPy weights of a checkpoint, already
re-keyed to transformers' hub names, and the Keras constructor arguments its config
implies. It builds backbones, classifiers' heads and image converters from them, and
writes itself as a Keras preset (what the hf:// cache and ``convert_checkpoint.py``
store).
"""

import json
import os

import numpy as np

from keras_vitmsn.conversion import msn_checkpoint
from keras_vitmsn.conversion.safetensors_io import CheckpointError, load_safetensors
from keras_vitmsn.conversion.transformers_weights import (
    OPTIONAL_KEYS,
    assign_weights,
    backbone_kwargs_from_hf_config,
    backbone_weight_map,
    canonicalize_transformers_state,
    convert_weights,
    classifier_head_weight_map,
    image_converter_kwargs_from_hf,
    num_classes_from_hf_config,
)
from keras_vitmsn.resampling import resample_position_embeddings

TRANSFORMERS_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SHARD_INDEX = "model.safetensors.index.json"


def read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} ({what}) is truncated or corrupted: {e}.") from e


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
    ):
        self.backbone_kwargs = dict(backbone_kwargs)
        self.backbone_state = backbone_state
        self.converter_kwargs = dict(converter_kwargs)
        self.head_state = head_state or None
        self.num_classes = num_classes
        self.key_names = key_names or {}
        self.msn_state = msn_state
        self.origin = origin
        self._native_backbone = None

    # -- sources interface (see keras_vitmsn.models.preset_io.PresetSource) --------
    has_task = property(lambda self: self.head_state is not None)
    task_kwargs = property(lambda self: {})
    has_image_converter = True

    def build_backbone(self, load_weights=True, **overrides):
        from keras_vitmsn.models.backbone import ViTMSNBackbone
        from keras_vitmsn.models.preset_io import build_with_values, check_backbone_overrides

        check_backbone_overrides(overrides)
        if load_weights and not overrides and self._native_backbone is not None:
            # The model just written to the cache: hand it over instead of rebuilding.
            backbone, self._native_backbone = self._native_backbone, None
            return backbone
        kwargs = dict(self.backbone_kwargs)
        kwargs.update(overrides)
        if kwargs["num_heads"] is None:
            raise ValueError(
                f"{self.origin}: the number of attention heads is not recorded in the "
                f"checkpoint, and hidden_dim={kwargs['hidden_dim']} is none of the released "
                "MSN widths (384, 768, 1024: 6, 12, 16 heads); pass it, e.g. "
                "from_preset(path, num_heads=...)."
            )
        if not load_weights:
            return ViTMSNBackbone(**kwargs)
        return build_with_values(
            lambda: ViTMSNBackbone(**kwargs),
            lambda model: {id(v): value for v, value in self.convert_backbone(model).values()},
        )

    def assign_backbone(self, backbone):
        """Assign the checkpoint to an existing backbone (strictly)."""
        for variable, value in self.convert_backbone(backbone).values():
            variable.assign(value)

    def convert_backbone(self, backbone):
        """``{key: (variable, value)}`` for ``backbone``, checked strictly; the
        position table is resampled if the backbone's patch grid differs."""
        if self.backbone_state is None:
            raise ValueError(f"{self.origin}: weights were not loaded (load_weights=False).")
        state = self.backbone_state
        source_shape = self.backbone_kwargs["image_shape"]
        patch = self.backbone_kwargs["patch_size"]
        source_grid = (source_shape[0] // patch, source_shape[1] // patch)
        key = "embeddings.position_embeddings"
        if backbone.grid_size != source_grid and key in state and backbone.patch_size == patch:
            state = dict(state)
            table = np.asarray(state[key])
            state[key] = resample_position_embeddings(table, source_grid, backbone.grid_size)
        return convert_weights(
            backbone_weight_map(backbone),
            state,
            optional_keys=OPTIONAL_KEYS,
            key_names=self.key_names,
        )

    def load_task_weights(self, classifier):
        assign_weights(classifier_head_weight_map(classifier), self.head_state)

    def build_image_converter(self, cls, **overrides):
        kwargs = dict(self.converter_kwargs)
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- writing ------------------------------------------------------------------
    def save_keras_preset(self, directory, metadata=None):
        """Write the checkpoint as a Keras preset; returns the backbone it built.

        The preset leaves ``data_format`` out, so it loads in the layout of
        ``keras.config.image_data_format()`` wherever it is used.
        """
        from keras_vitmsn.image_converter import ViTMSNImageConverter
        from keras_vitmsn.models import preset_io
        from keras_vitmsn.models.classifier import ViTMSNClassifier

        backbone = self.build_backbone(load_weights=True)
        metadata = dict(metadata or {})
        metadata.setdefault("source", self.origin)
        preset_io.write_backbone(backbone, directory, metadata=metadata, drop_data_format=True)
        converter = self.build_image_converter(
            ViTMSNImageConverter, data_format=backbone.data_format
        )
        preset_io.write_image_converter(converter, directory, drop_data_format=True)
        if self.has_task:
            classifier = ViTMSNClassifier(
                backbone, num_classes=self.num_classes, preprocessor=converter
            )
            self.load_task_weights(classifier)
            preset_io.write_task(classifier, directory, drop_data_format=True)
        if self.msn_state is not None:
            msn_checkpoint.save_msn_pretraining_state(
                self.msn_state, os.path.join(directory, msn_checkpoint.MSN_HEAD_FILE)
            )
        return backbone


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
    )


def load_transformers_checkpoint(directory, load_weights=True):
    """A :class:`ConvertedCheckpoint` from a ``save_pretrained`` directory."""
    directory = os.fspath(directory)
    preprocessor = os.path.join(directory, "preprocessor_config.json")
    return load_transformers_files(
        os.path.join(directory, "config.json"),
        find_transformers_weights(directory) if load_weights else None,
        preprocessor if os.path.exists(preprocessor) else None,
        origin=os.path.abspath(directory),
    )


def load_msn_checkpoint(path, load_weights=True):
    """A :class:`ConvertedCheckpoint` from an original MSN ``*.pth.tar`` (needs torch).

    The architecture comes from the tensor shapes (the number of heads from the
    released models' widths, else from ``num_heads=``); the image converter is the
    released ViT-MSN processor at the checkpoint's resolution. ``load_weights=False`` still reads the file, since
    the architecture is only recorded in the weights.
    """
    from keras_vitmsn.conversion.transformers_weights import _RELEASED_PROCESSOR

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
        dict(_RELEASED_PROCESSOR, image_size=backbone_kwargs["image_shape"][:2]),
        key_names=raw["key_names"],
        msn_state=msn_state,
        origin=os.path.abspath(path),
    )
