"""Low-shot evaluation as in the MSN paper: logistic regression on frozen features.

The protocol of Assran et al. (2022), "Masked Siamese Networks for Label-Efficient
Learning", section "Low-shot evaluation", as run by the authors' ``logistic_eval.py``
(facebookresearch/msn):

1. Freeze the (target) encoder and take, for every image, the CLS token of the last
   transformer block **before** the final LayerNorm (``feature="cls_pre_norm"``, the
   default here; ``feature="cls"`` takes it after the LayerNorm instead). Images are
   resized to 256 and centre-cropped to 224 with ImageNet mean/std: that is the input
   pipeline's job, not this module's.
2. Pre-process every feature vector on its own: subtract the mean of its coordinates
   and scale it to unit L2 norm. That is what the authors' call
   ``cyanure.preprocess(embs, normalize=True, columns=False, centering=True)`` does
   (``columns=False`` means row-wise, one row per image; checked in cyanure's C++
   ``Matrix::center``), applied to the training and the test features separately.
   ``centering="train_mean"`` subtracts the mean training feature from train and test
   features instead (the usual "centre the data set" reading), and ``centering=None``
   only normalises.
3. Fit a multinomial logistic regression with an L2 penalty and no intercept. cyanure
   minimises ``(1/n) sum_i CE(y_i, W x_i) + (lambd/2) ||W||^2`` and ``logistic_eval.py``
   passes ``lambd = --lambd / n``; we solve the same problem, so ``l2_penalty`` has the
   meaning of the script's ``--lambd``. The script's argparse default is ``0.00025``
   while the command its README gives for the low-shot splits uses ``--lambd 0.0025``;
   we default to the README's ``0.0025`` (:data:`DEFAULT_L2_PENALTY`). In scikit-learn
   terms the objective equals ``LogisticRegression(C=1 / l2_penalty,
   fit_intercept=False)`` with the multinomial loss.
4. Report top-1 accuracy on the test set, for 1, 2 and 5 labelled images per class
   (3 splits each) and for 1% of the labels; we report mean and sample standard
   deviation over the splits.

The regression is solved in NumPy (float64) with L-BFGS and a strong-Wolfe line
search; nothing here needs scikit-learn or SciPy. cyanure stops at a relative duality
gap of 1e-3; we solve to a tighter tolerance, so accuracies can differ from the
original script's in the last decimals.

Example:
>>> import numpy as np
>>> import keras_vitmsn as kv
>>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8, hidden_dim=32,
...                              num_layers=2, num_heads=4, intermediate_dim=64)
>>> rng = np.random.default_rng(0)
>>> labels = np.repeat(np.arange(3), 4)
>>> images = rng.normal(size=(12, 32, 32, 3)).astype("float32") + labels[:, None, None, None]
>>> results = kv.lowshot.lowshot_eval(backbone, images, images, train_labels=labels,
...                                   test_labels=labels, shots=(1, 2), num_splits=2,
...                                   verbose=0)
>>> sorted(results)
[1, 2]
>>> print(kv.lowshot.format_table(results).splitlines()[0].split())
['shots', 'splits', 'train', 'images', 'top-1', '(%)']
"""

import dataclasses
import math
import numbers
import sys
import warnings

import keras
import numpy as np
from keras import ops

from keras_vitmsn.models.backbone import ViTMSNBackbone

__all__ = [
    "DEFAULT_L2_PENALTY",
    "FEATURES",
    "CENTERINGS",
    "LogisticRegression",
    "ShotResult",
    "FeatureExtractor",
    "LowShotConvergenceWarning",
    "extract_features",
    "preprocess_features",
    "sample_per_class",
    "evaluate",
    "lowshot_eval",
    "format_table",
]

#: ``--lambd`` of the README's low-shot command in facebookresearch/msn (the script's
#: own argparse default is 10x smaller, 0.00025). Divided by the number of training
#: images inside, as ``logistic_eval.py`` does before calling cyanure.
DEFAULT_L2_PENALTY = 0.0025

#: Which token :func:`extract_features` returns.
FEATURES = ("cls_pre_norm", "cls")

#: How :func:`preprocess_features` centres features before L2 normalisation.
CENTERINGS = ("per_sample", "train_mean", None)


