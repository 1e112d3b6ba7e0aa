"""The backend seam: every operation with a backend-specific path, for the running
Keras backend. Everything else in the package calls these (``backend.matmul_add(...)``)
and never asks which backend runs.

The model's math: ``matmul_add`` (projection GEMM with its bias), ``int8_matmul`` (an
int8 Dense's quantised GEMM, with ``int8_speed_note``), ``einsum``,
``layer_norm``, ``dot_product_attention``, ``exact_gelu``, ``mlp_activation`` (the MLP's
first activation), ``gradient_fusion_barrier``.
Layout and compilation choices: ``mlp_on_token_rows``, ``head_major_attention``,
``antialiased_resize_compiles`` (the image converter's resize under ``jit_compile``).
Variable updates: ``ema_update``, ``clip_by_global_norm``, ``adam_update`` (with
``batched_updates_available`` and ``autograd_gradients``), ``native_variables``.
Training: ``train_step_with_target_update`` (MSN's step with its EMA target update).
Tensors of any framework (``tf.data`` runs under every backend): ``is_concrete``.
Process settings: ``enable_jax_cpu_memory`` (and ``..._for_command_line``).
Export: ``EXPORT_FORMATS`` (by backend), ``export``, ``check_onnx_quantization``.

:mod:`~keras_vitmsn.backend.portable` holds the ``keras.ops`` formulation of each (what a
backend without a fast path runs, and what the tests hold each fast path to); the
``jax``, ``torch`` and ``tensorflow`` modules override some of them. Private APIs of
Keras live in :mod:`~keras_vitmsn.backend.keras_internals`, each probed with a fallback.
"""

import keras
import numpy as np

from keras_vitmsn.backend import jax_cpu_memory
from keras_vitmsn.backend import portable

#: The Keras backend these operations were chosen for (read once, at import).
NAME = keras.backend.backend()

if NAME == "jax":
    from keras_vitmsn.backend import jax as _fast
elif NAME == "torch":
    from keras_vitmsn.backend import torch as _fast
elif NAME == "tensorflow":
    from keras_vitmsn.backend import tensorflow as _fast
else:  # e.g. numpy: the keras.ops formulations throughout
    _fast = portable


def _choose(name):
    return getattr(_fast, name, getattr(portable, name))


matmul_add = _choose("matmul_add")
int8_matmul = _choose("int8_matmul")
int8_speed_note = _choose("int8_speed_note")
einsum = _choose("einsum")
layer_norm = _choose("layer_norm")
dot_product_attention = _choose("dot_product_attention")
exact_gelu = _choose("exact_gelu")
mlp_activation = _choose("mlp_activation")
gradient_fusion_barrier = _choose("gradient_fusion_barrier")
mlp_on_token_rows = _choose("mlp_on_token_rows")
head_major_attention = _choose("head_major_attention")
antialiased_resize_compiles = _choose("antialiased_resize_compiles")
ema_update = _choose("ema_update")
clip_by_global_norm = _choose("clip_by_global_norm")
adam_update = _choose("adam_update")
batched_updates_available = _choose("batched_updates_available")
autograd_gradients = _choose("autograd_gradients")
native_variables = _choose("native_variables")
train_step_with_target_update = _choose("train_step_with_target_update")
enable_jax_cpu_memory = _choose("enable_jax_cpu_memory")
EXPORT_FORMATS = portable.EXPORT_FORMATS
export = _choose("export")
check_onnx_quantization = _choose("check_onnx_quantization")


def enable_jax_cpu_memory_for_command_line():
    """:func:`enable_jax_cpu_memory` when ``KERAS_VITMSN_JAX_CPU_MEMORY=1``; None when
    the variable is unset or ``0``.

    Raises:
        ValueError: the variable holds anything else.
    """
    return enable_jax_cpu_memory() if jax_cpu_memory.requested() else None


def is_concrete(x):
    """Whether ``x`` holds values that can be read now (not a symbolic tensor, a
    tracer, or a tensor of a TF graph or torch.compile trace).

    Example:
    >>> is_concrete(np.zeros(2)), is_concrete(keras.ops.zeros(2)), is_concrete([1])
    (True, True, False)
    """
    if isinstance(x, np.ndarray):
        return True
    module = type(x).__module__
    if module.startswith("jax"):
        import jax

        return not isinstance(x, jax.core.Tracer)
    if module.startswith("tensorflow"):
        import tensorflow as tf

        return tf.executing_eagerly()
    if module.startswith("torch"):
        import torch

        return x.device.type != "meta" and not torch.compiler.is_compiling()
    return False
