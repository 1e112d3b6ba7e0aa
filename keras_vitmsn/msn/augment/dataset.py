"""The tf.data plumbing: :func:`msn_multiview_dataset` turns images into batches of views.

Sources are image folders (read by the rules of :mod:`keras_vitmsn.images.image_files`, the
same as fine-tuning's), NumPy arrays and ``tf.data`` datasets. It works under every
Keras backend: Keras converts ``tf.data`` batches for JAX and PyTorch.
"""

import numbers
import os

import numpy as np

from keras_vitmsn.images.image_files import decode_rgb
from keras_vitmsn.images.image_files import folder_dtype
from keras_vitmsn.images.image_files import read_image_folder
from keras_vitmsn.msn.augment.batched import render_views
from keras_vitmsn.msn.augment.batched import view_uniforms
from keras_vitmsn.msn.augment.ops import _tf
from keras_vitmsn.msn.augment.recipe import MSNAugmentation

# tf.data.AUTOTUNE's value, so the default argument needs no TensorFlow import.
AUTOTUNE = -1
_DATASET_SHUFFLE_BUFFER = 1024


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
    skip_bad_images=False,
    start_batch=0,
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
            - a directory: every image below it, at any depth (class sub-folders are
              fine; labels are ignored), by the rules of
              :mod:`keras_vitmsn.images.image_files`: every format Pillow decodes, hidden
              files skipped, each file checked before the pipeline is built. Decoded
              to RGB (the first frame of an animation) at the file's own depth onto
              [0, 255], as every folder reader does: 16-bit grayscale files read as
              [0, 65535], float files as [0, 1] (see
              :func:`keras_vitmsn.images.image_files.read_pixels`);
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
        skip_bad_images: for a directory, leave out with a warning the image files
            Pillow cannot decode, instead of raising
            :class:`keras_vitmsn.images.image_files.BadImageError` (which lists them all).
        start_batch: non-negative int; the pipeline starts at this batch of the
            stream, skipping ``start_batch * batch_size`` (image, seed) pairs before
            any is decoded or augmented: its batches are the tail of the pipeline
            without it (as ``.skip(start_batch)``, without rendering the skipped
            views). A resumed run starts there (:func:`keras_vitmsn.msn.build_msn_training`).

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
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
    if augmentation is None:
        augmentation = MSNAugmentation()
    elif not isinstance(augmentation, MSNAugmentation):
        raise ValueError(
            f"`augmentation` must be an MSNAugmentation or None; got {type(augmentation).__name__}."
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
    if (
        isinstance(start_batch, bool)
        or not isinstance(start_batch, numbers.Integral)
        or start_batch < 0
    ):
        raise ValueError(f"`start_batch` must be a non-negative int; got {start_batch!r}.")
    if seed is None:
        shuffle_seed = views_seed = None
    else:
        # Two unrelated streams from one user seed.
        shuffle_seed, views_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))

    image_size = None  # known for arrays: their views are made a batch at a time
    if isinstance(source, (str, os.PathLike)):
        # Checked here, so no file fails to decode mid-epoch.
        images = read_image_folder(source, skip_bad_images=skip_bad_images)
        _check_enough(len(images), batch_size, drop_remainder, f"folder {os.fspath(source)!r}")
        by_tensorflow = [_tensorflow_decodes(image) for image in images]
        # Bytes, so file names that are not valid UTF-8 survive the trip through TF.
        elements = tf.data.Dataset.from_tensor_slices(
            ([os.fsencode(image.path) for image in images], by_tensorflow)
        )
        buffer = len(images)
        load = _folder_loader(by_tensorflow, folder_dtype(images))
    elif isinstance(source, np.ndarray):
        array = _check_array(source)
        _check_enough(len(array), batch_size, drop_remainder, "the array")
        images = tf.convert_to_tensor(array)
        # Shuffle indices, not images: the shuffle buffer then costs 8 bytes an image.
        elements = tf.data.Dataset.range(len(array))
        buffer = len(array)

        def load(index):  # one index, or a batch of them
            return _to_rgb(tf.gather(images, index))

        image_size = array.shape[1:3]
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
    pairs = tf.data.Dataset.zip((elements, seeds))
    if start_batch:
        # Before the maps: skipping costs a file name and two ints an image.
        pairs = pairs.skip(int(start_batch) * int(batch_size))

    if image_size is not None:
        # One size for all: per image only its views' uniforms are drawn, and the
        # views of a whole batch are made at once (the same views; see batched.py).
        @tf.autograph.experimental.do_not_convert
        def draw(index, seed):
            return index, view_uniforms(augmentation, seed)

        @tf.autograph.experimental.do_not_convert
        def render(indices, uniforms):
            return render_views(augmentation, load(indices), uniforms)

        dataset = pairs.map(draw, num_parallel_calls=num_parallel_calls)
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        dataset = dataset.map(render, num_parallel_calls=num_parallel_calls)
        return dataset.prefetch(AUTOTUNE)

    @tf.autograph.experimental.do_not_convert  # plain TF ops; converting only slows tracing
    def make_views(element, seed):
        return augmentation.views(load(element), seed)

    dataset = pairs.map(make_views, num_parallel_calls=num_parallel_calls)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(AUTOTUNE)


# -- helpers -----------------------------------------------------------------------------


def _tensorflow_decodes(image):
    """Whether TensorFlow's own decoder takes this file (faster: no Python, no GIL).

    Only JPEG and 8-bit PNG, which TensorFlow and Pillow decode with the same libraries
    to the same pixels (16-bit colour PNGs, mode RGB in Pillow, to the same high
    byte); every other file goes through Pillow, which checked it.
    """
    if image.depth != "uint8":
        return False
    if image.format == "JPEG":
        return image.mode in ("L", "RGB", "CMYK")
    return image.format == "PNG" and image.mode in ("1", "L", "LA", "P", "RGB", "RGBA")


def _folder_loader(by_tensorflow, dtype):
    """``load((path, by_tensorflow))`` decoding a file to RGB ``(H, W, 3)`` on [0, 255],
    of the folder's ``dtype`` (uint8, or float32 when some file is 16-bit or float)."""
    tf = _tf()

    def with_tensorflow(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.cast(image, dtype)

    def with_pillow(path):
        return tf.numpy_function(
            lambda p: decode_rgb(os.fsdecode(p)).astype(dtype, copy=False),
            [path],
            tf.as_dtype(dtype),
            stateful=False,
        )

    def load(element):
        path, use_tensorflow = element
        if all(by_tensorflow):
            image = with_tensorflow(path)
        elif not any(by_tensorflow):
            image = with_pillow(path)
        else:
            image = tf.cond(
                use_tensorflow, lambda: with_tensorflow(path), lambda: with_pillow(path)
            )
        image.set_shape([None, None, 3])
        return image

    return load


def _to_rgb(image):
    tf = _tf()
    if image.shape[-1] == 1:
        return tf.repeat(image, 3, axis=-1)
    return image


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
