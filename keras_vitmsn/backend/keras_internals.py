"""Every use of Keras internals (``keras.src``, private attributes), in one place.

Each is probed at import, or on first use for probes that compute (on JAX the first
computation creates the CPU client, after which start-up settings such as
:func:`keras_vitmsn.backend.enable_jax_cpu_memory` no longer apply, so importing computes
nothing); where Keras has changed, a public path takes over. The fallbacks are tested
(tests/test_keras_internals.py; ``KERAS_VITMSN_PUBLIC_KERAS_ONLY=1`` makes a whole process
take every public path).

1. Fast initialisation (``fast_init``): build inside ``StatelessScope(initialize_variables=
   False)`` and initialise each variable once with its checkpoint value (random init
   of vit-msn-base takes 1.5-8 s on CPU). Fallback: build, then assign.
2. The image converter's base: Keras' data-pipeline layer (TensorFlow ops inside
   ``tf.data`` on any backend). Fallback: ``keras.layers.Layer``.
3. A scheduled weight decay: Keras' optimizers read ``self.weight_decay`` each step
   (probed; a schedule is refused where they do not).
4. An optimizer variable's slot index: Keras' ``_get_variable_index``. Fallback: an
   identity index (no ``tf.distribute`` replicas).
5. Quantising: Keras runs ``gc.collect()`` per deleted variable (~60 s of a 65 s
   ``quantize``); :func:`one_garbage_collection` collects once.
6. Walking a model's layers: ``_flatten_layers``. Fallback: :func:`all_layers`' walk.
7. A quantised sublayer's own dtype policy in place of a shared map (``_dtype_policy``;
   without it, rebuilding a quantised model refuses).
8. One optimizer update call per step (``_backend_update_step``, which Keras' torch
   optimizers override). Fallback: the per-variable ``update_step``.
9. Whether a ``keras.StatelessScope`` is active (the torch updates write in place
   outside one). Fallback: assume one is, so every update goes through ``assign``.
10. An int8 Dense's forward with the backend's int8 GEMM (:func:`dense_int8_call`):
   Keras' ``Dense._int8_call`` with its ``_kernel``, ``kernel_scale`` and
   ``inputs_quantizer``, probed on first use against Keras' own result. Fallback:
   Keras' ``_int8_call``.
"""

import contextlib
import gc
import inspect
import os
import threading

import keras
import numpy as np

# KERAS_VITMSN_PUBLIC_KERAS_ONLY=1 in the environment: every probe here answers "not
# available", so a whole process takes the public paths (the fallbacks tested end to end).
PUBLIC_ONLY = os.environ.get("KERAS_VITMSN_PUBLIC_KERAS_ONLY", "") not in ("", "0")


# -- probes that run on first use ----------------------------------------------------


def module_getattr(namespace, probes):
    """A module ``__getattr__`` (PEP 562) that answers each name of ``probes`` by
    calling its probe once and storing the result in ``namespace`` (a module's
    ``globals()``), where later reads, and tests that set it, find it directly.

    Example:
    >>> calls, namespace = [], {}
    >>> probe = {"ANSWER": lambda: calls.append(1) or 42}
    >>> namespace["__getattr__"] = module_getattr(namespace, probe)
    >>> len(calls), probed(namespace, "ANSWER"), probed(namespace, "ANSWER"), len(calls)
    (0, 42, 42, 1)
    """

    def __getattr__(name):
        probe = probes.get(name)
        if probe is None:
            raise AttributeError(f"module {namespace.get('__name__')!r} has no attribute {name!r}")
        namespace[name] = value = probe()
        return value

    return __getattr__


def probed(namespace, name):
    """The value of the lazy constant ``name`` in ``namespace``, probing it if needed."""
    if name in namespace:
        return namespace[name]
    return namespace["__getattr__"](name)


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


def _probe_dense(**kwargs):
    # Named and zero-initialised, so a probe at import neither advances Keras' automatic
    # layer names ("dense_1") nor draws from Python's global random state (unseeded
    # initializers take their seed from it): importing the package changes neither.
    return keras.layers.Dense(
        2,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        name="keras_vitmsn_probe_dense",
        **kwargs,
    )