class LowShotConvergenceWarning(UserWarning):
    """The logistic-regression solver stopped before reaching its tolerance."""


# --------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------


class FeatureExtractor(keras.Model):
    """A Keras model from images to one CLS feature per image, in inference mode.

    :func:`extract_features` builds one per call; build it yourself to extract
    features of several datasets with one compiled function (JAX and TensorFlow
    compile ``predict_on_batch`` once per model and input shape). It is also a plain
    Keras model: ``extractor.predict(images)`` works.

    Args:
        backbone: a :class:`keras_vitmsn.ViTMSNBackbone`.
        feature: ``"cls_pre_norm"`` (the paper's: CLS token after the last block,
            before the final LayerNorm) or ``"cls"`` (after the final LayerNorm).
        interpolate_pos_encoding: bool, accept images of another size than the
            backbone's ``image_shape``.

    Example:
    >>> import numpy as np
    >>> import keras_vitmsn as kv
    >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8,
    ...                              hidden_dim=32, num_layers=2, num_heads=4,
    ...                              intermediate_dim=64)
    >>> extractor = FeatureExtractor(backbone)
    >>> extract_features(extractor, np.zeros((3, 32, 32, 3)), verbose=0).shape
    (3, 32)
    """

    def __init__(self, backbone, feature="cls_pre_norm", interpolate_pos_encoding=False, **kwargs):
        if not isinstance(backbone, ViTMSNBackbone):
            raise ValueError(
                f"`backbone` must be a ViTMSNBackbone, got {type(backbone).__name__}."
            )
        if feature not in FEATURES:
            raise ValueError(f"`feature` must be one of {FEATURES}, got {feature!r}.")
        kwargs.setdefault("dtype", backbone.dtype_policy)
        kwargs.setdefault("name", "feature_extractor")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.feature = feature
        self.interpolate_pos_encoding = bool(interpolate_pos_encoding)

    def call(self, images):
        # Images may come as uint8 (e.g. straight from PIL); the patch convolution
        # needs floats in the model's compute dtype.
        images = ops.cast(images, self.compute_dtype)
        outputs = self.backbone(
            images,
            output_hidden_states=self.feature == "cls_pre_norm",
            interpolate_pos_encoding=self.interpolate_pos_encoding,
            training=False,
        )
        if self.feature == "cls_pre_norm":
            tokens = outputs["hidden_states"][-1]
        else:
            tokens = outputs["last_hidden_state"]
        # float32 out whatever the policy: the regression runs in float64 anyway and
        # bfloat16 features would lose 3 significant digits for nothing.
        return ops.cast(tokens[:, 0, :], "float32")


