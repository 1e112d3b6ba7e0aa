"""The basic pieces every ViT-MSN layer shares, as Keras' own ``layers/core``: the
projection Dense and the LayerNorm (each Keras' layer with a backend fast path), the
activations a transformers config may name, the initialiser of a freshly built model
(transformers' ``ViTMSNPreTrainedModel``) and where height and width sit in a shape."""

import functools

import keras

from keras_vitmsn import backend
from keras_vitmsn.backend import keras_internals

INITIALIZER_RANGE = 0.02


def kernel_initializer():
    """The truncated normal transformers initialises every projection with."""
    return keras.initializers.TruncatedNormal(stddev=INITIALIZER_RANGE)


def spatial_shape(shape, data_format):
    """``(height, width)`` of an image or batch shape in ``data_format`` layout.

    Reads the last three dimensions, so a single image and a batch both work.

    Example:
    >>> spatial_shape((8, 224, 160, 3), "channels_last")
    (224, 160)
    >>> spatial_shape((8, 3, 224, 160), "channels_first")
    (224, 160)
    """
    if data_format == "channels_first":
        return tuple(shape[-2:])
    return tuple(shape[-3:-1])


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


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNDense(keras.layers.Dense):
    """``keras.layers.Dense`` whose float forward adds the bias inside the GEMM.

    Everything else is Keras' own Dense: its weights and their names, ``get_config``,
    LoRA (the fused path reads the ``kernel`` property, which includes the LoRA
    update), and ``quantize``: a quantised layer runs Keras' ``quantized_call``, not
    this ``call``. Only an un-quantised layer with a bias and no activation takes
    :func:`keras_vitmsn.backend.matmul_add` (one ``addmm`` on torch; see there), and
    an int8 layer's GEMM is :func:`keras_vitmsn.backend.int8_matmul` (the backend's
    int8 kernel; Keras' input quantiser, descaling and gradient).

    Example:
    >>> layer = ViTMSNDense(3, kernel_initializer="ones")
    >>> keras.ops.convert_to_numpy(layer(keras.ops.ones((1, 2)))).tolist()
    [[2.0, 2.0, 2.0]]
    """

    def call(self, inputs, training=None):
        if self.bias is None or self.activation not in (None, keras.activations.linear):
            return super().call(inputs, training=training)
        return backend.matmul_add(inputs, self.kernel, self.bias)

    def quantize(self, mode=None, type_check=True, **kwargs):
        # Keras refuses to quantise Dense subclasses, whose call might compute
        # something else. This call is Dense's own function, and a quantised layer
        # runs Keras' quantized_call instead of it.
        result = super().quantize(mode, type_check=False, **kwargs)
        if self.quantization_mode == "int8":
            keras_internals.probe_int8_call()
        return result

    def build(self, input_shape):
        super().build(input_shape)
        if self.quantization_mode == "int8":  # built from a quantised model's config
            keras_internals.probe_int8_call()

    def _int8_call(self, inputs, training=None):
        keras_call = functools.partial(super()._int8_call, inputs, training=training)
        return keras_internals.dense_int8_call(self, inputs, keras_call, backend.int8_matmul)


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNLayerNorm(keras.layers.LayerNormalization):
    """``keras.layers.LayerNormalization`` over the last axis, computed by
    :func:`keras_vitmsn.backend.layer_norm`.

    The weights (``gamma``, ``beta``), their names, ``get_config`` and the math are
    Keras' own: normalisation in at least float32, the result in the compute dtype.
    On torch the one kernel ``torch.nn.functional.layer_norm`` computes it from the
    half-precision input directly, instead of a float32 copy of it. A layer that
    normalises over other axes, or has no scale or offset, runs Keras' own call.

    Example:
    >>> layer = ViTMSNLayerNorm(epsilon=1e-6)
    >>> y = layer(keras.ops.convert_to_tensor([[1.0, 3.0]]))
    >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(y)[0]]
    [-1.0, 1.0]
    """

    def call(self, inputs):
        last = len(inputs.shape) - 1
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        if (
            [a % len(inputs.shape) for a in axes] != [last]
            or self.gamma is None
            or self.beta is None
            or self.rms_scaling
        ):
            return super().call(inputs)
        out = backend.layer_norm(inputs, self.gamma, self.beta, self.epsilon)
        return keras.ops.cast(out, self.compute_dtype)
