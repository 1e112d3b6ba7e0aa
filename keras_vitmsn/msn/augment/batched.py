"""MSN's views made a batch at a time, for images that all have one size.

:meth:`MSNAugmentation.views` makes the views of one image, which is what a folder of
images of any size needs. For an array of equally sized images (the digits demo, any
small-image domain held in memory) the per-image graph costs more than the work
itself: a tiny model then waits for its views (issue 12). Here the work is split:

- :func:`draw_view_params` draws, per image, exactly the random numbers ``views``
  draws from the same seed (the crop box, flip, colour-jitter factors and order,
  grayscale, blur and its sigma): a few scalar ops;
- :func:`render_views` then applies them to the whole batch at once: the crop and
  antialiased bilinear resize as two matrix products per image (the weights of
  ``tf.image.resize(crop, size, antialias=True)``), colour jitter, grayscale and blur
  as batched tensor ops.

So a seed gives the same views either way (to float rounding; tested against
``views``).
"""

from keras_vitmsn.msn.augment.ops import LUMA_WEIGHTS
from keras_vitmsn.msn.augment.ops import _seed_tensor
from keras_vitmsn.msn.augment.ops import _tf
from keras_vitmsn.msn.augment.ops import random_resized_crop_box

_SPLITS_PER_VIEW = 8  # as MSNAugmentation._view splits each view's seed


def draw_view_params(augmentation, image_height, image_width, seed, scale):
    """The random choices of one view (those of ``MSNAugmentation._view`` for ``seed``)."""
    tf = _tf()
    s = tf.random.experimental.stateless_split(_seed_tensor(seed), _SPLITS_PER_VIEW)

    def happens(p, seed):
        if p <= 0:
            return tf.constant(False)
        if p >= 1:
            return tf.constant(True)
        return tf.random.stateless_uniform([], seed) < p

    jitter_seeds = tf.random.experimental.stateless_split(s[3], 2)
    return {
        "box": random_resized_crop_box(image_height, image_width, scale, augmentation.ratio, s[0]),
        "flip": happens(augmentation.flip_probability, s[1]),
        "jitter": happens(augmentation.color_jitter_probability, s[2])
        if augmentation._jitters_color else tf.constant(False),
        "jitter_u": tf.random.stateless_uniform([4], jitter_seeds[0]),
        "jitter_order": tf.cast(
            tf.argsort(tf.random.stateless_uniform([4], jitter_seeds[1])), tf.int32
        ),
        "gray": happens(augmentation.grayscale_probability, s[4]),
        "blur": happens(augmentation.blur_probability, s[5]),
        "sigma": tf.random.stateless_uniform(
            [], s[6], augmentation.blur_sigma[0], augmentation.blur_sigma[1]
        ),
    }


def draw_element_params(augmentation, image_height, image_width, seed):
    """``{"global": params of 2 views, "focal": params of M views}`` for one image."""
    tf = _tf()
    seeds = tf.random.experimental.stateless_split(
        _seed_tensor(seed), 2 + augmentation.num_focal_views
    )

    def stacked(views_seeds, scale):
        params = [draw_view_params(augmentation, image_height, image_width, s, scale)
                  for s in tf.unstack(views_seeds)]
        return {key: tf.stack([p[key] for p in params]) for key in params[0]}

    out = {"global": stacked(seeds[:2], augmentation.global_scale)}
    if augmentation.num_focal_views:
        out["focal"] = stacked(seeds[2:], augmentation.focal_scale)
    return out


def render_views(augmentation, images, params):
    """The batch ``{"target", "anchor"[, "focal"]}`` from images ``(B, H, W, C)`` (any
    real dtype, in [0, 255]) and the batched :func:`draw_element_params`."""
    tf = _tf()
    images = tf.cast(images, tf.float32)
    batch = tf.shape(images)[0]

    def kind(p, size):
        views = p["box"].shape[1]
        flat = {k: tf.reshape(v, tf.concat([[-1], tf.shape(v)[2:]], 0)) for k, v in p.items()}
        source = tf.repeat(images, views, axis=0)  # view-major within each image
        x = _render(augmentation, source, flat, size)
        return x, views

    target_anchor, _ = kind(params["global"], augmentation.global_size)
    target_anchor = augmentation._convert(target_anchor)
    target_anchor = tf.reshape(
        target_anchor, tf.concat([[batch, 2], tf.shape(target_anchor)[1:]], 0)
    )
    out = {"target": target_anchor[:, 0], "anchor": target_anchor[:, 1]}
    if augmentation.num_focal_views:
        focal, views = kind(params["focal"], augmentation.focal_size)
        focal = augmentation._convert(focal)
        out["focal"] = tf.reshape(focal, tf.concat([[batch, views], tf.shape(focal)[1:]], 0))
    return out


def _render(augmentation, images, p, size):
    tf = _tf()
    x = resize_crops(images, p["box"], size)
    x = tf.clip_by_value(x / 255.0, 0.0, 1.0)
    x = _where(p["flip"], tf.reverse(x, [2]), x)
    if augmentation._jitters_color:
        jittered = color_jitter_batch(x, p["jitter_u"], p["jitter_order"],
                                      augmentation.color_jitter)
        x = _where(p["jitter"], jittered, x)
    if augmentation.grayscale_probability > 0:
        x = _where(p["gray"], tf.repeat(_luma(x)[..., None], x.shape[-1], axis=-1), x)
    if augmentation.blur_probability > 0:
        x = _where(p["blur"], gaussian_blur_batch(x, p["sigma"], augmentation.blur_radius), x)
    return x * 255.0


def _where(condition, a, b):
    tf = _tf()
    return tf.where(tf.reshape(condition, [-1, 1, 1, 1]), a, b)


def _luma(x):
    tf = _tf()
    return tf.einsum("...c,c->...", x, tf.constant(LUMA_WEIGHTS, x.dtype))


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
    source = tf.range(input_size, dtype=tf.float32)[None, None, :] - tf.cast(
        start, tf.float32
    )[:, None, None]
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


def color_jitter_batch(x, u, order, strengths):
    """:func:`keras_vitmsn.msn.augment.ops.color_jitter` on a batch ``(B, H, W, 3)``,
    each image with its own factors ``u`` ``(B, 4)`` and order ``(B, 4)``."""
    tf = _tf()
    brightness, contrast, saturation, hue = strengths

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
        columns = tf.abs(tf.range(n)[:, None] + tf.range(-radius, radius + 1)[None, :])
        columns = tf.where(columns > n - 1, 2 * (n - 1) - columns, columns)
        # Taps folded onto one pixel by the reflect padding add up, as in ops.
        return tf.einsum("bt,itn->bin", weights, tf.one_hot(columns, n, dtype=tf.float32))

    x = tf.einsum("bij,bjwc->biwc", matrix(x.shape[1]), x)
    return tf.einsum("bij,bhjc->bhic", matrix(x.shape[2]), x)
