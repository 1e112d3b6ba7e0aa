"""The ``keras.ops`` formulation of every operation in :mod:`keras_vitmsn.backend`.

Each backend module overrides some of these with a fast path that computes the same
values (up to float rounding); the tests check each override against its function
here, and a backend without an override runs this one.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_vitmsn.backend import jax_cpu_memory

# -- the model's math -----------------------------------------------------------------


def matmul_add(x, kernel, bias):
    """``x @ kernel + bias`` over the last axis of ``x`` (any leading shape).

    Example:
    >>> y = matmul_add(keras.ops.ones((2, 3, 4)), keras.ops.ones((4, 5)), keras.ops.ones((5,)))
    >>> tuple(y.shape), float(y[0, 0, 0])
    ((2, 3, 5), 5.0)
    """
    x, kernel, bias = (ops.convert_to_tensor(t) for t in (x, kernel, bias))
    return ops.add(ops.matmul(x, kernel), bias)


def int8_matmul(inputs, kernel, kernel_scale, inputs_quantizer, compute_dtype):
    """The forward of Keras' int8 ``Dense``: ``inputs`` quantised per row by
    ``inputs_quantizer`` (Keras' ``AbsMaxQuantizer``: int8 values and a scale per
    token; None leaves them in float), ``@ kernel`` (int8, ``(in, out)``) into int32,
    then cast to ``compute_dtype`` and divided by ``kernel_scale * inputs_scale``.

    Bias, LoRA and activation are the layer's; gradients are its custom gradient's
    (the dequantised kernel), so this is the forward only.

    Example:
    >>> kernel = keras.ops.convert_to_tensor([[127, 0], [0, 64]], "int8")
    >>> y = int8_matmul(keras.ops.convert_to_tensor([[1.0, -1.0]]), kernel,
    ...     keras.ops.convert_to_tensor([127.0, 32.0]), keras.quantizers.AbsMaxQuantizer(),
    ...     "float32")
    >>> [round(float(v), 3) for v in keras.ops.convert_to_numpy(y)[0]]
    [1.0, -2.0]
    """
    return int8_matmul_with(
        ops.matmul, inputs, kernel, kernel_scale, inputs_quantizer, compute_dtype
    )


def int8_matmul_with(gemm, inputs, kernel, kernel_scale, inputs_quantizer, compute_dtype):
    """:func:`int8_matmul` with ``gemm(quantised_inputs, kernel)`` for its
    ``keras.ops.matmul`` (a backend's int8 kernel, returning the int32 products or
    their exact float32 values; every other step, and so every rounding, is Keras')."""
    output_scale = kernel_scale
    if inputs_quantizer:
        inputs, inputs_scale = inputs_quantizer(inputs, axis=-1)
        output_scale = ops.multiply(output_scale, inputs_scale)
    x = gemm(inputs, kernel)
    x = ops.cast(x, compute_dtype)
    return ops.divide(x, output_scale)


def int8_gemm_worst_case():
    """``(a, b)``, int8 NumPy arrays ``(32, 512)`` and ``(512, 64)``: the hardest
    product for an int8 GEMM fed what int8 layers give it (values in +-127). Every
    value at full scale, rows of one sign: a GEMM that sums u8 x s8 pairs into 16 bits
    (``vpmaddubsw``, CPUs without VNNI) saturates there, 2 * 255 * 127 > 2**15. A
    backend uses its int8 kernel only where it gives ``a @ b`` exactly on these.

    Example:
    >>> a, b = int8_gemm_worst_case()
    >>> a.shape, b.shape, int((a.astype("int32") @ b).max())
    ((32, 512), (512, 64), 8258048)
    """
    a = np.full((32, 512), 127, np.int8)
    a[1::2] = -127
    a[::4, ::3] = 3
    b = np.full((512, 64), 127, np.int8)
    b[:, 1::2] = -127
    return a, b


def int8_speed_note():
    """None, or one line on why ``quantize("int8")`` does not speed up inference on
    this backend (the measured ratio to float32 and where it comes from)."""
    return None


def einsum(subscripts, *operands, dtype=None):
    """``keras.ops.einsum``, with the result in ``dtype`` (default: the operands' dtype).

    Example:
    >>> a, b = keras.ops.ones((2, 3), "bfloat16"), keras.ops.ones((3, 4), "bfloat16")
    >>> y = einsum("ij,jk->ik", a, b)
    >>> tuple(y.shape), keras.backend.standardize_dtype(y.dtype), float(y[0, 0])
    ((2, 4), 'bfloat16', 3.0)
    """
    operands = [ops.convert_to_tensor(t) for t in operands]
    out = ops.einsum(subscripts, *operands)
    return out if dtype is None else ops.cast(out, dtype)


def layer_norm(x, gamma, beta, epsilon):
    """LayerNorm over the last axis, as ``keras.ops.layer_normalization`` computes it
    (in at least float32), the result in ``x``'s dtype.

    Example:
    >>> x = keras.ops.convert_to_tensor([[1.0, 3.0]])
    >>> y = layer_norm(x, keras.ops.ones((2,)), keras.ops.zeros((2,)), 1e-6)
    >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(y)[0]]
    [-1.0, 1.0]
    """
    x, gamma, beta = (ops.convert_to_tensor(t) for t in (x, gamma, beta))
    out = ops.layer_normalization(x, gamma, beta, axis=-1, epsilon=epsilon)
    return ops.cast(out, keras.backend.standardize_dtype(x.dtype))


def dot_product_attention(query, key, value):
    """Softmax attention scaled by ``head_dim ** -0.5``; each argument and the result
    ``(batch, tokens, heads, head_dim)``.

    Example:
    >>> q = keras.ops.ones((2, 5, 4, 8))
    >>> tuple(dot_product_attention(q, q, q).shape)
    (2, 5, 4, 8)
    """
    return ops.dot_product_attention(query, key, value)


def exact_gelu(x):
    """``x * Phi(x)`` with the normal CDF written with ``erf`` (transformers' "gelu"),
    computed in at least float32 and rounded once to ``x``'s dtype.

    Example:
    >>> round(float(exact_gelu(keras.ops.convert_to_tensor(1.0))), 6)
    0.841345
    """
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    wide = ops.cast(x, keras.backend.result_type(dtype, "float32"))
    y = 0.5 * wide * (1.0 + ops.erf(wide * (1.0 / math.sqrt(2.0))))
    return ops.cast(y, dtype)


def mlp_activation(x, activation, hidden_act, training):
    """``activation(x)`` on the MLP's first projection (``hidden_act`` is its
    transformers name, for backends that fuse a known activation).

    Example:
    >>> y = mlp_activation(keras.ops.ones((2, 3)), keras.ops.relu, "relu", False)
    >>> tuple(y.shape), float(y[0, 0])
    ((2, 3), 1.0)
    """
    return activation(x)


def gradient_fusion_barrier(x):
    """Identity, forward and backward (JAX overrides it to stop XLA fusing the
    residual gradient across blocks).

    Example:
    >>> tuple(gradient_fusion_barrier(keras.ops.ones((2, 3))).shape)
    (2, 3)
    """
    return x


# -- layout choices (not functions of values) -----------------------------------------


def mlp_on_token_rows():
    """Whether the blocks run their MLP on ``(batch * tokens, hidden)`` rows rather
    than on ``(batch, tokens, hidden)``.

    Example:
    >>> mlp_on_token_rows()
    False
    """
    return False


def head_major_attention():
    """Whether attention projects straight into ``(batch, heads, tokens, head_dim)``
    and attends in that layout, rather than token-major.

    Example:
    >>> head_major_attention()
    False
    """
    return False


def antialiased_resize_compiles():
    """Whether ``jit_compile`` can compile an antialiased ``keras.ops.image.resize``
    (so whether ``jit_compile="auto"`` may compile a model holding one).

    Example:
    >>> antialiased_resize_compiles()
    True
    """
    return True


# -- updates of many variables at once ------------------------------------------------


def ema_update(targets, sources, momentum):
    """``target.assign(m * target + (1 - m) * source)`` for each pair of variables.

    Args:
        targets: Keras variables, updated in place.
        sources: Keras variables or tensors of the same shapes.
        momentum: ``m``, a float or a scalar tensor.

    Example:
    >>> t, s = keras.Variable([1.0, 2.0]), keras.Variable([3.0, 4.0])
    >>> ema_update([t], [s], 0.5)
    >>> keras.ops.convert_to_numpy(t).tolist()
    [2.0, 3.0]
    """
    targets, sources = pair_targets(targets, sources)
    for target, source in zip(targets, sources):
        m = ops.cast(momentum, target.dtype)
        target.assign(m * target + (1 - m) * ops.cast(source, target.dtype))


def pair_targets(targets, sources):
    """``(targets, sources)`` as lists, refused unless paired one to one."""
    targets, sources = list(targets), list(sources)
    if len(targets) != len(sources):
        raise ValueError(
            f"ema_update needs one source per target; got {len(targets)} targets and "
            f"{len(sources)} sources."
        )
    return targets, sources


def clip_by_global_norm(tensors, clip_norm, epsilon, in_place=False):
    """``[t * min(clip_norm / (norm + epsilon), 1)]`` with ``norm`` the global L2 norm
    of ``tensors`` (computed in float32), each result in its tensor's dtype.

    ``in_place=True`` (only for buffers nobody else reads, see
    :func:`autograd_gradients`) allows a backend to scale the tensors themselves.

    Example:
    >>> out = clip_by_global_norm([keras.ops.ones((4,)) * 3.0], 3.0, 0.0)
    >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(out[0])]
    [1.5, 1.5, 1.5, 1.5]
    """
    tensors = [ops.convert_to_tensor(t) for t in tensors]
    norm = ops.sqrt(sum(ops.sum(ops.square(ops.cast(t, "float32"))) for t in tensors))
    scale = ops.minimum(clip_norm / (norm + epsilon), 1.0)
    return [ops.cast(t * ops.cast(scale, t.dtype), t.dtype) for t in tensors]


def autograd_gradients(grads, variables):
    """Whether each of ``grads`` is its variable's own gradient buffer, replaced at
    the next step (so it may be scaled in place). Never, here.

    Example:
    >>> autograd_gradients([keras.ops.ones((2,))], [keras.Variable([1.0, 2.0])])
    False
    """
    return False


def batched_updates_available():
    """Whether :func:`adam_update` applies updates here (else it returns False).

    Example:
    >>> batched_updates_available()
    False
    """
    return False


def adam_update(
    variables,
    grads,
    exp_avgs,
    exp_avg_sqs,
    max_exp_avg_sqs,
    learning_rate,
    step,
    beta_1,
    beta_2,
    epsilon,
):
    """One Adam update of many variables at once, where a backend has multi-tensor
    kernels; returns False here, and the caller runs its per-variable ``update_step``
    (the same formulas: for each variable ``p`` with gradient ``g`` and moments
    ``m``, ``v``: ``m += (g - m) * (1 - beta_1)``; ``v += (g*g - v) * (1 - beta_2)``;
    (amsgrad: ``v_max = max(v_max, v)``, used for ``v``);
    ``p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + epsilon)``, with
    ``bc_i = 1 - beta_i ** step``).

    Args:
        variables, exp_avgs, exp_avg_sqs: Keras variables, updated in place.
        grads: tensors.
        max_exp_avg_sqs: Keras variables for amsgrad, or None.
        learning_rate, step: scalars (tensors or floats); ``step`` counts from 1.
        beta_1, beta_2, epsilon: floats.

    Returns:
        True when the update was applied.
    """
    return False


def native_variables(variable):
    """The backend objects Keras' optimizer may hand ``update_step`` in place of the
    Keras ``variable`` (none here: it hands the Keras variable itself).

    Example:
    >>> native_variables(keras.Variable([1.0]))
    ()
    """
    return ()


# -- training -------------------------------------------------------------------------


def train_step_with_target_update(model, parent_step, update_target, *args, **kwargs):
    """``parent_step(*args, **kwargs)`` (Keras' ``train_step``), then
    ``update_target()`` (MSN's EMA of the target encoder, which assigns variables of
    ``model``); returns the step's logs."""
    logs = parent_step(*args, **kwargs)
    update_target()
    return logs


def enable_jax_cpu_memory():
    """JAX's CPU memory settings (:mod:`keras_vitmsn.backend.jax_cpu_memory`): nothing
    to change on this backend; the result says why.

    Example:
    >>> bool(enable_jax_cpu_memory())
    False
    """
    backend = keras.backend.backend()
    return jax_cpu_memory.Result(False, False, f"the Keras backend is {backend}, not jax")


# -- export ---------------------------------------------------------------------------

#: The ``export`` formats each backend writes (and tests/test_export.py reloads), by
#: backend name: TensorFlow natively and JAX through jax2tf write a SavedModel
#: (Keras' torch path goes through torch_xla, not offered); tf2onnx, jax2onnx and
#: torch.onnx write ONNX; ``torch.export`` writes ``.pt2``.
EXPORT_FORMATS = {
    "tensorflow": ("tf_saved_model", "onnx"),
    "jax": ("tf_saved_model", "onnx"),
    "torch": ("onnx", "torch"),
}


def export(parent_export, model, filepath, format, verbose=None, input_signature=None, **kwargs):
    """Write ``model`` with Keras' exporter ``parent_export`` (``keras.Model.export``
    bound to it)."""
    return parent_export(
        filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs
    )


def check_onnx_quantization(modes):
    """Raise a ValueError where an ONNX export of a model quantised in ``modes`` (a
    set of ``quantization_mode`` names) would not run; nothing to refuse here."""
