"""Frozen CLS features of a backbone, and their pre-processing before the regression.

Steps 1 and 2 of the MSN low-shot protocol (see :mod:`keras_vitmsn.lowshot`):

1. Freeze the (target) encoder and take, for every image, the CLS token of the last
   transformer block **before** the final LayerNorm (``feature="cls_pre_norm"``, the
   default here; ``feature="cls"`` takes it after the LayerNorm instead). Images are
   resized to 256 and centre-cropped to 224 with ImageNet mean/std: that is the input
   pipeline's job, not this module's. The model from images to features is the
   library's :class:`keras_vitmsn.ViTMSNFeatureExtractor` (pooling ``"cls_pre_norm"``
   or ``"cls"``); :func:`extract_features` runs it over arrays, ``tf.data``
   datasets, ``keras.utils.PyDataset`` objects or any iterable of batches.
2. Pre-process every feature vector on its own: subtract the mean of its coordinates
   and scale it to unit L2 norm (:func:`preprocess_features`). That is what the
   authors' call ``cyanure.preprocess(embs, normalize=True, columns=False,
   centering=True)`` does (``columns=False`` means row-wise, one row per image; checked
   in cyanure's C++ ``Matrix::center``), applied to the training and the test features
   separately. ``centering="train_mean"`` subtracts the mean training feature from
   train and test features instead (the usual "centre the data set" reading), and
   ``centering=None`` only normalises.
"""

import math
import sys

import keras
import numpy as np

from keras_vitmsn.images.converter import ViTMSNImageConverter
from keras_vitmsn.layers.core import spatial_shape
from keras_vitmsn.models.feature_extractor import ViTMSNFeatureExtractor

__all__ = [
    "FEATURES",
    "CENTERINGS",
    "extract_features",
    "preprocess_features",
]

#: Which token :func:`extract_features` returns.
FEATURES = ("cls_pre_norm", "cls")

#: How :func:`preprocess_features` centres features before L2 normalisation.
CENTERINGS = ("per_sample", "train_mean", None)


def to_numpy(x):
    """``x`` (a NumPy array, a backend tensor, a list) as a NumPy array, on the CPU.

    Example:
    >>> to_numpy([[1, 2], [3, 4]]).shape
    (2, 2)
    """
    if hasattr(x, "detach"):  # torch tensors, possibly on an accelerator
        x = x.detach().cpu()
    return np.asarray(x)


def _is_tf_dataset(data):
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


def _split_element(element):
    """``images`` or ``(images, labels[, sample_weights])`` -> ``(images, labels)``."""
    if isinstance(element, dict):
        raise ValueError(
            "Dataset elements must be images or (images, labels) tuples; got a dict "
            f"with keys {sorted(element)}. Map the dataset to (images, labels) first."
        )
    if isinstance(element, (tuple, list)) and len(element) not in (1, 2, 3):
        raise ValueError(
            "Dataset elements must be images, (images, labels) or (images, labels, "
            f"sample_weights); got a tuple of {len(element)} items."
        )
    # Keras' own reading of a batch, as fit/predict see it.
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(
        tuple(element) if isinstance(element, list) else element
    )
    return images, labels