def _to_numpy(x):
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
    if isinstance(element, (tuple, list)):
        if len(element) == 1:
            return element[0], None
        if len(element) in (2, 3):
            return element[0], element[1]
        raise ValueError(
            "Dataset elements must be images, (images, labels) or (images, labels, "
            f"sample_weights); got a tuple of {len(element)} items."
        )
    return element, None


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
        images = _to_numpy(data)
        if images.ndim != 4:
            raise ValueError(
                "`images` must be a 4-D batch (num_images, height, width, channels), or "
                "channels-first for a channels_first backbone; got an array of shape "
                f"{images.shape}."
            )
        total = math.ceil(len(images) / batch_size)
        iterator = (
            (images[i : i + batch_size], None) for i in range(0, len(images), batch_size)
        )
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
            :class:`FeatureExtractor` to reuse its compiled function across calls.
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
        preprocessing: optional callable applied to every image batch before the model
            (e.g. rescaling and ImageNet mean/std normalisation).
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
    """
    return _extract(_feature_model(backbone, feature, interpolate_pos_encoding), data,
                    batch_size, preprocessing, verbose)


def _feature_model(backbone, feature, interpolate_pos_encoding):
    if isinstance(backbone, FeatureExtractor):
        settings = (
            ("feature", feature, backbone.feature),
            ("interpolate_pos_encoding", interpolate_pos_encoding,
             backbone.interpolate_pos_encoding),
        )
        for name, value, own in settings:
            if value is not None and value != own:
                raise ValueError(
                    f"`{name}={value!r}` conflicts with the FeatureExtractor's "
                    f"{name}={own!r}; leave it None or build another extractor."
                )
        return backbone
    return FeatureExtractor(
        backbone,
        "cls_pre_norm" if feature is None else feature,
        bool(interpolate_pos_encoding),
    )


def _extract(model, data, batch_size, preprocessing, verbose):
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size}.")
    iterator, total, pad_to = _batches(data, batch_size)
    progbar = keras.utils.Progbar(total, unit_name="batch") if verbose else None

    features, labels = [], []
    for step, (images, batch_labels) in enumerate(iterator):
        if preprocessing is not None:
            images = preprocessing(images)
        images = _to_numpy(images)
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
        features.append(_to_numpy(out).astype(np.float32, copy=False))
        if batch_labels is not None:
            labels.append(_to_numpy(batch_labels))
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
                f"`mean` must have shape ({x.shape[1]},) to match the features, "
                f"got {mean.shape}."
            )
        x -= mean
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


# --------------------------------------------------------------------------------------
# Multinomial logistic regression (L2, no intercept), L-BFGS in NumPy
# --------------------------------------------------------------------------------------


class _SoftmaxObjective:
    """``f(W) = mean_i CE(y_i, x_i W) + (l2 / n) / 2 * ||W||^2`` and its gradient."""

    def __init__(self, x, y, num_classes, l2_penalty):
        self.x = x
        self.y = y
        self.n = len(x)
        self.rows = np.arange(self.n)
        self.num_classes = num_classes
        self.reg = l2_penalty / self.n

    def __call__(self, w):
        logits = self.x @ w
        logits -= logits.max(axis=1, keepdims=True)  # stable exp; cancels in the CE
        exp = np.exp(logits)
        total = exp.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(total[:, 0]) - logits[self.rows, self.y])
        residual = exp / total
        residual[self.rows, self.y] -= 1.0
        grad = self.x.T @ residual / self.n + self.reg * w
        return loss + 0.5 * self.reg * np.vdot(w, w), grad


def _cubic_min(a_lo, f_lo, d_lo, a_hi, f_hi, d_hi):
    """Minimiser of the cubic through two points with slopes, or None."""
    d1 = d_lo + d_hi - 3.0 * (f_lo - f_hi) / (a_lo - a_hi)
    disc = d1 * d1 - d_lo * d_hi
    if not np.isfinite(disc) or disc < 0:
        return None
    d2 = math.copysign(math.sqrt(disc), a_hi - a_lo)
    denom = d_hi - d_lo + 2.0 * d2
    if denom == 0:
        return None
    return a_hi - (a_hi - a_lo) * (d_hi + d2 - d1) / denom


def _strong_wolfe(fun, w, f0, g0, direction, step, c1=1e-4, c2=0.9, max_evals=40):
    """Line search for the strong Wolfe conditions (Nocedal & Wright, alg. 3.5/3.6).

    Returns ``(step, f, g)`` or None when no step decreasing ``f`` was found.
    """
    d0 = np.vdot(g0, direction)
    prev = (0.0, f0, d0, g0)
    best = None  # the best point meeting the sufficient-decrease condition
    lo = hi = None
    evals = 0
    while evals < max_evals:
        evals += 1
        f, g = fun(w + step * direction)
        d = np.vdot(g, direction)
        armijo = np.isfinite(f) and f <= f0 + c1 * step * d0
        if armijo and (best is None or f < best[1]):
            best = (step, f, g)
        if not armijo or (evals > 1 and f >= prev[1]):
            lo, hi = prev, (step, f, d, g)
            break
        if abs(d) <= -c2 * d0:
            return step, f, g
        if d >= 0:
            lo, hi = (step, f, d, g), prev
            break
        prev = (step, f, d, g)
        step *= 2.0
    if lo is None:
        return best
    # Zoom between lo (lower f, meets sufficient decrease) and hi.
    while evals < max_evals:
        evals += 1
        a_lo, a_hi = lo[0], hi[0]
        width = a_hi - a_lo
        trial = None
        if np.isfinite(hi[1]):
            trial = _cubic_min(a_lo, lo[1], lo[2], a_hi, hi[1], hi[2])
        # Safeguard: stay well inside the interval, else bisect.
        low_end, high_end = sorted((a_lo + 0.1 * width, a_hi - 0.1 * width))
        if trial is None or not (low_end <= trial <= high_end):
            trial = a_lo + 0.5 * width
        f, g = fun(w + trial * direction)
        d = np.vdot(g, direction)
        armijo = np.isfinite(f) and f <= f0 + c1 * trial * d0
        if armijo and (best is None or f < best[1]):
            best = (trial, f, g)
        if not armijo or f >= lo[1]:
            hi = (trial, f, d, g)
        else:
            if abs(d) <= -c2 * d0:
                return trial, f, g
            if d * width >= 0:
                hi = lo
            lo = (trial, f, d, g)
        if abs(hi[0] - lo[0]) <= 1e-16 * max(1.0, abs(lo[0])):
            break
    return best


def _lbfgs(fun, w0, max_iter, tol, memory=20):
    """Minimise a smooth convex ``fun(w) -> (f, grad)``; returns (w, f, g, iters, ok)."""
    w = w0
    f, g = fun(w)
    g0_norm = np.max(np.abs(g))
    target = tol * max(g0_norm, 1e-300)
    s_hist, y_hist, rho_hist = [], [], []
    for it in range(max_iter):
        if np.max(np.abs(g)) <= target:
            return w, f, g, it, True
        # Two-loop recursion: direction = -H g.
        q = g.copy()
        alphas = []
        for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist)):
            a = rho * np.vdot(s, q)
            alphas.append(a)
            q -= a * y
        if s_hist:
            q *= np.vdot(s_hist[-1], y_hist[-1]) / np.vdot(y_hist[-1], y_hist[-1])
            first_step = 1.0
        else:
            # No curvature yet: a first step of unit length in parameter space.
            first_step = 1.0 / max(np.linalg.norm(g), 1e-300)
        for s, y, rho, a in zip(s_hist, y_hist, rho_hist, reversed(alphas)):
            b = rho * np.vdot(y, q)
            q += (a - b) * s
        direction = -q
        if np.vdot(direction, g) >= 0:  # not a descent direction: restart
            s_hist, y_hist, rho_hist = [], [], []
            direction = -g
            first_step = 1.0 / max(np.linalg.norm(g), 1e-300)
        found = _strong_wolfe(fun, w, f, g, direction, first_step)
        if found is None and s_hist:
            # The quasi-Newton model went stale: retry along the gradient.
            s_hist, y_hist, rho_hist = [], [], []
            direction = -g
            found = _strong_wolfe(fun, w, f, g, direction, 1.0 / max(np.linalg.norm(g), 1e-300))
        if found is None:
            # No decrease possible at floating-point precision: as converged as it gets.
            return w, f, g, it, np.max(np.abs(g)) <= max(target, 1e-10)
        step, f_new, g_new = found
        s = step * direction
        y = g_new - g
        sy = np.vdot(s, y)
        if sy > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            s_hist.append(s)
            y_hist.append(y)
            rho_hist.append(1.0 / sy)
            if len(s_hist) > memory:
                del s_hist[0], y_hist[0], rho_hist[0]
        converged_f = f - f_new <= 1e-15 * max(abs(f), abs(f_new), 1.0)
        w, f, g = w + s, f_new, g_new
        if converged_f and np.max(np.abs(g)) <= max(target, 1e-10):
            return w, f, g, it + 1, True
    return w, f, g, max_iter, np.max(np.abs(g)) <= target


class LogisticRegression:
    """Multinomial logistic regression with an L2 penalty and no intercept (NumPy).

    Minimises, over ``W`` of shape ``(D, K)``,
    ``(1/n) sum_i CE(y_i, softmax(x_i W)) + (l2_penalty / n) / 2 * ||W||_F^2``:
    cyanure's ``MultiClassifier(loss="multiclass-logistic", penalty="l2",
    fit_intercept=False)`` with ``lambd = l2_penalty / n`` as in MSN's
    ``logistic_eval.py``, i.e. scikit-learn's
    ``LogisticRegression(C=1 / l2_penalty, fit_intercept=False)`` (multinomial). The
    problem is strictly convex, so the solution is unique; L-BFGS (memory 20) with a
    strong-Wolfe line search finds it in float64.

    Args:
        l2_penalty: float > 0, the MSN script's ``--lambd``.
        max_iter: int, L-BFGS iterations at most.
        tol: float, stop when the largest gradient entry is below ``tol`` times its
            value at ``W = 0``.

    Attributes (after ``fit``):
        classes_: the sorted distinct labels seen in ``fit``.
        coef_: ``(K, D)`` weights (scikit-learn's layout).
        n_iter_, converged_, objective_: solver diagnostics.

    Example:
    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> clf = LogisticRegression().fit(x, ["a", "a", "b", "b"])
    >>> clf.predict(np.array([[0.8, 0.2], [0.2, 0.8]])).tolist()
    ['a', 'b']
    """

    def __init__(self, l2_penalty=DEFAULT_L2_PENALTY, max_iter=1000, tol=1e-6):
        if not (isinstance(l2_penalty, numbers.Real) and l2_penalty > 0):
            raise ValueError(
                f"`l2_penalty` must be a positive number (MSN's --lambd, e.g. "
                f"{DEFAULT_L2_PENALTY}), got {l2_penalty!r}."
            )
        if int(max_iter) < 1:
            raise ValueError(f"`max_iter` must be a positive int, got {max_iter!r}.")
        if not tol > 0:
            raise ValueError(f"`tol` must be positive, got {tol!r}.")
        self.l2_penalty = float(l2_penalty)
        self.max_iter = int(max_iter)
        self.tol = float(tol)

    def fit(self, x, y):
        """Fit on features ``x`` ``(n, D)`` and labels ``y`` ``(n,)``; returns self."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y)
        if x.ndim != 2:
            raise ValueError(f"`x` must be 2-D (num_samples, dim), got shape {x.shape}.")
        if y.shape != (len(x),):
            raise ValueError(
                f"`y` must be 1-D with one label per row of `x` ({len(x)}), got shape "
                f"{y.shape}."
            )
        if not np.all(np.isfinite(x)):
            raise ValueError("`x` contains NaN or infinite values.")
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"Need at least 2 classes to fit a classifier, got {len(self.classes_)}."
            )
        objective = _SoftmaxObjective(x, y_index, len(self.classes_), self.l2_penalty)
        w0 = np.zeros((x.shape[1], len(self.classes_)))
        w, f, _, n_iter, converged = _lbfgs(objective, w0, self.max_iter, self.tol)
        self.coef_ = w.T.copy()
        self.objective_ = float(f)
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        if not converged:
            warnings.warn(
                f"LogisticRegression did not converge in {self.max_iter} iterations "
                f"(tol={self.tol}); increase `max_iter` or `tol`.",
                LowShotConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _check_fitted(self, x):
        if not hasattr(self, "coef_"):
            raise ValueError("This LogisticRegression is not fitted yet; call fit first.")
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.coef_.shape[1]:
            raise ValueError(
                f"`x` must have shape (num_samples, {self.coef_.shape[1]}), got {x.shape}."
            )
        return x

    def decision_function(self, x):
        """Logits ``(n, K)``."""
        return self._check_fitted(x) @ self.coef_.T

    def predict_proba(self, x):
        """Class probabilities ``(n, K)``, columns in ``classes_`` order."""
        logits = self.decision_function(x)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, x):
        """Most likely label per row."""
        logits = self.decision_function(x)  # checks fitted first
        return self.classes_[np.argmax(logits, axis=1)]

    def score(self, x, y):
        """Top-1 accuracy in [0, 1]."""
        return float(np.mean(self.predict(x) == np.asarray(y)))


