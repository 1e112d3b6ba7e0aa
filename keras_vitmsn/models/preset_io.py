"""``from_preset`` / ``save_to_preset`` for ViT-MSN models, in keras-hub's preset layout.

A Keras preset is a directory:

- ``config.json``: ``keras.saving.serialize_keras_object(backbone)``;
- ``model.weights.h5``: ``backbone.save_weights``;
- ``metadata.json``: versions, parameter count, date, source;
- tasks add ``task.json`` (the serialised classifier) and ``task.weights.h5`` (the
  head's variables only, keyed by their path inside the task, e.g.
  ``classifier/kernel``);
- ``image_converter.json``: the serialised :class:`ViTMSNImageConverter`;
- presets converted from an original MSN checkpoint add ``msn_head.weights.h5``
  (see :mod:`keras_vitmsn.conversion.msn_checkpoint`).

``from_preset`` resolves its argument to a *source*, then the class builds itself from
it: a :class:`KerasPresetSource` (a directory as above, or the hf:// cache) or a
:class:`keras_vitmsn.conversion.checkpoints.ConvertedCheckpoint` (transformers or
MSN checkpoints, converted in memory).
"""

import datetime
import inspect
import json
import os

import h5py
import keras
import numpy as np

from keras_vitmsn import presets as preset_table
from keras_vitmsn.conversion.hub import PRESET_FORMAT_VERSION, preset_format
from keras_vitmsn.conversion.safetensors_io import CheckpointError

CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
TASK_CONFIG_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
IMAGE_CONVERTER_FILE = "image_converter.json"


class classproperty:
    """A read-only property on the class itself (``ViTMSNBackbone.presets``)."""

    def __init__(self, getter):
        self.getter = getter
        self.__doc__ = getter.__doc__

    def __get__(self, instance, owner):
        return self.getter(owner)


