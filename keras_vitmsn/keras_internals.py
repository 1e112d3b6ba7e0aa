"""Every use of Keras internals (``keras.src``, private attributes), in one place.

Each is checked when this module is imported; where Keras has changed, a slower or
narrower path built on public API alone takes over, and ``FAST_INIT`` /
``DATA_LAYER_IS_PRIVATE`` say which one is active. The fallbacks are tested
(tests/test_keras_internals.py forces them; ``KERAS_VITMSN_PUBLIC_KERAS_ONLY=1`` in the
environment makes a whole process take every public path).

1. Fast initialisation. Creating a backbone runs every variable's initialiser:
   truncated-normal sampling of 86M values for vit-msn-base takes 1.5-8 s on CPU,
   several times longer than reading the weights. When the weights are about to be
   overwritten, the model is built inside ``keras.StatelessScope(initialize_variables=
   False)``, where Keras defers variable initialisation (its list of pending
   variables is a private global), and each variable is then initialised once,
   directly with its checkpoint value (``Variable._initializer`` and
   ``_deferred_initialize``). Fallback: build normally, then assign.
2. The image converter's base class: Keras' data-pipeline layer (private; it lets a
   layer run TensorFlow ops inside ``tf.data`` whatever the backend). Fallback:
   ``keras.layers.Layer``, which works eagerly and inside models, and in ``tf.data``
   only under the TensorFlow backend.
3. A scheduled weight decay (``ScheduledAdamW``): the optimizer base reads
   ``self.weight_decay`` at each step (probed, below; refused where it does not).
4. A custom optimizer finding a variable's slots: ``update_step`` receives each
   variable in the backend's own form (TensorFlow hands it the ``tf.Variable`` inside
   the Keras variable, one per replica under a ``tf.distribute`` strategy), and Keras'
   own optimizers look its index up with the private ``_get_variable_index``, which
   resolves all of these (:class:`VariableIndex`). Fallback: an index by object
   identity of the Keras variables (and their ``tf.Variable`` on TensorFlow), without
   ``tf.distribute`` strategies.

5. Quantising a model: Keras' ``Layer.__delattr__`` runs a full ``gc.collect()`` for
   every variable it deletes (each quantised kernel replaces a float one), which is
   0.3-0.8 s per layer once torch, TensorFlow and JAX are loaded: ~60 s of a ~65 s
   ``quantize`` of vit-msn-small. :func:`one_garbage_collection` makes those calls
   no-ops for the duration and collects once at the end: the same memory is freed,
   once. Nothing to fall back to: it only touches ``gc.collect``.

Other private names are not used: export builds its sample inputs itself.
"""

import contextlib
import gc
import os

import keras

PUBLIC_ONLY = os.environ.get("KERAS_VITMSN_PUBLIC_KERAS_ONLY", "") not in ("", "0")

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
FAST_INIT = _probe_fast_init(_GLOBAL_STATE)


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
    if not (FAST_INIT if fast is None else fast):
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
    if not (FAST_INIT if fast is None else fast):
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
    if not (FAST_INIT if fast is None else fast):
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


# -- 2. the image converter's base class --------------------------------------------

_DATA_LAYER_CANDIDATES = (
    # Keras >= 3.11 (renamed when grain support was added).
    ("keras.src.layers.preprocessing.data_layer", "DataLayer"),
    # Keras 3.8-3.10.
    ("keras.src.layers.preprocessing.tf_data_layer", "TFDataLayer"),
)


def find_data_layer_base(candidates=_DATA_LAYER_CANDIDATES):
    """``(base_class, is_private)``: Keras' data-pipeline layer, or ``keras.layers.Layer``."""
    import importlib

    if PUBLIC_ONLY:
        candidates = ()
    for module_name, class_name in candidates:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        base = getattr(module, class_name, None)
        # The converter relies on its own __call__, which switches ops to TensorFlow
        # inside tf.data.
        if (
            isinstance(base, type)
            and issubclass(base, keras.layers.Layer)
            and base.__call__ is not keras.layers.Layer.__call__
        ):
            return base, True
    return keras.layers.Layer, False


