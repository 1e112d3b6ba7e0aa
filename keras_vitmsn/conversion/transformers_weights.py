"""Map transformers ViT-MSN state dicts (NumPy arrays) onto Keras ViT-MSN models.

Works on plain ``{key: np.ndarray}`` dicts, so nothing here imports torch. Every
assignment is accounted for: a key the model needs but the checkpoint lacks, a key
the checkpoint has but nothing uses, or a shape that does not fit raises an error
naming them all.
Query, key and value each map to a third of the fused ``qkv`` Dense's variables (a
:class:`FusedSlice`); the three are concatenated before the variable is assigned.
"""

import re

import numpy as np

from keras_vitmsn.layers.core import SUPPORTED_ACTIVATIONS

# Keys a checkpoint may omit: the released checkpoints carry no mask token.
OPTIONAL_KEYS = ("embeddings.mask_token",)


def _linear(w):  # torch Linear (out, in) -> Keras Dense (in, out)
    return np.transpose(w)


def _conv(w):  # torch Conv2d (out, in, kh, kw) -> Dense over flat patches (kh*kw*in, out)
    return np.transpose(w, (2, 3, 1, 0)).reshape(-1, w.shape[0])


def _same(w):
    return w


class FusedSlice:
    """Part ``index`` of ``parts`` equal slices of ``variable`` along its last axis:
    a weight-map target for one checkpoint tensor inside a fused variable.

    Example:
    >>> import keras
    >>> v = keras.Variable(np.zeros((4, 6), "float32"))
    >>> FusedSlice(v, 1, 3).shape
    (4, 2)
    >>> FusedSlice(v, 1, 3).take(np.arange(6.0)[None])
    array([[2., 3.]])
    """

    def __init__(self, variable, index, parts):
        if not 0 <= index < parts or variable.shape[-1] % parts:
            raise ValueError(
                f"Cannot take slice {index} of {parts} along the last axis of a "
                f"variable of shape {tuple(variable.shape)}."
            )
        self.variable = variable
        self.index = int(index)
        self.parts = int(parts)

    @property
    def shape(self):
        shape = tuple(self.variable.shape)
        return shape[:-1] + (shape[-1] // self.parts,)

    def take(self, full):
        """This slice of ``full``, an array shaped like the variable."""
        width = full.shape[-1] // self.parts
        return full[..., self.index * width : (self.index + 1) * width]


def backbone_weight_map(backbone, prefix=""):
    """``{checkpoint_key: (target, transform)}`` for every backbone variable; a target
    is a Keras variable or a :class:`FusedSlice` of one (query, key, value)."""
    emb = backbone.embeddings
    mapping = {
        "embeddings.cls_token": (emb.cls_token, _same),
        "embeddings.position_embeddings": (emb.position_embeddings, _same),
        "embeddings.patch_embeddings.projection.weight": (
            emb.patch_embedding.projection.kernel,
            _conv,
        ),
        "embeddings.patch_embeddings.projection.bias": (
            emb.patch_embedding.projection.bias,
            _same,
        ),
        "layernorm.weight": (backbone.layernorm.gamma, _same),
        "layernorm.bias": (backbone.layernorm.beta, _same),
    }
    if emb.mask_token is not None:
        mapping["embeddings.mask_token"] = (emb.mask_token, _same)
    for i, block in enumerate(backbone.encoder_layers):
        layer = f"encoder.layer.{i}"
        attn = block.attention
        for index, name in enumerate(("query", "key", "value")):
            key = f"{layer}.attention.attention.{name}"
            mapping[f"{key}.weight"] = (FusedSlice(attn.qkv.kernel, index, 3), _linear)
            if attn.qkv.bias is not None:
                mapping[f"{key}.bias"] = (FusedSlice(attn.qkv.bias, index, 3), _same)
        dense_layers = {
            f"{layer}.attention.output.dense": attn.output_dense,
            f"{layer}.intermediate.dense": block.intermediate_dense,
            f"{layer}.output.dense": block.output_dense,
        }
        for key, dense in dense_layers.items():
            mapping[f"{key}.weight"] = (dense.kernel, _linear)
            if dense.bias is not None:
                mapping[f"{key}.bias"] = (dense.bias, _same)
        for name, norm in (
            ("layernorm_before", block.layernorm_before),
            ("layernorm_after", block.layernorm_after),
        ):
            mapping[f"{layer}.{name}.weight"] = (norm.gamma, _same)
            mapping[f"{layer}.{name}.bias"] = (norm.beta, _same)
    return {prefix + key: value for key, value in mapping.items()}


def convert_weights(weight_map, state_dict, optional_keys=(), ignore_keys=(), key_names=None):
    """Check ``state_dict`` against ``weight_map`` strictly and convert it to Keras layout.

    Args:
        weight_map: ``{key: (target, transform)}`` from :func:`backbone_weight_map`;
            a target is a variable or a :class:`FusedSlice` of one.
        state_dict: ``{key: np.ndarray}``.
        optional_keys: keys that may be absent from ``state_dict`` (the variable keeps
            its initial value).
        ignore_keys: keys of ``state_dict`` that are known and deliberately unused.
        key_names: optional ``{key: name_in_the_file}`` for keys that were renamed
            before assignment, so errors quote the checkpoint's own names.

    Returns:
        ``{key: (variable, value)}`` with each value transformed, contiguous and cast
        to its variable's dtype (a new array, never a view of ``state_dict``). The
        slices of a fused variable are concatenated into one entry, keyed by their
        keys joined with ``"+"``.

    Raises:
        ValueError: listing missing keys, unexpected keys and shape mismatches.
    """
    key_names = key_names or {}

    def shown(key):
        original = key_names.get(key, key)
        return key if original == key else f"{original} (as {key})"

    missing = [k for k in weight_map if k not in state_dict and k not in optional_keys]
    unexpected = [shown(k) for k in state_dict if k not in weight_map and k not in ignore_keys]
    mismatched = []
    converted = {}
    for key, (variable, transform) in weight_map.items():
        if key not in state_dict:
            continue
        value = transform(np.asarray(state_dict[key]))
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(
                f"{shown(key)}: checkpoint {tuple(np.shape(state_dict[key]))} "
                f"(as Keras {tuple(value.shape)}) vs model {tuple(variable.shape)}"
            )
        converted[key] = value
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        raise ValueError("The checkpoint does not fit the model: " + " | ".join(parts) + ".")
    out, fused = {}, {}
    for key, value in converted.items():
        target = weight_map[key][0]
        if isinstance(target, FusedSlice):
            fused.setdefault(id(target.variable), []).append((target, key, value))
            continue
        # A copy in any case: the source may be a read-only memory map of the file.
        out[key] = (target, np.array(value, dtype=target.dtype, order="C"))
    for parts in fused.values():
        parts.sort(key=lambda part: part[0].index)
        variable = parts[0][0].variable
        if [part[0].index for part in parts] != list(range(parts[0][0].parts)):
            # Only when a slice is optional and absent: never the case for q/k/v.
            raise ValueError(
                f"The checkpoint fills only part of the fused variable {variable.path}: "
                f"{', '.join(part[1] for part in parts)}."
            )
        value = np.concatenate([part[2] for part in parts], axis=-1)
        key = "+".join(part[1] for part in parts)
        out[key] = (variable, np.array(value, dtype=variable.dtype, order="C"))
    return out


def assign_weights(weight_map, state_dict, optional_keys=(), ignore_keys=(), key_names=None):
    """Assign ``state_dict`` to the variables of ``weight_map``, strictly.

    Nothing is assigned unless everything fits (see :func:`convert_weights` for the
    arguments).

    Raises:
        ValueError: listing missing keys, unexpected keys and shape mismatches.
    """
    converted = convert_weights(weight_map, state_dict, optional_keys, ignore_keys, key_names)
    for variable, value in converted.values():
        variable.assign(value)


def check_model_type(config, where="The transformers config"):
    """Raise unless ``config`` (a ``config.json`` dict) describes a ViT-MSN model."""
    model_type = config.get("model_type")
    if model_type != "vit_msn":
        raise ValueError(
            f"{where} has model_type {model_type!r}: keras-vitmsn reads transformers "
            "checkpoints of ViT-MSN only (model_type 'vit_msn', e.g. facebook/vit-msn-small)."
        )


def backbone_kwargs_from_hf_config(config):
    """Translate a transformers ``ViTMSNConfig`` dict into ViTMSNBackbone kwargs."""
    check_model_type(config)
    hidden_act = config.get("hidden_act", "gelu")
    if hidden_act not in SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"Unsupported hidden_act {hidden_act!r} in the checkpoint config. "
            f"Supported: {', '.join(SUPPORTED_ACTIVATIONS)}."
        )
    image_size = config.get("image_size", 224)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    return {
        "image_shape": (int(image_size[0]), int(image_size[1]), int(config.get("num_channels", 3))),
        "patch_size": int(config.get("patch_size", 16)),
        "hidden_dim": int(config.get("hidden_size", 768)),
        "num_layers": int(config.get("num_hidden_layers", 12)),
        "num_heads": int(config.get("num_attention_heads", 12)),
        "intermediate_dim": int(config.get("intermediate_size", 3072)),
        "layer_norm_epsilon": float(config.get("layer_norm_eps", 1e-6)),
        "dropout_rate": float(config.get("hidden_dropout_prob", 0.0)),
        "attention_dropout": float(config.get("attention_probs_dropout_prob", 0.0)),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "hidden_act": hidden_act,
    }