# --------------------------------------------------------------------------------------
# Sampling labelled subsets
# --------------------------------------------------------------------------------------


def _class_labels(labels, name="labels"):
    labels = _to_numpy(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot, e.g. label_mode="categorical"
        labels = np.argmax(labels, axis=1)
    elif labels.ndim == 2:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"`{name}` must be 1-D class labels (or one-hot rows), got shape {labels.shape}."
        )
    return labels


def _check_shots(shots):
    if isinstance(shots, (bool, np.bool_)) or not isinstance(shots, numbers.Real):
        raise ValueError(
            f"`shots` must be an int >= 1 (images per class) or a float in (0, 1] "
            f"(fraction of the labels), got {shots!r}."
        )
    if isinstance(shots, numbers.Integral):
        if shots < 1:
            raise ValueError(f"`shots` as images per class must be >= 1, got {shots}.")
        return int(shots)
    shots = float(shots)
    if not 0.0 < shots <= 1.0:
        hint = f" (for {int(shots)} images per class pass the int {int(shots)})" if (
            shots > 1 and shots.is_integer()
        ) else ""
        raise ValueError(
            f"`shots` as a fraction of the labels must be in (0, 1], got {shots}{hint}."
        )
    return shots


def sample_per_class(labels, shots, seed=None):
    """Draw a labelled subset: ``shots`` images per class, or a fraction of each class.

    Args:
        labels: ``(N,)`` class labels (ints or strings; one-hot rows are accepted).
        shots: int k >= 1, k images of every class; or float in (0, 1], that fraction
            of every class's images, rounded half up, at least 1 per class. (0.01 is a
            class-stratified "1% of the labels"; the paper's 1% ImageNet split is a
            fixed list of images, which this does not reproduce.)
        seed: int or ``numpy.random.Generator``; the same seed gives the same subset.

    Returns:
        Sorted int64 indices into ``labels``.

    Raises:
        ValueError: when a class has fewer than k images (the message names the
            class and its count), or on malformed ``shots``.

    Example:
    >>> labels = [0, 0, 0, 1, 1, 1, 1, 2, 2]
    >>> idx = sample_per_class(labels, 2, seed=0)
    >>> sorted(np.asarray(labels)[idx].tolist())
    [0, 0, 1, 1, 2, 2]
    >>> len(sample_per_class(labels, 0.5, seed=0))  # 2 of 3, 2 of 4, 1 of 2
    5
    """
    shots = _check_shots(shots)
    labels = _class_labels(labels)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) == 0:
        raise ValueError("`labels` is empty.")
    if isinstance(shots, int):
        too_small = np.flatnonzero(counts < shots)
        if len(too_small):
            worst = too_small[np.argmin(counts[too_small])]
            more = len(too_small) - 1
            others = f" ({more} other class{'es' if more > 1 else ''} too)" if more else ""
            raise ValueError(
                f"shots={shots} needs {shots} images of every class, but class "
                f"{classes[worst].item()!r} has only {counts[worst]}{others}. The smallest class "
                f"allows at most shots={counts.min()}."
            )
        wanted = np.full(len(classes), shots)
    else:
        # Round half up, at least one image per class, never more than the class has.
        wanted = np.clip(np.floor(shots * counts + 0.5).astype(np.int64), 1, counts)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    chosen = [
        rng.choice(order[start : start + count], size=k, replace=False)
        for start, count, k in zip(starts, counts, wanted)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _shots_label(shots):
    if isinstance(shots, int):
        return f"{shots}/class"
    return f"{shots * 100:g}%"


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShotResult:
    """Top-1 of one shot setting over its splits (accuracies in [0, 1])."""

    shots: object
    accuracies: tuple
    num_train: tuple

    @property
    def mean(self):
        return float(np.mean(self.accuracies))

    @property
    def std(self):
        """Sample standard deviation over splits (0 for a single split)."""
        if len(self.accuracies) < 2:
            return 0.0
        return float(np.std(self.accuracies, ddof=1))

    @property
    def label(self):
        return _shots_label(self.shots)


def _split_indices(train_labels, shots, num_splits, seed):
    # One independent stream per (setting, split): adding a shot setting or a split
    # never changes the subsets drawn for the others.
    setting = int(shots) if isinstance(shots, int) else int(round(shots * 1e6)) + 1_000_000
    return [
        sample_per_class(train_labels, shots, np.random.default_rng([seed, setting, split]))
        for split in range(num_splits)
    ]


def _check_common(shots, num_splits, centering):
    if isinstance(shots, (numbers.Real, np.generic)) and not isinstance(shots, bool):
        shots = (shots,)
    shots = tuple(_check_shots(s) for s in shots)
    if not shots:
        raise ValueError("`shots` is empty; give e.g. (1, 2, 5, 0.01).")
    if len(set(shots)) != len(shots):
        # Results are keyed by setting, and 1 == 1.0 as a key although the int means
        # one image per class and the float all the labels.
        raise ValueError(
            f"`shots` has repeated settings: {shots}. Note that 1 (one image per class) "
            "and 1.0 (all labels) cannot be used together."
        )
    if int(num_splits) < 1:
        raise ValueError(f"`num_splits` must be >= 1, got {num_splits}.")
    if centering not in CENTERINGS:
        raise ValueError(f"`centering` must be one of {CENTERINGS}, got {centering!r}.")
    return shots, int(num_splits)


def _fit_and_score(train_x, train_y, test_x, test_y, centering, solver_kwargs):
    mean = train_x.mean(axis=0) if centering == "train_mean" else None
    train_x = preprocess_features(train_x, centering, mean)
    test_x = preprocess_features(test_x, centering, mean)
    clf = LogisticRegression(**solver_kwargs).fit(train_x, train_y)
    return clf.score(test_x, test_y)


def evaluate(
    train_features,
    train_labels,
    test_features,
    test_labels,
    shots=(1, 2, 5),
    num_splits=3,
    seed=0,
    centering="per_sample",
    l2_penalty=DEFAULT_L2_PENALTY,
    max_iter=1000,
    tol=1e-6,
    verbose=0,
):
    """Low-shot top-1 of frozen features: sample, pre-process, fit, score, repeat.

    For every shot setting and split, draws a labelled subset of the training pool
    (:func:`sample_per_class`), pre-processes train and test features
    (:func:`preprocess_features`), fits :class:`LogisticRegression` and scores top-1
    on all test features.

    Args:
        train_features: ``(N, D)`` features of the labelled pool.
        train_labels: ``(N,)`` labels of the pool.
        test_features: ``(M, D)``.
        test_labels: ``(M,)``; every test class must occur in the pool.
        shots: a shot setting or a sequence of them: ints (images per class) and
            floats in (0, 1] (fractions of the labels).
        num_splits: int, random subsets per setting (the paper uses 3).
        seed: int, base seed; split ``i`` of a setting always gets the same subset.
        centering: ``"per_sample"`` (paper), ``"train_mean"`` or None.
        l2_penalty, max_iter, tol: passed to :class:`LogisticRegression`.
        verbose: 1 prints one line per setting.

    Returns:
        ``{shots: ShotResult}`` in the order given.

    Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centers = rng.normal(size=(4, 16))
    >>> y = np.repeat(np.arange(4), 10)
    >>> x = centers[y] + 0.1 * rng.normal(size=(40, 16))
    >>> results = evaluate(x, y, x, y, shots=(1, 0.5), num_splits=2)
    >>> [round(r.mean, 2) for r in results.values()]
    [1.0, 1.0]
    """
    shots_list, num_splits = _check_common(shots, num_splits, centering)
    train_x = np.asarray(train_features, dtype=np.float64)
    test_x = np.asarray(test_features, dtype=np.float64)
    train_y = _class_labels(train_labels, "train_labels")
    test_y = _class_labels(test_labels, "test_labels")
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(
                f"{name} features must be (num_images, dim) with one label per image; "
                f"got features {x.shape} and {len(y)} labels."
            )
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"Train and test features differ in width: {train_x.shape[1]} vs "
            f"{test_x.shape[1]}."
        )
    unseen = np.setdiff1d(np.unique(test_y), np.unique(train_y))
    if len(unseen):
        raise ValueError(
            f"Test labels {unseen[:10].tolist()} never occur in the training labels; "
            "a classifier cannot predict them."
        )
    solver_kwargs = dict(l2_penalty=l2_penalty, max_iter=max_iter, tol=tol)
    results = {}
    for s in shots_list:
        accuracies, sizes = [], []
        for idx in _split_indices(train_y, s, num_splits, seed):
            accuracies.append(_fit_and_score(
                train_x[idx], train_y[idx], test_x, test_y, centering, solver_kwargs
            ))
            sizes.append(len(idx))
        results[s] = ShotResult(s, tuple(accuracies), tuple(sizes))
        if verbose:
            r = results[s]
            print(f"{r.label}: top-1 {100 * r.mean:.2f} +- {100 * r.std:.2f} %")
    return results


