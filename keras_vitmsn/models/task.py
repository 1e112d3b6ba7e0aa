"""ViTMSNTask: the base class of the models built on a backbone (as keras-hub's ``Task``).

:class:`~keras_vitmsn.models.classifier.ViTMSNClassifier` and
:class:`~keras_vitmsn.models.feature_extractor.ViTMSNFeatureExtractor` share their
input handling (an optional :class:`ViTMSNImageConverter`, checked against the
backbone, or the one a preset carries), their ``export`` signature, serialisation and
``from_preset`` / ``save_to_preset``; subclasses add their own arguments.
"""

import keras

from keras_vitmsn.images.converter import ViTMSNImageConverter
from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.models.backbone import preset_backbone_overrides
from keras_vitmsn.models.backbone import write_portable_backbone
from keras_vitmsn.models.export import INPUT_NAME
from keras_vitmsn.models.export import ExportMixin
from keras_vitmsn.models.preprocessor import ViTMSNImageClassifierPreprocessor
from keras_vitmsn.models.quantization import QuantizationMixin
from keras_vitmsn.models.quantization import dtype_config
from keras_vitmsn.models.quantization import float_policy
from keras_vitmsn.presets import file_format
from keras_vitmsn.presets.mixin import PresetMixin
from keras_vitmsn.presets.mixin import save_preset_directory

_AUTO = object()  # from_preset's "attach the preset's image converter" default.