# transformers 5.x renamed the in-memory modules (``model.state_dict()`` and
# ``torch.save`` of it use these names) while ``save_pretrained`` still writes the
# hub's names; both are accepted.
_RENAMED_BLOCK_KEYS = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_IN_MEMORY_BLOCK = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")


def canonicalize_transformers_state(state_dict):
    """Split a transformers ViT-MSN state dict into backbone and head, with hub names.

    Accepted key spellings:
    - the hub's (``save_pretrained``): ``embeddings.*``, ``encoder.layer.N.*``,
      ``layernorm.*``;
    - the same behind a ``vit.`` prefix (ViTMSNForImageClassification checkpoints),
      including transformers 5.x's mix of ``vit.embeddings.*`` with an unprefixed
      ``encoder.layer.N.*``;
    - transformers 5.x in-memory names (``layers.N.attention.q_proj.weight``,
      ``layers.N.mlp.fc1.bias`` ...), with or without ``vit.``.

    Args:
        state_dict: ``{key: np.ndarray}``.

    Returns:
        ``(backbone_state, head_state, key_names)``: the backbone with hub keys (no
        prefix), ``{"classifier.weight", "classifier.bias"}`` if present, and
        ``{new_key: original_key}`` for every renamed key (for error messages).
        Unknown keys are kept in ``backbone_state`` under their name, so strict
        assignment reports them.

    Raises:
        ValueError: two checkpoint keys map to the same weight.
    """
    backbone, head, key_names = {}, {}, {}
    for original, value in state_dict.items():
        key = original[len("vit.") :] if original.startswith("vit.") else original
        match = _IN_MEMORY_BLOCK.match(key)
        if match and match.group(2) in _RENAMED_BLOCK_KEYS:
            renamed = _RENAMED_BLOCK_KEYS[match.group(2)]
            key = f"encoder.layer.{match.group(1)}.{renamed}.{match.group(3)}"
        elif match and match.group(2) in ("layernorm_before", "layernorm_after"):
            key = f"encoder.layer.{match.group(1)}.{match.group(2)}.{match.group(3)}"
        target = head if key.startswith("classifier.") else backbone
        if key in target:
            raise ValueError(
                f"The checkpoint holds two copies of {key!r}: {key_names.get(key, key)!r} "
                f"and {original!r}. Keep one of them."
            )
        target[key] = value
        if key != original:
            key_names[key] = original
    return backbone, head, key_names


