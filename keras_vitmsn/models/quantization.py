"""``quantize`` for ViT-MSN models, and how a quantised model is saved and rebuilt.

Every projection of the network (patch embedding, fused query/key/value, attention
output, MLP, classifier head) is a ``keras.layers.Dense`` (ViTMSNDense, whose
float call only fuses the bias add) or ``EinsumDense``,
so ``quantize`` runs Keras' own code for those layers: int8 / int4 weights with
per-output-channel scales (and dynamically quantised int8 inputs), or float8 with
scale histories. An int8 layer's GEMM runs on the backend's int8 kernel
(:func:`keras_vitmsn.backend.int8_matmul`); where the backend has none that beats
float32, ``quantize("int8")`` warns with the measured ratio. Position embeddings,
CLS token and LayerNorms stay in float.

A quantised layer's dtype policy (e.g. ``int8_from_float32``) is what makes it build
its int8 variables, and our layers create their sublayers from the parent's policy.
So, as keras-hub does, ``get_config`` stores the model's ``dtype`` as a
``keras.dtype_policies.DTypePolicyMap`` from each quantised sublayer's path to its
policy (default: the model's float policy); ``from_config``, ``keras.saving.load_model``
and ``from_preset`` then rebuild those sublayers quantised before the weights load.
Unlike keras-hub, the stored paths are relative to the model (``classifier``,
``encoder_layer_0/attention/qkv``): a model rebuilt under another name (presets
do not keep the classifier's) still finds them. :func:`resolved_policy_map` makes them
absolute when the model builds, before any sublayer looks its policy up.
"""

import contextlib
import re
import warnings

import keras

from keras_vitmsn import backend
from keras_vitmsn.backend.keras_internals import all_layers
from keras_vitmsn.backend.keras_internals import one_garbage_collection
from keras_vitmsn.backend.keras_internals import replace_dtype_policy

DTypePolicyMap = keras.dtype_policies.DTypePolicyMap
SUPPORTED_MODES = ("int8", "int4", "float8")


def float_policy(policy):
    """The float policy behind ``policy`` (a DTypePolicyMap's default)."""
    if isinstance(policy, DTypePolicyMap):
        return policy.default_policy
    return policy


def is_quantizable(layer):
    """Whether ``layer`` implements Keras' ``quantize`` (Dense, EinsumDense, ...)."""
    return type(layer).quantize is not keras.layers.Layer.quantize


def dtype_config(model, exclude=()):
    """``model``'s serialised dtype: its policy, or a DTypePolicyMap recording the
    quantised sublayers (those of the models in ``exclude`` left out: they
    serialise their own).

    Example:
    >>> import keras_vitmsn as kv
    >>> backbone = kv.ViTMSNBackbone(image_shape=(16, 16, 3), patch_size=8,
    ...     hidden_dim=8, num_layers=1, num_heads=2, intermediate_dim=16)
    >>> backbone.quantize("int8")
    >>> config = backbone.get_config()
    >>> sorted(config["dtype"]["config"]["policy_map"])[:2]
    ['embeddings/patch_embedding/projection', 'encoder_layer_0/attention/output_dense']
    >>> renamed = kv.ViTMSNBackbone.from_config(dict(config, name="renamed"))
    >>> renamed.encoder_layers[0].attention.qkv.kernel.dtype
    'int8'
    """
    policy = model.dtype_policy
    excluded = {id(layer) for sub in exclude if sub is not None for layer in all_layers(sub)}
    policy_map = DTypePolicyMap(default_policy=float_policy(policy))
    prefix = f"{model.path}/"
    for layer in all_layers(model, include_self=False):
        if id(layer) in excluded or layer.quantization_mode is None:
            continue
        resolved = layer.dtype_policy
        if isinstance(resolved, DTypePolicyMap):
            resolved = resolved[layer.path]
        if not layer.path.startswith(prefix):
            raise ValueError(
                f"The quantised layer {layer.path} is not inside the model {model.path}; "
                "cannot record its dtype policy."
            )
        policy_map[layer.path[len(prefix) :]] = resolved
    if len(policy_map):
        return keras.dtype_policies.serialize(policy_map)
    return keras.dtype_policies.serialize(float_policy(policy))


