"""Patch embedding: a Conv2D with kernel = stride = patch size, flattened to tokens.

Because the patches do not overlap, that convolution is exactly one matmul of the
flattened patches with the reshaped kernel. We apply it that way, as a
``keras.layers.Dense`` over ``(batch, tokens, patch * patch * channels)``: it reads
either image layout directly, so neither the user's layout nor a backend's preferred
conv layout costs a transpose of the whole image (the torch backend otherwise
transposes channels-last inputs to NCHW and back), the GEMM is the same size, and
``quantize`` handles it like any Dense. (Not an EinsumDense keeping the conv kernel's
4-D shape: TensorFlow's CPU einsum accumulates bfloat16 products in bfloat16, 8x
less accurate than its matmul.)
"""

import keras
from keras import ops

from keras_vitmsn.layers.core import ViTMSNDense
from keras_vitmsn.layers.core import kernel_initializer
from keras_vitmsn.layers.core import spatial_shape


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNPatchEmbedding(keras.layers.Layer):
    """Cut images into patches and project each to ``hidden_dim``.

    The weights are those of a ``Conv2D(hidden_dim, patch_size, strides=patch_size)``
    with its ``(patch, patch, channels, hidden_dim)`` kernel flattened to
    ``(patch * patch * channels, hidden_dim)`` (``projection.kernel``, a Dense), and
    so are the outputs, tokens in row-major patch order.

    Args:
        hidden_dim: int, width of each patch token.
        patch_size: int, side of the square patches (kernel and stride).
        num_channels: int, input channels.
        data_format: "channels_last" or "channels_first" layout of the images.

    Call arguments:
        images: ``(batch, height, width, num_channels)`` (or channels first); height
            and width must be multiples of ``patch_size`` (the backbone checks this).

    Returns:
        ``(batch, (height // patch_size) * (width // patch_size), hidden_dim)``.

    Example:
    >>> layer = ViTMSNPatchEmbedding(hidden_dim=32, patch_size=4)
    >>> tuple(layer(keras.ops.zeros((2, 16, 16, 3))).shape)
    (2, 16, 32)
    """

    def __init__(
        self, hidden_dim, patch_size, num_channels=3, data_format="channels_last", **kwargs
    ):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.patch_size = int(patch_size)
        self.num_channels = int(num_channels)
        self.data_format = data_format
        # Rows in Conv2D's (kh, kw, C) order, whatever the image layout.
        self.projection = ViTMSNDense(
            self.hidden_dim,
            kernel_initializer=kernel_initializer(),
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, input_shape=None):
        p = self.patch_size
        self.projection.build((None, None, p * p * self.num_channels))
        self.built = True

    def call(self, images):
        p, c = self.patch_size, self.num_channels
        if self.data_format == "channels_first":
            grid_h, grid_w = images.shape[2] // p, images.shape[3] // p
            patches = ops.reshape(images, (-1, c, grid_h, p, grid_w, p))
            patches = ops.transpose(patches, (0, 2, 4, 3, 5, 1))
        else:
            grid_h, grid_w = images.shape[1] // p, images.shape[2] // p
            patches = ops.reshape(images, (-1, grid_h, p, grid_w, p, c))
            patches = ops.transpose(patches, (0, 1, 3, 2, 4, 5))
        # (batch, rows, cols, kh, kw, C) flattens in the kernel's (kh, kw, C) order.
        patches = ops.reshape(patches, (-1, grid_h * grid_w, p * p * c))
        return self.projection(ops.cast(patches, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        spatial = spatial_shape(input_shape, self.data_format)
        if None in spatial:
            return (input_shape[0], None, self.hidden_dim)
        tokens = (spatial[0] // self.patch_size) * (spatial[1] // self.patch_size)
        return (input_shape[0], tokens, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            data_format=self.data_format,
        )
        return config
