"""The sources ``from_preset`` reads from (see :mod:`keras_vitmsn.presets.resolve`).

A source builds models of the classes handed to it (it never imports them):

- :class:`KerasPresetSource`: a Keras preset directory (``save_to_preset``, the hf://
  cache, or a Keras preset uploaded to the hub);
- :class:`ConvertedSource`: a transformers or original MSN checkpoint, read into
  NumPy by :mod:`keras_vitmsn.conversion` and converted in memory.

Both offer ``load_backbone(backbone_cls, load_weights, **overrides)``,
``load_image_converter(converter_cls, **overrides)``, ``load_task_weights(task)``,
``has_task`` (a classification head), ``num_classes``, ``task_kwargs``,
``task_kwargs_for(task_cls)``, ``has_image_converter`` and ``origin``.
"""

import inspect
import os

import keras
import numpy as np

from keras_vitmsn.backend import keras_internals
from keras_vitmsn.conversion.transformers_weights import OPTIONAL_KEYS
from keras_vitmsn.conversion.transformers_weights import assign_weights
from keras_vitmsn.conversion.transformers_weights import backbone_weight_map
from keras_vitmsn.conversion.transformers_weights import classifier_head_weight_map
from keras_vitmsn.conversion.transformers_weights import convert_weights
from keras_vitmsn.errors import CheckpointError
from keras_vitmsn.layers.resampling import resample_position_embeddings
from keras_vitmsn.presets import file_format as ff
from keras_vitmsn.utils import read_json


def constructor_argument_names(cls):
    """The keyword arguments ``cls.__init__`` takes (overrides ``from_preset`` accepts)."""
    params = inspect.signature(cls.__init__).parameters
    return tuple(
        name for name, p in params.items() if name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD
    )


def check_overrides(cls, overrides):
    accepted = constructor_argument_names(cls)
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ValueError(
            f"Unknown from_preset argument(s) for the backbone: {', '.join(unknown)}. "
            f"Accepted: {', '.join(accepted)}."
        )


# Arguments that fix the shapes of the stored weights: loading them under other
# values cannot work. A Keras preset also records its head count and mask token
# (which adds a variable); a converted MSN checkpoint only infers its head count, so
# there it may be set.
WEIGHT_SHAPE_ARGUMENTS = ("patch_size", "hidden_dim", "num_layers", "intermediate_dim", "qkv_bias")
RECORDED_ARGUMENTS = WEIGHT_SHAPE_ARGUMENTS + ("num_heads", "use_mask_token")
FREE_ARGUMENTS = (
    "image_shape (height and width: the position embeddings are resampled), dtype, "
    "dropout_rate, attention_dropout, layer_norm_epsilon, hidden_act, data_format, name"
)


def check_weight_overrides(stored, overrides, bound, origin):
    """Refuse overrides that contradict the weights about to be loaded.

    Args:
        stored: the constructor arguments the weights were saved with.
        overrides: the caller's ``from_preset`` arguments.
        bound: names whose value may not change (``WEIGHT_SHAPE_ARGUMENTS`` or
            ``RECORDED_ARGUMENTS``).
        origin: the preset, for the message.
    """
    conflicts = [
        f"{key}={overrides[key]!r} (stored: {stored[key]!r})"
        for key in bound
        if key in overrides and stored.get(key) is not None and overrides[key] != stored[key]
    ]
    if "image_shape" in overrides:
        new, old = tuple(overrides["image_shape"]), tuple(stored["image_shape"])
        if len(new) == 3 and new[2] != old[2]:
            conflicts.append(f"image_shape={new!r}: {new[2]} channels (stored: {old[2]})")
    if conflicts:
        raise ValueError(
            f"from_preset arguments conflict with the weights stored in {origin}: "
            f"{'; '.join(conflicts)}. These fix the shapes of the weights (or, for "
            "num_heads and use_mask_token, are recorded with them) and cannot be "
            f"overridden when loading them. Arguments that can: {FREE_ARGUMENTS}. "
            "For a fresh model of another architecture pass load_weights=False."
        )


#: The tasks a preset's task.json may describe (names only: presets never import the
#: models). Only the classifier's has weights of its own (task.weights.h5).
CLASSIFIER_TASK = "ViTMSNClassifier"
TASK_CLASS_NAMES = (CLASSIFIER_TASK, "ViTMSNFeatureExtractor")