class ViTMSNTask(ExportMixin, QuantizationMixin, PresetMixin, keras.Model):
    """A :class:`ViTMSNBackbone` with an optional image converter in front.

    Args:
        backbone: a :class:`ViTMSNBackbone`.
        preprocessor: None (images already resized and normalised) or a
            :class:`~keras_vitmsn.models.preprocessor.ViTMSNImageClassifierPreprocessor`
            (a bare :class:`keras_vitmsn.ViTMSNImageConverter` is wrapped in one)
            applied at the start of ``call``, so raw uint8 images can be passed. It
            takes ``(x, y=None, sample_weight=None)`` as keras-hub's preprocessors
            do, so ``ds.map(task.preprocessor)`` feeds a task built with
            ``preprocessor=None`` exactly as the task with it. Its ``data_format``
            must be the backbone's, and its ``image_size`` the backbone's unless
            ``interpolate_pos_encoding``.
        interpolate_pos_encoding: bool, accept images of another size than the
            backbone's ``image_shape``.
        dtype: dtype policy; defaults to the backbone's float policy.

    ``predict``, ``evaluate`` and ``fit`` check the shape of array and ``tf.data``
    inputs symbolically before Keras compiles a step, so a wrong-shaped input
    raises its ValueError and leaves the model usable (on JAX a failure inside the
    compiled step would leave the model's variables emptied).
    """

    #: The ``from_preset`` keyword arguments that are the task's own; the others go
    #: to the backbone (``image_shape``, ``dtype`` ...).
    preset_arguments = ("interpolate_pos_encoding", "compile")
    # Whether `call` casts images without a preprocessor to the backbone's dtype.
    _casts_images = False

    def __init__(
        self, backbone, preprocessor=None, interpolate_pos_encoding=False, dtype=None, **kwargs
    ):
        if not isinstance(backbone, ViTMSNBackbone):
            raise ValueError(f"`backbone` must be a ViTMSNBackbone, got {type(backbone).__name__}.")
        # Keras' Layer stores a `trainable` argument without passing it on to the
        # variables of sublayers created later: subclasses apply it once built
        # (`_apply_trainable`), so a reloaded frozen task stays frozen.
        self._trainable_argument = bool(kwargs.pop("trainable", True))
        super().__init__(dtype=dtype or float_policy(backbone.dtype_policy), **kwargs)
        self.backbone = backbone
        self.interpolate_pos_encoding = bool(interpolate_pos_encoding)
        self.preprocessor = _check_preprocessor(
            preprocessor, backbone, self.interpolate_pos_encoding
        )

    def _apply_trainable(self):
        if not self._trainable_argument:
            self.trainable = False

    def _check_inputs(self, x):
        """Run the backbone's checks on the shape and dtype of ``x`` (an array, a
        tensor, or a ``tf.data`` dataset of images or ``(images, ...)`` tuples)
        symbolically, so that a misfit raises here and not inside a compiled step.
        Other inputs (generators, ``PyDataset``) are left to Keras."""
        spec = _input_spec(x)
        if spec is None:
            return
        shape, dtype = spec
        if self.preprocessor is not None:
            shape, dtype = self.preprocessor.compute_output_shape(shape), "float32"
        elif self._casts_images:
            dtype = self.backbone.compute_dtype
        self.backbone.compute_output_spec(
            keras.KerasTensor(shape, dtype=dtype),
            interpolate_pos_encoding=self.interpolate_pos_encoding,
        )

    def predict(self, x, *args, **kwargs):
        self._check_inputs(x)
        return super().predict(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self._check_inputs(x)
        return super().evaluate(x, *args, **kwargs)

    def fit(self, x=None, *args, **kwargs):
        self._check_inputs(x)
        return super().fit(x, *args, **kwargs)

    def export_input_signature(self):
        """``[keras.InputSpec]`` of ``export``: images named "images", any batch size.

        Without a preprocessor: float32 images of the backbone's ``image_shape``,
        already normalised. With one: raw ``uint8`` images (0-255) of the
        converter's ``image_size`` (the backbone's when it has none), so the export
        runs no resize; resize to that size before calling it, or pass your own
        ``input_signature`` (e.g. float32 images in [0, 255]).

        Example:
        >>> import keras_vitmsn as kv
        >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8,
        ...     hidden_dim=32, num_layers=1, num_heads=4, intermediate_dim=64)
        >>> converter = kv.ViTMSNImageConverter(image_size=(32, 32))
        >>> task = kv.ViTMSNFeatureExtractor(backbone, preprocessor=converter)
        >>> spec, = task.export_input_signature()
        >>> spec.shape, spec.dtype
        ((None, 32, 32, 3), 'uint8')
        """
        if self.preprocessor is None:
            return self.backbone.export_input_signature()
        backbone = self.backbone
        size = self.preprocessor.image_size or backbone.image_size
        shape = (None,) + backbone._layout(tuple(size) + (backbone.num_channels,))
        return [keras.InputSpec(shape=shape, dtype="uint8", name=INPUT_NAME)]

    def get_config(self):
        # Subclasses add their own arguments to these.
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": dtype_config(self, exclude=(self.backbone, self.preprocessor)),
            "backbone": keras.layers.serialize(self.backbone),
            "interpolate_pos_encoding": self.interpolate_pos_encoding,
            "preprocessor": (
                None if self.preprocessor is None else keras.layers.serialize(self.preprocessor)
            ),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["backbone"], dict):
            config["backbone"] = keras.layers.deserialize(config["backbone"])
        if isinstance(config.get("preprocessor"), dict):
            config["preprocessor"] = keras.layers.deserialize(config["preprocessor"])
        return cls(**config)

    @classmethod
    def _from_preset_source(
        cls, source, load_weights=True, preprocessor=_AUTO, name=None, **kwargs
    ):
        """The preset's backbone (and image converter, unless ``preprocessor`` is
        given) under this task; the task's own arguments come from
        :meth:`_preset_task_kwargs`, and the remaining ``kwargs`` override the
        backbone's."""
        overrides = {key: kwargs.pop(key) for key in cls.preset_arguments if key in kwargs}
        task_kwargs, load_head = cls._preset_task_kwargs(source, overrides, kwargs)
        kwargs = preset_backbone_overrides(kwargs)
        backbone = source.load_backbone(ViTMSNBackbone, load_weights=load_weights, **kwargs)
        if preprocessor is _AUTO:
            preprocessor = _preset_image_converter(source, backbone, "image_shape" in kwargs)
        task = cls(backbone, preprocessor=preprocessor, name=name, **task_kwargs)
        if load_weights and load_head:
            source.load_task_weights(task)
        return task

    @classmethod
    def _preset_task_kwargs(cls, source, overrides, backbone_kwargs):
        """``(constructor arguments, whether to load the preset's head weights)`` for a
        task built from ``source`` with the caller's ``overrides``; before any weight
        is read, so that a misfit fails fast."""
        raise NotImplementedError

    def save_to_preset(self, preset_dir):
        """Write the backbone preset plus task.json (the task's config), task.weights.h5
        (its own weights, if any) and, with a preprocessor, image_converter.json;
        ``from_preset`` loads it back exactly, in the layout of the loading machine's
        ``keras.config.image_data_format()`` (as converted presets), a frozen
        backbone (``backbone.trainable = False``) frozen.

        Written atomically; an existing ``preset_dir`` must be empty or a preset of
        ours, and is replaced whole (no stale image converter or head survives).
        """

        def write(directory):
            write_portable_backbone(self.backbone, directory)
            file_format.write_task(self, directory, drop_data_format=True)
            if self.preprocessor is not None:
                # image_converter.json holds the converter alone (keras-hub's
                # layout), not the preprocessor that wraps it.
                file_format.write_image_converter(
                    self.preprocessor.image_converter, directory, drop_data_format=True
                )

        save_preset_directory(preset_dir, write)


