"""Items 2, 5, 6 and 7 of :mod:`keras_vitmsn.backend.keras_internals`: layers, their
sublayers and their dtype policies."""

import contextlib
import gc

import keras

from keras_vitmsn.backend.keras_internals.public_only import PUBLIC_ONLY

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
