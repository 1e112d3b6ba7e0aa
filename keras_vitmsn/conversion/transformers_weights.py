"""Map transformers ViT-MSN state dicts (NumPy arrays) onto Keras ViT-MSN models.

Works on plain ``{key: np.ndarray}`` dicts, so nothing here imports torch. Every
assignment is accounted for: a key the model needs but the checkpoint lacks, a key
the checkpoint has but nothing uses, or a shape that does not fit raises an error
naming them all.
"""

import numpy as np

from keras_vitmsn.layers.activations import SUPPORTED_ACTIVATIONS

# Keys a checkpoint may omit: the released checkpoints carry no mask token.
OPTIONAL_KEYS = ("embeddings.mask_token",)


def _linear(w):  # torch Linear (out, in) -> Keras Dense (in, out)
    return np.transpose(w)


def _conv(w):  # torch Conv2d (out, in, kh, kw) -> Keras Conv2D (kh, kw, in, out)
    return np.transpose(w, (2, 3, 1, 0))


def _same(w):
    return w


def backbone_weight_map(backbone, prefix=""):
    """``{checkpoint_key: (keras_variable, transform)}`` for every backbone variable."""
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
        dense_layers = {
            f"{layer}.attention.attention.query": attn.query,
            f"{layer}.attention.attention.key": attn.key,
            f"{layer}.attention.attention.value": attn.value,
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


def classifier_weight_map(classifier, backbone_prefix="vit."):
    mapping = backbone_weight_map(classifier.backbone, prefix=backbone_prefix)
    mapping["classifier.weight"] = (classifier.classifier.kernel, _linear)
    mapping["classifier.bias"] = (classifier.classifier.bias, _same)
    return mapping


def assign_weights(weight_map, state_dict, optional_keys=(), ignore_keys=()):
    """Assign ``state_dict`` to the variables of ``weight_map``, strictly.

    Args:
        weight_map: ``{key: (variable, transform)}`` from :func:`backbone_weight_map`.
        state_dict: ``{key: np.ndarray}``.
        optional_keys: keys that may be absent from ``state_dict`` (the variable keeps
            its initial value).
        ignore_keys: keys of ``state_dict`` that are known and deliberately unused.

    Raises:
        ValueError: listing missing keys, unexpected keys and shape mismatches.
    """
    missing = [k for k in weight_map if k not in state_dict and k not in optional_keys]
    unexpected = [k for k in state_dict if k not in weight_map and k not in ignore_keys]
    mismatched = []
    converted = {}
    for key, (variable, transform) in weight_map.items():
        if key not in state_dict:
            continue
        value = transform(np.asarray(state_dict[key]))
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(
                f"{key}: checkpoint {tuple(np.shape(state_dict[key]))} "
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
        raise ValueError(
            "The checkpoint does not fit the model: " + " | ".join(parts) + "."
        )
    for key, value in converted.items():
        variable = weight_map[key][0]
        variable.assign(value.astype(variable.dtype))


def backbone_kwargs_from_hf_config(config):
    """Translate a transformers ``ViTMSNConfig`` dict into ViTMSNBackbone kwargs."""
    model_type = config.get("model_type")
    if model_type != "vit_msn":
        raise ValueError(
            f"Expected a transformers config with model_type 'vit_msn', got {model_type!r}."
        )
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