@contextlib.contextmanager
def resolved_policy_map(model):
    """Wrap the body of ``model.build`` when its dtype may be a DTypePolicyMap (a
    quantised model's config, see :func:`dtype_config` for a round trip).

    On entry the map's relative keys get the model's path as prefix, so each
    sublayer finds its policy by its own path while it builds. On exit every layer
    holding the map gets its resolved policy instead: Keras' Dense and EinsumDense
    read ``self.dtype_policy.quantization_mode`` when saving and quantising, which
    a shared map would answer with its float default (int8 weights would then save
    without their scales).
    """
    policy = model.dtype_policy
    if not isinstance(policy, DTypePolicyMap) or not model.path:
        yield
        return
    prefix = f"{model.path}/"
    for key in list(policy.keys()):
        if not key.startswith(prefix):
            value = policy[key]
            del policy[key]
            policy[prefix + key] = value
    yield
    for layer in all_layers(model):
        if layer.dtype_policy is policy:
            replace_dtype_policy(layer, policy[layer.path] if layer.path else policy.default_policy)


class QuantizationMixin:
    """``quantize`` restricted to the layers Keras can quantise."""

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Quantise every projection of the model (see ``keras.Model.quantize``).

        Only layers that implement Keras' ``quantize`` are visited (so there is no
        warning for each LayerNorm); ``filters`` (a regex on layer names, a list of
        them, or a callable) narrows that further. Quantising a model twice raises
        Keras' "already quantized" error.

        Args:
            mode: "int8", "int4" or "float8" (or leave None and pass ``config``).
            config: a ``keras.quantizers.QuantizationConfig`` for custom quantisers.
            filters: optional layer filter, as in ``keras.Model.quantize``.

        Example:
        >>> import numpy as np
        >>> import keras_vitmsn as kv
        >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8,
        ...     hidden_dim=32, num_layers=1, num_heads=4, intermediate_dim=64)
        >>> backbone.quantize("int8")
        >>> backbone.encoder_layers[0].attention.qkv.kernel.dtype
        'int8'
        >>> tuple(backbone(np.zeros((1, 32, 32, 3), "float32"))["last_hidden_state"].shape)
        (1, 17, 32)
        """
        resolved = mode if mode is not None else getattr(config, "mode", None)
        if resolved not in SUPPORTED_MODES:
            raise ValueError(
                f"ViT-MSN models support quantization modes {', '.join(SUPPORTED_MODES)}; "
                f"got mode={resolved!r}. (GPTQ and AWQ need a calibration layer "
                "structure these models do not declare.)"
            )

        def selected(layer):
            return is_quantizable(layer) and _matches(layer, filters)

        accepted = filters is None or isinstance(filters, (str, list, tuple)) or callable(filters)
        if not accepted:
            raise ValueError(
                "`filters` must be a regex string, a list of them, or a callable; got "
                f"{type(filters).__name__}."
            )
        # Keras collects garbage after every replaced kernel; once is enough.
        with one_garbage_collection():
            super().quantize(mode, config=config, filters=selected, **kwargs)
        note = backend.int8_speed_note() if resolved == "int8" else None
        if note:
            warnings.warn(note, stacklevel=2)


def _matches(layer, filters):
    """``keras.Model.quantize``'s filter semantics: regexes searched in the name."""
    if filters is None:
        return True
    if isinstance(filters, str):
        return re.search(filters, layer.name) is not None
    if isinstance(filters, (list, tuple)):
        return any(re.search(pattern, layer.name) for pattern in filters)
    return bool(filters(layer))
