"""``convert_to_preset``: any checkpoint ``from_preset`` reads, written as a Keras preset."""

import os

from keras_vitmsn.msn.head_state import save_msn_pretraining_state
from keras_vitmsn.presets import file_format as ff
from keras_vitmsn.presets.mixin import preset_class
from keras_vitmsn.presets.mixin import save_preset_directory
from keras_vitmsn.presets.resolve import resolve_preset
from keras_vitmsn.presets.sources import ConvertedSource
from keras_vitmsn.utils import check_can_create


def convert_to_preset(source, output_dir, num_heads=None):
    """Convert a checkpoint to a Keras preset directory.

    The preset is written to a temporary folder and moved into place when complete.
    An existing ``output_dir`` must be empty or a preset of ours, which is replaced
    whole (no file of the old preset survives).

    Args:
        source: "hf://org/repo", a built-in preset name, a transformers checkpoint
            directory, a Keras preset directory, or an original MSN ``*.pth.tar``
            file (its projection head and prototypes are kept in
            ``msn_head.weights.h5``).
        output_dir: directory to write.
        num_heads: attention heads of an original MSN checkpoint whose width is none
            of the released ones (the number is not stored in the weights).

    Returns:
        The converted backbone.

    Example:
    >>> import tempfile, os
    >>> import keras_vitmsn as kv
    >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8,
    ...     hidden_dim=32, num_layers=1, num_heads=4, intermediate_dim=64)
    >>> src = os.path.join(tempfile.mkdtemp(), "src")
    >>> backbone.save_to_preset(src)
    >>> copy = kv.convert_to_preset(src, os.path.join(tempfile.mkdtemp(), "copy"))
    >>> copy.hidden_dim
    32
    """
    _check_output(output_dir)
    resolved = resolve_preset(source, load_weights=True, classes=preset_class)
    built = {}

    def write(directory):
        if isinstance(resolved, ConvertedSource):
            overrides = {} if num_heads is None else {"num_heads": num_heads}
            built["backbone"] = resolved.write_keras_preset(
                directory, preset_class, metadata={"source": str(source)}, **overrides
            )
            msn_state = resolved.checkpoint.msn_state
            if msn_state is not None:
                save_msn_pretraining_state(msn_state, os.path.join(directory, ff.MSN_HEAD_FILE))
            return
        # Already a Keras preset (e.g. the hf:// cache): copy it through the public API.
        if resolved.task_class_name is not None:
            # A classifier's head, or a feature extractor's pooling: the task survives.
            role = "classifier" if resolved.has_task else "feature_extractor"
            task = preset_class(role)._from_preset_source(resolved)
            ff.write_backbone(task.backbone, directory)
            ff.write_task(task, directory)
            built["backbone"] = task.backbone
        else:
            backbone = preset_class("backbone")._from_preset_source(resolved)
            ff.write_backbone(backbone, directory)
            if resolved.has_image_converter:
                converter = preset_class("image_converter")._from_preset_source(resolved)
                ff.write_image_converter(converter, directory)
            built["backbone"] = backbone
        if resolved.msn_head_path is not None:
            with (
                open(resolved.msn_head_path, "rb") as src,
                open(os.path.join(directory, ff.MSN_HEAD_FILE), "wb") as dst,
            ):
                dst.write(src.read())

    save_preset_directory(output_dir, write)
    return built["backbone"]


def _check_output(output_dir):
    """Refuse an output that can never be a preset before any conversion work."""
    path = os.path.abspath(os.fspath(output_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(
            f"{path} exists and is a file; a preset is a folder: choose a new path or "
            "an empty folder (a preset written by keras-vitmsn is replaced whole)."
        )
    if os.path.isdir(path) and os.listdir(path):
        ff.check_replaceable(path)
    check_can_create(path)
