"""ViT-MSN (Masked Siamese Networks) vision transformers for Keras 3.

Importing the package changes nothing in the process (no environment variables, import
hooks, warnings filters, log levels or Keras settings) and, when keras is not imported
yet, does not import it: the names below load on first use (PEP 562). That leaves a
script free to call :func:`setup_tensorflow` before keras imports TensorFlow, and
keeps ``keras-vitmsn --version`` fast.

When keras is already imported there is nothing to defer, so the package loads its API
at once, as a plain import would: Keras finds this package's saved classes
(``keras.saving.load_model``) only once the modules that register them are loaded.
"""

import importlib
import importlib.util
import sys

from keras_vitmsn.environment import setup_tensorflow
from keras_vitmsn.errors import CheckpointError
from keras_vitmsn.errors import MissingHeadError
from keras_vitmsn.errors import PresetDownloadError
from keras_vitmsn.version import __version__

# Public name -> the module that defines it.
_LAZY_NAMES = {
    "ViTMSNBackbone": "keras_vitmsn.models.backbone",
    "ViTMSNClassifier": "keras_vitmsn.models.classifier",
    "ViTMSNFeatureExtractor": "keras_vitmsn.models.feature_extractor",
    "ViTMSNImageClassifierPreprocessor": "keras_vitmsn.models.preprocessor",
    "ViTMSNImageConverter": "keras_vitmsn.images.converter",
    "convert_to_preset": "keras_vitmsn.presets.convert",
    "decode_predictions": "keras_vitmsn.models.class_names",
    "load_msn_pretraining_state": "keras_vitmsn.msn.head_state",
    "resample_position_embeddings": "keras_vitmsn.layers.resampling",
    "upload_preset": "keras_vitmsn.presets.upload",
}
_SUBPACKAGES = ("conversion", "images", "layers", "lowshot", "models", "msn", "presets")

__all__ = [
    "CheckpointError",
    "MissingHeadError",
    "PresetDownloadError",
    "ViTMSNBackbone",
    "ViTMSNClassifier",
    "ViTMSNFeatureExtractor",
    "ViTMSNImageClassifierPreprocessor",
    "ViTMSNImageConverter",
    "__version__",
    "convert_to_preset",
    "decode_predictions",
    "load_msn_pretraining_state",
    "resample_position_embeddings",
    "setup_tensorflow",
    "upload_preset",
    *_SUBPACKAGES,
]


def __getattr__(name):
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    elif _is_submodule(name):
        # Any submodule, public or internal (kv.utils, kv.backend), as after an
        # eager import of it.
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _is_submodule(name):
    if name.startswith("_") or not name.isidentifier():  # never __main__: it runs the CLI
        return False
    return importlib.util.find_spec(f"{__name__}.{name}") is not None


def __dir__():
    return sorted(set(globals()) | set(__all__))


def _load_all():
    """Import every public name now (registering the Keras classes for load_model)."""
    for name in __all__:
        getattr(sys.modules[__name__], name)


if "keras" in sys.modules:
    _load_all()
