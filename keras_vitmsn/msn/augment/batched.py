"""Internal: MSN's views made a batch at a time, for images that all have one size.

:meth:`MSNAugmentation.views` makes the views of one image, which is what a folder of
images of any size needs. For an array of equally sized images (the digits demo, any
small-image domain held in memory) the per-image graph costs more than the work
itself: a tiny model then waits for its views. Here the work is split:

- per image, only :func:`view_uniforms`: one draw of the uniform numbers its views
  are made from (``views`` makes them from the same numbers, through the same
  :func:`view_params`: crop box, flip, colour-jitter factors and order, grayscale,
  blur and its sigma);
- :func:`render_views` then makes the views of the whole batch at once: the crop and
  antialiased bilinear resize as two matrix products per image (the weights of
  ``tf.image.resize(crop, size, antialias=True)``), colour jitter, grayscale and blur
  as batched tensor ops.

So a seed gives the same views either way (to float rounding; tested against
``views``).
"""

from keras_vitmsn.msn.augment.ops import CROP_UNIFORMS
from keras_vitmsn.msn.augment.ops import JITTER_UNIFORMS
from keras_vitmsn.msn.augment.ops import _luma
from keras_vitmsn.msn.augment.ops import _seed_tensor
from keras_vitmsn.msn.augment.ops import _tf
from keras_vitmsn.msn.augment.ops import crop_box_from_uniforms
from keras_vitmsn.msn.augment.ops import grayscale
from keras_vitmsn.msn.augment.ops import reflected_columns

# Where each random choice of a view reads its uniform number(s).
_CROP = slice(0, CROP_UNIFORMS)
_FLIP = CROP_UNIFORMS
_JITTER = CROP_UNIFORMS + 1
_JITTER_U = slice(CROP_UNIFORMS + 2, CROP_UNIFORMS + 2 + JITTER_UNIFORMS)
_GRAY = CROP_UNIFORMS + 2 + JITTER_UNIFORMS
_BLUR = _GRAY + 1
_SIGMA = _GRAY + 2
#: Uniform numbers in [0, 1) that make one view.
VIEW_UNIFORMS = _SIGMA + 1


def view_uniforms(augmentation, seed):
    """``(2 + M, VIEW_UNIFORMS)`` uniforms for the views of one image: ``seed``
    determines them, and they determine the views."""
    tf = _tf()
    return tf.random.stateless_uniform(
        [2 + augmentation.num_focal_views, VIEW_UNIFORMS], _seed_tensor(seed)
    )


def view_params(augmentation, uniforms, image_height, image_width):
    """The random choices of views from their uniforms ``(..., 2 + M, VIEW_UNIFORMS)``
    (the first two global, the others focal): a dict of tensors ``(..., 2 + M, ...)``."""
    tf = _tf()

    def happens(p, u):
        if p <= 0:
            return tf.zeros_like(u, tf.bool)
        if p >= 1:
            return tf.ones_like(u, tf.bool)
        return u < p

    boxes = [
        crop_box_from_uniforms(
            image_height, image_width, scale, augmentation.ratio, uniforms[..., views, _CROP]
        )
        for views, scale in (
            (slice(0, 2), augmentation.global_scale),
            (slice(2, None), augmentation.focal_scale),
        )
    ]
    low, high = augmentation.blur_sigma
    jitter_p = augmentation.color_jitter_probability if augmentation._jitters_color else 0.0
    return {
        "box": tf.concat(boxes, axis=-2),
        "flip": happens(augmentation.flip_probability, uniforms[..., _FLIP]),
        "jitter": happens(jitter_p, uniforms[..., _JITTER]),
        "jitter_u": uniforms[..., _JITTER_U],
        "gray": happens(augmentation.grayscale_probability, uniforms[..., _GRAY]),
        "blur": happens(augmentation.blur_probability, uniforms[..., _BLUR]),
        "sigma": low + uniforms[..., _SIGMA] * (high - low),
    }


def render_views(augmentation, images, uniforms):
    """The batch ``{"target", "anchor"[, "focal"]}`` from images ``(B, H, W, C)`` (any
    real dtype, in [0, 255]) and their :func:`view_uniforms` ``(B, 2 + M, K)``."""
    tf = _tf()
    images = tf.cast(images, tf.float32)
    batch = tf.shape(images)[0]
    params = view_params(augmentation, uniforms, images.shape[1], images.shape[2])

    def kind(first, count, size):  # views first .. first + count - 1 of each image
        flat = {
            k: tf.reshape(v[:, first : first + count], tf.concat([[-1], tf.shape(v)[2:]], 0))
            for k, v in params.items()
        }
        source = tf.repeat(images, count, axis=0)  # view-major within each image
        x = augmentation._convert(_render(augmentation, source, flat, size))
        return tf.reshape(x, tf.concat([[batch, count], tf.shape(x)[1:]], 0))

    target_anchor = kind(0, 2, augmentation.global_size)
    out = {"target": target_anchor[:, 0], "anchor": target_anchor[:, 1]}
    if augmentation.num_focal_views:
        out["focal"] = kind(2, augmentation.num_focal_views, augmentation.focal_size)
    return out


