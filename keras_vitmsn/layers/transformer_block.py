"""Pre-norm transformer encoder block (transformers' ViTMSNLayer)."""

import keras

from keras_vitmsn import backend
from keras_vitmsn.layers.attention import ViTMSNAttention
from keras_vitmsn.layers.core import ViTMSNDense
from keras_vitmsn.layers.core import ViTMSNLayerNorm
from keras_vitmsn.layers.core import get_activation
from keras_vitmsn.layers.core import kernel_initializer


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNTransformerBlock(keras.layers.Layer):
    """``x + Attn(LN(x))`` then ``x + MLP(LN(x))``.

    Args:
        hidden_dim: int, token width.
        num_heads: int, attention heads.
        intermediate_dim: int, MLP width.
        layer_norm_epsilon: float (ViT-MSN uses 1e-6, not Keras' 1e-3 default).
        dropout_rate: float, dropout after the attention output and the MLP output.
        attention_dropout: float, dropout on attention probabilities.
        qkv_bias: bool.
        hidden_act: str, a transformers activation name ("gelu" is exact erf GELU).

    Call arguments:
        x: ``(batch, tokens, hidden_dim)``.
        head_mask: optional ``(num_heads,)`` multiplier of the attention probabilities.
        output_attentions: bool.
        training: bool.

    Returns:
        ``(output, attention_probs_or_None)``.

    Example:
    >>> block = ViTMSNTransformerBlock(32, num_heads=4, intermediate_dim=64)
    >>> out, _ = block(keras.ops.zeros((2, 5, 32)))
    >>> tuple(out.shape)
    (2, 5, 32)
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        intermediate_dim,
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        attention_dropout=0.0,
        qkv_bias=True,
        hidden_act="gelu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout = float(attention_dropout)
        self.qkv_bias = bool(qkv_bias)
        self.hidden_act = hidden_act
        self.activation = get_activation(hidden_act)

        self.layernorm_before = ViTMSNLayerNorm(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="layernorm_before"
        )
        self.attention = ViTMSNAttention(
            self.hidden_dim,
            self.num_heads,
            qkv_bias=self.qkv_bias,
            attention_dropout=self.attention_dropout,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.layernorm_after = ViTMSNLayerNorm(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="layernorm_after"
        )
        self.intermediate_dense = ViTMSNDense(
            self.intermediate_dim,
            kernel_initializer=kernel_initializer(),
            dtype=self.dtype_policy,
            name="intermediate_dense",
        )
        self.output_dense = ViTMSNDense(
            self.hidden_dim,
            kernel_initializer=kernel_initializer(),
            dtype=self.dtype_policy,
            name="output_dense",
        )
        self.output_dropout = keras.layers.Dropout(
            self.dropout_rate, dtype=self.dtype_policy, name="output_dropout"
        )

    def build(self, input_shape=None):
        token_shape = (None, None, self.hidden_dim)
        self.layernorm_before.build(token_shape)
        self.attention.build(token_shape)
        self.layernorm_after.build(token_shape)
        self.intermediate_dense.build(token_shape)
        self.output_dense.build((None, None, self.intermediate_dim))
        self.built = True

    def call(self, x, head_mask=None, output_attentions=False, training=None):
        attended, probs = self.attention(
            self.layernorm_before(x),
            head_mask=head_mask,
            output_attentions=output_attentions,
            training=training,
        )
        x = x + attended
        normed = self.layernorm_after(x)
        if backend.mlp_on_token_rows():
            # Dense -> GELU on rows, with no reshape between them (see the backend).
            rows = keras.ops.reshape(normed, (-1, self.hidden_dim))
            hidden = backend.mlp_activation(
                self.intermediate_dense(rows), self.activation, self.hidden_act, training
            )
            mlp = self.output_dense(hidden)
            mlp = keras.ops.reshape(mlp, keras.ops.shape(x))
        else:
            mlp = self.output_dense(self.activation(self.intermediate_dense(normed)))
        if training and self.dropout_rate > 0.0:
            mlp = self.output_dropout(mlp, training=training)  # (see ViTMSNAttention.call)
        x = x + mlp
        # One barrier per block keeps XLA from recomputing the residual gradient of
        # every block above this one (see backend.gradient_fusion_barrier).
        return backend.gradient_fusion_barrier(x), probs

    def compute_output_shape(self, input_shape):
        """The shape of the block's token output (that of its input); with
        ``output_attentions`` the probabilities are ``(batch, heads, tokens, tokens)``
        (see :meth:`compute_output_spec`)."""
        return tuple(input_shape)

    def compute_output_spec(self, x, head_mask=None, output_attentions=False, training=None):
        batch, tokens = x.shape[0], x.shape[1]
        out = keras.KerasTensor(tuple(x.shape), dtype=self.compute_dtype)
        probs = None
        if output_attentions:
            probs = keras.KerasTensor(
                (batch, self.num_heads, tokens, tokens), dtype=self.compute_dtype
            )
        return out, probs

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            layer_norm_epsilon=self.layer_norm_epsilon,
            dropout_rate=self.dropout_rate,
            attention_dropout=self.attention_dropout,
            qkv_bias=self.qkv_bias,
            hidden_act=self.hidden_act,
        )
        return config
