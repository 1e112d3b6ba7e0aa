"""transformers reference models with random weights, and their Keras twins.

The reference checkpoints go through ``save_pretrained`` and are read back from the
safetensors file, so the key names are those of the hub, not of transformers'
in-memory modules (which 5.x renamed).

torch, transformers and safetensors are imported when a helper is first used: a test
that needs them skips on its own (with the reason) where they are not installed,
instead of the whole suite being skipped.
"""

import os

import pytest

import keras_vitmsn as kv
from keras_vitmsn.conversion.transformers_weights import OPTIONAL_KEYS
from keras_vitmsn.conversion.transformers_weights import assign_weights
from keras_vitmsn.conversion.transformers_weights import backbone_kwargs_from_hf_config
from keras_vitmsn.conversion.transformers_weights import backbone_weight_map
from keras_vitmsn.conversion.transformers_weights import classifier_head_weight_map

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)
SMALL = dict(  # facebook/vit-msn-small
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    intermediate_size=1536,
    image_size=224,
    patch_size=16,
)


def _require(name):
    return pytest.importorskip(name, reason=f"the transformers reference needs {name}")


def torch_module():
    return _require("torch")


def transformers_module():
    _require("torch")
    return _require("transformers")


def _load_safetensors(path):
    return _require("safetensors.numpy").load_file(path)


def randomize_(model, seed=0):
    """Give every parameter (CLS, position table and mask token included) random values.

    The default init leaves the CLS token, position table and mask token at zero, which
    would hide a wrongly mapped or wrongly interpolated table.
    """
    torch = torch_module()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "layernorm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.05 * noise)
    return model


def make_hf_model(tmp_path, config_kwargs, cls_name="ViTMSNModel", seed=0, **model_kwargs):
    """A randomised transformers model, saved to and reloaded from ``tmp_path``.

    Returns ``(torch_model, numpy_state_dict, config_dict)``.
    """
    transformers = transformers_module()
    config = transformers.ViTMSNConfig(**config_kwargs)
    model = getattr(transformers, cls_name)(config, **model_kwargs)
    model.set_attn_implementation("eager")
    randomize_(model, seed)
    model.eval()
    model.save_pretrained(tmp_path)
    state = _load_safetensors(os.path.join(tmp_path, "model.safetensors"))
    return model, state, config.to_dict()


def strip_vit_prefix(state):
    return {k[len("vit.") :] if k.startswith("vit.") else k: v for k, v in state.items()}


def keras_backbone_from(state, config_dict, **overrides):
    kwargs = backbone_kwargs_from_hf_config(config_dict)
    kwargs.update(overrides)
    # (height, width, channels), read in that order in either data_format.
    backbone = kv.ViTMSNBackbone.from_config(kwargs)
    state = {k: v for k, v in strip_vit_prefix(state).items() if not k.startswith("classifier.")}
    assign_weights(backbone_weight_map(backbone), state, optional_keys=OPTIONAL_KEYS)
    return backbone


def keras_classifier_from(state, config_dict):
    backbone = keras_backbone_from(state, config_dict)
    clf = kv.ViTMSNClassifier(backbone, num_classes=len(config_dict["id2label"]))
    mapping = dict(backbone_weight_map(backbone), **classifier_head_weight_map(clf))
    assign_weights(mapping, strip_vit_prefix(state))
    return clf


def hf_gradients(model, tmp_path, loss_fn, pixels):
    """Checkpoint-keyed (hub-named) gradients of ``loss_fn(model(pixels))``.

    transformers 5.x renamed the modules in memory, so parameter names are not hub
    keys; writing the gradients in place of the weights through ``save_pretrained``
    applies transformers' own renaming.
    """
    torch = torch_module()
    model.zero_grad(set_to_none=True)
    loss_fn(model(torch.from_numpy(pixels))).backward()
    with torch.no_grad():
        saved = {name: p.detach().clone() for name, p in model.named_parameters()}
        for p in model.parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
        model.save_pretrained(tmp_path)
        for name, p in model.named_parameters():
            p.copy_(saved[name])
    return _load_safetensors(os.path.join(tmp_path, "model.safetensors"))