def _batches(data, batch_size):
    """``(iterator of (images, labels_or_None) numpy batches, number of batches or
    None, size to pad short batches to or None)``."""
    if _is_tf_dataset(data):
        spec = data.element_spec
        image_spec = spec[0] if isinstance(spec, (tuple, list)) else spec
        rank = getattr(image_spec, "shape", None)
        rank = None if rank is None else rank.rank
        if rank == 3:  # one image per element: batch it ourselves
            data = data.batch(batch_size)
        elif rank is not None and rank != 4:
            raise ValueError(
                "A tf.data dataset must yield images of shape (height, width, channels) "
                f"or batches (batch, height, width, channels); got image spec {image_spec}."
            )
        cardinality = int(data.cardinality())
        total = cardinality if cardinality >= 0 else None
        iterator = (_split_element(e) for e in data.as_numpy_iterator())
        return iterator, total, None
    if isinstance(data, keras.utils.PyDataset):
        total = data.num_batches
        iterator = (_split_element(data[i]) for i in range(total))
        return iterator, total, None
    if hasattr(data, "shape") and hasattr(data, "dtype") or isinstance(data, (list, tuple)):
        images = to_numpy(data)
        if images.ndim != 4:
            raise ValueError(
                "`images` must be a 4-D batch (num_images, height, width, channels), or "
                "channels-first for a channels_first backbone; got an array of shape "
                f"{images.shape}."
            )
        total = math.ceil(len(images) / batch_size)
        iterator = ((images[i : i + batch_size], None) for i in range(0, len(images), batch_size))
        return iterator, total, batch_size
    if hasattr(data, "__iter__") or hasattr(data, "__next__"):
        # Python generators, torch DataLoaders, ...: already batched.
        return (_split_element(e) for e in data), None, None
    raise ValueError(
        "Expected images as a numpy array or tensor, a tf.data.Dataset, a "
        "keras.utils.PyDataset or an iterable of batches (images or (images, labels)); "
        f"got {type(data).__name__}."
    )


def extract_features(
    backbone,
    data,
    batch_size=32,
    feature=None,
    interpolate_pos_encoding=None,
    preprocessing=None,
    verbose=1,
):
    """Run a frozen backbone over images and return one CLS feature per image.

    Args:
        backbone: a :class:`keras_vitmsn.ViTMSNBackbone` (used in inference mode), or a
            :class:`keras_vitmsn.ViTMSNFeatureExtractor` (pooling ``"cls_pre_norm"`` or
            ``"cls"``) to reuse its compiled function across calls.
        data: images as a numpy array / tensor ``(N, H, W, C)`` (``(N, C, H, W)`` for a
            channels_first backbone); a ``tf.data.Dataset`` yielding images or
            ``(images, labels)``, batched or not (an unbatched one is batched with
            ``batch_size``; a batched one keeps its batches); a
            ``keras.utils.PyDataset``; or any iterable of such batches (a Python
            generator, a torch ``DataLoader``).
        batch_size: int, images per forward pass for arrays and unbatched datasets.
        feature: None (``"cls_pre_norm"``, or the extractor's own setting),
            ``"cls_pre_norm"`` (the paper's choice): the CLS token output
            by the last transformer block, before the final LayerNorm, i.e.
            ``backbone(x, output_hidden_states=True)["hidden_states"][-1][:, 0]``;
            ``"cls"``: after the final LayerNorm, ``["last_hidden_state"][:, 0]``.
        interpolate_pos_encoding: bool, allow images of another size than the
            backbone's ``image_shape`` (None: False, or the extractor's setting).
        preprocessing: None (images are already normalised floats, at the model
            size; integer images, i.e. raw pixels, are then refused with a
            ValueError rather than fed to the backbone unnormalised, unless the
            extractor has its own preprocessor),
            ``"hub"`` or ``"paper"`` (raw images of any size, uint8 or floats in
            [0, 255]: a :class:`keras_vitmsn.ViTMSNImageConverter` at the backbone's
            size with ImageNet mean/std and that ``resize_mode``; ``"paper"`` is the
            paper's evaluation transform, resize to cover ``size * 256 / 224`` then
            centre crop), or any callable applied to every image batch before the
            model (e.g. ``ViTMSNImageConverter.from_preset(...)``).
        verbose: 1 shows a ``keras.utils.Progbar``, 0 is silent.

    Returns:
        ``features``, a float32 array ``(N, hidden_dim)``, or ``(features, labels)``
        when the data yields labels.

    Example:
    >>> import numpy as np
    >>> import keras_vitmsn as kv
    >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8,
    ...                              hidden_dim=32, num_layers=2, num_heads=4,
    ...                              intermediate_dim=64)
    >>> images = np.zeros((5, 32, 32, 3), "float32")
    >>> extract_features(backbone, images, batch_size=2, verbose=0).shape
    (5, 32)
    >>> pixels = np.zeros((5, 40, 48, 3), "uint8")  # raw pixels: say how to normalise
    >>> extract_features(backbone, pixels, preprocessing="hub", verbose=0).shape
    (5, 32)
    >>> extract_features(backbone, pixels, verbose=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `images` are uint8 integer images (raw pixels) and preprocessing=None...
    """
    model = feature_model(backbone, feature, interpolate_pos_encoding)
    return run_feature_model(model, data, batch_size, preprocessing, verbose)


