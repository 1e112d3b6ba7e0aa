"""ViTMSNFeatureExtractor: a backbone plus a pooling, from images to features."""

import keras
from keras import ops

from keras_vitmsn.layers.layout import spatial_shape
from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.models.export import ExportMixin
from keras_vitmsn.models.quantization import QuantizationMixin, dtype_config, float_policy
from keras_vitmsn.models.task_inputs import check_preprocessor, preset_image_converter
from keras_vitmsn.models.task_inputs import deserialize_task_config
from keras_vitmsn.models.task_inputs import task_input_signature
from keras_vitmsn.presets import file_format
from keras_vitmsn.presets.mixin import PresetMixin
from keras_vitmsn.presets.mixin import register_preset_class
from keras_vitmsn.presets.mixin import save_preset_directory
from keras_vitmsn.utils import default_name

#: The poolings :class:`ViTMSNFeatureExtractor` accepts.
POOLINGS = ("cls", "cls_pre_norm", "mean", "patch")

_AUTO = object()  # from_preset's "the preset's setting (or the default)".


@register_preset_class("feature_extractor")
@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNFeatureExtractor(ExportMixin, QuantizationMixin, PresetMixin, keras.Model):
    """Features of a ViT-MSN backbone: ``predict(images)`` returns them pooled.

    Poolings (``last_hidden_state`` is after the final LayerNorm; ``hidden_states[-1]``
    the last block's output before it):

    - ``"cls_pre_norm"`` (default): the CLS token before the final LayerNorm,
      ``backbone(x, output_hidden_states=True)["hidden_states"][-1][:, 0]``: the
      feature of the MSN paper's linear and low-shot evaluations (``kv.lowshot``).
    - ``"cls"``: the CLS token after the final LayerNorm, ``last_hidden_state[:, 0]``
      (what :class:`ViTMSNClassifier`'s head reads).
    - ``"mean"``: the mean of the patch tokens (CLS excluded) after the final
      LayerNorm, ``last_hidden_state[:, 1:].mean(1)``. That is the mean of the
      features transformers' ``ViTMSNModel`` returns (and DINOv2's
      ``x_norm_patchtokens.mean(1)``), not timm's ``global_pool="avg"``, which
      averages the tokens *before* the norm and normalises the mean with a separate
      ``fc_norm`` LayerNorm: ViT-MSN checkpoints have no such layer, and their final
      LayerNorm was trained on single tokens, not on means.
    - ``"patch"``: the patch tokens after the final LayerNorm as a grid
      ``(batch, rows, cols, hidden_dim)``, row-major as the patches are numbered
      (whatever ``data_format``), for dense tasks. ``rows, cols`` is the input's patch
      grid: the backbone's ``grid_size``, or with ``interpolate_pos_encoding`` that
      of the actual input size.

    Features are float32 under every dtype policy (pooled in float32). The model is
    not compiled (it has nothing to train); it exports, quantises, saves and loads as
    :class:`ViTMSNClassifier` does.

    Args:
        backbone: a :class:`ViTMSNBackbone`.
        pooling: one of ``"cls_pre_norm"``, ``"cls"``, ``"mean"``, ``"patch"``.
        preprocessor: None (images already resized and normalised) or a
            :class:`keras_vitmsn.ViTMSNImageConverter` applied first, so raw uint8
            images can be passed; ``from_preset`` attaches the preset's.
        interpolate_pos_encoding: bool, accept images of another size than the
            backbone's ``image_shape``.
        dtype: dtype policy; defaults to the backbone's float policy.

    Example:
    >>> import numpy as np
    >>> backbone = ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8, hidden_dim=64,
    ...                           num_layers=2, num_heads=4, intermediate_dim=128)
    >>> images = np.zeros((2, 32, 32, 3), "float32")
    >>> ViTMSNFeatureExtractor(backbone).predict(images, verbose=0).shape
    (2, 64)
    >>> ViTMSNFeatureExtractor(backbone, pooling="patch").predict(images, verbose=0).shape
    (2, 4, 4, 64)
    >>> ViTMSNFeatureExtractor(backbone, pooling="max")
    Traceback (most recent call last):
    ...
    ValueError: `pooling` must be one of 'cls', 'cls_pre_norm', 'mean', 'patch'; got 'max'.
    """

    def __init__(
        self,
        backbone,
        pooling="cls_pre_norm",
        preprocessor=None,
        interpolate_pos_encoding=False,
        dtype=None,
        name=None,
        **kwargs,
    ):
        if not isinstance(backbone, ViTMSNBackbone):
            raise ValueError(
                f"`backbone` must be a ViTMSNBackbone, got {type(backbone).__name__}."
            )
        if pooling not in POOLINGS:
            raise ValueError(
                f"`pooling` must be one of {', '.join(repr(p) for p in POOLINGS)}; "
                f"got {pooling!r}."
            )
        super().__init__(
            dtype=dtype or float_policy(backbone.dtype_policy),
            name=default_name(name, "vit_msn_feature_extractor"),
            **kwargs,
        )
        self.backbone = backbone
        self.pooling = pooling
        self.interpolate_pos_encoding = bool(interpolate_pos_encoding)
        self.preprocessor = check_preprocessor(
            preprocessor, backbone, self.interpolate_pos_encoding
        )
        # As the classifier: the recorded input shape is for TensorFlow's SavedModel
        # tracing; the model has no variables of its own.
        self.build(self.export_input_signature()[0].shape)

    def export_input_signature(self):
        """``[keras.InputSpec]`` of ``export``, as :class:`ViTMSNClassifier`'s: float32
        normalised images of the backbone's ``image_shape``, or with a preprocessor
        raw ``uint8`` images of its ``image_size``; any batch size."""
        return task_input_signature(self.backbone, self.preprocessor)

    def build(self, input_shape=None):
        self.built = True

    def call(self, images, training=None):
        if self.preprocessor is not None:
            images = self.preprocessor(images)
        else:
            # Raw uint8 arrays (e.g. straight from PIL) reach the backbone as floats.
            images = ops.cast(images, self.backbone.compute_dtype)
        pre_norm = self.pooling == "cls_pre_norm"
        outputs = self.backbone(
            images,
            output_hidden_states=pre_norm,
            interpolate_pos_encoding=self.interpolate_pos_encoding,
            training=training,
        )
        # float32 before pooling: a bfloat16 mean over hundreds of tokens loses digits.
        if pre_norm:
            return ops.cast(outputs["hidden_states"][-1][:, 0, :], "float32")
        tokens = ops.cast(outputs["last_hidden_state"], "float32")
        if self.pooling == "cls":
            return tokens[:, 0, :]
        if self.pooling == "mean":
            return ops.mean(tokens[:, 1:, :], axis=1)
        height, width = spatial_shape(images.shape, self.backbone.data_format)
        patch = self.backbone.patch_size
        # -1: the batch stays dynamic for export.
        grid = (-1, height // patch, width // patch, self.backbone.hidden_dim)
        return ops.reshape(tokens[:, 1:, :], grid)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": dtype_config(self, exclude=(self.backbone, self.preprocessor)),
            "backbone": keras.layers.serialize(self.backbone),
            "pooling": self.pooling,
            "interpolate_pos_encoding": self.interpolate_pos_encoding,
            "preprocessor": (
                None if self.preprocessor is None else keras.layers.serialize(self.preprocessor)
            ),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_task_config(config))

    @classmethod
    def _from_preset_source(
        cls,
        source,
        load_weights=True,
        pooling=_AUTO,
        preprocessor=_AUTO,
        interpolate_pos_encoding=_AUTO,
        name=None,
        **backbone_kwargs,
    ):
        """The preset's backbone (and image converter) with a pooling: the one saved
        by a feature extractor's ``save_to_preset``, else ``"cls_pre_norm"``. A
        classifier preset's head is not loaded."""
        task_kwargs = dict(source.task_kwargs_for(cls))
        task_kwargs.pop("name", None)
        task_kwargs.pop("dtype", None)  # follows the backbone (no layers of its own)
        for key, value in (
            ("pooling", pooling),
            ("interpolate_pos_encoding", interpolate_pos_encoding),
        ):
            if value is not _AUTO:
                task_kwargs[key] = value
        backbone = source.load_backbone(
            ViTMSNBackbone, load_weights=load_weights, **backbone_kwargs
        )
        if preprocessor is _AUTO:
            preprocessor = preset_image_converter(source, backbone, "image_shape" in backbone_kwargs)
        return cls(backbone, preprocessor=preprocessor, name=name, **task_kwargs)

    def save_to_preset(self, preset_dir):
        """Write the backbone preset plus task.json (the pooling; no weights of its
        own) and, with a preprocessor, image_converter.json. ``from_preset`` loads it
        back exactly; ``ViTMSNBackbone.from_preset`` reads its backbone, and
        ``ViTMSNClassifier.from_preset(preset_dir, num_classes=...)`` puts a new head
        on it. Written atomically, replacing a preset of ours whole."""

        def write(directory):
            file_format.write_backbone(self.backbone, directory)
            file_format.write_task(self, directory)

        save_preset_directory(preset_dir, write)
