"""The LayerNorm of every ViT-MSN block: ``keras.layers.LayerNormalization`` with a
fused half-precision path."""

import keras

from keras_vitmsn import backend


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
