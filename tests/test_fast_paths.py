"""The backend seam's fast paths compute what their keras.ops formulation
(``keras_vitmsn.backend.portable``) computes."""

import keras
import numpy as np
import pytest
from helpers import BACKEND
from helpers import keras_gradients
from helpers import max_abs_diff
from helpers import to_numpy

from keras_vitmsn import backend
from keras_vitmsn.backend import portable
from keras_vitmsn.layers.core import ViTMSNDense


def dense_pair(rng, units=5, in_dim=4, **kwargs):
    """A ViTMSNDense and a keras Dense with the same (random) weights."""
    fused, plain = ViTMSNDense(units, **kwargs), keras.layers.Dense(units, **kwargs)
    for layer in (fused, plain):
        layer.build((None, in_dim))
    for a, b in zip(fused.weights, plain.weights):
        value = rng.standard_normal(tuple(a.shape)).astype("float32")
        a.assign(value)
        b.assign(value)
    return fused, plain


@pytest.mark.parametrize("shape", [(7, 4), (2, 3, 4), (2, 3, 2, 4), (0, 3, 4)])
def test_matmul_add_is_matmul_plus_bias(rng, shape):
    x = rng.standard_normal(shape).astype("float32")
    kernel = rng.standard_normal((4, 6)).astype("float32")
    bias = rng.standard_normal((6,)).astype("float32")
    out = backend.matmul_add(x, kernel, bias)
    reference = portable.matmul_add(x, kernel, bias)
    assert tuple(out.shape) == tuple(reference.shape) == shape[:-1] + (6,)
    if x.size:
        assert max_abs_diff(out, x @ kernel + bias) <= 1e-5
        assert max_abs_diff(out, to_numpy(reference)) <= 1e-5


def test_fused_dense_outputs_and_gradients_are_dense_ones(rng):
    fused, plain = dense_pair(rng)
    x = rng.standard_normal((2, 3, 4)).astype("float32")
    assert max_abs_diff(fused(x), to_numpy(plain(x))) <= 1e-6

    def loss(y):
        return keras.ops.sum(y * keras.ops.arange(5, dtype="float32"))

    grads_fused = keras_gradients(fused, x, loss)
    grads_plain = keras_gradients(plain, x, loss)
    for a, b in zip(fused.trainable_variables, plain.trainable_variables):
        assert max_abs_diff(grads_fused[a.path], grads_plain[b.path]) <= 1e-5


def test_fused_dense_keeps_activation_no_bias_and_lora(rng):
    for kwargs in ({"activation": "relu"}, {"use_bias": False}):
        fused, plain = dense_pair(rng, **kwargs)
        x = rng.standard_normal((3, 4)).astype("float32")
        assert max_abs_diff(fused(x), to_numpy(plain(x))) <= 1e-6
    fused, plain = dense_pair(rng)
    for layer in (fused, plain):
        layer.enable_lora(2, b_initializer="ones")
        layer.lora_kernel_a.assign(np.full((4, 2), 0.5, "float32"))
    x = rng.standard_normal((3, 4)).astype("float32")
    out = fused(x)
    assert max_abs_diff(out, to_numpy(plain(x))) <= 1e-5
    # The LoRA update is in the result (not just the frozen kernel).
    assert max_abs_diff(out, x @ to_numpy(fused._kernel) + to_numpy(fused.bias)) > 1e-2


def test_fused_dense_quantizes_through_keras(rng):
    fused, plain = dense_pair(rng, units=16, in_dim=16)
    x = rng.standard_normal((4, 16)).astype("float32")
    for layer in (fused, plain):
        layer.quantize("int8")
    assert fused.kernel.dtype == "int8"
    assert max_abs_diff(fused(x), to_numpy(plain(x))) <= 1e-5


@pytest.mark.skipif(BACKEND != "torch", reason="the fused GEMM is torch's addmm")
def test_fused_dense_is_one_addmm_on_torch(rng, monkeypatch):
    import torch

    calls = []
    addmm = torch.addmm

    def counting_addmm(*args, **kwargs):
        calls.append(args[1].shape)
        return addmm(*args, **kwargs)

    monkeypatch.setattr(torch, "addmm", counting_addmm)
    # torch's own GEMM; on AMD CPUs the default is oneDNN's (tests/test_torch_gemm.py)
    monkeypatch.setenv("KERAS_VITMSN_TORCH_CPU_GEMM", "addmm")
    fused, _ = dense_pair(rng)
    fused(rng.standard_normal((2, 3, 4)).astype("float32"))
    assert calls == [torch.Size([6, 4])]


