"""keras_internals: each private-Keras path against its public fallback, and the
package's import graph (no cycles, small modules)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import max_abs_diff
from helpers import to_numpy

import keras_vitmsn as kv
from keras_vitmsn.backend import keras_internals
from keras_vitmsn.msn import CosineSchedule
from keras_vitmsn.msn import ScheduledAdamW

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    image_shape=(32, 32, 3),
    patch_size=8,
    hidden_dim=32,
    num_layers=2,
    num_heads=4,
    intermediate_dim=64,
)


def test_this_keras_takes_the_fast_paths():
    # Guards the fallbacks below from silently becoming the only path on a new Keras.
    assert keras_internals.FAST_INIT
    assert keras_internals.DATA_LAYER_IS_PRIVATE
    assert keras_internals.optimizer_reads_weight_decay_property()


@pytest.mark.parametrize("fast", [True, False])
def test_build_with_values_fast_and_public_paths_agree(fast):
    reference = kv.ViTMSNBackbone(**TINY)
    values = [keras.ops.convert_to_numpy(v) for v in reference.weights]
    model = keras_internals.build_with_values(
        lambda: kv.ViTMSNBackbone(**TINY),
        lambda m: {id(v): value for v, value in zip(m.weights, values)},
        fast=fast,
    )
    for v, value in zip(model.weights, values):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), value)
    assert keras_internals.pending_variables() == []
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype("float32")
    assert (
        max_abs_diff(model(x)["last_hidden_state"], to_numpy(reference(x)["last_hidden_state"]))
        == 0
    )


def test_presets_load_identically_without_fast_init(tmp_path, monkeypatch):
    backbone = kv.ViTMSNBackbone(**TINY)
    backbone.save_to_preset(str(tmp_path / "p"))
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype("float32")
    fast = kv.ViTMSNBackbone.from_preset(str(tmp_path / "p"), image_shape=(40, 40, 3))
    monkeypatch.setattr(keras_internals, "FAST_INIT", False)
    slow = kv.ViTMSNBackbone.from_preset(str(tmp_path / "p"), image_shape=(40, 40, 3))
    same = kv.ViTMSNBackbone.from_preset(str(tmp_path / "p"))
    y = np.random.default_rng(2).standard_normal((2, 40, 40, 3)).astype("float32")
    assert max_abs_diff(fast(y)["last_hidden_state"], to_numpy(slow(y)["last_hidden_state"])) == 0
    assert (
        max_abs_diff(same(x)["last_hidden_state"], to_numpy(backbone(x)["last_hidden_state"])) == 0
    )


def test_converter_base_falls_back_to_a_public_layer():
    base, private = keras_internals.find_data_layer_base(candidates=(("no.such.module", "X"),))
    assert base is keras.layers.Layer and not private

    class Scale(base):
        def call(self, x):
            return x * 2.0

    np.testing.assert_allclose(keras.ops.convert_to_numpy(Scale()(np.ones((1, 2), "float32"))), 2.0)


def test_scheduled_weight_decay_refuses_when_keras_ignores_it(monkeypatch):
    monkeypatch.setattr(keras_internals, "_WEIGHT_DECAY_PROPERTY", False)
    with pytest.raises(RuntimeError, match="pass a float weight_decay"):
        ScheduledAdamW(weight_decay=CosineSchedule(0.04, 0.4, 10))
    ScheduledAdamW(weight_decay=0.05)  # a float needs no probe


def test_this_keras_takes_the_private_variable_index():
    assert keras_internals.VARIABLE_INDEX_IS_PRIVATE
    assert keras_internals.FLATTEN_LAYERS_IS_PRIVATE
    assert keras_internals.DTYPE_POLICY_IS_PRIVATE


def test_public_layer_walk_finds_what_keras_finds():
    backbone = kv.ViTMSNBackbone(**TINY)
    clf = kv.ViTMSNClassifier(
        backbone, num_classes=3, preprocessor=kv.ViTMSNImageConverter(image_size=(32, 32))
    )
    for model in (backbone, clf, kv.ViTMSNFeatureExtractor(backbone, pooling="mean")):
        for include_self in (True, False):
            private = keras_internals.all_layers(model, include_self, private=True)
            public = keras_internals.all_layers(model, include_self, private=False)
            assert len(public) == len(private) > 20
            assert {id(x) for x in public} == {id(x) for x in private}
            assert (public[0] is model) == include_self
            # parents first: a layer comes after the layer holding it
            order = {id(x): i for i, x in enumerate(public)}
            assert (
                order[id(backbone.encoder_layers[0])]
                < order[id(backbone.encoder_layers[0].attention.qkv)]
            )


def test_quantised_rebuild_refuses_without_the_private_policy_slot(monkeypatch, tmp_path):
    """Where Keras keeps a layer's policy elsewhere, a quantised model is not rebuilt
    with shared maps (its int8 kernels would save without scales): it refuses. Float
    models do not need the slot."""
    backbone = kv.ViTMSNBackbone(**TINY)
    float_config = backbone.get_config()
    backbone.quantize("int8")
    config = backbone.get_config()
    monkeypatch.setattr(keras_internals, "DTYPE_POLICY_IS_PRIVATE", False)
    with pytest.raises(RuntimeError, match="call quantize\\(\\) on it instead"):
        kv.ViTMSNBackbone.from_config(config)
    kv.ViTMSNBackbone.from_config(float_config)
    monkeypatch.setattr(keras_internals, "DTYPE_POLICY_IS_PRIVATE", True)
    rebuilt = kv.ViTMSNBackbone.from_config(config)
    qkv = rebuilt.encoder_layers[0].attention.qkv
    assert qkv.dtype_policy.name == "int8_from_float32"


def _train_with_scheduled_adamw():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    optimizer = ScheduledAdamW(
        learning_rate=0.1, weight_decay=CosineSchedule(0.1, 0.2, 4), global_clipnorm=0.5
    )
    model.compile(optimizer=optimizer, loss="mse")
    x = np.arange(12, dtype="float32").reshape(4, 3) / 10
    model.fit(x, np.ones((4, 2), "float32"), batch_size=2, epochs=1, verbose=0, shuffle=False)
    moments = [to_numpy(m) for v in model.trainable_variables for m in optimizer.moments(v)]
    return [to_numpy(v) for v in model.weights] + moments


def test_variable_index_public_path_trains_as_the_private_one(monkeypatch):
    """Two compiled fit steps with ScheduledAdamW: the identity index (what runs where
    Keras' _get_variable_index changed) gives what Keras' own lookup gives."""
    expected = _train_with_scheduled_adamw()
    monkeypatch.setattr(keras_internals, "VARIABLE_INDEX_IS_PRIVATE", False)
    # The identity index must be what answers: Keras' own lookup would fail now.
    monkeypatch.setattr(
        keras.optimizers.Optimizer, "_get_variable_index", lambda self, v: 1 / 0, raising=False
    )
    got = _train_with_scheduled_adamw()
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert max(float(np.abs(m).max()) for m in got[-4:]) > 0  # the moments moved


def test_a_process_on_public_keras_only_loads_and_runs_models(tmp_path):
    """Every public fallback at once, in a fresh process: presets load with equal
    outputs, the image converter runs eagerly and inside a classifier."""
    backbone = kv.ViTMSNBackbone(**TINY)
    clf = kv.ViTMSNClassifier(
        backbone, num_classes=3, preprocessor=kv.ViTMSNImageConverter(image_size=(32, 32))
    )
    clf.save_to_preset(str(tmp_path / "p"))
    images = np.random.default_rng(3).integers(0, 256, (2, 37, 45, 3)).astype("uint8")
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", to_numpy(clf.predict(images, verbose=0)))
    script = f"""
import numpy as np, keras_vitmsn as kv
from keras_vitmsn.backend import keras_internals as k
assert not (k.FAST_INIT or k.DATA_LAYER_IS_PRIVATE or k.VARIABLE_INDEX_IS_PRIVATE
            or k.FLATTEN_LAYERS_IS_PRIVATE or k.DTYPE_POLICY_IS_PRIVATE
            or k.BACKEND_UPDATE_STEP_IS_PRIVATE or k.STATELESS_SCOPE_IS_PRIVATE
            or k.INT8_CALL_IS_PRIVATE)
clf = kv.ViTMSNClassifier.from_preset({str(tmp_path / "p")!r})
out = clf.predict(np.load({str(tmp_path / "images.npy")!r}), verbose=0)
diff = np.max(np.abs(np.asarray(out) - np.load({str(tmp_path / "expected.npy")!r})))
assert diff <= 1e-5, diff
print("ok", diff)
"""
    env = dict(
        os.environ, KERAS_VITMSN_PUBLIC_KERAS_ONLY="1", KERAS_BACKEND=keras.backend.backend()
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr[-3000:]
