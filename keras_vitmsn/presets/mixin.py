"""``presets`` / ``from_preset`` / ``save_to_preset`` on the model classes (keras-hub
conventions), and the registry through which preset code reaches those classes.

The models import this module, never the reverse: each class registers itself under
its role (``"backbone"``, ``"classifier"``, ``"feature_extractor"``,
``"image_converter"``), and ``from_preset``
hands the calling class to the source it resolved (as keras-hub's
``PresetLoader.load_backbone(cls, ...)``).
"""

from keras_vitmsn.presets import file_format
from keras_vitmsn.presets import table
from keras_vitmsn.presets.resolve import resolve_preset
from keras_vitmsn.utils import atomic_directory

_CLASSES = {}
ROLES = ("backbone", "classifier", "feature_extractor", "image_converter")


def register_preset_class(role):
    """Class decorator: the class preset code builds for ``role``."""
    if role not in ROLES:
        raise ValueError(f"Unknown preset role {role!r}; expected one of {ROLES}.")

    def register(cls):
        _CLASSES[role] = cls
        return cls

    return register


def preset_class(role):
    """The class registered for ``role`` (registered when keras_vitmsn is imported)."""
    try:
        return _CLASSES[role]
    except KeyError:
        raise RuntimeError(
            f"No class is registered for the preset role {role!r}: import keras_vitmsn "
            "(which defines ViTMSNBackbone, ViTMSNClassifier and ViTMSNImageConverter) "
            "before loading presets."
        ) from None


class classproperty:
    """A read-only property on the class itself (``ViTMSNBackbone.presets``)."""

    def __init__(self, getter):
        self.getter = getter
        self.__doc__ = getter.__doc__

    def __get__(self, instance, owner):
        return self.getter(owner)


def save_preset_directory(preset_dir, write):
    """Write a whole preset atomically: ``write(tmp_dir)`` fills a temporary folder that
    then replaces ``preset_dir``.

    An existing ``preset_dir`` must be empty or one of our presets (else
    FileExistsError, nothing written); it is replaced whole, so no file of the old
    preset (a stale head or image converter) survives next to the new one.
    """
    with atomic_directory(preset_dir, replace=file_format.check_replaceable) as tmp:
        write(tmp)


class PresetMixin:
    """Adds ``presets`` and ``from_preset`` (keras-hub conventions)."""

    @classproperty
    def presets(cls):
        """The built-in presets: ``{name: {"metadata", "hf_handle", "architecture"}}``."""
        return table.list_presets()

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Instantiate from a preset name, hf:// handle, directory or MSN checkpoint.

        ``preset`` may be:

        1. a built-in name (see ``cls.presets``), e.g. ``"vit_msn_small"``: fetched
           from its Hugging Face repository, then as 2;
        2. ``"hf://org/repo"``: a transformers ViT-MSN checkpoint on the hub, fetched
           with huggingface_hub (config.json + model.safetensors, or
           pytorch_model.bin), converted, and cached as a Keras preset under
           ``$KERAS_HOME/keras_vitmsn/hf/`` (``~/.keras`` by default): later loads
           read the cache only, with no network;
        3. a local directory with a transformers checkpoint (``save_pretrained``);
        4. a local directory with a Keras preset (``save_to_preset``);
        5. an original facebookresearch/msn ``*.pth.tar`` file (needs torch).

        Args:
            preset: see above.
            load_weights: bool; False builds the architecture with fresh weights.
            **kwargs: constructor overrides, e.g. ``dtype="bfloat16"`` or
                ``image_shape=(384, 384, 3)`` (position embeddings are bicubically
                resampled once, by :func:`keras_vitmsn.resample_position_embeddings`).
                Classifiers also take ``num_classes`` (a new head), ``activation``,
                ``dropout``, ``preprocessor``.

        Raises:
            ValueError: unknown preset name (the message lists the valid ones),
                unusable directory, or a checkpoint that does not fit.
            keras_vitmsn.errors.PresetDownloadError: the hub could not be reached.
            keras_vitmsn.errors.CheckpointError: a truncated or corrupted file.

        Example:
        >>> import tempfile
        >>> import keras_vitmsn as kv
        >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8,
        ...     hidden_dim=32, num_layers=1, num_heads=4, intermediate_dim=64)
        >>> preset_dir = tempfile.mkdtemp()
        >>> backbone.save_to_preset(preset_dir)
        >>> restored = kv.ViTMSNBackbone.from_preset(preset_dir)
        >>> bigger = kv.ViTMSNBackbone.from_preset(preset_dir, image_shape=(48, 48, 3))
        >>> bigger.grid_size
        (6, 6)
        """
        source = resolve_preset(preset, load_weights=load_weights, classes=preset_class)
        return cls._from_preset_source(source, load_weights=load_weights, **kwargs)

    @classmethod
    def _from_preset_source(cls, source, load_weights=True, **kwargs):
        raise NotImplementedError(f"{cls.__name__} cannot be built from a preset.")