@pytest.mark.parametrize("momentum", [0.996, "tensor"])
def test_ema_update_is_the_formula(rng, momentum):
    m = 0.75
    if momentum == "tensor":
        momentum = keras.ops.convert_to_tensor(m, "float32")
    else:
        m = momentum
    shapes = [(3,), (2, 4), (5, 1, 2)]
    targets = [
        keras.Variable(rng.standard_normal(s).astype("float32"), trainable=False) for s in shapes
    ]
    sources = [keras.Variable(rng.standard_normal(s).astype("float32")) for s in shapes]
    expected = []
    for t, s in zip(targets, sources):
        mm = np.float32(m)
        expected.append(mm * to_numpy(t) + (np.float32(1) - mm) * to_numpy(s))
    backend.ema_update(targets, sources, momentum)
    for t, e in zip(targets, expected):
        assert max_abs_diff(t, e) <= 1e-7


@pytest.mark.skipif(BACKEND != "torch", reason="the multi-tensor kernels are torch's")
def test_ema_update_is_two_multi_tensor_kernels_on_torch(rng, monkeypatch):
    import torch

    calls = []
    for name in ("_foreach_mul_", "_foreach_add_"):
        original = getattr(torch, name)

        def counting(values, *args, _name=name, _original=original, **kwargs):
            calls.append((_name, len(values)))
            return _original(values, *args, **kwargs)

        monkeypatch.setattr(torch, name, counting)
    targets = [keras.Variable(np.ones((2, 2), "float32"), trainable=False) for _ in range(3)]
    sources = [keras.Variable(np.zeros((2, 2), "float32")) for _ in range(3)]
    backend.ema_update(targets, sources, 0.5)
    assert calls == [("_foreach_mul_", 3), ("_foreach_add_", 3)]
    assert all(to_numpy(t).tolist() == [[0.5, 0.5], [0.5, 0.5]] for t in targets)


def test_ema_update_casts_sources_of_another_dtype(rng):
    target = keras.Variable(np.ones(3, "float32"))
    source = keras.ops.convert_to_tensor(np.full(3, 3.0), "float16")
    backend.ema_update([target], [source], 0.5)
    assert to_numpy(target).tolist() == [2.0, 2.0, 2.0]


def test_ema_update_refuses_unpaired_lists():
    with pytest.raises(ValueError, match="one source per target"):
        backend.ema_update([keras.Variable(1.0)], [], 0.5)


def run_scheduled_adamw(rng_seed, batched, amsgrad=False, steps=3):
    from keras_vitmsn.models.optimizer import ScheduledAdamW
    from keras_vitmsn.msn import CosineSchedule

    rng = np.random.default_rng(rng_seed)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    variables = [keras.Variable(rng.standard_normal(s).astype("float32")) for s in shapes]
    optimizer = ScheduledAdamW(
        learning_rate=keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5),
        weight_decay=CosineSchedule(0.04, 0.4, steps=10),
        amsgrad=amsgrad,
        global_clipnorm=0.5,
    )
    optimizer.exclude_from_clipping([variables[2]])
    optimizer.exclude_from_weight_decay(var_list=[variables[1]])
    calls = []
    batched_update = optimizer.batched_update

    def spy(*args):
        calls.append(len(args[0]))
        return batched_update(*args) if batched else False

    optimizer.batched_update = spy
    for _ in range(steps):
        grads = [rng.standard_normal(s).astype("float32") for s in shapes]
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    moments = [to_numpy(t) for v in variables for t in optimizer.moments(v)] if steps else []
    return [to_numpy(v) for v in variables], moments, calls


