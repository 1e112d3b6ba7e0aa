"""MSN's multi-view augmentation as a ``tf.data`` pipeline, usable under every backend.

Each image gives two global views (the unmasked ``"target"`` for the target encoder and
the masked ``"anchor"``) and ``M`` focal views (more anchors), each made as in the
authors' torchvision pipeline: RandomResizedCrop, horizontal flip, colour jitter
(p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5), then ImageNet normalisation.

Only TensorFlow ops with stateless randomness are used, so the pipeline runs inside
``tf.data`` whatever ``KERAS_BACKEND`` is (Keras converts the batches for JAX and
PyTorch), and a seed fully determines the views. TensorFlow is imported when first
needed, so importing ``keras_vitmsn`` does not require it.
"""

import math
import numbers
import os

import keras
import numpy as np

# tf.data.AUTOTUNE's value, so the default argument needs no TensorFlow import.
AUTOTUNE = -1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# ITU-R 601 luma, as PIL's convert("L") (torchvision's tensor path uses 0.2989).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params
_DATASET_SHUFFLE_BUFFER = 1024


def _tf():
    try:
        import tensorflow as tf
    except ImportError as e:  # pragma: no cover - TensorFlow is a test dependency
        raise ImportError(
            "keras_vitmsn.msn.augment builds tf.data pipelines and needs TensorFlow "
            "(`pip install tensorflow-cpu` is enough; the model can still run on JAX or "
            "PyTorch)."
        ) from e
    return tf


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
        from keras_vitmsn.image_converter import ViTMSNImageConverter

        self.global_size = _check_size(global_size, "global_size")
        self.focal_size = _check_size(focal_size, "focal_size")
        if isinstance(num_focal_views, bool) or not isinstance(num_focal_views, numbers.Integral) \
                or num_focal_views < 0:
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
                    input_signature=[tf.TensorSpec([None, None, channels], tf.float32),
                                     tf.TensorSpec([2], tf.int64)],
                )
            return self._eager_views[channels](image, seed)
        return self._views(image, seed)

    def _views(self, image, seed):
        tf = _tf()
        if image.shape[-1] is None:
            image = tf.ensure_shape(image, [None, None, 3])
        seeds = tf.random.experimental.stateless_split(seed, 2 + self.num_focal_views)
        channels = image.shape[-1]

        def views_of(seeds, size, scale):
            # One traced view function per kind of view (not one per view) keeps the
            # graph small and quick to trace.
            return tf.map_fn(
                lambda s: self._view(image, s, size, scale),
                seeds,
                fn_output_signature=tf.TensorSpec(size + (channels,), tf.float32),
            )

        target, anchor = tf.unstack(
            self._convert(views_of(seeds[:2], self.global_size, self.global_scale))
        )
        out = {"target": target, "anchor": anchor}
        if self.num_focal_views:
            out["focal"] = self._convert(views_of(seeds[2:], self.focal_size, self.focal_scale))
        return out

    def _convert(self, views):
        if self.data_format == "channels_first":
            tf = _tf()
            rank = len(views.shape)
            views = tf.transpose(views, list(range(rank - 3)) + [rank - 1, rank - 3, rank - 2])
        return self._converter(views)

    def _view(self, image, seed, size, scale):
        """One view in [0, 255], channels last."""
        tf = _tf()
        s = tf.random.experimental.stateless_split(seed, 8)
        shape = tf.shape(image)
        box = random_resized_crop_box(shape[0], shape[1], scale, self.ratio, s[0])
        crop = image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
        x = tf.image.resize(crop, size, method="bilinear", antialias=True)
        x = tf.ensure_shape(x, size + (image.shape[-1],))
        x = tf.clip_by_value(x / 255.0, 0.0, 1.0)

        def maybe(p, seed, fn, x, cheap=False):
            if p <= 0:
                return x
            if p >= 1:
                return fn(x)
            apply = tf.random.stateless_uniform([], seed) < p
            if cheap:  # no nested graph function: faster tracing and iterator start
                return tf.where(apply, fn(x), x)
            return tf.cond(apply, lambda: fn(x), lambda: x)

        x = maybe(self.flip_probability, s[1], lambda x: tf.reverse(x, [1]), x, cheap=True)
        if self._jitters_color:
            x = maybe(self.color_jitter_probability, s[2],
                      lambda x: self._color_jitter(x, s[3]), x)
        x = maybe(self.grayscale_probability, s[4], _grayscale, x, cheap=True)
        x = maybe(self.blur_probability, s[5], lambda x: self._blur(x, s[6]), x)
        return x * 255.0

    def _color_jitter(self, x, seed):
        tf = _tf()
        brightness, contrast, saturation, hue = self.color_jitter
        s = tf.random.experimental.stateless_split(seed, 2)
        u = tf.random.stateless_uniform([4], s[0])

        def factor(strength, u):  # torchvision: uniform in [max(0, 1 - s), 1 + s]
            low = max(0.0, 1.0 - strength)
            return low + u * (1.0 + strength - low)

        def adjust_brightness(x):
            return tf.clip_by_value(x * factor(brightness, u[0]), 0.0, 1.0)

        def adjust_contrast(x):
            f = factor(contrast, u[1])
            mean = tf.reduce_mean(_luma(x))
            return tf.clip_by_value(f * x + (1.0 - f) * mean, 0.0, 1.0)

        def adjust_saturation(x):
            f = factor(saturation, u[2])
            return tf.clip_by_value(f * x + (1.0 - f) * _luma(x)[..., None], 0.0, 1.0)

        def adjust_hue(x):
            delta = (2.0 * u[3] - 1.0) * hue
            return tf.clip_by_value(tf.image.adjust_hue(x, delta), 0.0, 1.0)

        adjustments = [
            adjust_brightness if brightness > 0 else tf.identity,
            adjust_contrast if contrast > 0 else tf.identity,
            adjust_saturation if saturation > 0 else tf.identity,
            adjust_hue if hue > 0 else tf.identity,
        ]
        # torchvision applies the four in a new random order every call.
        order = tf.argsort(tf.random.stateless_uniform([4], s[1]))

        def step(k, x):
            return k + 1, tf.switch_case(order[k], [lambda fn=fn: fn(x) for fn in adjustments])

        # A loop rather than four unrolled switch_cases: its branches are traced once.
        _, x = tf.while_loop(lambda k, x: k < 4, step, [tf.constant(0), x])
        return x

    def _blur(self, x, seed):
        tf = _tf()
        low, high = self.blur_sigma
        sigma = tf.random.stateless_uniform([], seed, low, high)
        radius = self.blur_radius
        t = tf.range(-radius, radius + 1, dtype=tf.float32)
        weights = tf.exp(-0.5 * tf.square(t / sigma))
        weights = weights / tf.reduce_sum(weights)
        # Separable blur as two matrix products with banded matrices that hold the
        # reflect padding: several times faster on CPU than depthwise convolutions.
        height, width = x.shape[0], x.shape[1]
        x = tf.einsum("ij,jwc->iwc", _blur_matrix(height, weights, radius), x)
        return tf.einsum("ij,hjc->hic", _blur_matrix(width, weights, radius), x)

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
            import keras_vitmsn.image_converter  # noqa: F401 - registers the class

            config["image_converter"] = keras.saving.deserialize_keras_object(converter)
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()
                         if k != "image_converter")
        return f"MSNAugmentation({args})"