def classifier_head_weight_map(classifier):
    """``{checkpoint_key: (variable, transform)}`` for the Dense head alone."""
    return {
        "classifier.weight": (classifier.classifier.kernel, _linear),
        "classifier.bias": (classifier.classifier.bias, _same),
    }


def num_classes_from_hf_config(config, head_state):
    """Classes of a checkpoint's ``classifier.*`` head, checked against ``id2label``."""
    if not head_state:
        return None
    if "classifier.weight" not in head_state:
        raise ValueError(
            "The checkpoint has a classification head without 'classifier.weight' "
            f"(found {', '.join(sorted(head_state))})."
        )
    rows = int(np.shape(head_state["classifier.weight"])[0])
    id2label = config.get("id2label")
    if id2label and len(id2label) != rows:
        raise ValueError(
            f"The checkpoint's classifier has {rows} outputs but its config's id2label "
            f"lists {len(id2label)} labels."
        )
    return rows


def class_names_from_hf_config(config, num_classes):
    """The names of a checkpoint's ``num_classes`` outputs from its ``id2label``, or
    None: without a head, without ``id2label``, or when it holds transformers'
    placeholders (``LABEL_0``, ``LABEL_1``, ..., written when no labels were given).

    Example:
    >>> class_names_from_hf_config({"id2label": {"1": "dog", "0": "cat"}}, 2)
    ['cat', 'dog']
    >>> class_names_from_hf_config({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}, 2) is None
    True
    """
    id2label = config.get("id2label")
    if num_classes is None or not id2label:
        return None
    try:
        by_index = {int(key): value for key, value in id2label.items()}
    except (AttributeError, TypeError, ValueError):
        by_index = None
    if (
        by_index is None
        or sorted(by_index) != list(range(num_classes))
        or not all(isinstance(v, str) for v in by_index.values())
    ):
        raise ValueError(
            f"The config's id2label must map each output index 0..{num_classes - 1} to a "
            f"class name (a string); got {id2label!r:.200}."
        )
    names = [by_index[i] for i in range(num_classes)]
    if names == [f"LABEL_{i}" for i in range(num_classes)]:
        return None
    return names
