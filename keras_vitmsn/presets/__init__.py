"""Presets: the table of released checkpoints, and Keras preset directories.

- :mod:`~keras_vitmsn.presets.table`: the five released ViT-MSN checkpoints by name;
- :mod:`~keras_vitmsn.presets.mixin`: ``from_preset`` / ``save_to_preset`` for the
  model classes;
- :mod:`~keras_vitmsn.presets.resolve` and :mod:`~keras_vitmsn.presets.sources`: what
  a ``from_preset`` argument points at, and building models from it;
- :mod:`~keras_vitmsn.presets.file_format`: the files of a preset directory;
- :mod:`~keras_vitmsn.presets.hub_cache`: hf:// checkpoints converted once and cached;
- :mod:`~keras_vitmsn.presets.convert`: ``convert_to_preset``, any checkpoint
  ``from_preset`` reads written as a Keras preset.

The models register themselves here (:func:`~keras_vitmsn.presets.mixin.register_preset_class`);
nothing here imports them.
"""

from keras_vitmsn.presets.table import MSN_SOURCE
from keras_vitmsn.presets.table import PAPER
from keras_vitmsn.presets.table import architecture_parameter_count
from keras_vitmsn.presets.table import get_preset
from keras_vitmsn.presets.table import is_preset_name
from keras_vitmsn.presets.table import list_presets
from keras_vitmsn.presets.table import preset_for_original_checkpoint
from keras_vitmsn.presets.table import preset_names

__all__ = [
    "MSN_SOURCE",
    "PAPER",
    "architecture_parameter_count",
    "get_preset",
    "is_preset_name",
    "list_presets",
    "preset_for_original_checkpoint",
    "preset_names",
]