def random_resized_crop_box(image_height, image_width, scale, ratio, seed):
    """torchvision's ``RandomResizedCrop.get_params`` with stateless TensorFlow ops.

    Up to 10 attempts draw an area fraction uniform in ``scale`` and an aspect ratio
    (width / height) log-uniform in ``ratio``, round the box's sides, and keep the
    first box that fits, at a uniformly random position. If none fits, the box is the
    central crop of the image with its aspect ratio clamped into ``ratio``.

    Args:
        image_height, image_width: int or scalar int tensors.
        scale: ``(low, high)``, ``0 < low <= high <= 1``.
        ratio: ``(low, high)``, ``0 < low <= high``.
        seed: shape ``(2,)`` int tensor or sequence.

    Returns:
        int32 tensor ``[top, left, height, width]``.

    Example:
    >>> box = random_resized_crop_box(100, 200, (0.3, 1.0), (3 / 4, 4 / 3), seed=[0, 1])
    >>> top, left, height, width = box.numpy().tolist()
    >>> 0.3 * 100 * 200 <= height * width * 1.05 and top + height <= 100 and left + width <= 200
    True
    >>> random_resized_crop_box(100, 200, (1.0, 1.0), (1.0, 1.0), seed=[0, 1]).numpy().tolist()
    [0, 50, 100, 100]
    """
    tf = _tf()
    scale = _check_range(scale, "scale", upper=1.0)
    ratio = _check_range(ratio, "ratio")
    seeds = tf.random.experimental.stateless_split(_seed_tensor(seed), 4)
    height = tf.cast(image_height, tf.int32)
    width = tf.cast(image_width, tf.int32)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    # All attempts at once; the first valid one is the one torchvision would return.
    area = h * w * tf.random.stateless_uniform([_CROP_ATTEMPTS], seeds[0], scale[0], scale[1])
    aspect = tf.exp(tf.random.stateless_uniform(
        [_CROP_ATTEMPTS], seeds[1], math.log(ratio[0]), math.log(ratio[1])
    ))
    crop_w = tf.round(tf.sqrt(area * aspect))  # half to even, as Python's round
    crop_h = tf.round(tf.sqrt(area / aspect))
    valid = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
    first = tf.argmax(tf.cast(valid, tf.int32))
    found = tf.reduce_any(valid)

    in_ratio = w / h
    fallback_w = tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w)
    fallback_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
    box_h = tf.cast(tf.where(found, crop_h[first], fallback_h), tf.int32)
    box_w = tf.cast(tf.where(found, crop_w[first], fallback_w), tf.int32)
    top = tf.where(
        found,
        tf.random.stateless_uniform([], seeds[2], 0, height - box_h + 1, dtype=tf.int32),
        (height - box_h) // 2,
    )
    left = tf.where(
        found,
        tf.random.stateless_uniform([], seeds[3], 0, width - box_w + 1, dtype=tf.int32),
        (width - box_w) // 2,
    )
    return tf.stack([top, left, box_h, box_w])