# -- 6. every layer of a model ----------------------------------------------------------


def _probe_flatten_layers():
    if PUBLIC_ONLY:
        return False
    try:
        outer = keras.Sequential([_probe_dense()], name="keras_vitmsn_probe_model")
        return [type(layer) for layer in outer._flatten_layers(include_self=False)] == [
            keras.layers.Dense
        ]
    except Exception:
        return False


FLATTEN_LAYERS_IS_PRIVATE = _probe_flatten_layers()


def all_layers(layer, include_self=True, private=None):
    """Every layer inside ``layer`` once, parents before their sublayers.

    Args:
        layer: a ``keras.layers.Layer`` (a model, too).
        include_self: whether ``layer`` itself comes first.
        private: use Keras' ``_flatten_layers`` (default: when probed to work);
            False for the public walk over attributes.

    Example:
    >>> model = keras.Sequential([keras.layers.Dense(2), keras.layers.Dense(1)])
    >>> [type(x).__name__ for x in all_layers(model, include_self=False, private=False)]
    ['Dense', 'Dense']
    """
    if FLATTEN_LAYERS_IS_PRIVATE if private is None else private:
        return layer._flatten_layers(include_self=include_self)
    found, seen = [], set()

    def visit(value):
        if isinstance(value, keras.layers.Layer):
            if id(value) not in seen:
                seen.add(id(value))
                found.append(value)
                for attribute in vars(value).values():
                    visit(attribute)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    visit(layer)
    return found if include_self else found[1:]


# -- 7. a sublayer's own dtype policy in place of a shared DTypePolicyMap --------------


def _probe_dtype_policy_storage():
    if PUBLIC_ONLY:
        return False
    try:
        policy_map = keras.dtype_policies.DTypePolicyMap(default_policy="float32")
        layer = _probe_dense(dtype=policy_map)
        if layer._dtype_policy is not policy_map:
            return False
        own = keras.dtype_policies.get("bfloat16")
        layer._dtype_policy = own
        return layer.dtype_policy is own and layer.compute_dtype == "bfloat16"
    except Exception:
        return False


DTYPE_POLICY_IS_PRIVATE = _probe_dtype_policy_storage()


def replace_dtype_policy(layer, policy, private=None):
    """Give ``layer`` the policy ``policy`` in place of the map it shares.

    Raises:
        RuntimeError: where this Keras keeps its policy elsewhere (see item 7 above).
    """
    if not (DTYPE_POLICY_IS_PRIVATE if private is None else private):
        raise RuntimeError(
            f"Rebuilding a quantised ViT-MSN model needs Keras internals that Keras "
            f"{keras.__version__} does not have (a layer's _dtype_policy). Load the float "
            "model and call quantize() on it instead, or use the Keras version in "
            "keras-vitmsn's requirements."
        )
    layer._dtype_policy = policy


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
        _WEIGHT_DECAY_PROPERTY = _in_fresh_thread(_probe_weight_decay_property)
    return _WEIGHT_DECAY_PROPERTY


