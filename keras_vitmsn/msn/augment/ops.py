"""The image operations of MSN's views, in TensorFlow with stateless randomness.

Each takes an explicit ``seed`` (shape ``(2,)``), so a seed fully determines its
result, and runs eagerly or inside ``tf.data``. Pixels are floats in [0, 1], channels
last, except for :func:`random_resized_crop_box`, which only draws a box.
"""

import math
import numbers

# ITU-R 601 luma, as PIL's convert("L") (torchvision's tensor path uses 0.2989).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params


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
    uniforms = tf.random.stateless_uniform([CROP_UNIFORMS], _seed_tensor(seed))
    return crop_box_from_uniforms(image_height, image_width, scale, ratio, uniforms)


#: Uniform numbers in [0, 1) one crop box is drawn from: 10 areas, 10 aspect ratios,
#: the top and the left.
CROP_UNIFORMS = 2 * _CROP_ATTEMPTS + 2


def crop_box_from_uniforms(image_height, image_width, scale, ratio, uniforms):
    """:func:`random_resized_crop_box` from given uniforms ``(..., CROP_UNIFORMS)``
    (any leading shape: one box per row), returning int32 ``(..., 4)``."""
    tf = _tf()
    scale = _check_range(scale, "scale", upper=1.0)
    ratio = _check_range(ratio, "ratio")
    uniforms = tf.convert_to_tensor(uniforms, tf.float32)
    height = tf.cast(image_height, tf.int32)
    width = tf.cast(image_width, tf.int32)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    # All attempts at once; the first valid one is the one torchvision would return.
    area = h * w * (scale[0] + uniforms[..., :_CROP_ATTEMPTS] * (scale[1] - scale[0]))
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(
        log_low + uniforms[..., _CROP_ATTEMPTS : 2 * _CROP_ATTEMPTS] * (log_high - log_low)
    )
    crop_w = tf.round(tf.sqrt(area * aspect))  # half to even, as Python's round
    crop_h = tf.round(tf.sqrt(area / aspect))
    valid = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
    first = tf.argmax(tf.cast(valid, tf.int32), axis=-1)[..., None]
    found = tf.reduce_any(valid, axis=-1)

    in_ratio = w / h
    fallback_w = tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w)
    fallback_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)

    def pick(values):
        return tf.gather(values, first, batch_dims=len(values.shape) - 1)[..., 0]

    box_h = tf.cast(tf.where(found, pick(crop_h), fallback_h), tf.int32)
    box_w = tf.cast(tf.where(found, pick(crop_w), fallback_w), tf.int32)

    def position(u, room):  # uniform over 0 .. room
        return tf.minimum(tf.cast(tf.floor(u * tf.cast(room + 1, tf.float32)), tf.int32), room)

    top = tf.where(found, position(uniforms[..., -2], height - box_h), (height - box_h) // 2)
    left = tf.where(found, position(uniforms[..., -1], width - box_w), (width - box_w) // 2)
    return tf.stack([top, left, box_h, box_w], axis=-1)


def color_jitter(x, seed, strengths):
    """torchvision's ColorJitter on one RGB image ``(height, width, 3)`` in [0, 1].

    ``strengths = (brightness, contrast, saturation, hue)``; 0 turns a part off. The
    parts run in a random order drawn from ``seed``, each clipped to [0, 1]:
    brightness multiplies by a factor uniform in ``[max(0, 1 - b), 1 + b]``;
    contrast blends with the mean luma (factor drawn the same way); saturation
    blends with the luma image; hue shifts the HSV hue by a uniform ``[-h, h]``.

    Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((4, 4, 3)).astype("float32")
    >>> y = color_jitter(x, [0, 1], (0.4, 0.0, 0.0, 0.0)).numpy()  # brightness only
    >>> ratio = y / x
    >>> bool(np.allclose(ratio, ratio.flat[0], atol=1e-5) and 0.6 <= ratio.flat[0] <= 1.4)
    True
    """
    tf = _tf()
    uniforms = tf.random.stateless_uniform([JITTER_UNIFORMS], _seed_tensor(seed))
    return color_jitter_from_uniforms(x, uniforms, strengths)


#: Uniform numbers one colour jitter is drawn from: four factors, then four keys whose
#: ranks are the order of the adjustments.
JITTER_UNIFORMS = 8


def color_jitter_from_uniforms(x, uniforms, strengths):
    """:func:`color_jitter` with its random numbers given (``(JITTER_UNIFORMS,)``)."""
    tf = _tf()
    brightness, contrast, saturation, hue = strengths
    u = uniforms[:4]

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
    order = tf.argsort(uniforms[4:8])

    def step(k, x):
        return k + 1, tf.switch_case(order[k], [lambda fn=fn: fn(x) for fn in adjustments])

    # A loop rather than four unrolled switch_cases: its branches are traced once.
    _, x = tf.while_loop(lambda k, x: k < 4, step, [tf.constant(0), tf.convert_to_tensor(x)])
    return x


def gaussian_blur(x, seed, sigma_range, radius):
    """Gaussian blur of one image ``(height, width, channels)``, sigma drawn from ``seed``.

    Sigma is uniform in ``sigma_range``; the separable kernel has the fixed width
    ``2 * radius + 1`` (weights from the sampled sigma, normalised) and the image is
    reflect-padded, so ``radius`` must be smaller than both sides.

    Example:
    >>> import numpy as np
    >>> x = np.zeros((9, 9, 1), "float32"); x[4, 4] = 1.0
    >>> y = gaussian_blur(x, [0, 1], (1.0, 1.0), radius=3).numpy()
    >>> round(float(y.sum()), 4), bool(y[4, 4, 0] == y.max())
    (1.0, True)
    >>> bool(np.allclose(y, y.transpose(1, 0, 2)))  # the same blur along both axes
    True
    """
    tf = _tf()
    low, high = sigma_range
    sigma = tf.random.stateless_uniform([], _seed_tensor(seed), low, high)
    return gaussian_blur_with_sigma(x, sigma, radius)


def gaussian_blur_with_sigma(x, sigma, radius):
    """:func:`gaussian_blur` with a given sigma (a scalar)."""
    tf = _tf()
    x = tf.convert_to_tensor(x)
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(t / sigma))
    weights = weights / tf.reduce_sum(weights)
    # Separable blur as two matrix products with banded matrices that hold the
    # reflect padding: several times faster on CPU than depthwise convolutions.
    height, width = x.shape[0], x.shape[1]
    x = tf.einsum("ij,jwc->iwc", _blur_matrix(height, weights, radius), x)
    return tf.einsum("ij,hjc->hic", _blur_matrix(width, weights, radius), x)


def grayscale(x):
    """ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B`` copied to three channels.

    Example:
    >>> grayscale([[[1.0, 0.0, 0.0]]]).numpy().tolist()
    [[[0.29899999499320984, 0.29899999499320984, 0.29899999499320984]]]
    """
    tf = _tf()
    return tf.repeat(_luma(tf.convert_to_tensor(x))[..., None], 3, axis=-1)


def _luma(x):
    tf = _tf()
    return tf.einsum("...c,c->...", x, tf.constant(LUMA_WEIGHTS, x.dtype))


def reflected_columns(n, radius):
    """``(n, 2 * radius + 1)`` int32: the pixel each tap of a kernel centred on pixel i
    reads under reflect padding (mirrored about the edge pixel, which is not repeated)."""
    tf = _tf()
    columns = tf.abs(tf.range(n)[:, None] + tf.range(-radius, radius + 1)[None, :])
    return tf.where(columns > n - 1, 2 * (n - 1) - columns, columns)


def _blur_matrix(n, weights, radius):
    """(n, n) matrix applying the kernel ``weights`` along an axis of n pixels.

    Row i holds the kernel centred on pixel i; taps falling outside are folded back
    inside as reflect padding does (mirrored about the edge pixel, which is not
    repeated), so it needs ``radius < n``.
    """
    tf = _tf()
    taps = 2 * radius + 1
    columns = reflected_columns(n, radius)
    rows = tf.repeat(tf.range(n), taps)
    indices = tf.stack([rows, tf.reshape(columns, [-1])], axis=1)
    # scatter_nd adds up the weights of taps folded onto the same pixel.
    return tf.scatter_nd(indices, tf.tile(weights, [n]), [n, n])


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


def _check_range(value, name, upper=None):
    accepted = "0 < low <= high" + (f" <= {upper:g}" if upper is not None else "")
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a pair (low, high) with {accepted}; got {value!r}."
        ) from None
    if not (0.0 < low <= high and (upper is None or high <= upper)):
        raise ValueError(f"`{name}` must be a pair (low, high) with {accepted}; got {value!r}.")
    return (low, high)
