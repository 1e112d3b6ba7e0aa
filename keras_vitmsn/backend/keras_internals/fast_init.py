"""Item 1 of :mod:`keras_vitmsn.backend.keras_internals`: building a model without running
its initialisers when its weights are about to be loaded."""

import keras

from keras_vitmsn.backend.keras_internals.lazy import module_getattr
from keras_vitmsn.backend.keras_internals.lazy import probed
from keras_vitmsn.backend.keras_internals.public_only import PUBLIC_ONLY

# -- 1. fast initialisation --------------------------------------------------------


def _find_global_state():
    if PUBLIC_ONLY:
        return None
    try:
        from keras.src.backend.common import global_state
    except ImportError:
        return None
    needed = ("get_global_attribute", "set_global_attribute")
    if not all(hasattr(global_state, name) for name in needed):
        return None
    variable_cls = keras.Variable
    if not all(hasattr(variable_cls, name) for name in ("_deferred_initialize",)):
        return None
    return global_state


def _probe_fast_init(global_state):
    """Build one variable the deferred way and check Keras behaves as relied upon."""
    if global_state is None:
        return False
    try:
        with keras.StatelessScope(initialize_variables=False):
            variable = keras.Variable(initializer="zeros", shape=(2,), dtype="float32")
        pending = global_state.get_global_attribute("uninitialized_variables", []) or []
        found = any(v is variable for v in pending)
        if found:
            variable._initializer = _Value(keras.ops.convert_to_numpy(keras.ops.ones((2,))))
            variable._deferred_initialize()
            global_state.set_global_attribute(
                "uninitialized_variables", [v for v in pending if v is not variable]
            )
            return bool(keras.ops.convert_to_numpy(variable).tolist() == [1.0, 1.0])
    except Exception:  # any change in these internals: use the public path
        return False
    return False


class _Value:
    """An initialiser returning a fixed array (checked against the variable's shape)."""

    def __init__(self, value):
        self.value = value

    def __call__(self, shape, dtype=None):
        if tuple(shape) != tuple(self.value.shape):
            raise ValueError(
                f"Initial value of shape {self.value.shape} for a variable of shape {shape}."
            )
        return self.value


_GLOBAL_STATE = _find_global_state()


# FAST_INIT: probed on first use (keras_internals.lazy: the probe computes).
__getattr__ = module_getattr(globals(), {"FAST_INIT": lambda: _probe_fast_init(_GLOBAL_STATE)})


def pending_variables():
    """Variables created under a deferring scope and not yet initialised."""
    if _GLOBAL_STATE is None:
        return []
    return _GLOBAL_STATE.get_global_attribute("uninitialized_variables", []) or []


def _forget(variables):
    ids = {id(v) for v in variables}
    pending = [v for v in pending_variables() if id(v) not in ids]
    _GLOBAL_STATE.set_global_attribute("uninitialized_variables", pending)


def _build_deferred(factory):
    """``factory()`` inside a StatelessScope: ``(model, its uninitialised variables)``."""
    before = {id(v) for v in pending_variables()}
    try:
        with keras.StatelessScope(initialize_variables=False):
            model = factory()
    except BaseException:
        _forget([v for v in pending_variables() if id(v) not in before])
        raise
    return model, [v for v in pending_variables() if id(v) not in before]


def build_with_values(factory, values_for, fast=None):
    """``factory()`` with its variables initialised from ``values_for(model)``.

    Args:
        factory: callable building the model.
        values_for: callable ``model -> {id(variable): array}``; variables it leaves
            out keep their own initialisers.
        fast: None (``FAST_INIT``), or False to force the public build-then-assign path.

    Returns:
        The model, every variable initialised exactly once on the fast path.
    """
    if not (probed(globals(), "FAST_INIT") if fast is None else fast):
        model = factory()
        values = values_for(model)
        for variable in model.variables:
            if id(variable) in values:
                variable.assign(values[id(variable)])
        return model
    model, created = _build_deferred(factory)
    try:
        values = values_for(model)
        for variable in created:
            if id(variable) in values:
                variable._initializer = _Value(values[id(variable)])
            variable._deferred_initialize()
    finally:
        # Initialised, or abandoned after an error: either way not Keras' to initialise.
        _forget(created)
    return model


def read_without_initialising(factory, reader, fast=None):
    """``(model, reader(model))``; on the fast path the model's variables are never
    initialised (only its structure is used, e.g. to read a weights file of another
    shape)."""
    if not (probed(globals(), "FAST_INIT") if fast is None else fast):
        model = factory()
        return model, reader(model)
    model, created = _build_deferred(factory)
    try:
        return model, reader(model)
    finally:
        _forget(created)


def capture_weights(model, path, fast=None):
    """``{id(variable): value}`` read from a ``save_weights`` file.

    On the fast path the model need not be initialised: ``load_weights`` inside a
    StatelessScope records each assignment in the scope instead of writing the
    variable, and Keras still checks every variable count and shape. The public path
    loads into the (initialised) model and reads the values back.
    """
    if not (probed(globals(), "FAST_INIT") if fast is None else fast):
        model.load_weights(path)
        return {id(v): keras.ops.convert_to_numpy(v) for v in model.variables}
    with keras.StatelessScope(initialize_variables=False) as scope:
        model.load_weights(path)
    values = {}
    for variable in model.variables:
        value = scope.get_current_value(variable)
        if value is not None:
            values[id(variable)] = value
    return values
