"""Every use of Keras internals (``keras.src``, private attributes), in one place.

Each is checked when this package is imported, or, for the probes that run a
computation, when first needed (:mod:`keras_internals.lazy`); where Keras has changed, a slower or
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

6. Walking a model's layers: Keras' ``_flatten_layers`` (every layer once, parents
   first). Fallback: :func:`all_layers` walks the layers held in attributes,
   lists and dicts itself (tested to find the same layers).
7. A quantised config's ``DTypePolicyMap``, passed from a model to its sublayers, is
   replaced in each of them by that layer's own policy once it has built: Keras'
   Dense and EinsumDense read ``self.dtype_policy.quantization_mode`` when saving,
   which a map answers with its float default (int8 kernels would then be saved
   without their scales). The public ``dtype_policy`` setter writes into the map
   instead, so :func:`replace_dtype_policy` sets the private ``_dtype_policy``
   (probed). Nothing public does the same, so where the probe fails, rebuilding a
   quantised model refuses with an error rather than saving broken files later.
8. One optimizer update call per step: Keras' base class runs ``update_step`` per
   variable from its private ``_backend_update_step``, which Keras' own torch
   optimizers override with multi-tensor kernels. :func:`route_batched_update` lets
   ``ScheduledAdamW`` do the same (probed). Fallback: the per-variable
   ``update_step`` (the same arithmetic; tests compare the two).
9. Whether a ``keras.StatelessScope`` is active (Keras' private
   ``in_stateless_scope``): the torch fast paths update variables in place, which
   inside such a scope would write into the caller's arrays instead of recording new
   values. Fallback: :func:`in_stateless_scope` answers True, so the fast paths step
   aside and every update goes through ``assign``.

Other private names are not used: export builds its sample inputs itself.
"""

from keras_vitmsn.backend.keras_internals import fast_init as _fast_init
from keras_vitmsn.backend.keras_internals.fast_init import (
    build_with_values,
    capture_weights,
    pending_variables,
    read_without_initialising,
)
from keras_vitmsn.backend.keras_internals.layers import (
    DATA_LAYER_IS_PRIVATE,
    DTYPE_POLICY_IS_PRIVATE,
    FLATTEN_LAYERS_IS_PRIVATE,
    DataLayerBase,
    all_layers,
    find_data_layer_base,
    one_garbage_collection,
    replace_dtype_policy,
)
from keras_vitmsn.backend.keras_internals import optimizer as _optimizer
from keras_vitmsn.backend.keras_internals.optimizer import (
    VariableIndex,
    optimizer_reads_weight_decay_property,
    route_batched_update,
)
from keras_vitmsn.backend.keras_internals.public_only import PUBLIC_ONLY
from keras_vitmsn.backend.keras_internals.scopes import STATELESS_SCOPE_IS_PRIVATE
from keras_vitmsn.backend.keras_internals.scopes import in_stateless_scope


def __getattr__(name):
    # The probes that compute run on first use (keras_internals.lazy).
    if name == "FAST_INIT":
        return _fast_init.FAST_INIT
    if name in ("VARIABLE_INDEX_IS_PRIVATE", "BACKEND_UPDATE_STEP_IS_PRIVATE"):
        return getattr(_optimizer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
