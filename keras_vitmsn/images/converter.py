"""ViTMSNImageConverter: the released models' image preprocessing as a Keras layer."""

import keras

from keras_vitmsn.backend.keras_internals import DATA_LAYER_IS_PRIVATE
from keras_vitmsn.backend.keras_internals import DataLayerBase
from keras_vitmsn.images.pixel_range import DTYPE_RANGES
from keras_vitmsn.images.pixel_range import PIXEL_RANGE
from keras_vitmsn.images.pixel_range import check_input_range
from keras_vitmsn.images.pixel_range import check_values
from keras_vitmsn.images.pixel_range import dtype_of
from keras_vitmsn.images.pixel_range import to_pixel_range
from keras_vitmsn.layers.core import spatial_shape
from keras_vitmsn.presets import file_format
from keras_vitmsn.presets.mixin import PresetMixin
from keras_vitmsn.presets.mixin import register_preset_class
from keras_vitmsn.utils import IMAGENET_MEAN
from keras_vitmsn.utils import IMAGENET_STD
from keras_vitmsn.utils import default_name

INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "lanczos3", "lanczos5")
#: How images reach the model size: "hub" resizes straight to it (the released
#: processor), "paper" resizes and centre-crops (the paper's evaluation transform).
RESIZE_MODES = ("hub", "paper")
# The paper's evaluation transform (facebookresearch/msn, logistic_eval.py):
# Resize(256) + CenterCrop(224).
PAPER_CROP_FRACTION = 224 / 256


def paper_resize_geometry(height, width, image_size):
    """``(resized_height, resized_width, top, left)`` of the paper's evaluation transform.

    torchvision's ``Resize(256)`` + ``CenterCrop(224)`` scaled with the model size: the
    image is resized, keeping its aspect, to cover ``round(s * 256 / 224)`` for each
    side ``s`` of ``image_size`` (for a square size: the shorter side becomes that, the
    longer ``int(R * long / short)``, as torchvision), then the centre ``image_size``
    is cropped (offsets ``int(round((resized - crop) / 2))``, as torchvision).

    The one definition for the converter (tensors) and the image-folder reader (Pillow
    images), so both crop the same pixels. ``height`` and ``width`` are ints, or scalar
    tensors of a TensorFlow graph (tf.data images of unknown size), computed in float64
    so the truncations and half-to-even roundings fall as in Python.

    Example:
    >>> paper_resize_geometry(300, 400, (224, 224))
    (256, 341, 16, 58)
    """
    crop_h, crop_w = image_size
    cover_h, cover_w = round(crop_h / PAPER_CROP_FRACTION), round(crop_w / PAPER_CROP_FRACTION)
    if not type(height).__module__.startswith("tensorflow"):
        if width * cover_h >= cover_w * height:  # the height binds
            new_h, new_w = cover_h, int(cover_h * width / height)
        else:
            new_h, new_w = int(cover_w * height / width), cover_w
        top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
        return new_h, new_w, top, left
    import tensorflow as tf

    h, w = tf.cast(height, "float64"), tf.cast(width, "float64")
    binds = w * cover_h >= cover_w * h
    new_h = tf.where(binds, tf.constant(cover_h, "float64"), tf.floor(cover_w * h / w))
    new_w = tf.where(binds, tf.floor(cover_h * w / h), tf.constant(cover_w, "float64"))
    top = tf.round((new_h - crop_h) / 2.0)
    left = tf.round((new_w - crop_w) / 2.0)
    return tuple(tf.cast(v, "int32") for v in (new_h, new_w, top, left))


