"""JAX's fast paths: the operations of :mod:`keras_vitmsn.backend.portable` that XLA
compiles better written another way.

- Half-precision ``matmul_add`` / ``einsum`` on XLA:CPU ask for a float32 result
  (``preferred_element_type``) and round once: XLA:CPU runs a half-precision-result
  dot as a float32 dot on converted operands, a float32-result one on its bf16
  kernels (AMX; 1576x384 @ 384x1536 bf16: 7.4 -> 1.1 ms).
- Attention projects and attends head-major: XLA writes the einsum's output in that
  layout directly, where the token-major one costs transposing copies (training step
  1.21x, inference 1.12x at vit_msn_small on CPU).
- A gradient fusion barrier per block keeps XLA's backward linear in depth.
- The exact GELU stays the ``erf`` formula (``jax.nn.gelu``'s ``erfc`` is 2.8x slower on
  XLA:CPU), except in exports to a TensorFlow SavedModel (:func:`erfc_gelu_on_jax`).
- The MSN train step threads the EMA target's new values through the stateless state.
- An int8 layer's GEMM runs as XLA:CPU's bf16 dot into float32 (exact int8 products).
"""

import contextlib
import contextvars

import jax
import jax.numpy as jnp
import keras
from keras import ops

from keras_vitmsn.backend import jax_cpu_memory
from keras_vitmsn.backend import portable

_HALF = ("bfloat16", "float16")
_ERFC_GELU = contextvars.ContextVar("keras_vitmsn_erfc_gelu_on_jax", default=False)


def _half_on_xla_cpu(*tensors):
    """Whether these tensors are all of one half-precision dtype, on XLA's CPU backend."""
    dtypes = {keras.backend.standardize_dtype(t.dtype) for t in tensors}
    return len(dtypes) == 1 and dtypes <= set(_HALF) and jax.default_backend() == "cpu"


def einsum(subscripts, *operands, dtype=None):
    operands = [ops.convert_to_tensor(t) for t in operands]
    if _half_on_xla_cpu(*operands):
        out = jnp.einsum(subscripts, *operands, preferred_element_type=jnp.float32)
        return out.astype(dtype or operands[0].dtype)
    return portable.einsum(subscripts, *operands, dtype=dtype)


def matmul_add(x, kernel, bias):
    x, kernel, bias = (ops.convert_to_tensor(t) for t in (x, kernel, bias))
    if _half_on_xla_cpu(x, kernel, bias):
        # The products of half-precision values are exact in float32: only the bias
        # add moves before the one rounding.
        out = jnp.matmul(x, kernel, preferred_element_type=jnp.float32) + bias
        return out.astype(x.dtype)
    return portable.matmul_add(x, kernel, bias)


def _int8_gemm(x, kernel):
    x, kernel = ops.convert_to_tensor(x), ops.convert_to_tensor(kernel)
    if x.dtype == jnp.int8 and kernel.dtype == jnp.int8 and jax.default_backend() == "cpu":
        # XLA:CPU's bf16 dot with a float32 result is faster than its int8 dot with an
        # int32 one (Keras' matmul): 1576x384 @ 384x1152 7.4 vs 9.4 ms, vit_msn_small
        # int8 inference 1.55x float32 vs 1.36x on a Zen 4 CPU. int8 values are exact
        # in bf16 and their products in float32; sums stay exact below 2**24 (any K
        # up to 1040 at int8's full range), beyond that they round as the int32
        # result's cast to float32 does, within a few float32 ulps.
        return jnp.matmul(
            x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), preferred_element_type=jnp.float32
        )
    return ops.matmul(x, kernel)


def int8_matmul(inputs, kernel, kernel_scale, inputs_quantizer, compute_dtype):
    return portable.int8_matmul_with(
        _int8_gemm, inputs, kernel, kernel_scale, inputs_quantizer, compute_dtype
    )


def head_major_attention():
    return True


@contextlib.contextmanager
def erfc_gelu_on_jax():
    """Inside it, :func:`exact_gelu` traces ``jax.nn.gelu`` (``erfc``) instead of the
    ``erf`` formula: JAX serialises ``erf`` as a StableHLO composite that the
    TensorFlow runtime reloading a jax2tf SavedModel may be too old to read
    (TensorFlow 2.21 with JAX 0.10 cannot). Same function, within float32 rounding."""
    token = _ERFC_GELU.set(True)
    try:
        yield
    finally:
        _ERFC_GELU.reset(token)


def exact_gelu(x):
    if _ERFC_GELU.get():
        return keras.activations.gelu(x, approximate=False)
    return portable.exact_gelu(x)


@keras.ops.custom_gradient
def _scatter_gradient(x):
    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        # Along the feature axis, not the batch axis: under data parallelism the batch
        # axis is sharded and the features are not, so the scatter communicates nothing.
        features = ops.moveaxis(upstream, -1, 0)
        indices = ops.expand_dims(ops.arange(ops.shape(features)[0]), -1)
        written = ops.scatter_update(ops.zeros_like(features), indices, features)
        return ops.moveaxis(written, 0, -1)

    return x, grad


def gradient_fusion_barrier(x):
    """Identity whose gradient passes through a scatter, which XLA:CPU never fuses a
    producer into. Without it XLA duplicates the cheap residual-gradient sum into every
    consumer of every block, an O(depth**2) backward (0.83 s of a 3.0 s vit_msn_small
    step). Being a custom VJP it makes the model reverse-mode only (no ``jax.jvp``)."""
    return _scatter_gradient(x)


def train_step_with_target_update(model, parent_step, update_target, state, data):
    """JAX's stateless step returns new variable values instead of assigning them:
    the EMA runs on those values, and the target's new values go back in the state."""
    logs, state = parent_step(state, data)
    trainable, non_trainable, *rest = state
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += list(zip(model.non_trainable_variables, non_trainable))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        update_target()
    updated = [scope.get_current_value(v) for v in model.non_trainable_variables]
    non_trainable = [value if new is None else new for new, value in zip(updated, non_trainable)]
    return logs, (trainable, non_trainable, *rest)


enable_jax_cpu_memory = jax_cpu_memory.enable


def export(parent_export, model, filepath, format, verbose=None, input_signature=None, **kwargs):
    scope = erfc_gelu_on_jax() if format == "tf_saved_model" else contextlib.nullcontext()
    with scope:
        return portable.export(
            parent_export, model, filepath, format, verbose, input_signature, **kwargs
        )


def check_onnx_quantization(modes):
    if set(modes) & {"int8", "int4"}:
        raise ValueError(
            "This model is quantised (int8 weights and activations); jax2onnx writes "
            "its int8 products as ONNX Einsum nodes on int8 inputs, which "
            "onnxruntime cannot run. Save it (model.save('model.keras')) and export "
            "it to ONNX under the torch or tensorflow backend, or use "
            "format='tf_saved_model' here."
        )