def _render(augmentation, images, p, size):
    tf = _tf()
    x = resize_crops(images, p["box"], size)
    x = tf.clip_by_value(x / 255.0, 0.0, 1.0)
    if augmentation.flip_probability > 0:
        x = _where(p["flip"], tf.reverse(x, [2]), x)
    if augmentation._jitters_color:
        jittered = color_jitter_batch(x, p["jitter_u"], augmentation.color_jitter)
        x = _where(p["jitter"], jittered, x)
    if augmentation.grayscale_probability > 0:
        x = _where(p["gray"], grayscale(x), x)
    if augmentation.blur_probability > 0:
        x = _where(p["blur"], gaussian_blur_batch(x, p["sigma"], augmentation.blur_radius), x)
    return x * 255.0


def _where(condition, a, b):
    tf = _tf()
    return tf.where(tf.reshape(condition, [-1, 1, 1, 1]), a, b)


def resize_weights(start, length, input_size, output_size):
    """``(B, output_size, input_size)``: row i holds the weights of output pixel i for
    resizing pixels ``[start, start + length)`` of an axis to ``output_size``, as
    TensorFlow's antialiased bilinear resize (a triangle kernel widened by the
    downscaling factor, half-pixel centres, rows normalised to sum 1) weighs them."""
    tf = _tf()
    length = tf.cast(length, tf.float32)[:, None, None]
    inv_scale = length / float(output_size)
    kernel_scale = tf.maximum(inv_scale, 1.0)
    sample = (tf.range(output_size, dtype=tf.float32)[None, :, None] + 0.5) * inv_scale
    source = (
        tf.range(input_size, dtype=tf.float32)[None, None, :]
        - tf.cast(start, tf.float32)[:, None, None]
    )
    inside = (source >= 0) & (source < length)
    weights = tf.maximum(0.0, 1.0 - tf.abs(source + 0.5 - sample) / kernel_scale)
    weights = tf.where(inside, weights, 0.0)
    return weights / tf.reduce_sum(weights, axis=-1, keepdims=True)


def resize_crops(images, boxes, size):
    """``tf.image.resize(image[top:top + h, left:left + w], size, "bilinear",
    antialias=True)`` for each image and its box ``[top, left, h, w]``, at once.

    Example:
    >>> import numpy as np, tensorflow as tf
    >>> x = np.random.default_rng(0).random((2, 12, 10, 3)).astype("float32")
    >>> boxes = np.array([[1, 2, 9, 7], [0, 0, 12, 10]], "int32")
    >>> got = resize_crops(x, boxes, (5, 6)).numpy()
    >>> want = [tf.image.resize(x[i, t:t + h, l:l + w], (5, 6), antialias=True).numpy()
    ...         for i, (t, l, h, w) in enumerate(boxes)]
    >>> bool(np.abs(got - np.stack(want)).max() < 1e-5)
    True
    """
    tf = _tf()
    images = tf.convert_to_tensor(images)
    boxes = tf.convert_to_tensor(boxes)
    rows = resize_weights(boxes[:, 0], boxes[:, 2], images.shape[1], size[0])
    cols = resize_weights(boxes[:, 1], boxes[:, 3], images.shape[2], size[1])
    x = tf.einsum("bih,bhwc->biwc", rows, images)
    return tf.einsum("bjw,biwc->bijc", cols, x)


def color_jitter_batch(x, uniforms, strengths):
    """:func:`keras_vitmsn.msn.augment.ops.color_jitter_from_uniforms` on a batch
    ``(B, H, W, 3)``, each image with its own uniforms ``(B, JITTER_UNIFORMS)``."""
    tf = _tf()
    brightness, contrast, saturation, hue = strengths
    u, order = uniforms[:, :4], tf.argsort(uniforms[:, 4:8], axis=-1)

    def factor(strength, u):
        low = max(0.0, 1.0 - strength)
        return (low + u * (1.0 + strength - low))[:, None, None, None]

    def adjust(kind, x):
        if kind == 0:
            return tf.clip_by_value(x * factor(brightness, u[:, 0]), 0.0, 1.0)
        if kind == 1:
            f = factor(contrast, u[:, 1])
            mean = tf.reduce_mean(_luma(x), axis=[1, 2])[:, None, None, None]
            return tf.clip_by_value(f * x + (1.0 - f) * mean, 0.0, 1.0)
        if kind == 2:
            f = factor(saturation, u[:, 2])
            return tf.clip_by_value(f * x + (1.0 - f) * _luma(x)[..., None], 0.0, 1.0)
        delta = (2.0 * u[:, 3] - 1.0) * hue
        hsv = tf.image.rgb_to_hsv(x)
        shifted = tf.math.floormod(hsv[..., :1] + delta[:, None, None, None], 1.0)
        return tf.clip_by_value(
            tf.image.hsv_to_rgb(tf.concat([shifted, hsv[..., 1:]], -1)), 0.0, 1.0
        )

    active = [k for k, s in enumerate(strengths) if s > 0]
    for step in range(4):
        chosen = order[:, step]
        for k in active:
            x = _where(tf.equal(chosen, k), adjust(k, x), x)
    return x


def gaussian_blur_batch(x, sigma, radius):
    """:func:`keras_vitmsn.msn.augment.ops.gaussian_blur` on a batch, sigma per image."""
    tf = _tf()
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(taps[None, :] / sigma[:, None]))
    weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)

    def matrix(n):
        # Taps folded onto one pixel by the reflect padding add up, as in ops.
        columns = tf.one_hot(reflected_columns(n, radius), n, dtype=tf.float32)
        return tf.einsum("bt,itn->bin", weights, columns)

    x = tf.einsum("bij,bjwc->biwc", matrix(x.shape[1]), x)
    return tf.einsum("bij,bhjc->bhic", matrix(x.shape[2]), x)
