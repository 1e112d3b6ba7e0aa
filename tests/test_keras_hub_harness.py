"""keras-hub's model test harness (``keras_hub.src.tests.test_case.TestCase``),
its checks written out for our backbone, classifier and feature extractor:
``run_serialization_test``, ``run_precision_test``, ``run_quantization_test``,
``run_model_saving_test``, ``run_task_test`` and the data-format step of
``run_vision_backbone_test``. Written out rather than imported so the suite does not
depend on keras-hub (whose release pins tensorflow-text)."""

import json

import keras
import numpy as np
import pytest
from helpers import randomize
from helpers import tiny_backbone
from helpers import to_numpy

import keras_vitmsn as kv

KINDS = ["backbone", "classifier", "feature_extractor"]


def _init_kwargs(kind, **backbone_kwargs):
    backbone = tiny_backbone(num_layers=1, **backbone_kwargs)
    randomize(backbone)
    if kind == "backbone":
        return backbone
    converter = kv.ViTMSNImageConverter(
        image_size=(32, 32), data_format=backbone.data_format, dtype="float32"
    )
    if kind == "classifier":
        return kv.ViTMSNClassifier(backbone, num_classes=3, preprocessor=converter)
    return kv.ViTMSNFeatureExtractor(backbone, preprocessor=converter)


def _inputs(kind, n=2):
    rng = np.random.default_rng(0)
    if kind == "backbone":
        return rng.normal(size=(n, 32, 32, 3)).astype("float32")
    return rng.integers(0, 256, (n, 32, 32, 3), dtype="uint8")


def _outputs(model, x):
    out = model(x)
    if isinstance(out, dict):
        out = out["last_hidden_state"]
    return to_numpy(out)


@pytest.mark.parametrize("kind", KINDS)
def test_serialization(kind):
    # run_serialization_test: get_config / from_config and serialize /
    # deserialize round-trip to the same config, which is JSON.
    model = _init_kwargs(kind)
    config = model.get_config()
    json.dumps(keras.saving.serialize_keras_object(model))
    revived = model.__class__.from_config(config)
    assert revived.get_config() == config
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert again.get_config() == config
    assert type(again) is type(model)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy", ["float32", "bfloat16", "mixed_bfloat16"])
def test_precision(kind, policy):
    # run_precision_test: every layer with weights keeps the policy's variable
    # dtype, computes in its compute dtype, and the model runs.
    backbone = tiny_backbone(num_layers=1, dtype=policy)
    model = backbone
    if kind == "classifier":
        model = kv.ViTMSNClassifier(backbone, num_classes=3)
    elif kind == "feature_extractor":
        model = kv.ViTMSNFeatureExtractor(backbone)
    expected = keras.DTypePolicy(policy)
    for weight in backbone.weights:
        assert weight.dtype == expected.variable_dtype, weight.path
    for layer in backbone._flatten_layers(include_self=False):
        if layer.weights and "layernorm" not in layer.name:
            assert layer.compute_dtype == expected.compute_dtype, layer.name
    out = model(_inputs("backbone"))
    if kind == "backbone":
        dtype = keras.backend.standardize_dtype(out["last_hidden_state"].dtype)
        assert dtype == expected.compute_dtype
    else:
        assert keras.backend.standardize_dtype(out.dtype) == "float32"


@pytest.mark.parametrize("kind", KINDS)
def test_quantization(kind):
    # run_quantization_test: quantize, run, and rebuild from the quantised config
    # with the same weights and outputs.
    model = _init_kwargs(kind)
    x = _inputs(kind)
    reference = _outputs(model, x)
    model.quantize("int8")
    quantized = _outputs(model, x)
    assert np.all(np.isfinite(quantized))
    assert np.max(np.abs(quantized - reference)) < 0.1 * (np.max(np.abs(reference)) + 1)
    revived = model.__class__.from_config(model.get_config())
    revived.set_weights(model.get_weights())
    np.testing.assert_allclose(_outputs(revived, x), quantized, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_model_saving(kind, tmp_path):
    # run_model_saving_test: save to .keras, load, same class and outputs.
    model = _init_kwargs(kind)
    x = _inputs(kind)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert type(restored) is type(model)
    np.testing.assert_allclose(_outputs(restored, x), _outputs(model, x), atol=1e-6)


@pytest.mark.parametrize("kind", ["classifier", "feature_extractor"])
def test_task(kind):
    # run_task_test: predict and fit on a labelled dataset, with the preprocessor
    # in the task, then detached and mapped over the dataset; summary works.
    tf = pytest.importorskip("tensorflow")
    task = _init_kwargs(kind)
    if kind == "feature_extractor":
        task.compile(loss="mse")
    images = _inputs(kind, 4)
    labels = np.arange(4) % 3 if kind == "classifier" else np.zeros((4, 32), "float32")
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    joined = task.predict(ds, verbose=0)
    task.fit(ds, epochs=1, verbose=0)
    preprocessor = task.preprocessor
    task.preprocessor = None
    task.fit(ds.map(preprocessor), epochs=1, verbose=0)
    task.preprocessor = preprocessor
    assert task.predict(ds, verbose=0).shape == joined.shape
    task.summary(print_fn=lambda *args, **kwargs: None)


def test_backbone_data_format():
    # run_vision_backbone_test's data-format step: the same weights in a
    # channels_first backbone (image_shape in that order) give the same outputs on
    # transposed images.
    last = tiny_backbone(num_layers=1)
    randomize(last)
    config = last.get_config()
    config.update(image_shape=(3, 32, 32), data_format="channels_first")
    config.pop("image_shape_layout", None)
    first = kv.ViTMSNBackbone(**config)
    first.set_weights(last.get_weights())
    x = _inputs("backbone")
    np.testing.assert_allclose(
        _outputs(first, np.transpose(x, (0, 3, 1, 2))), _outputs(last, x), atol=1e-5
    )
