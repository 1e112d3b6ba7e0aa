"""Items 3, 4 and 8 of :mod:`keras_vitmsn.backend.keras_internals`: what ``ScheduledAdamW``
needs from Keras' optimizer base class."""

import keras

from keras_vitmsn.backend.keras_internals.lazy import module_getattr
from keras_vitmsn.backend.keras_internals.lazy import probed
from keras_vitmsn.backend.keras_internals.public_only import PUBLIC_ONLY

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


# Both probe by running an optimizer step, so they run on first use (keras_internals.lazy).
__getattr__ = module_getattr(
    globals(),
    {
        "VARIABLE_INDEX_IS_PRIVATE": _probe_variable_index,
        "BACKEND_UPDATE_STEP_IS_PRIVATE": _probe_backend_update_step,
    },
)


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
