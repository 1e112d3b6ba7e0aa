"""Every use of Keras internals (``keras.src``, private attributes), in one place.

Each is probed at import, or on first use for probes that compute (:mod:`.lazy`: on
JAX the first computation fixes the CPU client's settings); where Keras has changed, a
public path takes over. The fallbacks are tested (tests/test_keras_internals.py;
``KERAS_VITMSN_PUBLIC_KERAS_ONLY=1`` makes a whole process take every public path).

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
"""

from keras_vitmsn.backend.keras_internals import fast_init as _fast_init
from keras_vitmsn.backend.keras_internals import optimizer as _optimizer
from keras_vitmsn.backend.keras_internals.fast_init import build_with_values
from keras_vitmsn.backend.keras_internals.fast_init import capture_weights
from keras_vitmsn.backend.keras_internals.fast_init import pending_variables
from keras_vitmsn.backend.keras_internals.fast_init import read_without_initialising
from keras_vitmsn.backend.keras_internals.layers import DATA_LAYER_IS_PRIVATE
from keras_vitmsn.backend.keras_internals.layers import DTYPE_POLICY_IS_PRIVATE
from keras_vitmsn.backend.keras_internals.layers import FLATTEN_LAYERS_IS_PRIVATE
from keras_vitmsn.backend.keras_internals.layers import DataLayerBase
from keras_vitmsn.backend.keras_internals.layers import all_layers
from keras_vitmsn.backend.keras_internals.layers import find_data_layer_base
from keras_vitmsn.backend.keras_internals.layers import one_garbage_collection
from keras_vitmsn.backend.keras_internals.layers import replace_dtype_policy
from keras_vitmsn.backend.keras_internals.optimizer import VariableIndex
from keras_vitmsn.backend.keras_internals.optimizer import optimizer_reads_weight_decay_property
from keras_vitmsn.backend.keras_internals.optimizer import route_batched_update
from keras_vitmsn.backend.keras_internals.public_only import PUBLIC_ONLY
from keras_vitmsn.backend.keras_internals.scopes import STATELESS_SCOPE_IS_PRIVATE
from keras_vitmsn.backend.keras_internals.scopes import in_stateless_scope

__all__ = [
    "BACKEND_UPDATE_STEP_IS_PRIVATE",
    "DATA_LAYER_IS_PRIVATE",
    "DTYPE_POLICY_IS_PRIVATE",
    "FAST_INIT",
    "FLATTEN_LAYERS_IS_PRIVATE",
    "PUBLIC_ONLY",
    "STATELESS_SCOPE_IS_PRIVATE",
    "VARIABLE_INDEX_IS_PRIVATE",
    "DataLayerBase",
    "VariableIndex",
    "all_layers",
    "build_with_values",
    "capture_weights",
    "find_data_layer_base",
    "in_stateless_scope",
    "one_garbage_collection",
    "optimizer_reads_weight_decay_property",
    "pending_variables",
    "read_without_initialising",
    "replace_dtype_policy",
    "route_batched_update",
]


def __getattr__(name):
    # The probes that compute run on first use (keras_internals.lazy).
    if name == "FAST_INIT":
        return _fast_init.FAST_INIT
    if name in ("VARIABLE_INDEX_IS_PRIVATE", "BACKEND_UPDATE_STEP_IS_PRIVATE"):
        return getattr(_optimizer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
