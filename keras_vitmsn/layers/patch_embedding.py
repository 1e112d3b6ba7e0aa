"""Patch embedding: a Conv2D with kernel = stride = patch size, flattened to tokens."""

import keras
from keras import ops

from keras_vitmsn.layers.initializers import kernel_initializer


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNPatchEmbedding(keras.layers.Layer):
    """Cut channels-last images into patches and project each to ``hidden_dim``.

    Args:
        hidden_dim: int, width of each patch token.
        patch_size: int, side of the square patches (kernel and stride).
        num_channels: int, input channels.

    Call arguments:
        images: ``(batch, height, width, num_channels)``; height and width must be
            multiples of ``patch_size`` (the backbone checks this).

    Returns:
        ``(batch, (height // patch_size) * (width // patch_size), hidden_dim)``.

    Example:
    >>> layer = ViTMSNPatchEmbedding(hidden_dim=32, patch_size=4)
    >>> layer(keras.ops.zeros((2, 16, 16, 3))).shape
    (2, 16, 32)
    """

    def __init__(self, hidden_dim, patch_size, num_channels=3, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.patch_size = int(patch_size)
        self.num_channels = int(num_channels)
        # The backbone hands us channels-last images whatever the user's layout,
        # so the kernel layout (p, p, C, D) never depends on a global setting.
        self.projection = keras.layers.Conv2D(
            self.hidden_dim,
            kernel_size=self.patch_size,
            strides=self.patch_size,
            padding="valid",
            data_format="channels_last",
            kernel_initializer=kernel_initializer(),
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, input_shape=None):
        self.projection.build((None, None, None, self.num_channels))
        self.built = True

    def call(self, images):
        patches = self.projection(images)
        grid_h, grid_w = patches.shape[1], patches.shape[2]
        return ops.reshape(patches, (-1, grid_h * grid_w, self.hidden_dim))

    def compute_output_shape(self, input_shape):
        grid_h = input_shape[1] // self.patch_size if input_shape[1] else None
        grid_w = input_shape[2] // self.patch_size if input_shape[2] else None
        tokens = grid_h * grid_w if grid_h and grid_w else None
        return (input_shape[0], tokens, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
        )
        return config