def lowshot_eval(
    backbone,
    train,
    test,
    train_labels=None,
    test_labels=None,
    shots=(1, 2, 5),
    num_splits=3,
    seed=0,
    feature=None,
    batch_size=32,
    interpolate_pos_encoding=None,
    preprocessing=None,
    centering="per_sample",
    l2_penalty=DEFAULT_L2_PENALTY,
    max_iter=1000,
    tol=1e-6,
    verbose=1,
):
    """The MSN low-shot evaluation of a backbone, from images to a table of top-1.

    Args:
        backbone: a :class:`keras_vitmsn.ViTMSNBackbone` (frozen for the evaluation) or
            a :class:`FeatureExtractor`.
        train: the labelled pool, as images with ``train_labels``, or a dataset /
            iterable yielding ``(images, labels)`` (see :func:`extract_features`).
            With an array and ``train_labels``, only the images some split uses go
            through the model.
        test: the test images, same formats (``test_labels`` with an array).
        shots, num_splits, seed, centering, l2_penalty, max_iter, tol: see
            :func:`evaluate`.
        feature, batch_size, interpolate_pos_encoding, preprocessing: see
            :func:`extract_features`.
        verbose: 1 shows progress bars and one line per setting.

    Returns:
        ``{shots: ShotResult}``; print it with :func:`format_table`.
    """
    shots_list, num_splits = _check_common(shots, num_splits, centering)
    # One feature model for train and test: its compiled predict function is reused.
    model = _feature_model(backbone, feature, interpolate_pos_encoding)

    def extract(data):
        return _extract(model, data, batch_size, preprocessing, verbose)

    def features_and_labels(data, labels, name):
        if labels is not None:
            out = extract(data)
            if isinstance(out, tuple):
                raise ValueError(
                    f"`{name}` yields labels and `{name}_labels` was given too; pass one."
                )
            return out, _class_labels(labels, f"{name}_labels")
        out = extract(data)
        if not isinstance(out, tuple):
            raise ValueError(
                f"`{name}` yields no labels: pass `{name}_labels` or a dataset of "
                "(images, labels)."
            )
        return out[0], _class_labels(out[1], name)

    array_pool = train_labels is not None and hasattr(train, "shape")
    if array_pool:
        # Extract only the images a split will use: for 1-5 images per class this is a
        # tiny part of a big labelled pool (e.g. 5,000 of ImageNet's 1.28M).
        pool_labels = _class_labels(train_labels, "train_labels")
        if len(pool_labels) != len(train):
            raise ValueError(
                f"`train` has {len(train)} images but `train_labels` has "
                f"{len(pool_labels)} labels."
            )
        used = np.unique(
            np.concatenate(
                [
                    idx
                    for s in shots_list
                    for idx in _split_indices(pool_labels, s, num_splits, seed)
                ]
            )
        )
        images = _to_numpy(train)
        used_features = extract(images[used])
        train_features = np.zeros((len(pool_labels), used_features.shape[1]), np.float32)
        train_features[used] = used_features
    else:
        train_features, pool_labels = features_and_labels(train, train_labels, "train")
    test_features, test_y = features_and_labels(test, test_labels, "test")
    return evaluate(
        train_features,
        pool_labels,
        test_features,
        test_y,
        shots=shots_list,
        num_splits=num_splits,
        seed=seed,
        centering=centering,
        l2_penalty=l2_penalty,
        max_iter=max_iter,
        tol=tol,
        verbose=verbose,
    )


def format_table(results, title=None):
    """Render ``{shots: ShotResult}`` as a plain-text table of top-1 (%).

    Example:
    >>> r = {1: ShotResult(1, (0.5, 0.7), (10, 10)), 0.01: ShotResult(0.01, (0.8,), (13,))}
    >>> print(format_table(r))
    shots    splits  train images  top-1 (%)
    1/class  2       10            60.00 +- 14.14
    1%       1       13            80.00 +- 0.00
    """
    rows = [("shots", "splits", "train images", "top-1 (%)")]
    for r in results.values():
        sizes = sorted(set(r.num_train))
        size = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
        rows.append(
            (r.label, str(len(r.accuracies)), size, f"{100 * r.mean:.2f} +- {100 * r.std:.2f}")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in rows
    ]
    if title:
        lines.insert(0, title)
    return "\n".join(lines)
