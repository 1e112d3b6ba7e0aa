"""The activation names a transformers ViT-MSN config may carry, as Keras functions."""

import functools

import keras

# transformers' "gelu" is the exact erf form; "gelu_new" and "gelu_pytorch_tanh" are
# the tanh approximation. Keras' own "gelu" string means the *approximate* form on
# some versions, so never pass the name through to keras.activations.get.
_ACTIVATIONS = {
    "gelu": functools.partial(keras.activations.gelu, approximate=False),
    "gelu_new": functools.partial(keras.activations.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(keras.activations.gelu, approximate=True),
    "relu": keras.activations.relu,
    "selu": keras.activations.selu,
    "silu": keras.activations.silu,
    "swish": keras.activations.silu,
}

SUPPORTED_ACTIVATIONS = tuple(sorted(_ACTIVATIONS))


def get_activation(name):
    """Return the activation function for a transformers ``hidden_act`` name."""
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"Unsupported hidden_act {name!r}. Supported: {', '.join(SUPPORTED_ACTIVATIONS)}."
        )
    return _ACTIVATIONS[name]
