"""ViTMSNFeatureExtractor: a backbone plus a pooling, from images to features."""

import keras
from keras import ops

from keras_vitmsn.layers.core import spatial_shape
from keras_vitmsn.models.task import ViTMSNTask
from keras_vitmsn.presets.mixin import register_preset_class
from keras_vitmsn.utils import default_name

#: The poolings :class:`ViTMSNFeatureExtractor` accepts.
POOLINGS = ("cls", "cls_pre_norm", "mean", "patch")


@register_preset_class("feature_extractor")
@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNFeatureExtractor(ViTMSNTask):
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
            :class:`keras_vitmsn.models.preprocessor.ViTMSNImageClassifierPreprocessor`
            (or a bare :class:`keras_vitmsn.ViTMSNImageConverter`, wrapped in one)
            applied first, so raw uint8 images can be passed; ``from_preset``
            attaches the preset's. It takes ``(x, y=None, sample_weight=None)``.
        interpolate_pos_encoding: bool, accept images of another size than the
            backbone's ``image_shape``.
        dtype: dtype policy; defaults to the backbone's float policy.
        compile: bool, call ``compile()`` (no loss: there is nothing to train);
            False by default, unlike the classifier.

    Example:
    >>> import numpy as np
    >>> import keras_vitmsn as kv
    >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8, hidden_dim=64,
    ...                              num_layers=2, num_heads=4, intermediate_dim=128)
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

    #: ``from_preset`` arguments of the feature extractor; the others go to the backbone.
    preset_arguments = ("pooling", "interpolate_pos_encoding", "compile")
    _casts_images = True

    def __init__(
        self,
        backbone,
        pooling="cls_pre_norm",
        preprocessor=None,
        interpolate_pos_encoding=False,
        dtype=None,
        name=None,
        compile=False,
        **kwargs,
    ):
        super().__init__(
            backbone,
            preprocessor=preprocessor,
            interpolate_pos_encoding=interpolate_pos_encoding,
            dtype=dtype,
            name=default_name(name, "vit_msn_feature_extractor"),
            **kwargs,
        )
        if pooling not in POOLINGS:
            raise ValueError(
                f"`pooling` must be one of {', '.join(repr(p) for p in POOLINGS)}; got {pooling!r}."
            )
        self.pooling = pooling
        # As the classifier: the recorded input shape is for TensorFlow's SavedModel
        # tracing; the model has no variables of its own.
        self.build(self.export_input_signature()[0].shape)
        self._apply_trainable()
        if compile:
            # Nothing to train: compiled only so that `evaluate` and the callbacks
            # that need a compiled model run (keras-hub's Task argument).
            self.compile()

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
        config = super().get_config()
        config["pooling"] = self.pooling
        return config

    @classmethod
    def _preset_task_kwargs(cls, source, overrides, backbone_kwargs):
        """The pooling saved by a feature extractor's ``save_to_preset``, else
        ``"cls_pre_norm"``; a classifier preset's head is not loaded."""
        task_kwargs = dict(source.task_kwargs_for(cls))
        task_kwargs.pop("name", None)
        task_kwargs.pop("dtype", None)  # follows the backbone (no layers of its own)
        task_kwargs.update(overrides)
        return task_kwargs, False
