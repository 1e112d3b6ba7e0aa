"""ViTMSNBackbone: the ViT-MSN encoder (transformers' ViTMSNModel) as a Keras model."""

import keras

from keras_vitmsn.layers.core import ViTMSNLayerNorm
from keras_vitmsn.layers.core import spatial_shape
from keras_vitmsn.layers.embeddings import ViTMSNEmbeddings
from keras_vitmsn.layers.transformer_block import ViTMSNTransformerBlock
from keras_vitmsn.models.export import INPUT_NAME
from keras_vitmsn.models.export import ExportMixin
from keras_vitmsn.models.quantization import QuantizationMixin
from keras_vitmsn.models.quantization import dtype_config
from keras_vitmsn.models.quantization import resolved_policy_map
from keras_vitmsn.presets import file_format
from keras_vitmsn.presets.mixin import PresetMixin
from keras_vitmsn.presets.mixin import register_preset_class
from keras_vitmsn.presets.mixin import save_preset_directory
from keras_vitmsn.utils import default_name
from keras_vitmsn.utils import positive_int


@register_preset_class("backbone")
@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNBackbone(ExportMixin, QuantizationMixin, PresetMixin, keras.Model):
    """ViT-MSN encoder: patch embedding, pre-norm transformer blocks, final LayerNorm.

    Numerically the same network as ``transformers.ViTMSNModel``; the defaults are the
    vit-msn-base architecture. All sublayers follow the model's dtype policy, with
    LayerNorm and the explicit-path softmax computed in float32.

    Args:
        image_shape: the image shape the position embeddings are trained for, in
            ``data_format`` order as in keras-hub: ``(height, width, channels)``
            for channels_last, ``(channels, height, width)`` for channels_first.
            (Configs, ``.keras`` files and presets written before this order
            applied stored ``(height, width, channels)`` whatever the layout;
            ``from_config`` reads them as they were written.)
        patch_size: int, side of the square patches.
        hidden_dim: int, token width.
        num_layers: int, transformer blocks.
        num_heads: int, attention heads.
        intermediate_dim: int, MLP width.
        layer_norm_epsilon: float, epsilon of every LayerNorm.
        dropout_rate: float, dropout on embeddings, attention output and MLP output.
        attention_dropout: float, dropout on attention probabilities.
        qkv_bias: bool, biases on the query/key/value projections.
        hidden_act: str, MLP activation: "gelu" (exact), "gelu_new" /
            "gelu_pytorch_tanh" (tanh approximation), "relu", "selu", "silu".
        use_mask_token: bool, add the learned mask token used by ``bool_masked_pos``.
        data_format: "channels_last" (``(B, H, W, C)`` images) or "channels_first"
            (``(B, C, H, W)``, like transformers' ``pixel_values``); defaults to
            ``keras.config.image_data_format()``.
        dtype: dtype or dtype policy, e.g. "float32", "bfloat16", "mixed_bfloat16".

    Call arguments:
        images: float images in ``data_format`` layout, already normalised (an
            integer dtype, e.g. uint8 pixels, is refused: run them through a
            :class:`keras_vitmsn.ViTMSNImageConverter`, or use a task with a
            preprocessor).
        bool_masked_pos: optional ``(batch, num_patches)`` bool; True patches are
            replaced by the mask token (needs ``use_mask_token=True``).
        head_mask: optional ``(num_heads,)`` or ``(num_layers, num_heads)``; multiplies
            the attention probabilities (1 keeps a head, 0 removes it).
        output_hidden_states: bool, also return the embeddings output and each
            block's output (before the final LayerNorm).
        output_attentions: bool, also return each block's attention probabilities.
        interpolate_pos_encoding: bool, accept images of another size (a multiple of
            the patch size) by bicubically resampling the position embeddings.
        training: bool, dropout switch.
        patch_keep_indices: optional ``(batch, num_keep)`` int indices of the patches
            to keep (0-based over the input's patch grid, CLS not counted); the other
            patch tokens are dropped right after the position embeddings are added and
            the CLS token is always kept, as MSN masks its anchor views. The encoder
            then runs on ``1 + num_keep`` tokens. Draw them with
            :func:`keras_vitmsn.msn.random_patch_keep_indices`. Combines with
            ``interpolate_pos_encoding`` (e.g. masked 96-px focal views).

    Returns:
        A dict with ``"last_hidden_state"`` ``(batch, 1 + num_patches, hidden_dim)``
        (after the final LayerNorm), plus ``"hidden_states"`` (a list of
        ``num_layers + 1`` tensors) and ``"attentions"`` (a list of ``num_layers``
        ``(batch, heads, tokens, tokens)`` tensors) when asked for. With
        ``patch_keep_indices`` every token axis has ``1 + num_keep`` entries.

    Example:
    >>> import numpy as np
    >>> backbone = ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8, hidden_dim=64,
    ...                           num_layers=2, num_heads=4, intermediate_dim=128)
    >>> out = backbone(np.zeros((2, 32, 32, 3), "float32"), output_hidden_states=True)
    >>> tuple(out["last_hidden_state"].shape), len(out["hidden_states"])
    ((2, 17, 64), 3)
    """

    def __init__(
        self,
        image_shape=(224, 224, 3),
        patch_size=16,
        hidden_dim=768,
        num_layers=12,
        num_heads=12,
        intermediate_dim=3072,
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        attention_dropout=0.0,
        qkv_bias=True,
        hidden_act="gelu",
        use_mask_token=False,
        data_format=None,
        dtype=None,
        name=None,
        **kwargs,
    ):
        # Keras' Layer stores a `trainable` argument without passing it on to the
        # variables created below: applied once they exist, so a reloaded frozen
        # backbone stays frozen.
        trainable = bool(kwargs.pop("trainable", True))
        super().__init__(dtype=dtype, name=default_name(name, "vit_msn_backbone"), **kwargs)
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"`data_format` must be 'channels_last' or 'channels_first', got {data_format!r}."
            )
        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or not all(_is_positive_int(s) for s in image_shape):
            raise ValueError(
                f"`image_shape` must be {_ORDER[data_format]} of positive ints, got "
                f"{image_shape} (data_format={data_format!r})."
            )
        image_shape = tuple(int(s) for s in image_shape)
        hwc = _to_hwc(image_shape, data_format)
        # Checked before any division by them (patch grid, head width).
        patch_size = positive_int(patch_size, "patch_size")
        hidden_dim = positive_int(hidden_dim, "hidden_dim")
        # 0 blocks is a valid model (embeddings and the final LayerNorm): tests use it.
        num_layers = positive_int(num_layers, "num_layers", minimum=0)
        num_heads = positive_int(num_heads, "num_heads")
        intermediate_dim = positive_int(intermediate_dim, "intermediate_dim")
        if hwc[0] % patch_size or hwc[1] % patch_size:
            raise ValueError(
                f"`image_shape` {image_shape} is {_ORDER[data_format]} (data_format="
                f"{data_format!r}); its height and width {hwc[:2]} must be divisible "
                f"by `patch_size` ({patch_size})."
            )
        self.image_shape = image_shape
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout = float(attention_dropout)
        self.qkv_bias = bool(qkv_bias)
        self.hidden_act = hidden_act
        self.use_mask_token = bool(use_mask_token)
        self.data_format = data_format

        self.embeddings = ViTMSNEmbeddings(
            self.hidden_dim,
            self.patch_size,
            hwc[:2],
            num_channels=hwc[2],
            dropout_rate=self.dropout_rate,
            use_mask_token=self.use_mask_token,
            data_format=self.data_format,
            dtype=self.dtype_policy,
            name="embeddings",
        )
        self.encoder_layers = [
            ViTMSNTransformerBlock(
                self.hidden_dim,
                self.num_heads,
                self.intermediate_dim,
                layer_norm_epsilon=self.layer_norm_epsilon,
                dropout_rate=self.dropout_rate,
                attention_dropout=self.attention_dropout,
                qkv_bias=self.qkv_bias,
                hidden_act=self.hidden_act,
                dtype=self.dtype_policy,
                name=f"encoder_layer_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.layernorm = ViTMSNLayerNorm(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="layernorm"
        )
        # Create every variable now, so weights can be loaded before any call.
        self.build((None,) + image_shape)
        if not trainable:
            self.trainable = False

    @property
    def grid_size(self):
        """The pretrained patch grid ``(rows, cols)``."""
        return self.embeddings.grid_size

    @property
    def num_patches(self):
        return self.embeddings.num_patches

    @property
    def image_size(self):
        """``(height, width)`` of ``image_shape``, whatever ``data_format``."""
        return _to_hwc(self.image_shape, self.data_format)[:2]

    @property
    def num_channels(self):
        return _to_hwc(self.image_shape, self.data_format)[2]

    def _layout(self, hwc):
        return _from_hwc(hwc, self.data_format)

    def export_input_signature(self):
        """``[keras.InputSpec]`` of ``export``: float32 images named "images" of the
        model's ``image_shape`` in its ``data_format``, any batch size."""
        shape = (None,) + self.image_shape
        return [keras.InputSpec(shape=shape, dtype="float32", name=INPUT_NAME)]

    def build(self, input_shape=None):
        # Sublayers are built with the shapes they see at the native resolution (not
        # None), so that summary() shows each one's output shape.
        images = (None,) + self.image_shape
        tokens = (None, 1 + self.num_patches, self.hidden_dim)
        with resolved_policy_map(self):  # a quantised model's config: see quantization.py
            self.embeddings.build(images)
            for block in self.encoder_layers:
                block.build(tokens)
            self.layernorm.build(tokens)
        self.built = True

    def compute_output_shape(self, input_shape):
        """``{"last_hidden_state": shape}`` for a plain call on ``input_shape`` images;
        :meth:`compute_output_spec` covers every call argument."""
        spec = self.compute_output_spec(keras.KerasTensor(input_shape, dtype=self.compute_dtype))
        return {key: value.shape for key, value in spec.items()}

    def compute_output_spec(
        self,
        images,
        bool_masked_pos=None,
        head_mask=None,
        output_hidden_states=False,
        output_attentions=False,
        interpolate_pos_encoding=False,
        training=None,
        patch_keep_indices=None,
    ):
        # Without tracing `call`: the same checks, then shapes from the patch grid.
        shape = tuple(images.shape)
        _check_float(images)
        self._check_size(shape, interpolate_pos_encoding)
        self._per_layer_head_masks(head_mask)
        batch = shape[0]
        height, width = spatial_shape(shape, self.data_format)
        if patch_keep_indices is not None:
            num_keep = tuple(patch_keep_indices.shape)[-1]
            num_tokens = None if num_keep is None else 1 + num_keep
        else:
            num_tokens = 1 + (height // self.patch_size) * (width // self.patch_size)

        def tensor(*dims):
            return keras.KerasTensor(dims, dtype=self.compute_dtype)

        outputs = {"last_hidden_state": tensor(batch, num_tokens, self.hidden_dim)}
        if output_hidden_states:
            outputs["hidden_states"] = [
                tensor(batch, num_tokens, self.hidden_dim) for _ in range(self.num_layers + 1)
            ]
        if output_attentions:
            outputs["attentions"] = [
                tensor(batch, self.num_heads, num_tokens, num_tokens)
                for _ in range(self.num_layers)
            ]
        return outputs

    def call(
        self,
        images,
        bool_masked_pos=None,
        head_mask=None,
        output_hidden_states=False,
        output_attentions=False,
        interpolate_pos_encoding=False,
        training=None,
        patch_keep_indices=None,
    ):
        _check_float(images)
        self._check_size(images.shape, interpolate_pos_encoding)
        head_masks = self._per_layer_head_masks(head_mask)

        x = self.embeddings(
            images,
            bool_masked_pos=bool_masked_pos,
            interpolate_pos_encoding=interpolate_pos_encoding,
            training=training,
            patch_keep_indices=patch_keep_indices,
        )
        hidden_states = [x]
        attentions = []
        for block, layer_head_mask in zip(self.encoder_layers, head_masks):
            x, probs = block(
                x,
                head_mask=layer_head_mask,
                output_attentions=output_attentions,
                training=training,
            )
            hidden_states.append(x)
            attentions.append(probs)

        outputs = {"last_hidden_state": self.layernorm(x)}
        if output_hidden_states:
            outputs["hidden_states"] = hidden_states
        if output_attentions:
            outputs["attentions"] = attentions
        return outputs

    def _check_size(self, shape, interpolate_pos_encoding):
        if len(shape) != 4:
            raise ValueError(
                f"`images` must be a batch of shape (batch, height, width, channels) "
                f"for data_format='channels_last' or (batch, channels, height, width) "
                f"for 'channels_first'; got shape {tuple(shape)} "
                f"(data_format={self.data_format!r})."
            )
        if self.data_format == "channels_first":
            channels, height, width = shape[1], shape[2], shape[3]
        else:
            height, width, channels = shape[1], shape[2], shape[3]
        expected_h, expected_w, expected_c = _to_hwc(self.image_shape, self.data_format)
        if channels is not None and channels != expected_c:
            raise ValueError(
                f"Images have {channels} channels but the model expects {expected_c} "
                f"(image_shape={self.image_shape}, data_format={self.data_format!r})."
            )
        if height is None or width is None:
            raise ValueError(
                "Image height and width must be known when the model is traced; got "
                f"shape {tuple(shape)} (data_format={self.data_format!r})."
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Image size ({height}x{width}) must be divisible by the patch size "
                f"({self.patch_size})."
            )
        if not interpolate_pos_encoding and (height, width) != (expected_h, expected_w):
            raise ValueError(
                f"Input image size ({height}x{width}) doesn't match the model "
                f"({expected_h}x{expected_w}). Pass `interpolate_pos_encoding=True` to "
                "resample the position embeddings to the input size."
            )

    def _per_layer_head_masks(self, head_mask):
        if head_mask is None:
            return [None] * self.num_layers
        shape = tuple(head_mask.shape)
        if shape == (self.num_heads,):
            return [head_mask] * self.num_layers
        if shape == (self.num_layers, self.num_heads):
            return [head_mask[i] for i in range(self.num_layers)]
        raise ValueError(
            f"`head_mask` must have shape (num_heads,) = ({self.num_heads},) or "
            f"(num_layers, num_heads) = ({self.num_layers}, {self.num_heads}); "
            f"got {shape}."
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": dtype_config(self),
            "image_shape": self.image_shape,
            "patch_size": self.patch_size,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dropout_rate": self.dropout_rate,
            "attention_dropout": self.attention_dropout,
            "qkv_bias": self.qkv_bias,
            "hidden_act": self.hidden_act,
            "use_mask_token": self.use_mask_token,
            "data_format": self.data_format,
            # The order of `image_shape`, kept apart from `data_format` because
            # presets may leave `data_format` out (then the loading machine's
            # applies); configs without it were written when `image_shape` was
            # always (height, width, channels).
            IMAGE_SHAPE_LAYOUT: self.data_format,
        }

    @classmethod
    def from_config(cls, config):
        """The backbone of ``config``, in the layout its ``data_format`` names (the
        loading machine's ``keras.config.image_data_format()`` when it names none),
        with ``image_shape`` read in the order it was written."""
        config = dict(config)
        written = config.pop(IMAGE_SHAPE_LAYOUT, "channels_last")
        data_format = config.get("data_format") or keras.config.image_data_format()
        if "image_shape" in config:
            hwc = _to_hwc(tuple(config["image_shape"]), written)
            config["image_shape"] = _from_hwc(hwc, data_format)
        return cls(**config)

    @classmethod
    def _from_preset_source(cls, source, load_weights=True, **kwargs):
        kwargs = preset_backbone_overrides(kwargs)
        return source.load_backbone(cls, load_weights=load_weights, **kwargs)

    def save_to_preset(self, preset_dir):
        """Write this backbone as a Keras preset (config.json, model.weights.h5,
        metadata.json) that ``ViTMSNBackbone.from_preset(preset_dir)`` loads back
        exactly.

        The preset is written to a temporary folder, then moved into place. An
        existing ``preset_dir`` must be empty or a preset of ours; it is replaced
        whole (a classifier head or image converter saved there before is removed).
        """
        save_preset_directory(preset_dir, lambda d: write_portable_backbone(self, d))


def write_portable_backbone(backbone, directory):
    """config.json, model.weights.h5 and metadata.json of ``backbone``, without its
    ``data_format``: a preset loads in the layout of the loading machine's
    ``keras.config.image_data_format()`` (or ``from_preset(..., data_format=...)``),
    as converted checkpoints do; ``image_shape`` is written (height, width,
    channels), the order every preset has used."""
    file_format.write_backbone(
        backbone,
        directory,
        drop_data_format=True,
        config_overrides={
            "image_shape": _to_hwc(backbone.image_shape, backbone.data_format),
            IMAGE_SHAPE_LAYOUT: "channels_last",
        },
    )


def preset_backbone_overrides(kwargs):
    """``from_preset`` backbone arguments with ``image_shape`` (given in the
    ``data_format`` order of the model asked for) in the (height, width, channels)
    order presets store it in."""
    kwargs = dict(kwargs)
    if "image_shape" in kwargs:
        data_format = kwargs.get("data_format") or keras.config.image_data_format()
        kwargs["image_shape"] = _to_hwc(tuple(kwargs["image_shape"]), data_format)
    return kwargs


def image_shape_for(height, width, channels=3, data_format=None):
    """``image_shape`` for ``ViTMSNBackbone(...)`` in ``data_format`` order (None: the
    global ``keras.config.image_data_format()``).

    Example:
    >>> image_shape_for(224, 160, data_format="channels_first")
    (3, 224, 160)
    """
    return _from_hwc((height, width, channels), data_format or keras.config.image_data_format())


#: The backbone config key naming the order its ``image_shape`` is written in.
IMAGE_SHAPE_LAYOUT = "image_shape_layout"
_ORDER = {
    "channels_last": "(height, width, channels)",
    "channels_first": "(channels, height, width)",
}


def _to_hwc(shape, data_format):
    if data_format == "channels_first":
        return (shape[1], shape[2], shape[0])
    return tuple(shape)


def _from_hwc(hwc, data_format):
    if data_format == "channels_first":
        return (hwc[2], hwc[0], hwc[1])
    return tuple(hwc)


def _check_float(images):
    dtype = keras.backend.standardize_dtype(images.dtype)
    if "int" in dtype or dtype == "bool":
        raise ValueError(
            f"ViTMSNBackbone takes float images, already resized and normalised; got "
            f"{dtype} images. Convert raw pixels with keras_vitmsn.ViTMSNImageConverter "
            "first, or call a task (ViTMSNClassifier, ViTMSNFeatureExtractor) built "
            "with a preprocessor, which converts uint8 images itself."
        )


def _is_positive_int(value):
    try:
        positive_int(value, "")
    except ValueError:
        return False
    return True