@pytest.mark.skipif(BACKEND != "torch", reason="only torch has the multi-tensor update")
@pytest.mark.parametrize("amsgrad", [False, True])
def test_batched_adamw_update_is_the_per_variable_update(amsgrad):
    from keras_vitmsn.backend.keras_internals import BACKEND_UPDATE_STEP_IS_PRIVATE

    assert BACKEND_UPDATE_STEP_IS_PRIVATE
    fast, fast_moments, calls = run_scheduled_adamw(0, batched=True, amsgrad=amsgrad)
    slow, slow_moments, _ = run_scheduled_adamw(0, batched=False, amsgrad=amsgrad)
    assert calls == [3, 3, 3]  # one call per step, all variables
    for a, b in zip(fast + fast_moments, slow + slow_moments):
        assert np.max(np.abs(a - b)) <= 1e-6 * max(1.0, float(np.max(np.abs(b))))
    # The steps moved the variables (the comparison is not of two untouched copies).
    start, _, _ = run_scheduled_adamw(0, batched=False, amsgrad=amsgrad, steps=0)
    assert all(np.max(np.abs(a - b)) > 1e-3 for a, b in zip(fast, start))


def test_ema_update_inside_a_stateless_scope_records_new_values():
    target = keras.Variable(np.ones(3, "float32"), trainable=False)
    source = keras.Variable(np.full(3, 3.0, "float32"))
    given = keras.ops.convert_to_tensor(np.ones(3, "float32"))
    with keras.StatelessScope(state_mapping=[(target, given)]) as scope:
        backend.ema_update([target], [source], 0.5)
        new = scope.get_current_value(target)
    assert to_numpy(new).tolist() == [2.0, 2.0, 2.0]
    # Neither the variable nor the caller's tensor was written in place.
    assert to_numpy(target).tolist() == [1.0, 1.0, 1.0]
    assert to_numpy(given).tolist() == [1.0, 1.0, 1.0]


def test_stateless_scope_probe_and_its_fallback(monkeypatch):
    from keras_vitmsn.backend import keras_internals
    from keras_vitmsn.backend.keras_internals import STATELESS_SCOPE_IS_PRIVATE

    assert STATELESS_SCOPE_IS_PRIVATE
    assert keras_internals.in_stateless_scope() is False
    with keras.StatelessScope():
        assert keras_internals.in_stateless_scope() is True
    # Without Keras' answer every caller takes its assign path, which is still right.
    monkeypatch.setattr(keras_internals, "_IN_STATELESS_SCOPE", None)
    assert keras_internals.in_stateless_scope() is True
    assert not backend.batched_updates_available()
    target, source = keras.Variable([1.0, 2.0]), keras.Variable([3.0, 4.0])
    backend.ema_update([target], [source], 0.5)
    assert to_numpy(target).tolist() == [2.0, 3.0]


@pytest.mark.skipif(BACKEND != "torch", reason="only torch updates storage in place")
def test_in_place_paths_refuse_values_that_are_not_the_storage():
    # Under autocast a float32 variable's `value` is a bfloat16 copy; updating copies in
    # place would leave every variable where it was, even when all are copies alike.
    import torch

    class AutocastVariable:
        def __init__(self, variable):
            self.variable = variable
            self.dtype = variable.dtype
            self.value = variable.value.to(torch.bfloat16)

        def assign(self, value):
            self.variable.assign(value)

        def __rmul__(self, other):  # the generic EMA formula reads the variable
            return other * self.variable.value

    params = [AutocastVariable(keras.Variable(np.ones((2,), "float32"))) for _ in range(2)]
    moments = [AutocastVariable(keras.Variable(np.zeros((2,), "float32"))) for _ in range(4)]
    grads = [keras.ops.ones((2,)) for _ in range(2)]
    assert not backend.adam_update(
        params, grads, moments[:2], moments[2:], None, 0.1, 1, 0.9, 0.999, 1e-8
    )
    sources = [keras.Variable(np.zeros((2,), "float32")) for _ in range(2)]
    backend.ema_update(params, sources, 0.5)
    assert all(to_numpy(p.variable).tolist() == [0.5, 0.5] for p in params)


def attention_with_weights(rng, **kwargs):
    from keras_vitmsn.layers.attention import ViTMSNAttention

    layer = ViTMSNAttention(hidden_dim=12, num_heads=3, **kwargs)
    layer.build((None, None, 12))
    for variable in layer.weights:
        variable.assign(rng.standard_normal(tuple(variable.shape)).astype("float32") * 0.3)
    return layer


