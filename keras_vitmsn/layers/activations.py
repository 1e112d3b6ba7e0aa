"""The activation names a transformers ViT-MSN config may carry, as Keras functions."""

import functools
import math

import keras
from keras import ops


def exact_gelu(x):
    """``x * Phi(x)`` with the normal CDF written with ``erf``, as transformers does.

    On TensorFlow, ``tf.nn.gelu`` computes it with ``erfc``, which ONNX has no
    operator for (tf2onnx cannot convert the model); the ``erf`` form is the same
    function and converts everywhere. The other backends' fused kernels already
    use ``erf``.

    Example:
    >>> round(float(exact_gelu(keras.ops.convert_to_tensor(1.0))), 6)
    0.841345
    """
    if keras.backend.backend() != "tensorflow":
        return keras.activations.gelu(x, approximate=False)
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    # In float32 whatever the input: bf16 / fp16 products would round at each step
    # (the fused kernels compute internally in float32 too).
    x32 = ops.cast(x, "float32")
    y = 0.5 * x32 * (1.0 + ops.erf(x32 * (1.0 / math.sqrt(2.0))))
    return ops.cast(y, dtype)


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