class PresetMixin:
    """Adds ``presets``, ``from_preset`` and ``save_to_preset`` (keras-hub conventions)."""

    @classproperty
    def presets(cls):
        """The built-in presets: ``{name: {"metadata", "hf_handle", "architecture"}}``."""
        return preset_table.list_presets()

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Instantiate from a preset name, hf:// handle, directory or MSN checkpoint.

        ``preset`` may be:

        1. a built-in name (see ``cls.presets``), e.g. ``"vit_msn_small"``: fetched
           from its Hugging Face repository, then as 2;
        2. ``"hf://org/repo"``: a transformers ViT-MSN checkpoint on the hub, fetched
           with huggingface_hub (config.json + model.safetensors, or
           pytorch_model.bin), converted, and cached as a Keras preset under
           ``$KERAS_HOME/keras_vitmsn/hf/`` (``~/.keras`` by default): later loads
           read the cache only, with no network;
        3. a local directory with a transformers checkpoint (``save_pretrained``);
        4. a local directory with a Keras preset (``save_to_preset``);
        5. an original facebookresearch/msn ``*.pth.tar`` file (needs torch).

        Args:
            preset: see above.
            load_weights: bool; False builds the architecture with fresh weights.
            **kwargs: constructor overrides, e.g. ``dtype="bfloat16"`` or
                ``image_shape=(384, 384, 3)`` (position embeddings are bicubically
                resampled once, by :func:`keras_vitmsn.resample_position_embeddings`).
                Classifiers also take ``num_classes`` (a new head), ``activation``,
                ``dropout``, ``preprocessor``.

        Raises:
            ValueError: unknown preset name (the message lists the valid ones),
                unusable directory, or a checkpoint that does not fit.
            keras_vitmsn.conversion.PresetDownloadError: the hub could not be reached.
            keras_vitmsn.conversion.CheckpointError: a truncated or corrupted file.

        Example:
        >>> import tempfile
        >>> import keras_vitmsn as kv
        >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8,
        ...     hidden_dim=32, num_layers=1, num_heads=4, intermediate_dim=64)
        >>> preset_dir = tempfile.mkdtemp()
        >>> backbone.save_to_preset(preset_dir)
        >>> restored = kv.ViTMSNBackbone.from_preset(preset_dir)
        >>> bigger = kv.ViTMSNBackbone.from_preset(preset_dir, image_shape=(48, 48, 3))
        >>> bigger.grid_size
        (6, 6)
        """
        source = resolve_preset(preset, load_weights=load_weights)
        return cls._from_preset_source(source, load_weights=load_weights, **kwargs)

    @classmethod
    def _from_preset_source(cls, source, load_weights=True, **kwargs):
        raise NotImplementedError(f"{cls.__name__} cannot be built from a preset.")


# -- resolving the `preset` argument -----------------------------------------------


def resolve_preset(preset, load_weights=True):
    """Turn a ``from_preset`` argument into a source object (see module docstring)."""
    from keras_vitmsn.conversion import checkpoints, hub, msn_checkpoint

    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str):
        raise TypeError(
            f"`preset` must be a string or path, got {type(preset).__name__}: {preset!r}."
        )
    if preset.startswith("hf://"):
        return hub.load_hf_source(preset, load_weights=load_weights)
    # Built-in names win over a same-named local folder (pass "./name" for that).
    if preset_table.is_preset_name(preset):
        handle = preset_table.get_preset(preset)["hf_handle"]
        return hub.load_hf_source(handle, load_weights=load_weights)
    if os.path.isdir(preset):
        return _directory_source(preset, load_weights)
    if os.path.isfile(preset):
        if msn_checkpoint.is_msn_checkpoint_path(preset):
            return checkpoints.load_msn_checkpoint(preset, load_weights=load_weights)
        raise ValueError(
            f"{preset} is a file, but from_preset only reads original MSN checkpoints "
            f"({', '.join(msn_checkpoint.MSN_SUFFIXES)}) as single files; pass the "
            "directory holding a transformers checkpoint or a Keras preset instead."
        )
    if "://" in preset:
        raise ValueError(
            f"Unsupported preset handle {preset!r}: only 'hf://org/repo' is supported."
        )
    # Neither a built-in name nor an existing path: the error lists the valid names.
    preset_table.get_preset(preset)


def _directory_source(path, load_weights):
    from keras_vitmsn.conversion import checkpoints

    config_path = os.path.join(path, CONFIG_FILE)
    if os.path.exists(config_path):
        config = checkpoints.read_json(config_path, "config")
        if isinstance(config, dict) and "model_type" in config:
            return checkpoints.load_transformers_checkpoint(path, load_weights=load_weights)
        if isinstance(config, dict) and "class_name" in config and "config" in config:
            return KerasPresetSource(path)
        raise ValueError(
            f"{config_path} is neither a transformers config (with 'model_type') nor a "
            "serialised Keras backbone (with 'class_name' and 'config')."
        )
    if os.path.exists(os.path.join(path, IMAGE_CONVERTER_FILE)):
        return KerasPresetSource(path)
    raise ValueError(
        f"{path} holds neither a Keras preset (config.json, model.weights.h5, "
        "metadata.json; written by save_to_preset) nor a transformers checkpoint "
        "(config.json with model_type 'vit_msn' + model.safetensors or "
        "pytorch_model.bin; written by save_pretrained)."
    )


_BACKBONE_ARGS = None


def backbone_argument_names():
    global _BACKBONE_ARGS
    if _BACKBONE_ARGS is None:
        from keras_vitmsn.models.backbone import ViTMSNBackbone

        params = inspect.signature(ViTMSNBackbone.__init__).parameters
        _BACKBONE_ARGS = tuple(
            name for name, p in params.items() if name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD
        )
    return _BACKBONE_ARGS


def check_backbone_overrides(overrides):
    unknown = sorted(set(overrides) - set(backbone_argument_names()))
    if unknown:
        raise ValueError(
            f"Unknown from_preset argument(s) for the backbone: {', '.join(unknown)}. "
            f"Accepted: {', '.join(backbone_argument_names())}."
        )


# -- Keras preset directories --------------------------------------------------------


class KerasPresetSource:
    """A Keras preset directory (written by ``save_to_preset`` or the hf:// cache)."""

    def __init__(self, path, origin=None):
        self.path = os.fspath(path)
        self.origin = origin or os.path.abspath(self.path)
        self._task_config = None

    def _file(self, name):
        return os.path.join(self.path, name)

    def _json(self, name):
        from keras_vitmsn.conversion.checkpoints import read_json

        path = self._file(name)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"The preset {self.origin} has no {name} (files: "
                f"{', '.join(sorted(os.listdir(self.path)))})."
            )
        return read_json(path, name)

    @property
    def has_task(self):
        return os.path.exists(self._file(TASK_CONFIG_FILE))

    @property
    def task_config(self):
        if self._task_config is None:
            self._task_config = _check_class(self._json(TASK_CONFIG_FILE), "ViTMSNClassifier", self.origin)
        return self._task_config

    @property
    def num_classes(self):
        return self.task_config["config"]["num_classes"] if self.has_task else None

    @property
    def task_kwargs(self):
        """The head's constructor arguments saved in task.json."""
        config = dict(self.task_config["config"])
        for key in ("backbone", "preprocessor", "num_classes", "trainable"):
            config.pop(key, None)
        # A plain policy follows the backbone; a quantised head's policy map stays.
        dtype = config.pop("dtype", None)
        if isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicyMap":
            config["dtype"] = dtype
        return config

    def _backbone_config(self):
        return _check_class(self._json(CONFIG_FILE), "ViTMSNBackbone", self.origin)

    def build_backbone(self, load_weights=True, **overrides):
        from keras_vitmsn.models.backbone import ViTMSNBackbone
        from keras_vitmsn.resampling import resample_position_embeddings

        check_backbone_overrides(overrides)
        config = dict(self._backbone_config()["config"])
        image_shape = overrides.pop("image_shape", None)
        config.update(overrides)
        native = dict(config, image_shape=tuple(config["image_shape"]))
        target = dict(native, image_shape=tuple(image_shape or native["image_shape"]))
        if not load_weights:
            return ViTMSNBackbone.from_config(target)
        path = self._file(MODEL_WEIGHTS_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"The preset {self.origin} has no {MODEL_WEIGHTS_FILE}.")

        def read(model):
            try:
                return capture_keras_weights(model, path)
            except (OSError, KeyError) as e:
                raise CheckpointError(
                    f"{path} is truncated or corrupted, or is not a ViT-MSN backbone's "
                    f"weights file: {e}"
                ) from e
            except ValueError as e:
                hint = ""
                if (preset_format(self.path) or PRESET_FORMAT_VERSION) < PRESET_FORMAT_VERSION:
                    hint = (
                        f" The preset is in format {preset_format(self.path)} (separate "
                        "query/key/value weights, keras-vitmsn before the fused qkv "
                        "projection); convert the original checkpoint again "
                        "(from_preset on it, then save_to_preset)."
                    )
                raise ValueError(
                    f"{path} does not fit the backbone described by {CONFIG_FILE}: {e}{hint}"
                ) from e

        if target == native:
            return build_with_values(lambda: ViTMSNBackbone.from_config(native), read)
        # Another resolution: read the stored weights through a model of the stored
        # shape (never initialised), then resample the position table once.
        source_model, values = read_without_initialising(
            lambda: ViTMSNBackbone.from_config(native), read
        )

        def resampled(model):
            out = {}
            for src, dst in zip(source_model.weights, model.weights):
                value = values[id(src)]
                if src is source_model.embeddings.position_embeddings:
                    value = resample_position_embeddings(
                        keras.ops.convert_to_numpy(value), source_model.grid_size, model.grid_size
                    )
                out[id(dst)] = value
            return out

        return build_with_values(lambda: ViTMSNBackbone.from_config(target), resampled)

    def load_task_weights(self, task):
        read_task_weights(task, self._file(TASK_WEIGHTS_FILE))

    def build_image_converter(self, cls, **overrides):
        config = _check_class(self._json(IMAGE_CONVERTER_FILE), cls.__name__, self.origin)
        inner = dict(config["config"])
        inner.update(overrides)
        return cls.from_config(inner)

    @property
    def has_image_converter(self):
        return os.path.exists(self._file(IMAGE_CONVERTER_FILE))


