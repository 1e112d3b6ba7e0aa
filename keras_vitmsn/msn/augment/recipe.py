"""The recipe of MSN's views: :class:`MSNAugmentation`.

Each image gives two global views (the unmasked ``"target"`` for the target encoder and
the masked ``"anchor"``) and ``M`` focal views (more anchors), each made as in the
authors' torchvision pipeline: RandomResizedCrop, horizontal flip, colour jitter
(p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5), then ImageNet normalisation.
The operations themselves are in :mod:`keras_vitmsn.msn.augment.ops`.
"""

import math
import numbers

import keras

from keras_vitmsn.msn.augment.batched import view_params
from keras_vitmsn.msn.augment.batched import view_uniforms
from keras_vitmsn.msn.augment.ops import _check_range
from keras_vitmsn.msn.augment.ops import _seed_tensor
from keras_vitmsn.msn.augment.ops import _tf
from keras_vitmsn.msn.augment.ops import color_jitter_from_uniforms
from keras_vitmsn.msn.augment.ops import gaussian_blur_with_sigma
from keras_vitmsn.msn.augment.ops import grayscale


class MSNAugmentation:
    """The recipe of MSN's views: two global crops and ``num_focal_views`` focal crops.

    Every view goes through, in the authors' order (torchvision transforms):

    1. RandomResizedCrop: area fraction uniform in the scale range, aspect ratio
       log-uniform in ``ratio``, 10 attempts, then a central crop of the closest
       allowed aspect; bilinear resize to the view size, antialiased when
       downscaling.
    2. Horizontal flip with ``flip_probability``.
    3. ColorJitter with ``color_jitter_probability``, torchvision's semantics on
       [0, 1] pixels, clipped to [0, 1] after each step: brightness multiplies by a
       factor uniform in ``[max(0, 1 - b), 1 + b]``; contrast blends with the mean
       of the grayscale image (factor drawn the same way); saturation blends with the
       grayscale image; hue shifts the HSV hue by a uniform ``[-h, h]`` (fractions of
       the colour circle). The four are applied in a random order per view, as
       torchvision does.
    4. Grayscale with ``grayscale_probability``: ITU-R 601 luma
       ``0.299 R + 0.587 G + 0.114 B``, copied to the three channels.
    5. Gaussian blur with ``blur_probability``, sigma uniform in ``blur_sigma``
       (pixels, the ``radius`` of the authors' PIL ``GaussianBlur``): separable, with a
       fixed kernel width ``2 * ceil(3 * max(blur_sigma)) + 1`` (weights from the
       sampled sigma, normalised) and reflect padding.
    6. ``image_converter`` (rescale to [0, 1] and ImageNet mean/std by default).

    The PIL pipeline of the original code rounds to uint8 after each step; this one
    stays in float32.

    Args:
        global_size: int or ``(height, width)`` of the two global views.
        focal_size: int or ``(height, width)`` of the focal views.
        num_focal_views: int >= 0, ``M`` focal views per image (0: none).
        global_scale: ``(low, high)`` area fraction of the global crops,
            ``0 < low <= high <= 1``.
        focal_scale: ``(low, high)`` area fraction of the focal crops.
        ratio: ``(low, high)`` aspect ratio (width / height) of the crops,
            ``0 < low <= high``.
        flip_probability: probability of a horizontal flip, in [0, 1].
        color_jitter: ``(brightness, contrast, saturation, hue)``, each >= 0 (hue
            <= 0.5; 0 turns that part off), or None for no colour jitter.
        color_jitter_probability: probability of the colour jitter, in [0, 1].
        grayscale_probability: probability of the grayscale conversion, in [0, 1].
        blur_probability: probability of the Gaussian blur, in [0, 1].
        blur_sigma: ``(low, high)`` blur sigma in pixels, ``0 < low <= high``.
        image_converter: a :class:`keras_vitmsn.ViTMSNImageConverter` normalising each
            finished view, or None for ``ViTMSNImageConverter(image_size=None)``
            (ImageNet mean/std after rescaling by 1/255). Views reach it as floats in
            [0, 255], so keep its ``rescale_factor`` at 1/255 for normalised outputs;
            its ``image_size`` is ignored (views are never resized again) and its
            ``data_format`` is that of the views.

    Example:
    >>> import numpy as np
    >>> augmentation = MSNAugmentation(global_size=32, focal_size=16, num_focal_views=4)
    >>> image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype="uint8")
    >>> views = augmentation.views(image, seed=[1, 2])  # TensorFlow tensors
    >>> {name: tuple(view.shape) for name, view in views.items()}
    {'target': (32, 32, 3), 'anchor': (32, 32, 3), 'focal': (4, 16, 16, 3)}
    >>> again = augmentation.views(image, seed=[1, 2])
    >>> bool(np.array_equal(views["focal"], again["focal"]))  # a seed fixes the views
    True
    >>> MSNAugmentation.from_config(augmentation.get_config()).focal_size
    (16, 16)
    """

    def __init__(
        self,
        global_size=224,
        focal_size=96,
        num_focal_views=10,
        global_scale=(0.3, 1.0),
        focal_scale=(0.05, 0.3),
        ratio=(3.0 / 4.0, 4.0 / 3.0),
        flip_probability=0.5,
        color_jitter=(0.4, 0.4, 0.4, 0.1),
        color_jitter_probability=0.8,
        grayscale_probability=0.2,
        blur_probability=0.5,
        blur_sigma=(0.1, 2.0),
        image_converter=None,
    ):
        from keras_vitmsn.images.converter import ViTMSNImageConverter

        self.global_size = _check_size(global_size, "global_size")
        self.focal_size = _check_size(focal_size, "focal_size")
        if (
            isinstance(num_focal_views, bool)
            or not isinstance(num_focal_views, numbers.Integral)
            or num_focal_views < 0
        ):
            raise ValueError(
                f"`num_focal_views` must be an int >= 0 (0: no focal views); got "
                f"{num_focal_views!r}."
            )
        self.num_focal_views = int(num_focal_views)
        self.global_scale = _check_range(global_scale, "global_scale", upper=1.0)
        self.focal_scale = _check_range(focal_scale, "focal_scale", upper=1.0)
        self.ratio = _check_range(ratio, "ratio")
        self.flip_probability = _check_probability(flip_probability, "flip_probability")
        self.color_jitter = _check_color_jitter(color_jitter)
        self.color_jitter_probability = _check_probability(
            color_jitter_probability, "color_jitter_probability"
        )
        self.grayscale_probability = _check_probability(
            grayscale_probability, "grayscale_probability"
        )
        self.blur_probability = _check_probability(blur_probability, "blur_probability")
        self.blur_sigma = _check_range(blur_sigma, "blur_sigma")
        if self.blur_probability > 0:
            # Reflect padding needs fewer padded pixels than the view has on each side.
            radius = self.blur_radius
            sides = self.global_size + (self.focal_size if self.num_focal_views else ())
            if radius >= min(sides):
                raise ValueError(
                    f"`blur_sigma` up to {self.blur_sigma[1]} needs a blur kernel radius "
                    f"of ceil(3 * {self.blur_sigma[1]}) = {radius} pixels, which reflect "
                    f"padding only allows on views larger than {radius} pixels a side; "
                    f"the smallest view side is {min(sides)}. Use larger views, a "
                    "smaller `blur_sigma`, or `blur_probability=0`."
                )
        if image_converter is not None and not isinstance(image_converter, ViTMSNImageConverter):
            raise ValueError(
                "`image_converter` must be a keras_vitmsn.ViTMSNImageConverter or None; "
                f"got {type(image_converter).__name__}."
            )
        self.image_converter = image_converter
        converter = image_converter or ViTMSNImageConverter(image_size=None)
        # A copy that never resizes: views already have their final size.
        self._converter = type(converter).from_config(
            {**converter.get_config(), "image_size": None}
        )
        self._eager_views = {}

    # -- derived properties --------------------------------------------------------------

    @property
    def data_format(self):
        """``"channels_last"`` or ``"channels_first"``: that of the image converter."""
        return self._converter.data_format

    @property
    def blur_radius(self):
        """Half-width of the blur kernel, ``ceil(3 * max(blur_sigma))`` pixels."""
        return int(math.ceil(3.0 * self.blur_sigma[1]))

    @property
    def _jitters_color(self):
        return (
            self.color_jitter is not None
            and any(v > 0 for v in self.color_jitter)
            and self.color_jitter_probability > 0
        )

    @property
    def needs_rgb(self):
        """Whether images must have 3 channels (colour jitter or grayscale is on)."""
        return self._jitters_color or self.grayscale_probability > 0

    # -- views ---------------------------------------------------------------------------

    def views(self, image, seed):
        """The views of one image, drawn from ``seed``.

        Args:
            image: ``(height, width, 3)`` uint8, or float in [0, 255]; any size.
                Other channel counts only when colour jitter and grayscale are off
                (and the converter's ``mean``/``std`` have that many values).
            seed: shape ``(2,)`` int tensor or sequence (or an int ``s``, meaning
                ``(s, 0)``); the same seed always gives the same views.

        Returns:
            Dict of TensorFlow tensors in the converter's dtype (float32 by default):
            ``"target"`` and ``"anchor"`` ``(G_h, G_w, C)``, and, when
            ``num_focal_views > 0``, ``"focal"`` ``(M, F_h, F_w, C)``; channels first
            (``(C, G_h, G_w)``, ``(M, C, F_h, F_w)``) with a channels_first converter.
        """
        tf = _tf()
        image = tf.convert_to_tensor(image)
        shape = image.shape
        if shape.rank is not None and shape.rank != 3:
            raise ValueError(
                "`image` must be one image (height, width, channels); got shape "
                f"{tuple(shape)}. For batches, use msn_multiview_dataset or map over "
                "the images."
            )
        channels = shape[-1] if shape.rank is not None else None
        if channels is not None and self.needs_rgb and channels != 3:
            raise ValueError(
                f"Colour jitter and grayscale need RGB images (3 channels); got "
                f"{channels} channel(s) (shape {tuple(shape)}). Convert the images to "
                "RGB, or set `color_jitter=None` and `grayscale_probability=0`."
            )
        if not image.dtype.is_integer and not image.dtype.is_floating:
            raise ValueError(f"`image` must be uint8 or float; got dtype {image.dtype.name}.")
        image = tf.cast(image, tf.float32)
        seed = _seed_tensor(seed)
        if tf.executing_eagerly():
            # The converter (a Keras DataLayer) only runs TensorFlow ops inside a TF
            # graph, so eager calls go through a tf.function: one per channel count,
            # any image size.
            channels = image.shape[-1]
            if channels not in self._eager_views:
                self._eager_views[channels] = tf.function(
                    self._views,
                    autograph=False,  # no Python control flow on tensors; faster tracing
                    input_signature=[
                        tf.TensorSpec([None, None, channels], tf.float32),
                        tf.TensorSpec([2], tf.int64),
                    ],
                )
            return self._eager_views[channels](image, seed)
        return self._views(image, seed)

    def _views(self, image, seed):
        tf = _tf()
        if image.shape[-1] is None:
            image = tf.ensure_shape(image, [None, None, 3])
        channels = image.shape[-1]
        shape = tf.shape(image)
        params = view_params(self, view_uniforms(self, seed), shape[0], shape[1])

        def views_of(views, size):
            # One traced view function per kind of view (not one per view) keeps the
            # graph small and quick to trace.
            return tf.map_fn(
                lambda p: self._view(image, p, size),
                {k: v[views] for k, v in params.items()},
                fn_output_signature=tf.TensorSpec(size + (channels,), tf.float32),
            )

        target, anchor = tf.unstack(self._convert(views_of(slice(0, 2), self.global_size)))
        out = {"target": target, "anchor": anchor}
        if self.num_focal_views:
            out["focal"] = self._convert(views_of(slice(2, None), self.focal_size))
        return out

    def _convert(self, views):
        if self.data_format == "channels_first":
            tf = _tf()
            rank = len(views.shape)
            views = tf.transpose(views, list(range(rank - 3)) + [rank - 1, rank - 3, rank - 2])
        return self._converter(views)

    def _view(self, image, p, size):
        """One view in [0, 255], channels last, from its choices ``p`` (view_params)."""
        tf = _tf()
        box = p["box"]
        crop = image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
        x = tf.image.resize(crop, size, method="bilinear", antialias=True)
        x = tf.ensure_shape(x, size + (image.shape[-1],))
        x = tf.clip_by_value(x / 255.0, 0.0, 1.0)

        def maybe(p_apply, apply, fn, x, cheap=False):
            if p_apply <= 0:
                return x
            if p_apply >= 1:
                return fn(x)
            if cheap:  # no nested graph function: faster tracing and iterator start
                return tf.where(apply, fn(x), x)
            return tf.cond(apply, lambda: fn(x), lambda: x)

        x = maybe(self.flip_probability, p["flip"], lambda x: tf.reverse(x, [1]), x, cheap=True)
        if self._jitters_color:
            x = maybe(
                self.color_jitter_probability,
                p["jitter"],
                lambda x: color_jitter_from_uniforms(x, p["jitter_u"], self.color_jitter),
                x,
            )
        x = maybe(self.grayscale_probability, p["gray"], grayscale, x, cheap=True)
        x = maybe(
            self.blur_probability,
            p["blur"],
            lambda x: gaussian_blur_with_sigma(x, p["sigma"], self.blur_radius),
            x,
        )
        return x * 255.0

    # -- serialisation -------------------------------------------------------------------

    def get_config(self):
        converter = self.image_converter
        return {
            "global_size": self.global_size,
            "focal_size": self.focal_size,
            "num_focal_views": self.num_focal_views,
            "global_scale": self.global_scale,
            "focal_scale": self.focal_scale,
            "ratio": self.ratio,
            "flip_probability": self.flip_probability,
            "color_jitter": self.color_jitter,
            "color_jitter_probability": self.color_jitter_probability,
            "grayscale_probability": self.grayscale_probability,
            "blur_probability": self.blur_probability,
            "blur_sigma": self.blur_sigma,
            "image_converter": (
                None if converter is None else keras.saving.serialize_keras_object(converter)
            ),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        converter = config.get("image_converter")
        if isinstance(converter, dict):
            import keras_vitmsn.images.converter  # noqa: F401 - registers the class

            config["image_converter"] = keras.saving.deserialize_keras_object(converter)
        return cls(**config)

    def __repr__(self):
        args = ", ".join(
            f"{k}={v!r}" for k, v in self.get_config().items() if k != "image_converter"
        )
        return f"MSNAugmentation({args})"


# -- argument checks ------------------------------------------------------------------


def _check_size(size, name):
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    try:
        ok = len(size) == 2 and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in size
        )
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"`{name}` must be a positive int or (height, width) of positive ints; got {size!r}."
        )
    return tuple(int(s) for s in size)


def _check_probability(p, name):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1]; got {p!r}.")
    return float(p)


def _check_color_jitter(jitter):
    if jitter is None:
        return None
    message = (
        "`color_jitter` must be None or (brightness, contrast, saturation, hue) with "
        f"each >= 0 and hue <= 0.5; got {jitter!r}."
    )
    try:
        values = tuple(float(v) for v in jitter)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if len(values) != 4 or min(values) < 0 or values[3] > 0.5:
        raise ValueError(message)
    return values
