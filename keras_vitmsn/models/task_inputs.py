"""What the tasks built on a backbone (classifier, feature extractor) take as input:
an optional image converter (checked against the backbone, or the one a preset
carries) and the input signature ``export`` declares for it."""

import keras

from keras_vitmsn.images.converter import ViTMSNImageConverter
from keras_vitmsn.models.export import INPUT_NAME


def check_preprocessor(preprocessor, backbone, interpolate_pos_encoding):
    """``preprocessor`` (None or a ViTMSNImageConverter) if it fits ``backbone``, else
    a ValueError saying what does not fit."""
    if preprocessor is None:
        return None
    if not isinstance(preprocessor, ViTMSNImageConverter):
        raise ValueError(
            "`preprocessor` must be a keras_vitmsn.ViTMSNImageConverter or None, got "
            f"{type(preprocessor).__name__}."
        )
    if preprocessor.data_format != backbone.data_format:
        raise ValueError(
            f"The preprocessor's data_format ({preprocessor.data_format!r}) must match "
            f"the backbone's ({backbone.data_format!r})."
        )
    size = preprocessor.image_size
    if size is not None and size != backbone.image_shape[:2] and not interpolate_pos_encoding:
        raise ValueError(
            f"The preprocessor resizes to {size} but the backbone expects "
            f"{backbone.image_shape[:2]}; set the converter's image_size to match, or "
            "pass interpolate_pos_encoding=True."
        )
    return preprocessor


def task_input_signature(backbone, preprocessor):
    """``[keras.InputSpec]`` of a task's ``export``: images named "images", any batch.

    Without a preprocessor: float32 images of the backbone's ``image_shape``,
    already normalised. With one: raw ``uint8`` images (0-255) of the converter's
    ``image_size`` (the backbone's when it has none), so the export runs no resize.

    Example:
    >>> import keras_vitmsn as kv
    >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8,
    ...     hidden_dim=32, num_layers=1, num_heads=4, intermediate_dim=64)
    >>> converter = kv.ViTMSNImageConverter(image_size=(32, 32))
    >>> spec, = task_input_signature(backbone, converter)
    >>> spec.shape, spec.dtype
    ((None, 32, 32, 3), 'uint8')
    """
    if preprocessor is None:
        return backbone.export_input_signature()
    size = preprocessor.image_size or backbone.image_shape[:2]
    shape = (None,) + backbone._layout(tuple(size) + (backbone.image_shape[2],))
    return [keras.InputSpec(shape=shape, dtype="uint8", name=INPUT_NAME)]


def preset_image_converter(source, backbone, resized):
    """The image converter a preset ``source`` carries, in ``backbone``'s layout (and
    at its size when ``resized``: ``from_preset(..., image_shape=...)``), or None."""
    if not source.has_image_converter:
        return None
    overrides = {"data_format": backbone.data_format}
    if resized:
        overrides["image_size"] = backbone.image_shape[:2]
    return source.load_image_converter(ViTMSNImageConverter, **overrides)


def deserialize_task_config(config):
    """A task's ``get_config()`` with its backbone and preprocessor rebuilt: the
    keyword arguments of its constructor (``from_config``)."""
    config = dict(config)
    if isinstance(config["backbone"], dict):
        config["backbone"] = keras.layers.deserialize(config["backbone"])
    if isinstance(config.get("preprocessor"), dict):
        config["preprocessor"] = keras.layers.deserialize(config["preprocessor"])
    return config