def _in_fresh_thread(probe):
    """``probe()`` run in a new thread, outside the caller's thread-local scopes: an
    optimizer built inside a ``tf.distribute`` strategy's scope must not run the
    probe's optimizer step in that strategy's cross-replica context (where Keras'
    step cannot run: it merges across replicas it is not in)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(probe()), daemon=True)
    thread.start()
    thread.join()
    return bool(result and result[0])


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


class VariableIndex:
    """``index(variable)``: the position of ``variable`` in the list an optimizer was
    built on, for the variable as ``update_step`` receives it on this backend.

    Args:
        optimizer: the ``keras.optimizers.Optimizer`` being built.
        variables: the ``var_list`` given to its ``build``.
        private: use Keras' ``_get_variable_index`` (default: when it was probed to
            work); False for the identity index.
        native_variables: ``variable -> objects``: what the backend's optimizer may
            hand ``update_step`` in place of a Keras variable
            (``keras_vitmsn.backend.native_variables``), indexed with it.
    """

    def __init__(self, optimizer, variables, private=None, native_variables=None):
        self._optimizer = optimizer
        #: The variables, in order (a plain object's list: Keras tracks none of it).
        self.variables = list(variables)
        self._private = (
            probed(globals(), "VARIABLE_INDEX_IS_PRIVATE") if private is None else bool(private)
        )
        self._by_id = {}
        for i, variable in enumerate(variables):
            self._by_id[id(variable)] = i
            if native_variables is not None and isinstance(variable, keras.Variable):
                for native in native_variables(variable):
                    self._by_id[id(native)] = i

    def __call__(self, variable):
        if self._private:
            return self._optimizer._get_variable_index(variable)
        try:
            return self._by_id[id(variable)]
        except KeyError:
            raise RuntimeError(
                f"The optimizer was not built on {getattr(variable, 'name', variable)!r} "
                f"(or, on Keras {keras.__version__} without the internals "
                "keras_vitmsn.backend.keras_internals relies on, it is a tf.distribute replica)."
            ) from None


# -- 8. one update call per step ------------------------------------------------------
#
# Keras' optimizer base class calls ``update_step`` once per variable, from its private
# ``_backend_update_step(grads, trainable_variables, learning_rate)``; Keras' own torch
# optimizers override that method with multi-tensor kernels. ``route_batched_update``
# gives a custom optimizer the same chance: its ``batched_update(grads, variables,
# learning_rate)`` sees the whole step first and returns False to leave it to the
# per-variable loop. Probe: a subclass's override is what ``apply`` calls, with those
# arguments. Fallback: nothing is installed and ``update_step`` runs per variable
# (the same arithmetic, slower on torch).


def _probe_backend_update_step():
    if PUBLIC_ONLY:
        return False
    seen = []

    class _Probe(keras.optimizers.Optimizer):
        def update_step(self, gradient, variable, learning_rate):
            self.assign_sub(variable, learning_rate * gradient)

        def _backend_update_step(self, grads, trainable_variables, learning_rate):
            seen.append((len(grads), list(trainable_variables)))
            super()._backend_update_step(grads, trainable_variables, learning_rate)

    try:
        variable = keras.Variable([1.0], dtype="float32")
        _Probe(learning_rate=0.5).apply([keras.ops.ones((1,))], [variable])
        moved = abs(float(keras.ops.convert_to_numpy(variable)[0]) - 0.5) < 1e-6
        return moved and len(seen) == 1 and seen[0][0] == 1 and seen[0][1][0] is variable
    except Exception:  # renamed or changed: keep the per-variable loop
        return False


# Both probe by running an optimizer step: on first use (the module's __getattr__).


def route_batched_update(cls):
    """Class decorator: ``cls.batched_update(grads, variables, learning_rate)`` runs
    each step's update first (Keras variables, as ``apply`` was given them) and
    returns whether it did; on False, or where the probe failed, Keras calls
    ``update_step`` per variable."""

    # Installed unconditionally and checked per call, so that decorating a class
    # runs no probe: where Keras no longer calls the private method, this override
    # is never reached; where the probe failed, it defers to Keras' own loop.
    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        batched = probed(globals(), "BACKEND_UPDATE_STEP_IS_PRIVATE") and self.batched_update(
            grads, trainable_variables, learning_rate
        )
        if not batched:
            super(cls, self)._backend_update_step(grads, trainable_variables, learning_rate)

    cls._backend_update_step = _backend_update_step
    return cls


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


# -- 10. an int8 Dense's forward through the backend's int8 GEMM -----------------------


def _int8_call(layer, inputs, int8_matmul):
    """Keras' ``Dense._int8_call`` (Keras 3.x, Apache 2.0) with ``int8_matmul`` (see
    :func:`keras_vitmsn.backend.portable.int8_matmul`) for the forward of its custom
    gradient; the gradient (through the dequantised kernel), LoRA, bias and activation
    are Keras' own."""
    ops = keras.ops
    compute_dtype = layer.compute_dtype
    quantizer = layer.inputs_quantizer

    @ops.custom_gradient
    def matmul_with_inputs_gradient(inputs, kernel, kernel_scale):
        def grad_fn(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            float_kernel = ops.divide(ops.cast(kernel, dtype=compute_dtype), kernel_scale)
            return (ops.matmul(upstream, ops.transpose(float_kernel)), None, None)

        return int8_matmul(inputs, kernel, kernel_scale, quantizer, compute_dtype), grad_fn

    x = matmul_with_inputs_gradient(
        inputs, ops.convert_to_tensor(layer._kernel), ops.convert_to_tensor(layer.kernel_scale)
    )
    if layer.lora_enabled:
        lora_x = ops.matmul(inputs, layer.lora_kernel_a)
        lora_x = ops.matmul(lora_x, layer.lora_kernel_b)
        x = ops.add(x, (layer.lora_alpha / layer.lora_rank) * lora_x)
        x = ops.cast(x, compute_dtype)
    if layer.bias is not None:
        x = ops.add(x, layer.bias)
    if layer.activation is not None:
        x = layer.activation(x)
    return x


def _probe_int8_call():
    if PUBLIC_ONLY:
        return False
    try:
        from keras_vitmsn.backend import portable

        parameters = list(inspect.signature(keras.layers.Dense._int8_call).parameters)
        if parameters != ["self", "inputs", "training"]:
            return False
        layer = _probe_dense(activation="relu")
        layer.build((None, 3))
        layer.kernel.assign(np.asarray([[0.5, -1.0], [0.25, 2.0], [-0.75, 1.5]], "float32"))
        layer.bias.assign(np.asarray([0.125, -0.5], "float32"))
        with one_garbage_collection():
            layer.quantize("int8")
        if layer.quantization_mode != "int8" or not isinstance(
            layer.inputs_quantizer, keras.quantizers.AbsMaxQuantizer
        ):
            return False
        x = keras.ops.convert_to_tensor([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1]])
        expected = keras.ops.convert_to_numpy(layer._int8_call(x))
        ours = keras.ops.convert_to_numpy(_int8_call(layer, x, portable.int8_matmul))
        return bool(np.array_equal(expected, ours)) and bool(np.any(expected))
    except Exception:  # attributes renamed, signature or math changed: Keras' own call
        return False


