"""TensorFlow's fast paths: the MLP on token rows, MatMul + BiasAdd, batched-matmul
attention. Each computes what the plain formulation computes (checked on every
backend, the rows layout forced both ways), and on TensorFlow the graph optimizer
(grappler, as ``tf.function`` runs it) fuses the block's projections into oneDNN
``_FusedMatMul`` calls, the MLP's GELU included."""

import keras
import numpy as np
import pytest
from helpers import BACKEND
from helpers import keras_gradients
from helpers import max_abs_diff
from helpers import to_numpy

from keras_vitmsn import backend
from keras_vitmsn.backend import portable
from keras_vitmsn.layers.transformer_block import ViTMSNTransformerBlock

tf_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's graph optimizer")


def random_block(rng, **kwargs):
    block = ViTMSNTransformerBlock(32, 4, 64, name="block", **kwargs)
    block.build((None, None, 32))
    for v in block.weights:
        v.assign(rng.standard_normal(tuple(v.shape)).astype("float32") * 0.2)
    return block


class Output(keras.layers.Layer):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def call(self, inputs, training=None):
        return self.block(inputs, training=training)[0]


def block_outputs(block, x, monkeypatch, rows):
    monkeypatch.setattr(backend, "mlp_on_token_rows", lambda: rows)
    out = to_numpy(block(x)[0])
    weights = keras.ops.arange(32, dtype="float32")
    wrapper = Output(block)
    wrapper(x)
    return out, keras_gradients(wrapper, x, lambda y: keras.ops.sum(y * weights))


def test_mlp_on_token_rows_equals_the_token_layout(rng, monkeypatch):
    block = random_block(rng)
    x = rng.standard_normal((2, 5, 32)).astype("float32")
    out_a, grads_a = block_outputs(block, x, monkeypatch, False)
    out_b, grads_b = block_outputs(block, x, monkeypatch, True)
    assert max_abs_diff(out_a, out_b) <= 1e-5
    assert len(grads_a) == len(block.trainable_weights) and set(grads_a) == set(grads_b)
    for path in grads_a:
        assert max_abs_diff(grads_a[path], grads_b[path]) <= 1e-4, path


def test_mlp_on_token_rows_keeps_an_unknown_batch_symbolic(monkeypatch):
    monkeypatch.setattr(backend, "mlp_on_token_rows", lambda: True)
    # Traced on a placeholder whose batch size is unknown.
    out = Output(ViTMSNTransformerBlock(32, 4, 64))(keras.Input((5, 32)))
    assert tuple(out.shape) == (None, 5, 32)


def test_mlp_on_token_rows_is_the_tensorflow_layout():
    assert backend.mlp_on_token_rows() == (BACKEND == "tensorflow")


@pytest.mark.parametrize("head_dim", [8, 6])
def test_dot_product_attention_gradients_are_keras_ones(rng, head_dim):
    # head_dim 6: a scale that is not a power of two, so scaling q first rounds
    # differently from scaling the scores.
    q, k, v = (rng.standard_normal((2, 7, 3, head_dim)).astype("float32") for _ in range(3))
    weights = rng.standard_normal((2, 7, 3, head_dim)).astype("float32")

    class Attend(keras.layers.Layer):
        """q, k, v as weights, so that keras_gradients differentiates all three."""

        def __init__(self, fn):
            super().__init__()
            self.fn = fn
            self.qkv = [self.add_weight(t.shape, initializer="zeros") for t in (q, k, v)]
            for w, t in zip(self.qkv, (q, k, v)):
                w.assign(t)

        def call(self, unused, training=None):
            return self.fn(*self.qkv)

    results = []
    for fn in (backend.dot_product_attention, portable.dot_product_attention):
        layer = Attend(fn)
        out = to_numpy(keras.ops.stop_gradient(layer(q)))
        grads = keras_gradients(
            layer, q, lambda y: keras.ops.sum(y * keras.ops.convert_to_tensor(weights))
        )
        results.append((out, [grads[w.path] for w in layer.qkv]))
    assert max_abs_diff(results[0][0], results[1][0]) <= 1e-5
    for fast, plain in zip(results[0][1], results[1][1]):
        assert max_abs_diff(fast, plain) <= 1e-4