def attention_outputs(layer, x, monkeypatch, head_major, **call_kwargs):
    """Outputs, probabilities and gradients of ``layer`` with the layout forced."""
    monkeypatch.setattr(backend, "head_major_attention", lambda: head_major)
    out, probs = layer(x, **call_kwargs)
    weights = keras.ops.arange(out.shape[-1], dtype="float32")

    class Output(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.inner = layer

        def call(self, inputs, training=None):
            return self.inner(inputs, **call_kwargs)[0]

    wrapper = Output()
    wrapper(x)
    grads = keras_gradients(wrapper, x, lambda y: keras.ops.sum(y * weights))
    return to_numpy(out), probs if probs is None else to_numpy(probs), grads


@pytest.mark.parametrize(
    "call_kwargs", [{}, {"output_attentions": True, "head_mask": np.array([1.0, 0.0, 0.5])}]
)
def test_head_major_attention_equals_the_token_major_layout(rng, monkeypatch, call_kwargs):
    layer = attention_with_weights(rng)
    x = rng.standard_normal((2, 5, 12)).astype("float32")
    out_a, probs_a, grads_a = attention_outputs(layer, x, monkeypatch, False, **call_kwargs)
    out_b, probs_b, grads_b = attention_outputs(layer, x, monkeypatch, True, **call_kwargs)
    assert max_abs_diff(out_a, out_b) <= 1e-5
    if probs_a is not None:
        assert max_abs_diff(probs_a, probs_b) <= 1e-6
    assert set(grads_a) == set(grads_b) and len(grads_a) == 4
    for path in grads_a:
        assert max_abs_diff(grads_a[path], grads_b[path]) <= 1e-4, path


def test_head_major_attention_uses_the_qkv_lora_term_and_no_bias(rng, monkeypatch):
    layer = attention_with_weights(rng, qkv_bias=False)
    layer.qkv.enable_lora(2, b_initializer="ones")
    x = rng.standard_normal((2, 5, 12)).astype("float32")
    out_a = attention_outputs(layer, x, monkeypatch, False)[0]
    out_b = attention_outputs(layer, x, monkeypatch, True)[0]
    assert max_abs_diff(out_a, out_b) <= 1e-5
    layer.qkv.lora_kernel_b.assign(np.zeros(tuple(layer.qkv.lora_kernel_b.shape), "float32"))
    # The LoRA term was in both outputs: without it the output changes.
    assert max_abs_diff(attention_outputs(layer, x, monkeypatch, True)[0], out_b) > 1e-3


def test_head_major_attention_leaves_a_quantised_qkv_to_keras(rng, monkeypatch):
    layer = attention_with_weights(rng)
    x = rng.standard_normal((2, 5, 12)).astype("float32")
    float_out = attention_outputs(layer, x, monkeypatch, False)[0]
    layer.qkv.quantize("int8")
    out_a = to_numpy(attention_outputs(layer, x, monkeypatch, False)[0])
    out_b = to_numpy(attention_outputs(layer, x, monkeypatch, True)[0])
    # The int8 kernel read as floats would be far off; Keras' quantized_call is close.
    assert max_abs_diff(out_a, out_b) <= 1e-5
    assert max_abs_diff(out_b, float_out) <= 0.1 * np.abs(float_out).max()


@pytest.mark.parametrize("head_dim", [64, 6])
def test_explicit_attention_scales_scores_exactly(rng, head_dim):
    # head_dim 64: the 1/8 scale goes on q (exact); 6: on the scores, as before.
    from keras_vitmsn.layers.attention import ViTMSNAttention

    layer = ViTMSNAttention(2 * head_dim, 2)
    q, k, v = (rng.standard_normal((2, 2, 5, head_dim)).astype("float32") for _ in range(3))
    out, probs = layer._attend(*(keras.ops.convert_to_tensor(t) for t in (q, k, v)), None, False)
    scores = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k) / np.sqrt(head_dim)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    assert max_abs_diff(probs, expected) <= 1e-6
    assert max_abs_diff(out, np.einsum("bhqk,bhkd->bhqd", expected, v)) <= 1e-5