def dense_int8_call(layer, inputs, keras_call, int8_matmul):
    """An int8 ``Dense`` layer's output for ``inputs``: Keras' ``_int8_call`` with
    ``int8_matmul`` (:func:`keras_vitmsn.backend.int8_matmul`) computing its GEMM, or
    ``keras_call()`` (Keras' own ``_int8_call`` bound to the call's arguments) where
    the probe finds Keras' int8 Dense changed.

    Example:
    >>> from keras_vitmsn import backend
    >>> layer = keras.layers.Dense(2, kernel_initializer="ones")
    >>> layer.build((None, 3))
    >>> layer.quantize("int8")
    >>> x = keras.ops.ones((1, 3))
    >>> y = dense_int8_call(layer, x, lambda: layer._int8_call(x), backend.int8_matmul)
    >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(y)[0]]
    [3.0, 3.0]
    """
    if not probed(globals(), "INT8_CALL_IS_PRIVATE"):
        return keras_call()
    return _int8_call(layer, inputs, int8_matmul)


def probe_int8_call():
    """Run :func:`dense_int8_call`'s probe now, if it has not run (it builds, quantises
    and calls a layer, in a thread of its own): an int8 layer runs it when it is built
    or quantised, so that no call, and no trace of one, pays for it."""
    return probed(globals(), "INT8_CALL_IS_PRIVATE")


# FAST_INIT, VARIABLE_INDEX_IS_PRIVATE, BACKEND_UPDATE_STEP_IS_PRIVATE and
# INT8_CALL_IS_PRIVATE compute (they build a variable, run an optimizer step or a
# layer), so they are probed on first use.
__getattr__ = module_getattr(
    globals(),
    {
        "FAST_INIT": lambda: _probe_fast_init(_GLOBAL_STATE),
        "VARIABLE_INDEX_IS_PRIVATE": _probe_variable_index,
        "BACKEND_UPDATE_STEP_IS_PRIVATE": _probe_backend_update_step,
        # Its own thread: outside a StatelessScope (where the probe layer's assigns
        # would not land), a tf.function or JAX trace, or a distribution scope.
        "INT8_CALL_IS_PRIVATE": lambda: _in_fresh_thread(_probe_int8_call),
    },
)
