"""Shared fixtures: transformers reference models with random weights, and their Keras twins.

The reference checkpoints go through ``save_pretrained`` and are read back from the
safetensors file, so the key names are those of the hub, not of transformers'
in-memory modules (which 5.x renamed).
"""

import os

import keras
import numpy as np
import pytest

import keras_vitmsn as kv
from keras_vitmsn.conversion.transformers_weights import (
    OPTIONAL_KEYS,
    assign_weights,
    backbone_kwargs_from_hf_config,
    backbone_weight_map,
    classifier_weight_map,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

BACKEND = keras.backend.backend()

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


def randomize_(model, seed=0):
    """Give every parameter (CLS, position table and mask token included) random values.

    The default init leaves the CLS token, position table and mask token at zero, which
    would hide a wrongly mapped or wrongly interpolated table.
    """
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
    config = transformers.ViTMSNConfig(**config_kwargs)
    model = getattr(transformers, cls_name)(config, **model_kwargs)
    model.set_attn_implementation("eager")
    randomize_(model, seed)
    model.eval()
    model.save_pretrained(tmp_path)
    state = safetensors_numpy.load_file(os.path.join(tmp_path, "model.safetensors"))
    return model, state, config.to_dict()


def strip_vit_prefix(state):
    return {k[len("vit.") :] if k.startswith("vit.") else k: v for k, v in state.items()}


def keras_backbone_from(state, config_dict, **overrides):
    kwargs = backbone_kwargs_from_hf_config(config_dict)
    kwargs.update(overrides)
    backbone = kv.ViTMSNBackbone(**kwargs)
    state = {k: v for k, v in strip_vit_prefix(state).items() if not k.startswith("classifier.")}
    assign_weights(backbone_weight_map(backbone), state, optional_keys=OPTIONAL_KEYS)
    return backbone


def keras_classifier_from(state, config_dict):
    backbone = keras_backbone_from(state, config_dict)
    clf = kv.ViTMSNClassifier(backbone, num_classes=len(config_dict["id2label"]))
    mapping = classifier_weight_map(clf, backbone_prefix="")
    assign_weights(mapping, strip_vit_prefix(state))
    return clf


def keras_gradients(model, inputs, loss_fn):
    """``{variable.path: gradient}`` of ``loss_fn(model(inputs))`` for every trainable variable.

    Uses each backend's own autodiff (jax.grad over ``stateless_call``, torch autograd,
    ``tf.GradientTape``): the same machinery ``fit`` differentiates with.
    """
    variables = model.trainable_variables
    if BACKEND == "jax":
        import jax

        frozen = [v.value for v in model.non_trainable_variables]

        def loss(values):
            outputs, _ = model.stateless_call(values, frozen, inputs, training=True)
            return loss_fn(outputs)

        grads = jax.grad(loss)([v.value for v in variables])
    elif BACKEND == "torch":
        for v in variables:
            v.value.grad = None
        loss_fn(model(inputs, training=True)).backward()
        grads = [v.value.grad for v in variables]
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(model(inputs, training=True))
        grads = tape.gradient(loss, variables)
    return {v.path: to_numpy(g) for v, g in zip(variables, grads)}


def hf_gradients(model, tmp_path, loss_fn, pixels):
    """Checkpoint-keyed (hub-named) gradients of ``loss_fn(model(pixels))``.

    transformers 5.x renamed the modules in memory, so parameter names are not hub
    keys; writing the gradients in place of the weights through ``save_pretrained``
    applies transformers' own renaming.
    """
    model.zero_grad(set_to_none=True)
    loss_fn(model(torch.from_numpy(pixels))).backward()
    with torch.no_grad():
        saved = {name: p.detach().clone() for name, p in model.named_parameters()}
        for p in model.parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
        model.save_pretrained(tmp_path)
        for name, p in model.named_parameters():
            p.copy_(saved[name])
    return safetensors_numpy.load_file(os.path.join(tmp_path, "model.safetensors"))


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


def max_abs_diff(a, b):
    return float(np.max(np.abs(to_numpy(a) - np.asarray(b, dtype=np.float32))))


def nchw_to_nhwc(x):
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_report_header(config):
    return f"KERAS_BACKEND={BACKEND}, keras {keras.__version__}"