#: The names :func:`extract_features` takes for ``preprocessing`` besides a callable.
PREPROCESSING_MODES = ("hub", "paper")


def resolve_preprocessing(preprocessing, model):
    """``preprocessing`` as a callable (or None) for the feature extractor ``model``."""
    if preprocessing is None:
        return None
    if model.preprocessor is not None:
        raise ValueError(
            "The feature extractor has its own preprocessor (an image converter); "
            f"leave `preprocessing` None (got {preprocessing!r}), or build the extractor "
            "with preprocessor=None."
        )
    if callable(preprocessing):
        return preprocessing
    if preprocessing not in PREPROCESSING_MODES:
        raise ValueError(
            "`preprocessing` must be None, a callable, or one of "
            f"{', '.join(repr(m) for m in PREPROCESSING_MODES)}; got {preprocessing!r}."
        )
    backbone = model.backbone
    height, width = spatial_shape(backbone.image_shape, backbone.data_format)
    return ViTMSNImageConverter(
        image_size=(height, width),
        resize_mode=preprocessing,
        data_format=backbone.data_format,
    )


def check_not_raw_pixels(images, preprocessing, model, what="`images`"):
    """Refuse integer ``images`` that would reach ``model`` unnormalised.

    With no ``preprocessing`` and no preprocessor in the extractor, images go to the
    backbone as they are: integer ones are raw pixels (0-255 for uint8), which the
    backbone would embed without the ImageNet normalisation it was trained with,
    silently giving other features. Choosing ``"hub"`` for the caller would hide a
    choice that changes the numbers (``"paper"`` crops), so the error names both.
    """
    if preprocessing is not None or model.preprocessor is not None:
        return
    dtype = getattr(images, "dtype", None)
    if dtype is None:
        return
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "bool" or dtype.startswith(("int", "uint")):
        raise ValueError(
            f"{what} are {dtype} integer images (raw pixels) and preprocessing=None "
            "would feed them to the backbone unnormalised. Pass preprocessing='hub' "
            "(the released processor: resize to the backbone's size, rescale, ImageNet "
            "mean/std), preprocessing='paper' (the paper's resize and centre crop, then "
            "the same), or an image converter such as "
            "kv.ViTMSNImageConverter.from_preset(preset); or pass float images already "
            "normalised."
        )


def feature_model(backbone, feature, interpolate_pos_encoding):
    """The :class:`keras_vitmsn.ViTMSNFeatureExtractor` for ``backbone``: itself if it
    is one (its pooling must be one of :data:`FEATURES`, and ``feature`` and
    ``interpolate_pos_encoding`` None or agree with it), else a new one (None meaning
    ``"cls_pre_norm"`` and False)."""
    if isinstance(backbone, ViTMSNFeatureExtractor):
        if backbone.pooling not in FEATURES:
            raise ValueError(
                f"Low-shot evaluation takes one CLS feature per image: the extractor's "
                f"pooling must be one of {FEATURES}, got {backbone.pooling!r}."
            )
        settings = (
            ("feature", feature, backbone.pooling),
            (
                "interpolate_pos_encoding",
                interpolate_pos_encoding,
                backbone.interpolate_pos_encoding,
            ),
        )
        for name, value, own in settings:
            if value is not None and value != own:
                raise ValueError(
                    f"`{name}={value!r}` conflicts with the FeatureExtractor's "
                    f"{name}={own!r}; leave it None or build another extractor."
                )
        return backbone
    feature = "cls_pre_norm" if feature is None else feature
    if feature not in FEATURES:
        raise ValueError(f"`feature` must be one of {FEATURES}, got {feature!r}.")
    # The backbone check (and its error) is the extractor's own.
    return ViTMSNFeatureExtractor(
        backbone, pooling=feature, interpolate_pos_encoding=bool(interpolate_pos_encoding)
    )