def _check_class(config, expected, origin):
    if not isinstance(config, dict) or "config" not in config:
        raise CheckpointError(f"The preset {origin} has a malformed config: {config!r:.200}")
    name = config.get("class_name")
    if name != expected:
        raise ValueError(
            f"The preset {origin} describes a {name!r}, not a {expected!r}."
        )
    return config


# -- building without random initialisation -------------------------------------------
#
# Creating a backbone runs every variable's initialiser: truncated-normal sampling of
# 86M values for vit-msn-base takes 1.5-8 s on CPU depending on the backend, several
# times longer than reading the weights. When the weights are about to be overwritten,
# the model is built inside ``keras.StatelessScope(initialize_variables=False)``, where
# Keras defers variable initialisation, and each variable is then initialised once,
# directly with its checkpoint value (Keras' own deferred-initialisation path).


class _Value:
    """An initialiser returning a fixed array (checked against the variable's shape)."""

    def __init__(self, value):
        self.value = value

    def __call__(self, shape, dtype=None):
        if tuple(shape) != tuple(self.value.shape):
            raise ValueError(f"Initial value of shape {self.value.shape} for a variable of shape {shape}.")
        return self.value


def _pending_variables():
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute("uninitialized_variables", []) or []


def _forget(variables):
    from keras.src.backend.common import global_state

    ids = {id(v) for v in variables}
    pending = [v for v in _pending_variables() if id(v) not in ids]
    global_state.set_global_attribute("uninitialized_variables", pending)