def optimized_graph_ops(fn, *args):
    """``[(op, fused_ops)]`` of ``fn``'s graph after grappler's default passes on CPU."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.grappler import tf_optimizer

    concrete = tf.function(fn).get_concrete_function(*args)
    graph_def = concrete.graph.as_graph_def()
    for node in graph_def.node:
        node.device = "/device:CPU:0"
    with tf.Graph().as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph_def)
    fetches = meta_graph.collection_def["train_op"].node_list.value
    fetches.extend(t.name.split(":")[0] for t in concrete.outputs)
    optimized = tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta_graph)
    return [(n.op, [s.decode() for s in n.attr["fused_ops"].list.s]) for n in optimized.node]


@tf_only
def test_block_projections_are_fused_matmuls_with_the_gelu_inside():
    import tensorflow as tf

    block = ViTMSNTransformerBlock(32, 4, 64)
    x = tf.zeros((2, 5, 32))
    ops_ = optimized_graph_ops(lambda x: block(x)[0], x)
    fused = [f for op, f in ops_ if op == "_FusedMatMul"]
    # qkv, attention output, MLP in (with its GELU) and MLP out: no bare MatMul,
    # no separate bias add, no Erf pass, no einsum.
    assert sorted(fused) == [["BiasAdd"]] * 3 + [["BiasAdd", "GeluExact"]]
    assert not {"MatMul", "BiasAdd", "Erf", "Einsum"} & {op for op, _ in ops_}


@tf_only
def test_matmul_add_of_3d_input_is_one_fused_matmul():
    import tensorflow as tf

    x, kernel, bias = tf.zeros((2, 5, 4)), tf.ones((4, 6)), tf.ones((6,))
    ops_ = optimized_graph_ops(backend.matmul_add, x, kernel, bias)
    assert ("_FusedMatMul", ["BiasAdd"]) in ops_
    assert not {"MatMul", "BiasAdd", "AddV2"} & {op for op, _ in ops_}


@pytest.mark.skipif(BACKEND == "jax", reason="JAX has no float64 without jax_enable_x64")
def test_dot_product_attention_keeps_float64(rng):
    q, k, v = (rng.standard_normal((2, 7, 3, 6)) for _ in range(3))
    args = [keras.ops.convert_to_tensor(t, dtype="float64") for t in (q, k, v)]
    out = backend.dot_product_attention(*args)
    assert keras.backend.standardize_dtype(out.dtype) == "float64"
    # Exact float64 attention (Keras' own rounds its scale to float32 on some backends).
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(6.0)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    reference = np.einsum("bhqk,bkhd->bqhd", probs, v)
    assert np.max(np.abs(keras.ops.convert_to_numpy(out) - reference)) <= 1e-12


@tf_only
@pytest.mark.parametrize("policy", ["bfloat16", "mixed_bfloat16"])
def test_bfloat16_inference_fuses_the_gelu_and_training_keeps_it_in_float32(policy):
    import tensorflow as tf

    block = ViTMSNTransformerBlock(32, 4, 64, dtype=policy)
    x = tf.zeros((2, 5, 32), dtype="bfloat16")
    inference = optimized_graph_ops(lambda x: block(x, training=False)[0], x)
    assert ("_FusedMatMul", ["BiasAdd", "GeluExact"]) in inference
    assert "Erf" not in {op for op, _ in inference}
    # In training the GELU's input is kept for its gradient, so grappler cannot fuse a
    # bfloat16 GELU: it stays the float32 formulation (Erf on a float32 copy).
    assert not half_precision_gelu_ran(block, x, training=True)


def half_precision_gelu_ran(block, x, training, jit_compile=False):
    import tensorflow as tf

    from keras_vitmsn.backend import tensorflow as tensorflow_backend

    calls = []
    original = tensorflow_backend.half_precision_exact_gelu

    def spy(h):
        calls.append(h)
        return original(h)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tensorflow_backend, "half_precision_exact_gelu", spy)
        fn = tf.function(lambda x: block(x, training=training)[0], jit_compile=jit_compile)
        fn.get_concrete_function(x)
    return bool(calls)


@tf_only
def test_half_precision_gelu_only_where_grappler_fuses_it(monkeypatch):
    import tensorflow as tf

    from keras_vitmsn.backend import tensorflow as tensorflow_backend

    block = ViTMSNTransformerBlock(32, 4, 64, dtype="bfloat16")
    half = tf.zeros((2, 5, 32), dtype="bfloat16")
    assert half_precision_gelu_ran(block, half, training=False)
    assert not half_precision_gelu_ran(
        ViTMSNTransformerBlock(32, 4, 64), tf.zeros((2, 5, 32)), False
    )
    assert not tensorflow_backend.fuses_half_precision_gelu(half)  # eager: no grappler
    # XLA does not fuse into oneDNN: the bfloat16 ops would each round.
    assert not half_precision_gelu_ran(block, half, training=False, jit_compile=True)
    # Without oneDNN's rewrites (or TensorFlow's private answer about them) the GELU
    # would run unfused op by op in bfloat16: keep the float32 formulation.
    from tensorflow.python.util import _pywrap_util_port

    monkeypatch.setattr(_pywrap_util_port, "IsMklEnabled", lambda: False)
    assert not half_precision_gelu_ran(block, half, training=False)
    monkeypatch.delattr(_pywrap_util_port, "IsMklEnabled")
    assert not half_precision_gelu_ran(block, half, training=False)


@tf_only
def test_fused_bfloat16_gelu_is_as_close_to_float32_as_the_float32_formulation(rng, monkeypatch):
    import tensorflow as tf

    blocks = {
        p: ViTMSNTransformerBlock(32, 4, 64, dtype=p, name="b") for p in ("float32", "bfloat16")
    }
    for block in blocks.values():
        block.build((None, 5, 32))
    for a, b in zip(blocks["float32"].weights, blocks["bfloat16"].weights):
        value = rng.standard_normal(tuple(a.shape)).astype("float32") * 0.3
        a.assign(value)
        b.assign(value)
    x = rng.standard_normal((64, 5, 32)).astype("float32")
    exact = to_numpy(blocks["float32"](x)[0])
    half = tf.cast(x, "bfloat16")
    fused = to_numpy(tf.function(lambda x: blocks["bfloat16"](x)[0])(half)).astype("float32")
    monkeypatch.setattr(backend, "mlp_activation", portable.mlp_activation)
    plain = to_numpy(tf.function(lambda x: blocks["bfloat16"](x)[0])(half)).astype("float32")
    err_fused, err_plain = np.abs(fused - exact), np.abs(plain - exact)
    assert max_abs_diff(fused, plain) > 0  # the two graphs differ
    assert err_fused.mean() <= 1.05 * err_plain.mean()
    assert err_fused.max() <= 1.5 * err_plain.max()
