"""The Dense layer of every ViT-MSN projection: ``keras.layers.Dense`` with a fused bias."""

import keras

from keras_vitmsn import backend


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNDense(keras.layers.Dense):
    """``keras.layers.Dense`` whose float forward adds the bias inside the GEMM.

    Everything else is Keras' own Dense: its weights and their names, ``get_config``,
    LoRA (the fused path reads the ``kernel`` property, which includes the LoRA
    update), and ``quantize``: a quantised layer runs Keras' ``quantized_call``, not
    this ``call``. Only an un-quantised layer with a bias and no activation takes
    :func:`keras_vitmsn.backend.matmul_add` (one ``addmm`` on torch; see there).

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
        return super().quantize(mode, type_check=False, **kwargs)
