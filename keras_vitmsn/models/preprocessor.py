"""ViTMSNImageClassifierPreprocessor: the tasks' preprocessor (keras-hub's contract).

keras-hub's tasks hold a preprocessor that takes ``(x, y=None, sample_weight=None)``
and returns ``keras.utils.pack_x_y_sample_weight(x, y, sample_weight)``, so the same
object maps over a labelled ``tf.data`` pipeline (``ds.map(task.preprocessor)``) and
runs inside the task on images alone. This one wraps a
:class:`keras_vitmsn.ViTMSNImageConverter`, which stays usable alone on images.
"""

import keras

from keras_vitmsn.images.converter import ViTMSNImageConverter
from keras_vitmsn.utils import default_name


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNImageClassifierPreprocessor(keras.layers.Layer):
    """Applies an image converter to ``x``; labels and sample weights pass unchanged.

    Used by :class:`ViTMSNClassifier` and :class:`ViTMSNFeatureExtractor` (their
    ``preprocessor``). Passing a bare :class:`ViTMSNImageConverter` as a task's
    ``preprocessor`` wraps it in this class.

    Args:
        image_converter: a :class:`keras_vitmsn.ViTMSNImageConverter`.

    Call arguments:
        x: images, uint8 or float, one or a batch (see the converter).
        y: optional labels, returned as given.
        sample_weight: optional sample weights, returned as given.

    Returns:
        What ``keras.utils.pack_x_y_sample_weight`` returns: the converted images
        alone, ``(x, y)``, or ``(x, y, sample_weight)``.

    Example:
    >>> import numpy as np
    >>> import keras_vitmsn as kv
    >>> preprocessor = ViTMSNImageClassifierPreprocessor(
    ...     kv.ViTMSNImageConverter(image_size=(32, 32)))
    >>> images = np.zeros((2, 40, 40, 3), "uint8")
    >>> tuple(preprocessor(images).shape)
    (2, 32, 32, 3)
    >>> x, y = preprocessor(images, np.array([0, 1]))
    >>> tuple(x.shape), y.tolist()
    ((2, 32, 32, 3), [0, 1])
    """

    def __init__(self, image_converter, name=None, **kwargs):
        if isinstance(image_converter, dict):
            image_converter = keras.layers.deserialize(image_converter)
        if not isinstance(image_converter, ViTMSNImageConverter):
            raise ValueError(
                "`image_converter` must be a keras_vitmsn.ViTMSNImageConverter, got "
                f"{type(image_converter).__name__}."
            )
        kwargs.setdefault("dtype", image_converter.dtype_policy)
        super().__init__(name=default_name(name, "vit_msn_preprocessor"), **kwargs)
        self.image_converter = image_converter
        self.built = True

    @property
    def image_size(self):
        """The converter's ``image_size`` (``(height, width)`` or None)."""
        return self.image_converter.image_size

    @property
    def data_format(self):
        return self.image_converter.data_format

    def build(self, input_shape=None):
        self.image_converter.build(input_shape)
        self.built = True

    def __call__(self, x, y=None, sample_weight=None):
        # Not through Layer.__call__: it would convert the labels and weights to the
        # running backend's tensors, which a tf.data graph under JAX or torch cannot
        # hold. The converter is a layer of its own and handles both places.
        return self.call(x, y, sample_weight)

    def call(self, x, y=None, sample_weight=None):
        x = self.image_converter(x)
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def compute_output_shape(self, input_shape):
        return self.image_converter.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["image_converter"] = keras.layers.serialize(self.image_converter)
        return config