@register_preset_class("image_converter")
@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNImageConverter(PresetMixin, DataLayerBase):
    """Resize, rescale and normalise images the way the released ViT-MSN processor does.

    ``facebook/vit-msn-*`` use transformers' ``ViTImageProcessor``: resize straight to
    224x224 with PIL's bilinear filter (no crop), multiply by 1/255, subtract the
    ImageNet mean and divide by the ImageNet std. This layer does the same with
    ``keras.ops.image.resize``. PIL's bilinear filter widens with the downscaling
    factor (it antialiases), so ``antialias=True`` is the default; without it,
    downscaled images differ from the processor by up to ~2.4 after normalisation.
    PIL also rounds to uint8 after each resize pass, which this float pipeline does
    not: outputs stay within one uint8 step (1 / (255 * std), at most 0.0175) of
    ``ViTImageProcessor``, with a mean difference around 0.005.

    ``resize_mode="paper"`` is instead the MSN paper's evaluation transform
    (``logistic_eval.py``: torchvision ``Resize(256)`` + ``CenterCrop(224)``), scaled
    with ``image_size``: resize keeping the aspect ratio so that the image covers
    ``round(image_size * 256 / 224)`` (the shorter side of a square size), then crop the
    centre ``image_size`` (:func:`paper_resize_geometry`). It zooms in by 256/224 even
    on images already at ``image_size``.

    Input range. The processor works on pixels in [0, 255]. uint8 images are read
    as [0, 255] and uint16 images as [0, 65535] (their dtype says so); images of
    any other dtype (floats, int32 ...) are taken to span ``input_range``, (0, 255)
    by default, and mapped linearly onto [0, 255] before ``rescale_factor``. Float
    images in [0, 1] therefore need ``input_range=(0, 1)``. A value outside
    ``input_range`` raises a ValueError when the images are concrete (NumPy arrays
    and eager tensors of any backend: direct calls, eager ``fit``/``predict``); inside
    compiled functions and ``tf.data`` graphs values cannot be inspected without a
    device round trip, so there they are not checked. Images in [0, 1] passed with
    the default range are inside it and cannot be told from dark [0, 255] images:
    declare their range. PyTorch has no uint16 tensors: inside a model run by the
    torch backend, uint16 arrays arrive as int32 and are read with ``input_range``
    (so they fail the check); call the converter on the NumPy array, or pass floats
    with ``input_range=(0, 65535)``.

    It is a Keras preprocessing layer: call it eagerly on NumPy arrays or any
    backend's tensors, inside a model (``ViTMSNClassifier(preprocessor=...)``), or in
    a ``tf.data`` pipeline under any backend (it then runs TensorFlow ops).

    Args:
        image_size: ``(height, width)`` to resize to, or None to keep the input size.
        resize_mode: "hub" (default: resize straight to ``image_size``, as the hub
            processor) or "paper" (resize then centre-crop, as the paper evaluates;
            needs ``image_size``).
        mean: per-channel mean subtracted after rescaling, or None to skip
            normalisation (then ``std`` must be None too).
        std: per-channel std dividing after the mean is subtracted.
        interpolation: one of "bilinear", "nearest", "bicubic", "lanczos3", "lanczos5".
        antialias: bool, widen the resize filter when downscaling (matches PIL).
        rescale_factor: multiplier applied to the [0, 255] pixels after resizing,
            1/255 by default (the processor's); None to skip rescaling.
        input_range: ``(low, high)`` that float (and non-uint8/uint16 integer)
            images span, mapped onto [0, 255]: (0, 255) by default, (0, 1) for
            images in [0, 1], (-1, 1) for images in [-1, 1]. uint8 and uint16
            images always use their dtype's full range.
        data_format: "channels_last" or "channels_first"; defaults to
            ``keras.config.image_data_format()``.
        dtype: output dtype, "float32" by default whatever the global policy is
            (bfloat16 would cost about 1e-2 of precision on normalised pixels).

    Call arguments:
        images: one image ``(height, width, channels)`` or a batch
            ``(batch, height, width, channels)`` (channels first with
            ``data_format="channels_first"``), uint8 or float.

    Returns:
        Float images of the same rank, ``image_size`` spatially.

    Example:
    >>> import numpy as np
    >>> converter = ViTMSNImageConverter(image_size=(224, 224))
    >>> images = np.random.randint(0, 256, (2, 300, 400, 3), dtype="uint8")
    >>> tuple(converter(images).shape)
    (2, 224, 224, 3)
    >>> import tensorflow as tf  # in a tf.data pipeline, under any backend
    >>> ds = tf.data.Dataset.from_tensor_slices(images).map(converter)
    >>> next(iter(ds)).shape
    TensorShape([224, 224, 3])
    >>> paper = ViTMSNImageConverter(image_size=(224, 224), resize_mode="paper")
    >>> tuple(paper(images).shape)   # resized to 256x341, centre 224x224 cropped
    (2, 224, 224, 3)
    """

    def __init__(
        self,
        image_size=(224, 224),
        resize_mode="hub",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bilinear",
        antialias=True,
        rescale_factor=1.0 / 255.0,
        data_format=None,
        dtype="float32",
        name=None,
        input_range=PIXEL_RANGE,
        **kwargs,
    ):
        super().__init__(dtype=dtype, name=default_name(name, "vit_msn_image_converter"), **kwargs)
        if image_size is not None:
            image_size = tuple(int(s) for s in image_size)
            if len(image_size) != 2 or min(image_size) < 1:
                raise ValueError(
                    f"`image_size` must be (height, width) with positive sizes, or None; "
                    f"got {image_size}."
                )
        if resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"`resize_mode` must be one of {', '.join(RESIZE_MODES)}; got {resize_mode!r}."
            )
        if resize_mode == "paper" and image_size is None:
            raise ValueError(
                "`resize_mode='paper'` crops the centre `image_size`: give an image_size."
            )
        if (mean is None) != (std is None):
            raise ValueError(
                "`mean` and `std` must both be given or both be None; got "
                f"mean={mean!r}, std={std!r}."
            )
        if mean is not None:
            mean = tuple(float(m) for m in mean)
            std = tuple(float(s) for s in std)
            if len(mean) != len(std):
                raise ValueError(
                    f"`mean` and `std` need one value per channel each; got {len(mean)} "
                    f"and {len(std)} values."
                )
            if min(std) <= 0:
                raise ValueError(f"`std` values must be positive, got {std}.")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"`interpolation` must be one of {', '.join(INTERPOLATIONS)}; "
                f"got {interpolation!r}."
            )
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"`data_format` must be 'channels_last' or 'channels_first', got {data_format!r}."
            )
        self.input_range = check_input_range(input_range)
        self.image_size = image_size
        self.resize_mode = resize_mode
        self.mean = mean
        self.std = std
        self.interpolation = interpolation
        self.antialias = bool(antialias)
        self.rescale_factor = None if rescale_factor is None else float(rescale_factor)
        self.data_format = data_format
        if not DATA_LAYER_IS_PRIVATE:
            # Keras' data layer provides `self.backend`; on the public base the running
            # backend's keras.ops do the same outside tf.data.
            self.backend = keras.ops
        if self.antialias and image_size is not None:
            from keras_vitmsn import backend

            # Where XLA cannot compile the antialiased resize (TensorFlow), let
            # jit_compile="auto" leave a model holding this layer uncompiled.
            if not backend.antialiased_resize_compiles():
                self.supports_jit = False
        self.built = True

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else -3

    def __call__(self, images, **kwargs):
        # Inside a TF graph the DataLayer base class casts inputs to float32 before
        # `call`, so the dtype that says what range an image has is read here.
        kwargs["source_dtype"] = dtype_of(images)
        return super().__call__(images, **kwargs)

    def call(self, images, source_dtype=None):
        # `self.backend` is the running backend, or TensorFlow inside a tf.data graph
        # (set by the DataLayer base class), so only its ops are used here.
        ops = self.backend
        source_dtype = source_dtype or dtype_of(images)
        rank = len(images.shape)
        if rank not in (3, 4):
            raise ValueError(
                "Images must be (height, width, channels) or (batch, height, width, "
                f"channels) ({self.data_format}); got shape {tuple(images.shape)}."
            )
        channels = images.shape[self._channel_axis]
        if self.mean is not None and channels is not None and channels != len(self.mean):
            raise ValueError(
                f"Images have {channels} channels ({self.data_format}, shape "
                f"{tuple(images.shape)}) but `mean`/`std` have {len(self.mean)} values."
            )
        low, high = DTYPE_RANGES.get(source_dtype, self.input_range)
        if source_dtype not in DTYPE_RANGES:
            check_values(images, ops, self.input_range)
        x = ops.cast(images, self.compute_dtype)
        if rank == 3:
            x = ops.numpy.expand_dims(x, 0)
        if self.resize_mode == "paper":
            x = self._resize_and_crop(x, ops)
        elif (
            self.image_size is not None
            and spatial_shape(x.shape, self.data_format) != self.image_size
        ):
            x = self._resize(x, self.image_size, ops)
        if (low, high) != PIXEL_RANGE:
            # Affine, so it commutes with the (weights summing to one) resize: done
            # after it, on fewer pixels.
            x = to_pixel_range(x, low, high, ops)
        if self.rescale_factor is not None:
            x = x * ops.cast(self.rescale_factor, x.dtype)
        if self.mean is not None:
            shape = (1, 1, 1, -1) if self.data_format == "channels_last" else (1, -1, 1, 1)
            mean = ops.numpy.reshape(ops.convert_to_tensor(self.mean, x.dtype), shape)
            std = ops.numpy.reshape(ops.convert_to_tensor(self.std, x.dtype), shape)
            x = (x - mean) / std
        if rank == 3:
            x = ops.numpy.squeeze(x, 0)
        return x

    def _resize(self, x, size, ops):
        return ops.image.resize(
            x,
            size,
            interpolation=self.interpolation,
            antialias=self.antialias,
            data_format=self.data_format,
        )

    def _resize_and_crop(self, x, ops):
        height, width = spatial_shape(x.shape, self.data_format)
        crop_h, crop_w = self.image_size
        channels_last = self.data_format == "channels_last"
        if height is not None and width is not None:
            new_h, new_w, top, left = paper_resize_geometry(height, width, self.image_size)
        else:  # a TensorFlow graph of images of unknown size (tf.data)
            import tensorflow as tf

            shape = tf.shape(x)
            axes = (1, 2) if channels_last else (2, 3)
            new_h, new_w, top, left = paper_resize_geometry(
                shape[axes[0]], shape[axes[1]], self.image_size
            )
        x = self._resize(x, (new_h, new_w), ops)
        if channels_last:
            x = x[:, top : top + crop_h, left : left + crop_w, :]
        else:
            x = x[:, :, top : top + crop_h, left : left + crop_w]
        if height is None or width is None:
            # The offsets were tensors: give the crop its static size back.
            static = [None, crop_h, crop_w, None] if channels_last else [None, None, crop_h, crop_w]
            x = tf.ensure_shape(x, static)
        return x

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        if self.image_size is not None:
            if self.data_format == "channels_last":
                shape[-3], shape[-2] = self.image_size
            else:
                shape[-2], shape[-1] = self.image_size
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            resize_mode=self.resize_mode,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            antialias=self.antialias,
            rescale_factor=self.rescale_factor,
            data_format=self.data_format,
            input_range=self.input_range,
        )
        return config

    @classmethod
    def _from_preset_source(cls, source, load_weights=True, **kwargs):
        return source.load_image_converter(cls, **kwargs)

    def save_to_preset(self, preset_dir):
        """Write ``image_converter.json`` into ``preset_dir`` (created if needed), next
        to a backbone or classifier preset already there; the file is replaced
        atomically."""
        file_format.write_image_converter(self, preset_dir)
