"""Class names of a classifier's outputs, and top-k decoding of its predictions.

The names travel inside the model (``ViTMSNClassifier(class_names=...)``, stored in
its config, hence in ``.keras`` files and in a preset's ``task.json``), so a model and
its names can never be separated or paired wrongly.

Example:
>>> import numpy as np
>>> logits = np.array([[2.0, 0.5, -1.0]], "float32")
>>> top = decode_predictions(logits, ["cat", "dog", "emu"], top_k=2)[0]
>>> [(name, round(p, 3)) for _, name, p in top]
[('cat', 0.786), ('dog', 0.175)]
"""

import numbers

import numpy as np


def check_class_names(class_names, num_classes):
    """``class_names`` as a tuple of str (or None), checked against ``num_classes``
    (None: any count).

    Raises:
        ValueError: not a list of strings, or not one name per output.
    """
    if class_names is None:
        return None
    if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__iter__"):
        raise ValueError(
            "`class_names` must be a list of strings, one per class, or None; got "
            f"{class_names!r:.200}."
        )
    names = tuple(class_names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(
            f"`class_names` must be strings; got {bad[0]!r} ({type(bad[0]).__name__}) "
            f"among {names!r:.200}."
        )
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(
            f"`class_names` has {len(names)} names for {num_classes} classes: give one "
            "name per class (or None when unknown)."
        )
    # NumPy's str_ is a str subclass: store plain str so configs serialise as JSON.
    return tuple(str(n) for n in names)


def _softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _is_distribution(x):
    return bool(np.all(x >= 0) and np.all(x <= 1) and np.allclose(x.sum(-1), 1.0, atol=1e-3))


def decode_predictions(predictions, class_names=None, top_k=5, from_logits=None):
    """The ``top_k`` classes of each image, best first, as ``(index, name, probability)``.

    Args:
        predictions: ``(batch, num_classes)`` logits or probabilities (NumPy or any
            backend's tensor), e.g. ``classifier.predict(images)``.
        class_names: the names of the outputs (``classifier.class_names``), or None:
            then ``name`` is None and the index identifies the class.
        top_k: positive int, classes per image (all of them when there are fewer).
        from_logits: True applies a softmax, False takes ``predictions`` as
            probabilities. None (default) decides per call: rows that are all in
            [0, 1] and sum to 1 are probabilities, anything else is logits.

    Returns:
        One list per image of ``(index, name, probability)`` tuples.

    Raises:
        ValueError: ``predictions`` is not 2-D, ``class_names`` does not have one name
            per column, or ``top_k`` is not a positive int.

    Example:
    >>> import numpy as np
    >>> probs = np.array([[0.1, 0.7, 0.2]])
    >>> decode_predictions(probs, top_k=1)
    [[(1, None, 0.7)]]
    """
    import keras

    values = np.asarray(keras.ops.convert_to_numpy(predictions), dtype="float64")
    if values.ndim != 2:
        raise ValueError(
            "`predictions` must be (batch, num_classes); got shape "
            f"{values.shape} (for one image, pass predictions[None])."
        )
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int; got {top_k!r}.")
    names = check_class_names(class_names, values.shape[-1])
    if from_logits is None:
        from_logits = not _is_distribution(values)
    probs = _softmax(values) if from_logits else values
    k = min(int(top_k), values.shape[-1])
    decoded = []
    for row in probs:
        # A stable sort keeps the lower index first among equal scores.
        top = np.argsort(-row, kind="stable")[:k]
        decoded.append([(int(i), None if names is None else names[i], float(row[i])) for i in top])
    return decoded