def msn_multiview_dataset(
    source,
    batch_size,
    augmentation=None,
    shuffle=True,
    seed=None,
    drop_remainder=True,
    repeat=False,
    num_parallel_calls=AUTOTUNE,
    shuffle_buffer_size=None,
):
    """A batched ``tf.data.Dataset`` of MSN views, the ``x`` of ``model.fit(dataset)``.

    Elements are dicts ``{"target": (B, G_h, G_w, C), "anchor": (B, G_h, G_w, C),
    "focal": (B, M, F_h, F_w, C)}`` (no labels; no ``"focal"`` when
    ``num_focal_views=0``; channels first with a channels_first converter), made by
    ``augmentation.views``. It works under every Keras backend: Keras converts
    ``tf.data`` batches for JAX and PyTorch.

    Randomness: a ``tf.data.Dataset.random`` stream seeded from ``seed`` is zipped
    with the (shuffled, repeated) images, and element ``k`` of iteration ``e`` gets its
    ``(k, e)``-th seed pair. So a pipeline built twice with the same ``seed`` gives the
    same batches, while each new iteration of one pipeline (each epoch of
    ``model.fit`` without ``repeat``, or each pass with ``repeat=True``) draws new
    views and, with ``shuffle``, a new order. ``seed=None`` draws fresh seeds.

    Args:
        source: one of
            - a directory: every .jpg, .jpeg, .png, .bmp or .gif file below it,
              recursively (class sub-folders are fine; labels are ignored), decoded to
              RGB (the first frame of a GIF);
            - a NumPy array ``(N, H, W, C)``, uint8 or floats in [0, 255], C = 3 or
              C = 1 (replicated to 3 channels);
            - a ``tf.data.Dataset`` of images ``(H, W, C)`` or of ``(image, label,
              ...)`` tuples (only the image is kept); batched datasets are unbatched;
              1-channel images are replicated to 3 channels.
        batch_size: positive int.
        augmentation: an :class:`MSNAugmentation`, default ``MSNAugmentation()``
            (the paper's recipe).
        shuffle: bool. Directories and arrays are shuffled fully, through their file
            paths or indices (cheap for millions of images). A ``tf.data.Dataset``
            can only be shuffled after decoding, with a buffer of
            ``shuffle_buffer_size`` images (1024 by default): shuffle its file names
            upstream for a full shuffle.
        seed: None or an int fixing the shuffle order and the views.
        drop_remainder: bool, drop the last incomplete batch.
        repeat: bool, repeat the source forever (then pass ``steps_per_epoch`` to
            ``fit``).
        num_parallel_calls: parallel decoding and augmentation calls
            (``tf.data.AUTOTUNE``, i.e. -1, by default).
        shuffle_buffer_size: None or a positive int overriding the shuffle buffer.

    Returns:
        A prefetched ``tf.data.Dataset``.

    Example:
    >>> import numpy as np
    >>> images = np.random.default_rng(0).integers(0, 256, (8, 40, 40, 3), dtype="uint8")
    >>> augmentation = MSNAugmentation(global_size=32, focal_size=16, num_focal_views=2)
    >>> dataset = msn_multiview_dataset(images, batch_size=4, augmentation=augmentation, seed=0)
    >>> batch = next(iter(dataset))
    >>> {name: tuple(views.shape) for name, views in batch.items()}
    {'target': (4, 32, 32, 3), 'anchor': (4, 32, 32, 3), 'focal': (4, 2, 16, 16, 3)}
    >>> len(dataset)  # batches per pass
    2
    """
    tf = _tf()
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
    if augmentation is None:
        augmentation = MSNAugmentation()
    elif not isinstance(augmentation, MSNAugmentation):
        raise ValueError(
            f"`augmentation` must be an MSNAugmentation or None; got "
            f"{type(augmentation).__name__}."
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"`seed` must be None or an int; got {seed!r}.")
    if num_parallel_calls is not None and (
        isinstance(num_parallel_calls, bool)
        or not isinstance(num_parallel_calls, numbers.Integral)
        or (num_parallel_calls < 1 and num_parallel_calls != AUTOTUNE)
    ):
        raise ValueError(
            "`num_parallel_calls` must be a positive int, tf.data.AUTOTUNE (-1) or None; "
            f"got {num_parallel_calls!r}."
        )
    if shuffle_buffer_size is not None and (
        isinstance(shuffle_buffer_size, bool)
        or not isinstance(shuffle_buffer_size, numbers.Integral)
        or shuffle_buffer_size < 1
    ):
        raise ValueError(
            f"`shuffle_buffer_size` must be None or a positive int; got {shuffle_buffer_size!r}."
        )
    if seed is None:
        shuffle_seed = views_seed = None
    else:
        # Two unrelated streams from one user seed.
        shuffle_seed, views_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))

    if isinstance(source, (str, os.PathLike)):
        paths = list_image_files(source)
        _check_enough(len(paths), batch_size, drop_remainder, f"folder {os.fspath(source)!r}")
        elements = tf.data.Dataset.from_tensor_slices(paths)
        buffer = len(paths)

        def load(path):
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return image
    elif isinstance(source, np.ndarray):
        array = _check_array(source)
        _check_enough(len(array), batch_size, drop_remainder, "the array")
        images = tf.convert_to_tensor(array)
        # Shuffle indices, not images: the shuffle buffer then costs 8 bytes an image.
        elements = tf.data.Dataset.range(len(array))
        buffer = len(array)

        def load(index):
            return _to_rgb(tf.gather(images, index))
    elif isinstance(source, tf.data.Dataset):
        elements = _images_of(source)
        buffer = _DATASET_SHUFFLE_BUFFER
        load = _to_rgb
    else:
        raise ValueError(
            "`source` must be a directory path, a NumPy array (N, height, width, channels) "
            f"or a tf.data.Dataset; got {type(source).__name__}."
        )

    if shuffle:
        elements = elements.shuffle(
            shuffle_buffer_size or buffer, seed=shuffle_seed, reshuffle_each_iteration=True
        )
    if repeat:
        elements = elements.repeat()
    seeds = tf.data.Dataset.random(seed=views_seed, rerandomize_each_iteration=True).batch(
        2, drop_remainder=True
    )

    @tf.autograph.experimental.do_not_convert  # plain TF ops; converting only slows tracing
    def make_views(element, seed):
        return augmentation.views(load(element), seed)

    dataset = tf.data.Dataset.zip((elements, seeds)).map(
        make_views, num_parallel_calls=num_parallel_calls
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(AUTOTUNE)


def list_image_files(directory):
    """Sorted paths of the .jpg/.jpeg/.png/.bmp/.gif files below ``directory``.

    Raises:
        ValueError: ``directory`` is missing, not a directory, or holds no images.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"Image folder {directory!r} does not exist or is not a directory.")
    paths = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs.sort()  # a stable order, so a seed fixes the shuffle
        paths += [os.path.join(root, f) for f in sorted(files)
                  if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise ValueError(
            f"Image folder {directory!r} holds no images (looked recursively for "
            f"{', '.join(IMAGE_EXTENSIONS)})."
        )
    return paths


# -- helpers -----------------------------------------------------------------------------

def _luma(x):
    tf = _tf()
    return tf.einsum("...c,c->...", x, tf.constant(LUMA_WEIGHTS, x.dtype))


def _blur_matrix(n, weights, radius):
    """(n, n) matrix applying the kernel ``weights`` along an axis of n pixels.

    Row i holds the kernel centred on pixel i; taps falling outside are folded back
    inside as reflect padding does (mirrored about the edge pixel, which is not
    repeated), so it needs ``radius < n``.
    """
    tf = _tf()
    taps = 2 * radius + 1
    columns = tf.range(n)[:, None] + tf.range(-radius, radius + 1)[None, :]
    columns = tf.abs(columns)
    columns = tf.where(columns > n - 1, 2 * (n - 1) - columns, columns)
    rows = tf.repeat(tf.range(n), taps)
    indices = tf.stack([rows, tf.reshape(columns, [-1])], axis=1)
    # scatter_nd adds up the weights of taps folded onto the same pixel.
    return tf.scatter_nd(indices, tf.tile(weights, [n]), [n, n])


def _grayscale(x):
    tf = _tf()
    return tf.repeat(_luma(x)[..., None], 3, axis=-1)


def _to_rgb(image):
    tf = _tf()
    if image.shape[-1] == 1:
        return tf.repeat(image, 3, axis=-1)
    return image


def _seed_tensor(seed):
    tf = _tf()
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seed = [int(seed), 0]
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64) or not seed.shape.is_compatible_with([2]):
        raise ValueError(
            f"`seed` must be an int or a shape-(2,) int32/int64 tensor; got dtype "
            f"{seed.dtype.name} and shape {tuple(seed.shape)}."
        )
    return tf.cast(tf.ensure_shape(seed, [2]), tf.int64)


def _images_of(dataset):
    tf = _tf()
    spec = dataset.element_spec
    if isinstance(spec, (tuple, list)) and spec and isinstance(spec[0], tf.TensorSpec):
        dataset = dataset.map(lambda *parts: parts[0])
        spec = spec[0]
    if not isinstance(spec, tf.TensorSpec):
        raise ValueError(
            "A tf.data.Dataset `source` must yield images or (image, label, ...) tuples; "
            f"got elements {spec}."
        )
    rank = spec.shape.rank
    if rank == 4:
        dataset = dataset.unbatch()
    elif rank is not None and rank != 3:
        raise ValueError(
            "A tf.data.Dataset `source` must yield images (height, width, channels) or "
            f"batches of them; got elements of shape {tuple(spec.shape)}."
        )
    channels = spec.shape[-1] if rank is not None else None
    if channels is not None and channels not in (1, 3):
        raise ValueError(
            f"Images must have 1 or 3 channels; the tf.data.Dataset yields {channels} "
            f"(shape {tuple(spec.shape)})."
        )
    return dataset


def _check_array(array):
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(
            "A NumPy `source` must be images (N, height, width, channels) with 1 or 3 "
            f"channels; got shape {array.shape}."
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(
            f"A NumPy `source` must be uint8 or float (in [0, 255]); got dtype {array.dtype}."
        )
    return array


def _check_enough(count, batch_size, drop_remainder, what):
    if drop_remainder and count < batch_size:
        raise ValueError(
            f"{what} has {count} image(s), fewer than batch_size={batch_size}: with "
            "drop_remainder=True there would be no batch at all. Use a smaller "
            "batch_size or drop_remainder=False."
        )


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


def _check_range(value, name, upper=None):
    accepted = "0 < low <= high" + (f" <= {upper:g}" if upper is not None else "")
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a pair (low, high) with {accepted}; got {value!r}.") \
            from None
    if not (0.0 < low <= high and (upper is None or high <= upper)):
        raise ValueError(f"`{name}` must be a pair (low, high) with {accepted}; got {value!r}.")
    return (low, high)


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
