"""The ViT-MSN models: the backbone, and the tasks built on it (keras-hub's split).

- :mod:`~keras_vitmsn.models.backbone`: :class:`ViTMSNBackbone`, the encoder;
- :mod:`~keras_vitmsn.models.task`: :class:`ViTMSNTask`, the base of the tasks;
- :mod:`~keras_vitmsn.models.classifier` and
  :mod:`~keras_vitmsn.models.feature_extractor`: the two tasks;
- :mod:`~keras_vitmsn.models.preprocessor`: the tasks' preprocessor (keras-hub's
  ``(x, y, sample_weight)`` contract around the image converter);
- :mod:`~keras_vitmsn.models.class_names`: class names and ``decode_predictions``;
- :mod:`~keras_vitmsn.models.quantization`, :mod:`~keras_vitmsn.models.export` and
  :mod:`~keras_vitmsn.models.optimizer`: ``quantize``, ``export`` and the AdamW the
  models train with.
"""

from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.models.class_names import decode_predictions
from keras_vitmsn.models.classifier import ViTMSNClassifier
from keras_vitmsn.models.feature_extractor import ViTMSNFeatureExtractor
from keras_vitmsn.models.preprocessor import ViTMSNImageClassifierPreprocessor
from keras_vitmsn.models.task import ViTMSNTask

__all__ = [
    "ViTMSNBackbone",
    "ViTMSNClassifier",
    "ViTMSNFeatureExtractor",
    "ViTMSNImageClassifierPreprocessor",
    "ViTMSNTask",
    "decode_predictions",
]
