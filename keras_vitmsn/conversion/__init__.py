"""Checkpoint conversion: transformers and original MSN checkpoints to Keras ViT-MSN.

Everything here works on NumPy arrays; safetensors files are read without torch.
torch is imported lazily, only for ``.bin`` / ``.pth.tar`` files.
"""

import os
import shutil

from keras_vitmsn.conversion.checkpoints import ConvertedCheckpoint
from keras_vitmsn.conversion.checkpoints import load_msn_checkpoint
from keras_vitmsn.conversion.checkpoints import load_transformers_checkpoint
from keras_vitmsn.conversion.hub import PresetDownloadError
from keras_vitmsn.conversion.hub import cache_dir_for
from keras_vitmsn.conversion.msn_checkpoint import MSN_HEAD_FILE
from keras_vitmsn.conversion.msn_checkpoint import load_msn_pretraining_state
from keras_vitmsn.conversion.safetensors_io import CheckpointError
from keras_vitmsn.conversion.safetensors_io import load_safetensors
from keras_vitmsn.conversion.torch_io import load_torch_file

__all__ = [
    "CheckpointError",
    "ConvertedCheckpoint",
    "PresetDownloadError",
    "cache_dir_for",
    "convert_to_preset",
    "load_msn_checkpoint",
    "load_msn_pretraining_state",
    "load_safetensors",
    "load_torch_file",
    "load_transformers_checkpoint",
]


def convert_to_preset(source, output_dir):
    """Convert a checkpoint to a Keras preset directory.

    Args:
        source: "hf://org/repo", a built-in preset name, a transformers checkpoint
            directory, or an original MSN ``*.pth.tar`` file.
        output_dir: directory to write (created; existing preset files overwritten).

    Returns:
        The converted backbone.
    """
    from keras_vitmsn.models import preset_io
    from keras_vitmsn.models.backbone import ViTMSNBackbone

    resolved = preset_io.resolve_preset(source, load_weights=True)
    if isinstance(resolved, ConvertedCheckpoint):
        return resolved.save_keras_preset(output_dir, metadata={"source": str(source)})
    # Already a Keras preset (e.g. the hf:// cache): copy it through the public API.
    from keras_vitmsn.image_converter import ViTMSNImageConverter
    from keras_vitmsn.models.classifier import ViTMSNClassifier

    if resolved.has_task:
        task = ViTMSNClassifier._from_preset_source(resolved)
        task.save_to_preset(output_dir)
        return task.backbone
    backbone = ViTMSNBackbone._from_preset_source(resolved)
    backbone.save_to_preset(output_dir)
    if resolved.has_image_converter:
        ViTMSNImageConverter._from_preset_source(resolved).save_to_preset(output_dir)
    msn_head = os.path.join(resolved.path, MSN_HEAD_FILE)
    if os.path.exists(msn_head):
        shutil.copyfile(msn_head, os.path.join(output_dir, MSN_HEAD_FILE))
    return backbone
