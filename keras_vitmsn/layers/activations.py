"""The activation names a transformers ViT-MSN config may carry, as Keras functions."""

import functools

import keras

from keras_vitmsn import backend


def exact_gelu(x):
    """``x * Phi(x)`` with the normal CDF written with ``erf``, as transformers does,
    rounded once in half precision (``keras_vitmsn.backend.exact_gelu``: torch's fused
    kernel, elsewhere the formula in float32). Not ``jax.nn.gelu`` / ``tf.nn.gelu``:
    their ``erfc`` has no ONNX operator and costs XLA:CPU 2.8x the time of ``erf``.

    Example:
    >>> round(float(exact_gelu(keras.ops.convert_to_tensor(1.0))), 6)
    0.841345
    """
    return backend.exact_gelu(x)


# transformers' "gelu" is the exact erf form; "gelu_new" and "gelu_pytorch_tanh" are
# the tanh approximation. Keras' own "gelu" string means the *approximate* form on
# some versions, so never pass the name through to keras.activations.get.
_ACTIVATIONS = {
    "gelu": exact_gelu,
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
