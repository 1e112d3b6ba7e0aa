"""Labelled subsets for low-shot evaluation: k images per class, or a fraction of each.

Step 4 of the MSN low-shot protocol (see :mod:`keras_vitmsn.lowshot`) scores 1, 2 and
5 labelled images per class (3 random splits each) and 1% of the labels.
:func:`sample_per_class` draws one such subset; :func:`split_indices` draws the
subsets of one shot setting, reproducibly from a base seed. :func:`class_labels` and
:func:`check_shots` validate labels and shot settings for them.
"""

import numbers

import numpy as np

from keras_vitmsn.lowshot.features import to_numpy

__all__ = ["sample_per_class"]


def class_labels(labels, name="labels"):
    """``labels`` as a 1-D NumPy array of class labels; one-hot rows become indices.

    ``name`` is the argument's name in error messages.

    Example:
    >>> class_labels([[0, 1], [1, 0]]).tolist()
    [1, 0]
    """
    labels = to_numpy(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot, e.g. label_mode="categorical"
        labels = np.argmax(labels, axis=1)
    elif labels.ndim == 2:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"`{name}` must be 1-D class labels (or one-hot rows), got shape {labels.shape}."
        )
    return labels


def check_shots(shots):
    """A valid shot setting as an int (images per class) or a float in (0, 1].

    Example:
    >>> check_shots(np.int64(2)), check_shots(0.01)
    (2, 0.01)
    """
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
        hint = (
            f" (for {int(shots)} images per class pass the int {int(shots)})"
            if (shots > 1 and shots.is_integer())
            else ""
        )
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
    shots = check_shots(shots)
    labels = class_labels(labels)
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


def split_indices(train_labels, shots, num_splits, seed):
    """The ``num_splits`` subsets of one shot setting, each from :func:`sample_per_class`.

    Split ``i`` of setting ``shots`` depends only on ``(seed, shots, i)``, so the same
    call always draws the same subsets.

    Example:
    >>> labels = [0, 0, 0, 1, 1, 1]
    >>> splits = split_indices(labels, 1, num_splits=3, seed=0)
    >>> [len(idx) for idx in splits]
    [2, 2, 2]
    >>> all(np.array_equal(a, b) for a, b in zip(splits, split_indices(labels, 1, 2, 0)))
    True
    """
    # One independent stream per (setting, split): adding a shot setting or a split
    # never changes the subsets drawn for the others.
    setting = int(shots) if isinstance(shots, int) else int(round(shots * 1e6)) + 1_000_000
    return [
        sample_per_class(train_labels, shots, np.random.default_rng([seed, setting, split]))
        for split in range(num_splits)
    ]
