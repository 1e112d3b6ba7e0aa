"""The activation names a transformers ViT-MSN config may carry, as Keras functions."""

import contextlib
import contextvars
import functools
import math

import keras
from keras import ops


_ERFC_ON_JAX = contextvars.ContextVar("keras_vitmsn_erfc_gelu_on_jax", default=False)


@contextlib.contextmanager
def erfc_gelu_on_jax():
    """Inside it, :func:`exact_gelu` on JAX traces ``jax.nn.gelu`` (``erfc``) instead of
    the ``erf`` formula. JAX serialises ``erf`` as a StableHLO composite that the
    TensorFlow runtime reloading a jax2tf SavedModel may be too old to read
    (TensorFlow 2.21 with JAX 0.10 cannot); ``erfc`` it reads. Same function, within
    float32 rounding.

    Example:
    >>> with erfc_gelu_on_jax():
    ...     round(float(exact_gelu(keras.ops.convert_to_tensor(1.0))), 6)
    0.841345
    """
    token = _ERFC_ON_JAX.set(True)
    try:
        yield
    finally:
        _ERFC_ON_JAX.reset(token)


def exact_gelu(x):
    """``x * Phi(x)`` with the normal CDF written with ``erf``, as transformers does.

    torch's fused kernel computes exactly this; elsewhere it is written out in
    float32. TensorFlow's ``tf.nn.gelu`` and JAX's ``jax.nn.gelu`` compute it with
    ``erfc``: ONNX has no operator for that (tf2onnx cannot convert the model), and
    XLA:CPU evaluates ``erfc`` with branches and an ``exp`` per element, 2.8x the
    time of ``erf`` (1576 x 1536 float32 on a Zen 5 EPYC: 1.35 -> 0.49 ms; the
    GELUs were 17% of vit_msn_small's bfloat16 inference step). In half precision
    ``jax.nn.gelu`` also rounds after every op; this rounds once. (Exports to a
    TensorFlow SavedModel from JAX trace ``erfc``: see :func:`erfc_gelu_on_jax`.)

    Example:
    >>> round(float(exact_gelu(keras.ops.convert_to_tensor(1.0))), 6)
    0.841345
    """
    backend = keras.backend.backend()
    if backend == "torch" or (backend == "jax" and _ERFC_ON_JAX.get()):
        return keras.activations.gelu(x, approximate=False)
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    # In at least float32: bf16 / fp16 products would round at each step (torch's
    # kernel computes internally in float32 too).
    wide = ops.cast(x, keras.backend.result_type(dtype, "float32"))
    y = 0.5 * wide * (1.0 + ops.erf(wide * (1.0 / math.sqrt(2.0))))
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
