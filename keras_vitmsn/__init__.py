"""ViT-MSN (Masked Siamese Networks) vision transformers for Keras 3."""

import os as _os

# TensorFlow turns its oneDNN kernels on by default only on some x86 CPUs; on others
# (the AVX2-only AMD EPYC this project is measured on) MatMul runs on Eigen, and
# vit_msn_small trained 1.4x slower (2.37 vs 1.71 s per batch of 8) and inferred
# 1.4x slower. TensorFlow reads the switch once, when it is first imported, so it
# is set here, before keras imports its backend; a value the user set wins, and it
# has no effect if TensorFlow was imported first. JAX and PyTorch ignore it.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# TensorFlow (loaded by every backend for tf.data and the augmentation pipeline) writes
# C++ log lines to stderr that no user of this package can act on: the oneDNN banner
# and "Could not find cuda drivers" at import, "failed call to cuInit" at the first op
# on a CPU machine. Level 3 hides all of them (real failures still raise Python
# exceptions); a level the user set wins (e.g. TF_CPP_MIN_LOG_LEVEL=0 to debug), and
# so does JAX's default of 1 when JAX was imported first. absl prints the import-time
# lines before any level applies, so a one-shot hook on TensorFlow's first import
# applies the level to them (quiet_tensorflow). Like the switch above, neither has any
# effect if TensorFlow was imported first.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_vitmsn import environment as _quiet_tensorflow  # noqa: E402

_quiet_tensorflow.install()

import functools as _functools
import warnings as _warnings

from keras_vitmsn import layers
from keras_vitmsn import lowshot
from keras_vitmsn import msn
from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.models.classifier import ViTMSNClassifier
from keras_vitmsn.models.class_names import decode_predictions
from keras_vitmsn.models.feature_extractor import ViTMSNFeatureExtractor
from keras_vitmsn.images.converter import ViTMSNImageConverter
from keras_vitmsn import conversion
from keras_vitmsn import presets
from keras_vitmsn.presets.convert import convert_to_preset
from keras_vitmsn.errors import CheckpointError
from keras_vitmsn.errors import MissingHeadError
from keras_vitmsn.errors import PresetDownloadError
from keras_vitmsn.msn.head_state import load_msn_pretraining_state
from keras_vitmsn.layers.resampling import resample_position_embeddings
from keras_vitmsn.version import __version__


def _moved(function, old):
    @_functools.wraps(function)
    def wrapper(*args, **kwargs):
        _warnings.warn(
            f"{old} is deprecated: use keras_vitmsn.{function.__name__} (conversion/ now "
            "reads checkpoint formats only).",
            DeprecationWarning,
            stacklevel=2,
        )
        return function(*args, **kwargs)

    return wrapper


# Their old home, kept for existing code; set here, at the top of the package, so that
# conversion/ never imports the presets and models that build on it.
conversion.convert_to_preset = _moved(convert_to_preset, "keras_vitmsn.conversion.convert_to_preset")
conversion.load_msn_pretraining_state = _moved(
    load_msn_pretraining_state, "keras_vitmsn.conversion.load_msn_pretraining_state"
)