@pytest.mark.skipif(BACKEND != "jax", reason="the program JAX traces")
def test_power_of_two_attention_scale_is_applied_to_q_not_the_scores():
    # XLA:CPU writes a scale broadcast to the scores' full shape into memory (5 ms
    # of a 120 ms bf16 step at vit_msn_small); on q it is tokens x head_dim values.
    import jax

    from keras_vitmsn.layers.attention import ViTMSNAttention

    layer = ViTMSNAttention(128, 2)
    q = np.ones((2, 2, 7, 64), np.float32)
    program = jax.make_jaxpr(lambda q: layer._attend(q, q, q, None, False))(q)
    muls = [e.outvars[0].aval.shape for e in program.eqns if e.primitive.name == "mul"]
    assert (2, 2, 7, 64) in muls and (2, 2, 7, 7) not in muls


def test_head_major_attention_is_the_jax_layout():
    assert backend.head_major_attention() == (BACKEND == "jax")


def test_docstring_examples_run():
    import doctest

    from keras_vitmsn.layers import attention

    for module in (portable, attention):
        result = doctest.testmod(module)
        assert result.attempted and not result.failed, module.__name__


def clipping_case(rng, dtype="float32"):
    shapes = [(4, 3), (3,), (2, 2, 2)]
    return [keras.ops.convert_to_tensor(rng.standard_normal(s) * 3.0, dtype) for s in shapes]


@pytest.mark.parametrize("clip_norm", [0.5, 1e6])
def test_clip_by_global_norm_is_the_portable_formula(rng, clip_norm):
    tensors = clipping_case(rng)
    got = backend.clip_by_global_norm(tensors, clip_norm, 1e-6)
    want = portable.clip_by_global_norm(tensors, clip_norm, 1e-6)
    for a, b in zip(got, want):
        assert max_abs_diff(a, to_numpy(b)) <= 1e-6


def test_ema_update_is_the_portable_update(rng):
    shapes = [(3,), (2, 4)]
    values = [rng.standard_normal(s).astype("float32") for s in shapes]
    sources = [keras.Variable(rng.standard_normal(s).astype("float32")) for s in shapes]
    results = []
    for update in (backend.ema_update, portable.ema_update):
        targets = [keras.Variable(v, trainable=False) for v in values]
        update(targets, sources, 0.9)
        results.append([to_numpy(t) for t in targets])
    for a, b in zip(*results):
        assert max_abs_diff(a, b) <= 1e-7


@pytest.mark.skipif(BACKEND != "torch", reason="torch's multi-tensor kernels")
@pytest.mark.parametrize("amsgrad", [False, True])
def test_updates_without_torch_foreach_equal_the_multi_tensor_ones(rng, monkeypatch, amsgrad):
    """torch._foreach_* is private torch: where the probe fails, the per-tensor
    fallback runs the same updates (forced here, against the multi-tensor kernels)."""
    from keras_vitmsn.backend import torch as torch_backend

    assert torch_backend.FOREACH
    tensors = clipping_case(rng)
    results = {}
    for foreach in (True, False):
        monkeypatch.setattr(torch_backend, "FOREACH", foreach)
        clipped = backend.clip_by_global_norm(tensors, 0.5, 1e-6)
        in_place = [t.clone() for t in tensors]
        backend.clip_by_global_norm(in_place, 0.5, 1e-6, in_place=True)
        targets = [keras.Variable(to_numpy(t), trainable=False) for t in tensors]
        backend.ema_update(targets, [keras.Variable(to_numpy(t) * 2) for t in tensors], 0.75)
        params, moments, calls = run_scheduled_adamw(0, batched=True, amsgrad=amsgrad)
        assert calls == [3, 3, 3]
        results[foreach] = [to_numpy(t) for t in clipped + in_place + targets] + params + moments
    for a, b in zip(results[True], results[False]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(BACKEND != "torch", reason="torch's multi-tensor kernels")
def test_the_foreach_probe_fails_where_torch_lacks_a_kernel(monkeypatch):
    import torch

    from keras_vitmsn.backend import torch as torch_backend

    monkeypatch.delattr(torch, "_foreach_lerp_")
    assert not torch_backend._probe_foreach()


def test_the_seam_takes_each_operation_from_the_running_backend():
    import sys

    fast = sys.modules.get(f"keras_vitmsn.backend.{BACKEND}", portable)
    assert backend.NAME == BACKEND
    for name in (
        "matmul_add",
        "einsum",
        "layer_norm",
        "dot_product_attention",
        "ema_update",
        "clip_by_global_norm",
        "adam_update",
        "export",
        "exact_gelu",
    ):
        assert getattr(backend, name) is getattr(fast, name, getattr(portable, name)), name
