"""The low-shot evaluation itself: sample, pre-process, fit, score, repeat, report.

Step 4 of the MSN low-shot protocol (see :mod:`keras_vitmsn.lowshot`): report top-1
accuracy on the test set, for 1, 2 and 5 labelled images per class (3 splits each) and
for 1% of the labels; we report mean and sample standard deviation over the splits
(:class:`ShotResult`, :func:`format_table`). :func:`evaluate` runs the protocol on
features, :func:`lowshot_eval` from images through a backbone.
"""

import dataclasses
import numbers

import numpy as np

from keras_vitmsn.lowshot.features import CENTERINGS
from keras_vitmsn.lowshot.features import check_not_raw_pixels
from keras_vitmsn.lowshot.features import feature_model
from keras_vitmsn.lowshot.features import preprocess_features
from keras_vitmsn.lowshot.features import run_feature_model
from keras_vitmsn.lowshot.features import to_numpy
from keras_vitmsn.lowshot.sampling import check_shots
from keras_vitmsn.lowshot.sampling import class_labels
from keras_vitmsn.lowshot.sampling import split_indices
from keras_vitmsn.lowshot.solver import DEFAULT_L2_PENALTY
from keras_vitmsn.lowshot.solver import LogisticRegression

__all__ = ["ShotResult", "evaluate", "lowshot_eval", "format_table"]


def _shots_label(shots):
    if isinstance(shots, int):
        return f"{shots}/class"
    return f"{shots * 100:g}%"


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


def _check_common(shots, num_splits, centering):
    if isinstance(shots, (numbers.Real, np.generic)) and not isinstance(shots, bool):
        shots = (shots,)
    shots = tuple(check_shots(s) for s in shots)
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
    train_y = class_labels(train_labels, "train_labels")
    test_y = class_labels(test_labels, "test_labels")
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(
                f"{name} features must be (num_images, dim) with one label per image; "
                f"got features {x.shape} and {len(y)} labels."
            )
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"Train and test features differ in width: {train_x.shape[1]} vs {test_x.shape[1]}."
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
        for idx in split_indices(train_y, s, num_splits, seed):
            accuracies.append(
                _fit_and_score(train_x[idx], train_y[idx], test_x, test_y, centering, solver_kwargs)
            )
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
            a :class:`keras_vitmsn.ViTMSNFeatureExtractor` (see :func:`extract_features`).
        train: the labelled pool, as images with ``train_labels``, or a dataset /
            iterable yielding ``(images, labels)`` (see :func:`extract_features`).
            With an array and ``train_labels``, only the images some split uses go
            through the model.
        test: the test images, same formats (``test_labels`` with an array).
        shots, num_splits, seed, centering, l2_penalty, max_iter, tol: see
            :func:`evaluate`.
        feature, batch_size, interpolate_pos_encoding, preprocessing: see
            :func:`extract_features`. Integer images (raw pixels) need a
            ``preprocessing`` choice (``"hub"``, ``"paper"`` or a converter) unless
            the extractor has its own preprocessor: with ``preprocessing=None`` they
            are refused with a ValueError, before any feature is extracted, instead
            of reaching the backbone unnormalised.
        verbose: 1 shows progress bars and one line per setting.

    Returns:
        ``{shots: ShotResult}``; print it with :func:`format_table`.
    """
    shots_list, num_splits = _check_common(shots, num_splits, centering)
    # One feature model for train and test: its compiled predict function is reused.
    model = feature_model(backbone, feature, interpolate_pos_encoding)
    for name, data in (("train", train), ("test", test)):
        # Arrays are checked here, so an integer `test` fails before `train` runs.
        check_not_raw_pixels(data, preprocessing, model, f"`{name}`")

    def extract(data):
        return run_feature_model(model, data, batch_size, preprocessing, verbose)

    def features_and_labels(data, labels, name):
        if labels is not None:
            out = extract(data)
            if isinstance(out, tuple):
                raise ValueError(
                    f"`{name}` yields labels and `{name}_labels` was given too; pass one."
                )
            return out, class_labels(labels, f"{name}_labels")
        out = extract(data)
        if not isinstance(out, tuple):
            raise ValueError(
                f"`{name}` yields no labels: pass `{name}_labels` or a dataset of (images, labels)."
            )
        return out[0], class_labels(out[1], name)

    array_pool = train_labels is not None and hasattr(train, "shape")
    if array_pool:
        # Extract only the images a split will use: for 1-5 images per class this is a
        # tiny part of a big labelled pool (e.g. 5,000 of ImageNet's 1.28M).
        pool_labels = class_labels(train_labels, "train_labels")
        if len(pool_labels) != len(train):
            raise ValueError(
                f"`train` has {len(train)} images but `train_labels` has {len(pool_labels)} labels."
            )
        used = np.unique(
            np.concatenate(
                [idx for s in shots_list for idx in split_indices(pool_labels, s, num_splits, seed)]
            )
        )
        images = to_numpy(train)
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
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    ]
    if title:
        lines.insert(0, title)
    return "\n".join(lines)
