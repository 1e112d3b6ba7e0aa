"""Token embeddings: patches, optional mask token, CLS token, position table, dropout."""

import keras
from keras import ops

from keras_vitmsn.layers.core import spatial_shape
from keras_vitmsn.layers.patch_embedding import ViTMSNPatchEmbedding
from keras_vitmsn.layers.resampling import resample_position_embeddings


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNEmbeddings(keras.layers.Layer):
    """Patch tokens with CLS prepended and position embeddings added.

    The position table is stored at the pretrained grid
    ``(image_size[0] // patch_size, image_size[1] // patch_size)``; other grids are
    served by bicubic resampling
    (:func:`keras_vitmsn.layers.resampling.resample_position_embeddings`)
    when the caller asks for it. Both the CLS token and the table start at zero, as in
    transformers' ViT-MSN.

    Args:
        hidden_dim: int, token width.
        patch_size: int, patch side.
        image_size: ``(height, width)`` the position table is trained for.
        num_channels: int, input channels.
        dropout_rate: float, dropout on the summed embeddings.
        use_mask_token: bool, create a learned mask token for ``bool_masked_pos``.
        data_format: "channels_last" or "channels_first" layout of the images.

    Call arguments:
        images: ``(batch, height, width, channels)`` (or channels first).
        bool_masked_pos: optional ``(batch, num_patches)`` bool; where True the patch
            embedding is replaced by the mask token (needs ``use_mask_token=True``).
        interpolate_pos_encoding: bool, resample the table to the input's grid.
        training: bool, dropout switch.
        patch_keep_indices: optional ``(batch, num_keep)`` int indices (0-based, patches
            only, each in ``[0, num_patches)``) of the patch tokens to keep; the others
            are dropped after the position embeddings are added, the CLS token is
            always kept (MSN's masking). Output: ``(batch, 1 + num_keep, hidden_dim)``.

    Example:
    >>> layer = ViTMSNEmbeddings(hidden_dim=32, patch_size=4, image_size=(16, 16))
    >>> tuple(layer(keras.ops.zeros((2, 16, 16, 3))).shape)
    (2, 17, 32)
    """

    def __init__(
        self,
        hidden_dim,
        patch_size,
        image_size,
        num_channels=3,
        dropout_rate=0.0,
        use_mask_token=False,
        data_format="channels_last",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.patch_size = int(patch_size)
        self.image_size = tuple(int(s) for s in image_size)
        self.num_channels = int(num_channels)
        self.dropout_rate = float(dropout_rate)
        self.use_mask_token = bool(use_mask_token)
        self.data_format = data_format
        self.grid_size = (
            self.image_size[0] // self.patch_size,
            self.image_size[1] // self.patch_size,
        )
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.patch_embedding = ViTMSNPatchEmbedding(
            self.hidden_dim,
            self.patch_size,
            self.num_channels,
            data_format=self.data_format,
            dtype=self.dtype_policy,
            name="patch_embedding",
        )
        self.dropout = keras.layers.Dropout(
            self.dropout_rate, dtype=self.dtype_policy, name="dropout"
        )

    def build(self, input_shape=None):
        self.patch_embedding.build(None)
        self.cls_token = self.add_weight(
            shape=(1, 1, self.hidden_dim), initializer="zeros", name="cls_token"
        )
        self.mask_token = None
        if self.use_mask_token:
            self.mask_token = self.add_weight(
                shape=(1, 1, self.hidden_dim), initializer="zeros", name="mask_token"
            )
        self.position_embeddings = self.add_weight(
            shape=(1, 1 + self.num_patches, self.hidden_dim),
            initializer="zeros",
            name="position_embeddings",
        )
        self.built = True

    def call(
        self,
        images,
        bool_masked_pos=None,
        interpolate_pos_encoding=False,
        training=None,
        patch_keep_indices=None,
    ):
        spatial = spatial_shape(images.shape, self.data_format)
        grid = (spatial[0] // self.patch_size, spatial[1] // self.patch_size)
        tokens = self.patch_embedding(images)
        if bool_masked_pos is not None:
            self._check_mask(bool_masked_pos, grid)
            mask = ops.expand_dims(ops.cast(bool_masked_pos, tokens.dtype), -1)
            mask_token = ops.cast(self.mask_token, tokens.dtype)
            # Same arithmetic as transformers, so a float mask behaves identically.
            tokens = tokens * (1.0 - mask) + mask_token * mask
        batch = ops.shape(tokens)[0]
        cls = ops.broadcast_to(ops.cast(self.cls_token, tokens.dtype), (batch, 1, self.hidden_dim))
        tokens = ops.concatenate([cls, tokens], axis=1)
        tokens = tokens + ops.cast(
            self.position_table(grid if interpolate_pos_encoding else None), tokens.dtype
        )
        if patch_keep_indices is not None:
            tokens = self._keep_patches(tokens, patch_keep_indices, grid)
        # Dropping before dropout: the same distribution as MSN's order (dropout is
        # elementwise), and no dropout work on tokens that are thrown away.
        if training and self.dropout_rate > 0.0:
            tokens = self.dropout(tokens, training=training)
        return tokens

    def compute_output_shape(self, input_shape):
        """``(batch, 1 + num_patches, hidden_dim)`` for images of ``input_shape``."""
        height, width = spatial_shape(input_shape, self.data_format)
        if height is None or width is None:
            return (input_shape[0], None, self.hidden_dim)
        return (
            input_shape[0],
            1 + (height // self.patch_size) * (width // self.patch_size),
            self.hidden_dim,
        )

    def compute_output_spec(
        self,
        images,
        bool_masked_pos=None,
        interpolate_pos_encoding=False,
        training=None,
        patch_keep_indices=None,
    ):
        shape = self.compute_output_shape(tuple(images.shape))
        if patch_keep_indices is not None:
            num_keep = tuple(patch_keep_indices.shape)[-1]
            shape = (shape[0], None if num_keep is None else 1 + num_keep, self.hidden_dim)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def _keep_patches(self, tokens, patch_keep_indices, grid):
        """Gather CLS + the kept patch tokens (MSN: drop after position embeddings)."""
        indices = ops.convert_to_tensor(patch_keep_indices)
        num_patches = grid[0] * grid[1]
        shape = tuple(indices.shape)
        if len(shape) != 2 or (shape[1] is not None and not 1 <= shape[1] <= num_patches):
            raise ValueError(
                "`patch_keep_indices` must have shape (batch, num_keep) with "
                f"1 <= num_keep <= {num_patches} (the {grid[0]}x{grid[1]} patch grid); "
                f"got shape {shape}."
            )
        if not keras.backend.standardize_dtype(indices.dtype).startswith(("int", "uint")):
            raise ValueError(f"`patch_keep_indices` must be integers; got dtype {indices.dtype}.")
        batch = tokens.shape[0]
        if batch is not None and shape[0] is not None and shape[0] != batch:
            raise ValueError(
                f"`patch_keep_indices` has {shape[0]} rows but the batch has {batch} images."
            )
        indices = ops.cast(indices, "int32")
        # Token 0 is CLS: always keep it, and shift patch indices past it.
        cls_index = ops.zeros_like(indices[:, :1])
        token_indices = ops.concatenate([cls_index, indices + 1], axis=1)
        # Broadcast the indices over the channel axis explicitly (every backend).
        token_indices = ops.broadcast_to(
            ops.expand_dims(token_indices, -1),
            (ops.shape(token_indices)[0], ops.shape(token_indices)[1], self.hidden_dim),
        )
        return ops.take_along_axis(tokens, token_indices, axis=1)

    def position_table(self, grid=None):
        """The ``(1, 1 + N, hidden_dim)`` table, resampled to ``grid`` if given."""
        table = self.position_embeddings
        if grid is None or tuple(grid) == self.grid_size:
            return table
        return resample_position_embeddings(ops.convert_to_tensor(table), self.grid_size, grid)

    def _check_mask(self, bool_masked_pos, grid):
        if not self.use_mask_token:
            raise ValueError(
                "`bool_masked_pos` was given but this model has no mask token. "
                "Build the backbone with `use_mask_token=True` to use it."
            )
        expected = grid[0] * grid[1]
        shape = tuple(bool_masked_pos.shape)
        if len(shape) != 2 or shape[1] not in (None, expected):
            raise ValueError(
                f"`bool_masked_pos` must have shape (batch, num_patches) = "
                f"(batch, {expected}) for a {grid[0]}x{grid[1]} patch grid; "
                f"got shape {shape}."
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            patch_size=self.patch_size,
            image_size=self.image_size,
            num_channels=self.num_channels,
            dropout_rate=self.dropout_rate,
            use_mask_token=self.use_mask_token,
            data_format=self.data_format,
        )
        return config