def _check_preprocessor(preprocessor, backbone, interpolate_pos_encoding):
    """``preprocessor`` (None, a ViTMSNImageClassifierPreprocessor, or a
    ViTMSNImageConverter, which is wrapped in one: configs and presets written before
    the preprocessor existed store the converter) if it fits ``backbone``, else a
    ValueError saying what does not fit."""
    if preprocessor is None:
        return None
    if isinstance(preprocessor, ViTMSNImageConverter):
        preprocessor = ViTMSNImageClassifierPreprocessor(preprocessor)
    if not isinstance(preprocessor, ViTMSNImageClassifierPreprocessor):
        raise ValueError(
            "`preprocessor` must be a keras_vitmsn.ViTMSNImageConverter or None (or a "
            "ViTMSNImageClassifierPreprocessor wrapping a converter), got "
            f"{type(preprocessor).__name__}."
        )
    if preprocessor.data_format != backbone.data_format:
        raise ValueError(
            f"The preprocessor's data_format ({preprocessor.data_format!r}) must match "
            f"the backbone's ({backbone.data_format!r})."
        )
    size = preprocessor.image_size
    if size is not None and size != backbone.image_size and not interpolate_pos_encoding:
        raise ValueError(
            f"The preprocessor resizes to {size} but the backbone expects "
            f"{backbone.image_size}; set the converter's image_size to match, or "
            "pass interpolate_pos_encoding=True."
        )
    return preprocessor


def _preset_image_converter(source, backbone, resized):
    """The image converter a preset ``source`` carries, in ``backbone``'s layout (and
    at its size when ``resized``: ``from_preset(..., image_shape=...)``), or None."""
    if not source.has_image_converter:
        return None
    overrides = {"data_format": backbone.data_format}
    if resized:
        overrides["image_size"] = backbone.image_size
    return source.load_image_converter(ViTMSNImageConverter, **overrides)


def _input_spec(x):
    """``(shape, dtype)`` of the images in ``x`` (any batch size), or None for inputs
    whose elements are not known up front."""
    if x is None:
        return None
    if type(x).__module__.startswith("tensorflow") and hasattr(x, "element_spec"):
        spec = x.element_spec
        while isinstance(spec, (tuple, list)):
            if not spec:
                return None
            spec = spec[0]
        if not hasattr(spec, "shape") or spec.shape.rank is None:
            return None
        return (None,) + tuple(spec.shape)[1:], spec.dtype.name
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        return None
    try:
        dtype = keras.backend.standardize_dtype(dtype)
    except ValueError:
        return None
    return (None,) + tuple(shape)[1:], dtype