def _check_class(config, expected, origin):
    """``config`` if it is a serialised object of the class named ``expected`` (a name
    or a tuple of accepted names)."""
    if not isinstance(config, dict) or "config" not in config:
        raise CheckpointError(f"The preset {origin} has a malformed config: {config!r:.200}")
    name = config.get("class_name")
    accepted = (expected,) if isinstance(expected, str) else tuple(expected)
    if name not in accepted:
        raise ValueError(
            f"The preset {origin} describes a {name!r}, not a "
            f"{' or a '.join(repr(a) for a in accepted)}."
        )
    return config


class KerasPresetSource:
    """A Keras preset directory (written by ``save_to_preset`` or the hf:// cache)."""

    def __init__(self, path, origin=None):
        self.path = os.fspath(path)
        self.origin = origin or os.path.abspath(self.path)
        self._task_config = None

    def _file(self, name):
        return os.path.join(self.path, name)

    def _json(self, name):
        path = self._file(name)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"The preset {self.origin} has no {name} (files: "
                f"{', '.join(sorted(os.listdir(self.path)))})."
            )
        return read_json(path, name)

    @property
    def task_class_name(self):
        """The class task.json describes, or None without one."""
        if not os.path.exists(self._file(ff.TASK_CONFIG_FILE)):
            return None
        return self.task_config["class_name"]

    @property
    def has_task(self):
        """Whether the preset holds a classification head (a feature extractor's
        task.json has none: it is the backbone with a pooling)."""
        return self.task_class_name == CLASSIFIER_TASK

    @property
    def task_config(self):
        if self._task_config is None:
            self._task_config = _check_class(
                self._json(ff.TASK_CONFIG_FILE), TASK_CLASS_NAMES, self.origin
            )
        return self._task_config

    @property
    def num_classes(self):
        return self.task_config["config"]["num_classes"] if self.has_task else None

    def task_kwargs_for(self, task_cls):
        """:attr:`task_kwargs` when task.json describes a ``task_cls``, else ``{}``
        (e.g. a feature extractor loaded from a classifier's preset ignores its head)."""
        return self.task_kwargs if self.task_class_name == task_cls.__name__ else {}

    @property
    def task_kwargs(self):
        """The task's constructor arguments saved in task.json."""
        config = dict(self.task_config["config"])
        for key in ("backbone", "preprocessor", "num_classes", "trainable"):
            config.pop(key, None)
        # A plain policy follows the backbone; a quantised head's policy map stays.
        dtype = config.pop("dtype", None)
        if isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicyMap":
            config["dtype"] = dtype
        return config

    @property
    def has_image_converter(self):
        return os.path.exists(self._file(ff.IMAGE_CONVERTER_FILE))

    @property
    def msn_head_path(self):
        """``msn_head.weights.h5`` of this preset, or None."""
        path = self._file(ff.MSN_HEAD_FILE)
        return path if os.path.exists(path) else None

    def load_backbone(self, backbone_cls, load_weights=True, **overrides):
        check_overrides(backbone_cls, overrides)
        config = dict(
            _check_class(self._json(ff.CONFIG_FILE), backbone_cls.__name__, self.origin)["config"]
        )
        if load_weights:
            check_weight_overrides(config, overrides, RECORDED_ARGUMENTS, self.origin)
        image_shape = overrides.pop("image_shape", None)
        config.update(overrides)
        native = dict(config, image_shape=tuple(config["image_shape"]))
        target = dict(native, image_shape=tuple(image_shape or native["image_shape"]))
        if not load_weights:
            return backbone_cls.from_config(target)
        path = self._file(ff.MODEL_WEIGHTS_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"The preset {self.origin} has no {ff.MODEL_WEIGHTS_FILE}.")

        def read(model):
            try:
                return keras_internals.capture_weights(model, path)
            except (OSError, KeyError) as e:
                raise CheckpointError(
                    f"{path} is truncated or corrupted, or is not a ViT-MSN backbone's "
                    f"weights file: {e}"
                ) from e
            except ValueError as e:
                raise ValueError(
                    f"{path} does not fit the backbone described by {ff.CONFIG_FILE}: {e}"
                ) from e

        if target == native:
            return keras_internals.build_with_values(lambda: backbone_cls.from_config(native), read)
        # Another resolution: read the stored weights through a model of the stored
        # shape (never initialised), then resample the position table once.
        source_model, values = keras_internals.read_without_initialising(
            lambda: backbone_cls.from_config(native), read
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

        return keras_internals.build_with_values(
            lambda: backbone_cls.from_config(target), resampled
        )

    def load_task_weights(self, task):
        ff.read_task_weights(task, self._file(ff.TASK_WEIGHTS_FILE))

    def load_image_converter(self, converter_cls, **overrides):
        config = _check_class(
            self._json(ff.IMAGE_CONVERTER_FILE), converter_cls.__name__, self.origin
        )
        inner = dict(config["config"])
        inner.update(overrides)
        return converter_cls.from_config(inner)


class ConvertedSource:
    """A :class:`keras_vitmsn.conversion.ConvertedCheckpoint` (NumPy weights + the Keras
    constructor arguments its config implies) as a source of Keras models."""

    has_image_converter = True
    msn_head_path = None

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        self.origin = checkpoint.origin

    has_task = property(lambda self: self.checkpoint.head_state is not None)
    task_class_name = property(lambda self: CLASSIFIER_TASK if self.has_task else None)
    num_classes = property(lambda self: self.checkpoint.num_classes)

    @property
    def task_kwargs(self):
        names = self.checkpoint.class_names
        return {} if names is None else {"class_names": list(names)}

    def task_kwargs_for(self, task_cls):
        return {}  # a checkpoint stores no task settings beyond its head

    def load_backbone(self, backbone_cls, load_weights=True, **overrides):
        check_overrides(backbone_cls, overrides)
        kwargs = dict(self.checkpoint.backbone_kwargs)
        if load_weights:
            check_weight_overrides(kwargs, overrides, WEIGHT_SHAPE_ARGUMENTS, self.origin)
        kwargs.update(overrides)
        if kwargs["num_heads"] is None:
            raise ValueError(
                f"{self.origin}: the number of attention heads is not recorded in the "
                f"checkpoint, and hidden_dim={kwargs['hidden_dim']} is none of the released "
                "MSN widths (384, 768, 1024: 6, 12, 16 heads); pass it, e.g. "
                "from_preset(path, num_heads=...)."
            )
        # from_config: the checkpoint's image_shape is (height, width, channels) and
        # is read in that order whatever layout the backbone is built in.
        if not load_weights:
            return backbone_cls.from_config(kwargs)
        return keras_internals.build_with_values(
            lambda: backbone_cls.from_config(kwargs),
            lambda model: {id(v): value for v, value in self.convert_backbone(model).values()},
        )

    def convert_backbone(self, backbone):
        """``{key: (variable, value)}`` for ``backbone``, checked strictly; the
        position table is resampled if the backbone's patch grid differs."""
        checkpoint = self.checkpoint
        if checkpoint.backbone_state is None:
            raise ValueError(f"{self.origin}: weights were not loaded (load_weights=False).")
        state = checkpoint.backbone_state
        source_shape = checkpoint.backbone_kwargs["image_shape"]
        patch = checkpoint.backbone_kwargs["patch_size"]
        source_grid = (source_shape[0] // patch, source_shape[1] // patch)
        key = "embeddings.position_embeddings"
        if backbone.grid_size != source_grid and key in state and backbone.patch_size == patch:
            state = dict(state)
            table_ = np.asarray(state[key])
            state[key] = resample_position_embeddings(table_, source_grid, backbone.grid_size)
        return convert_weights(
            backbone_weight_map(backbone),
            state,
            optional_keys=OPTIONAL_KEYS,
            key_names=checkpoint.key_names,
        )

    def load_task_weights(self, classifier):
        assign_weights(classifier_head_weight_map(classifier), self.checkpoint.head_state)

    def load_image_converter(self, converter_cls, **overrides):
        kwargs = dict(self.checkpoint.converter_kwargs)
        kwargs.update(overrides)
        return converter_cls(**kwargs)

    def write_keras_preset(self, directory, classes, metadata=None, **backbone_overrides):
        """Write the checkpoint as a Keras preset into ``directory``; returns the backbone.

        The preset leaves ``data_format`` out, so it loads in the layout of
        ``keras.config.image_data_format()`` wherever it is used. MSN pretraining
        state (projection head, prototypes) is not written here: see
        :func:`keras_vitmsn.convert_to_preset`.
        """
        backbone = self.load_backbone(classes("backbone"), load_weights=True, **backbone_overrides)
        metadata = dict(metadata or {})
        metadata.setdefault("source", self.origin)
        ff.write_backbone(backbone, directory, metadata=metadata, drop_data_format=True)
        converter = self.load_image_converter(
            classes("image_converter"), data_format=backbone.data_format
        )
        ff.write_image_converter(converter, directory, drop_data_format=True)
        if self.has_task:
            classifier = classes("classifier")(
                backbone,
                num_classes=self.num_classes,
                preprocessor=converter,
                **self.task_kwargs,
            )
            self.load_task_weights(classifier)
            ff.write_task(classifier, directory, drop_data_format=True)
        return backbone