def run_feature_model(model, data, batch_size, preprocessing, verbose):
    """:func:`extract_features` with a feature extractor ``model`` (:func:`feature_model`)."""
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size}.")
    preprocessing = resolve_preprocessing(preprocessing, model)
    iterator, total, pad_to = _batches(data, batch_size)
    progbar = keras.utils.Progbar(total, unit_name="batch") if verbose else None

    features, labels = [], []
    for step, (images, batch_labels) in enumerate(iterator):
        check_not_raw_pixels(images, preprocessing, model)
        if preprocessing is not None:
            images = preprocessing(images)
        images = to_numpy(images)
        size = len(images)
        if size == 0:
            continue
        if pad_to is None:
            pad_to = size  # datasets: the size of their first batch
        if size < pad_to:
            # Pad short batches (the last one; a small array) to the common size, so
            # jitted backends reuse the compiled function instead of compiling another
            # one per shape; each image's feature is independent of the rest of the
            # batch, so padding is harmless.
            pad = np.repeat(images[-1:], pad_to - size, axis=0)
            out = model.predict_on_batch(np.concatenate([images, pad]))[:size]
        else:
            out = model.predict_on_batch(images)
        features.append(to_numpy(out).astype(np.float32, copy=False))
        if batch_labels is not None:
            labels.append(to_numpy(batch_labels))
        if progbar is not None:
            progbar.update(step + 1)
    if progbar is not None and total is None:
        progbar.update(len(features), finalize=True)

    if not features:
        raise ValueError("No images to extract features from: the data is empty.")
    num_batches = len(features)
    features = np.concatenate(features)
    if not labels:
        return features
    if len(labels) != num_batches:
        raise ValueError(
            f"{len(labels)} of {num_batches} batches had labels; every element must be "
            "images, or every element (images, labels)."
        )
    labels = np.concatenate(labels)
    return features, labels


# --------------------------------------------------------------------------------------
# Pre-processing of features
# --------------------------------------------------------------------------------------


def preprocess_features(features, centering="per_sample", mean=None, eps=1e-12):
    """Centre and L2-normalise feature vectors (one per row), in float64.

    Args:
        features: array ``(N, D)``.
        centering: ``"per_sample"`` (the paper: each row minus the mean of its own
            coordinates), ``"train_mean"`` (every row minus ``mean``, the mean training
            feature), or None (no centring).
        mean: ``(D,)`` mean training feature, required with ``"train_mean"``
            (``features.mean(axis=0)`` of the training features).
        eps: floor of the norm, so an all-zero row stays zero instead of becoming NaN.

    Returns:
        float64 array ``(N, D)`` with unit-norm rows.

    Example:
    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 2.0]])
    >>> np.round(preprocess_features(x), 4)
    array([[-0.7071,  0.    ,  0.7071],
           [-0.4082, -0.4082,  0.8165]])
    """
    if centering not in CENTERINGS:
        raise ValueError(f"`centering` must be one of {CENTERINGS}, got {centering!r}.")
    x = np.array(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"`features` must be 2-D (num_images, dim), got shape {x.shape}.")
    if centering == "per_sample":
        x -= x.mean(axis=1, keepdims=True)
    elif centering == "train_mean":
        if mean is None:
            raise ValueError(
                'centering="train_mean" needs `mean`, the mean of the training features.'
            )
        mean = np.asarray(mean, dtype=np.float64)
        if mean.shape != (x.shape[1],):
            raise ValueError(
                f"`mean` must have shape ({x.shape[1]},) to match the features, got {mean.shape}."
            )
        x -= mean
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)
