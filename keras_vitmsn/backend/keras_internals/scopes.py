"""Item 9 of :mod:`keras_vitmsn.backend.keras_internals`: whether a ``keras.StatelessScope`` is
active.

Inside one, a variable's ``value`` is the scope's tensor and ``assign`` records a new
value in the scope, so code that updates ``variable.value`` in place (the torch fast
paths of :mod:`keras_vitmsn.backend.torch`) would write into the caller's arrays and
record nothing. Keras answers with its private ``in_stateless_scope``. Fallback:
:func:`in_stateless_scope` answers True, so callers always take their ``assign`` path
(correct everywhere, slower on torch).
"""

from keras_vitmsn.backend.keras_internals.public_only import PUBLIC_ONLY


def _find_probe():
    if PUBLIC_ONLY:
        return None
    try:
        import keras
        from keras.src.backend.common.stateless_scope import in_stateless_scope as probe

        if probe():
            return None
        with keras.StatelessScope():
            inside = probe()
        return probe if inside is True and probe() is False else None
    except Exception:  # moved or changed: assume a scope may be active
        return None


_IN_STATELESS_SCOPE = _find_probe()
STATELESS_SCOPE_IS_PRIVATE = _IN_STATELESS_SCOPE is not None


def in_stateless_scope():
    """Whether a ``keras.StatelessScope`` is active (True where it can't be told).

    Example:
    >>> import keras
    >>> with keras.StatelessScope():
    ...     in_stateless_scope()
    True
    """
    return True if _IN_STATELESS_SCOPE is None else bool(_IN_STATELESS_SCOPE())