DataLayerBase, DATA_LAYER_IS_PRIVATE = find_data_layer_base()


# -- 3. a scheduled weight decay ------------------------------------------------------
#
# Keras' optimizers take a float ``weight_decay``; every backend reads
# ``self.weight_decay`` once per step when it applies the decoupled decay (an
# implementation detail, not an API). ``ScheduledAdamW`` turns the attribute into a
# property evaluating the schedule. The probe below runs one real step to confirm a
# property is honoured; where it is not, ScheduledAdamW refuses a schedule (with a
# clear error) rather than silently decaying at a constant rate.

_WEIGHT_DECAY_PROPERTY = None


def optimizer_reads_weight_decay_property():
    """Whether Keras' AdamW applies the ``weight_decay`` a subclass property returns."""
    global _WEIGHT_DECAY_PROPERTY
    if _WEIGHT_DECAY_PROPERTY is None:
        _WEIGHT_DECAY_PROPERTY = _probe_weight_decay_property()
    return _WEIGHT_DECAY_PROPERTY


def _probe_weight_decay_property():
    class _Probe(keras.optimizers.AdamW):
        @property
        def weight_decay(self):
            return 0.5

        @weight_decay.setter
        def weight_decay(self, value):
            pass

    try:
        variable = keras.Variable([2.0], dtype="float32")
        optimizer = _Probe(learning_rate=1.0, weight_decay=0.0)
        # A zero gradient leaves Adam's own update at zero: only the decay moves it.
        optimizer.apply([keras.ops.zeros((1,))], [variable])
        return abs(float(keras.ops.convert_to_numpy(variable)[0]) - 1.0) < 1e-6
    except Exception:
        return False


# -- 4. an optimizer variable's index -------------------------------------------------


def _probe_variable_index():
    if PUBLIC_ONLY:
        return False
    try:
        variables = [keras.Variable([1.0]), keras.Variable([2.0, 3.0])]
        optimizer = keras.optimizers.SGD()
        optimizer.build(variables)
        return [optimizer._get_variable_index(v) for v in reversed(variables)] == [1, 0]
    except Exception:  # renamed or changed: use the public index
        return False


VARIABLE_INDEX_IS_PRIVATE = _probe_variable_index()


class VariableIndex:
    """``index(variable)``: the position of ``variable`` in the list an optimizer was
    built on, for the variable as ``update_step`` receives it on this backend.

    Args:
        optimizer: the ``keras.optimizers.Optimizer`` being built.
        variables: the ``var_list`` given to its ``build``.
        private: use Keras' ``_get_variable_index`` (default: when it was probed to
            work); False for the identity index.
    """

    def __init__(self, optimizer, variables, private=None):
        self._optimizer = optimizer
        #: The variables, in order (a plain object's list: Keras tracks none of it).
        self.variables = list(variables)
        self._private = VARIABLE_INDEX_IS_PRIVATE if private is None else bool(private)
        self._by_id = {}
        on_tensorflow = keras.backend.backend() == "tensorflow"
        for i, variable in enumerate(variables):
            self._by_id[id(variable)] = i
            if on_tensorflow and isinstance(variable, keras.Variable):
                self._by_id[id(variable.value)] = i

    def __call__(self, variable):
        if self._private:
            return self._optimizer._get_variable_index(variable)
        try:
            return self._by_id[id(variable)]
        except KeyError:
            raise RuntimeError(
                f"The optimizer was not built on {getattr(variable, 'name', variable)!r} "
                f"(or, on Keras {keras.__version__} without the internals "
                "keras_vitmsn.keras_internals relies on, it is a tf.distribute replica)."
            ) from None


# -- 5. one garbage collection for many deleted variables ------------------------------


@contextlib.contextmanager
def one_garbage_collection():
    """Within the block ``gc.collect()`` does nothing; one collection runs at its end.

    Example:
    >>> with one_garbage_collection():
    ...     gc.collect()
    0
    """
    collect = gc.collect
    gc.collect = lambda generation=2: 0
    try:
        yield
    finally:
        gc.collect = collect
        collect()
