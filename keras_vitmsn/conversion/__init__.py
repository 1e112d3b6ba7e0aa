"""Reading checkpoint formats into NumPy: transformers ViT-MSN checkpoints (safetensors,
``pytorch_model.bin``, from a folder or the hub) and original facebookresearch/msn
``*.pth.tar`` files.

Everything here works on NumPy arrays and files and builds no Keras model: building
models from a checkpoint, and writing it as a Keras preset (``convert_to_preset``),
are :mod:`keras_vitmsn.presets`'. safetensors files are read without torch; torch is
imported lazily, only for ``.bin`` / ``.pth.tar`` files.
"""

from keras_vitmsn.conversion.checkpoints import ConvertedCheckpoint
from keras_vitmsn.conversion.checkpoints import load_msn_checkpoint
from keras_vitmsn.conversion.checkpoints import load_transformers_checkpoint
from keras_vitmsn.conversion.hub import cache_dir_for
from keras_vitmsn.conversion.safetensors_io import load_safetensors
from keras_vitmsn.conversion.torch_io import load_torch_file
from keras_vitmsn.errors import CheckpointError
from keras_vitmsn.errors import PresetDownloadError

__all__ = [
    "CheckpointError",
    "ConvertedCheckpoint",
    "PresetDownloadError",
    "cache_dir_for",
    "load_msn_checkpoint",
    "load_safetensors",
    "load_torch_file",
    "load_transformers_checkpoint",
]
