"""Multi-head self-attention with transformers' ViT-MSN weight layout."""

import math

import keras
from keras import ops

from keras_vitmsn import backend
from keras_vitmsn.layers.core import ViTMSNDense
from keras_vitmsn.layers.core import kernel_initializer


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNAttention(keras.layers.Layer):
    """Self-attention with one fused query/key/value projection and an output projection.

    Both projections are ``keras.layers.Dense`` sublayers (:class:`ViTMSNDense`, which
    only fuses the bias add), so ``quantize`` ("int8", "float8", ...) and LoRA reach
    them through Keras' own code:
    ``qkv`` (kernel ``(hidden_dim, 3 * hidden_dim)``, query then key then value
    columns, as transformers' three ``attention.attention.{query,key,value}``
    matrices concatenated) and ``output_dense``. One GEMM for the three projections
    runs faster than three small ones; per-output-channel quantisation scales are the
    same as for three separate layers.

    Two numerically equivalent paths:
    - :func:`keras_vitmsn.backend.dot_product_attention` (fused / flash kernels where
      the backend has them) when neither attention maps nor a head mask are asked
      for and no attention dropout is active, unless the backend attends head-major;
    - an explicit path otherwise, head-major throughout: scaled scores, softmax in
      float32, dropout, head mask. Where
      :func:`keras_vitmsn.backend.head_major_attention` holds (JAX) it always runs,
      with q, k and v projected straight into ``(batch, heads, tokens, head_dim)`` by
      one einsum over the qkv kernel, without the other layout's transposing copies.

    Args:
        hidden_dim: int, model width (a multiple of ``num_heads``).
        num_heads: int.
        qkv_bias: bool, biases on the query/key/value projections.
        attention_dropout: float, dropout on the attention probabilities.
        dropout_rate: float, dropout on the output projection.

    Call arguments:
        x: ``(batch, tokens, hidden_dim)``.
        head_mask: optional ``(num_heads,)`` tensor multiplying each head's
            attention probabilities (1 keeps, 0 removes).
        output_attentions: bool, also return the ``(batch, heads, tokens, tokens)``
            probabilities.
        training: bool.

    Returns:
        ``(output, attention_probs_or_None)``.

    Example:
    >>> layer = ViTMSNAttention(hidden_dim=32, num_heads=4)
    >>> out, probs = layer(keras.ops.zeros((2, 5, 32)), output_attentions=True)
    >>> tuple(out.shape), tuple(probs.shape)
    ((2, 5, 32), (2, 4, 5, 5))
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        qkv_bias=True,
        attention_dropout=0.0,
        dropout_rate=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim ({hidden_dim}) must be a multiple of num_heads ({num_heads})."
            )
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(num_heads)
        self.head_dim = self.hidden_dim // self.num_heads
        self.qkv_bias = bool(qkv_bias)
        self.attention_dropout = float(attention_dropout)
        self.dropout_rate = float(dropout_rate)

        def dense(name, units, use_bias):
            return ViTMSNDense(
                units,
                use_bias=use_bias,
                kernel_initializer=kernel_initializer(),
                dtype=self.dtype_policy,
                name=name,
            )

        self.qkv = dense("qkv", 3 * self.hidden_dim, self.qkv_bias)
        self.output_dense = dense("output_dense", self.hidden_dim, True)
        self.attention_probs_dropout = keras.layers.Dropout(
            self.attention_dropout, dtype=self.dtype_policy, name="attention_probs_dropout"
        )
        self.output_dropout = keras.layers.Dropout(
            self.dropout_rate, dtype=self.dtype_policy, name="output_dropout"
        )

    def build(self, input_shape=None):
        self.qkv.build((None, None, self.hidden_dim))
        self.output_dense.build((None, None, self.hidden_dim))
        self.built = True

    def _qkv_by_token(self, x):
        """The qkv Dense's output as ``(batch, tokens, 3, heads, head_dim)``."""
        return ops.reshape(self.qkv(x), (-1, x.shape[1], 3, self.num_heads, self.head_dim))

    def _project_qkv(self, x):
        """q, k, v, each ``(batch, tokens, heads, head_dim)``."""
        qkv = self._qkv_by_token(x)
        # unstack, not three slices: torch's backward of a slice zero-fills a full
        # qkv-sized buffer per slice, unstack's backward is one stack.
        return ops.unstack(qkv, num=3, axis=2)

    def _project_heads(self, x):
        """q, k, v, each ``(batch, heads, tokens, head_dim)``."""
        if not backend.head_major_attention() or self.qkv.quantization_mode is not None:
            # A quantised qkv runs Keras' quantized_call on its own kernel format.
            qkv = ops.transpose(self._qkv_by_token(x), (2, 0, 3, 1, 4))
            return ops.unstack(qkv, num=3, axis=0)
        # The Dense's own kernel (with its LoRA term) and bias, contracted so that the
        # output comes out head-major (see backend.head_major_attention).
        shape = (self.hidden_dim, 3, self.num_heads, self.head_dim)
        kernel = ops.reshape(self.qkv.kernel, shape)
        if self.qkv.bias is None:
            qkv = backend.einsum("btc,cshe->sbhte", x, kernel)
        else:
            # The bias is added before the one rounding to the compute dtype, as the
            # fused Dense adds it (backend.matmul_add).
            qkv = backend.einsum("btc,cshe->sbhte", x, kernel, dtype="float32")
            bias = ops.reshape(self.qkv.bias, (3, 1, self.num_heads, 1, self.head_dim))
            qkv = ops.cast(qkv + ops.cast(bias, "float32"), x.dtype)
        return ops.unstack(qkv, num=3, axis=0)

    def _attend(self, q, k, v, head_mask, training):
        """Scaled scores, softmax in float32, dropout, head mask; head-major in and out."""
        scale = self.head_dim**-0.5
        # A power of two (head_dim 4, 16, 64, 256, ...) scales q exactly in any float
        # dtype, touching tokens x head_dim values instead of tokens x tokens (XLA:CPU
        # materialises the scale broadcast to the scores' shape).
        scale_q = math.frexp(scale)[0] == 0.5
        if scale_q:
            q = q * ops.cast(scale, q.dtype)
        scores = backend.einsum("bhqd,bhkd->bhqk", q, k, dtype="float32")
        if not scale_q:
            scores = scores * scale
        probs = ops.softmax(scores, axis=-1)
        probs = ops.cast(probs, q.dtype)
        if training and self.attention_dropout > 0.0:
            probs = self.attention_probs_dropout(probs, training=training)
        if head_mask is not None:
            mask = ops.cast(head_mask, probs.dtype)
            probs = probs * ops.reshape(mask, (1, self.num_heads, 1, 1))
        return backend.einsum("bhqk,bhkd->bhqd", probs, v), probs

    def call(self, x, head_mask=None, output_attentions=False, training=None):
        tokens = x.shape[1]
        dropout_active = bool(training) and self.attention_dropout > 0.0
        probs = None
        explicit = output_attentions or head_mask is not None or dropout_active
        if explicit or backend.head_major_attention():
            q, k, v = self._project_heads(x)
            context, probs = self._attend(q, k, v, head_mask, training)
            context = ops.transpose(context, (0, 2, 1, 3))
        else:
            context = backend.dot_product_attention(*self._project_qkv(x))
        context = ops.reshape(context, (-1, tokens, self.hidden_dim))
        out = self.output_dense(context)
        if training and self.dropout_rate > 0.0:
            # Keras' Dropout returns its input otherwise; not calling it saves a Layer
            # call's Python overhead, which eager torch pays on every block.
            out = self.output_dropout(out, training=training)
        return out, (probs if output_attentions else None)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            qkv_bias=self.qkv_bias,
            attention_dropout=self.attention_dropout,
            dropout_rate=self.dropout_rate,
        )
        return config