def _build_deferred(factory):
    """``factory()`` inside a StatelessScope: ``(model, its uninitialised variables)``."""
    before = {id(v) for v in _pending_variables()}
    try:
        with keras.StatelessScope(initialize_variables=False):
            model = factory()
    except BaseException:
        _forget([v for v in _pending_variables() if id(v) not in before])
        raise
    return model, [v for v in _pending_variables() if id(v) not in before]


def build_with_values(factory, values_for):
    """``factory()`` with its variables initialised from ``values_for(model)``.

    Args:
        factory: callable building the model.
        values_for: callable ``model -> {id(variable): array}``; variables it leaves
            out are initialised by their own initialisers.

    Returns:
        The model, every variable initialised exactly once.
    """
    model, created = _build_deferred(factory)
    try:
        values = values_for(model)
        for variable in created:
            if id(variable) in values:
                variable._initializer = _Value(values[id(variable)])
            variable._deferred_initialize()
    finally:
        # Initialised, or abandoned after an error: either way not Keras' to initialise.
        _forget(created)
    return model


def read_without_initialising(factory, reader):
    """``(model, reader(model))`` for a model whose variables are never initialised
    (only its structure is used, e.g. to read a weights file of another shape)."""
    model, created = _build_deferred(factory)
    try:
        return model, reader(model)
    finally:
        _forget(created)


def capture_keras_weights(model, path):
    """Read a ``save_weights`` file for an *uninitialised* model: ``{id(var): value}``.

    ``load_weights`` inside a StatelessScope records each assignment in the scope
    instead of writing the variable, so nothing needs to be initialised first; Keras
    still checks every variable count and shape.
    """
    with keras.StatelessScope(initialize_variables=False) as scope:
        model.load_weights(path)
    values = {}
    for variable in model.variables:
        value = scope.get_current_value(variable)
        if value is not None:
            values[id(variable)] = value
    return values


# -- writing -------------------------------------------------------------------------


def _json_dump(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")


def _json_default(obj):
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


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
    from keras_vitmsn.version import __version__

    os.makedirs(preset_dir, exist_ok=True)
    config = _serialize(backbone, drop_data_format)
    config["config"].update(config_overrides or {})
    _json_dump(config, os.path.join(preset_dir, CONFIG_FILE))
    backbone.save_weights(os.path.join(preset_dir, MODEL_WEIGHTS_FILE))
    meta = {
        "preset_format": PRESET_FORMAT_VERSION,
        "keras_version": keras.__version__,
        "keras_vitmsn_version": __version__,
        "parameter_count": int(backbone.count_params()),
        "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(metadata or {})
    _json_dump(meta, os.path.join(preset_dir, METADATA_FILE))


def write_image_converter(converter, preset_dir, drop_data_format=False):
    os.makedirs(preset_dir, exist_ok=True)
    _json_dump(
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
    _json_dump(config, os.path.join(preset_dir, TASK_CONFIG_FILE))
    with h5py.File(os.path.join(preset_dir, TASK_WEIGHTS_FILE), "w") as f:
        f.attrs["format"] = "keras_vitmsn.task_weights/1"
        for key, variable in task_variables(task).items():
            f.create_dataset(key, data=keras.ops.convert_to_numpy(variable))
    if getattr(task, "preprocessor", None) is not None:
        write_image_converter(task.preprocessor, preset_dir, drop_data_format)


def read_task_weights(task, path):
    """Assign task.weights.h5 to the task's head, strictly (names and shapes)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: the preset's head weights are needed.")
    expected = task_variables(task)
    stored = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, obj: stored.__setitem__(name, obj[()])
                if isinstance(obj, h5py.Dataset)
                else None
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
