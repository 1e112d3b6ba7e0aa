"""The tasks' keras-hub contract: the preprocessor's ``(x, y, sample_weight)`` call,
``image_shape`` in ``data_format`` order (and old files loading as before),
``compile=False``, a frozen backbone surviving save/load, input and label checks
made before a compiled step, and the backbone refusing integer images."""

import os
import shutil

import keras
import numpy as np
import pytest
from helpers import randomize
from helpers import tiny_backbone
from helpers import to_numpy

import keras_vitmsn as kv

LEGACY = os.path.join(os.path.dirname(__file__), "data", "legacy_configs")


def _converter(size=(32, 32), **kwargs):
    return kv.ViTMSNImageConverter(image_size=size, **kwargs)


def _classifier(preprocessor=True, num_classes=3, **kwargs):
    backbone = tiny_backbone(num_layers=1)
    randomize(backbone)
    return kv.ViTMSNClassifier(
        backbone,
        num_classes=num_classes,
        preprocessor=_converter() if preprocessor else None,
        **kwargs,
    )


def _images(n=4, seed=0, shape=(32, 32, 3)):
    return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype="uint8")


# -- A. the preprocessor's (x, y, sample_weight) contract ------------------------------


def test_preprocessor_takes_labels_and_sample_weights():
    clf = _classifier()
    images, labels, weights = _images(), np.arange(4) % 3, np.ones(4, "float32")
    x = clf.preprocessor(images)
    np.testing.assert_allclose(to_numpy(x), to_numpy(_converter()(images)), atol=1e-6)
    x2, y2 = clf.preprocessor(images, labels)
    np.testing.assert_array_equal(np.asarray(y2), labels)
    x3, y3, w3 = clf.preprocessor(images, labels, weights)
    np.testing.assert_allclose(to_numpy(x3), to_numpy(x), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(w3), weights)
    assert isinstance(clf.preprocessor.image_converter, kv.ViTMSNImageConverter)


@pytest.mark.parametrize("task", ["classifier", "feature_extractor"])
def test_split_preprocessing_matches_the_joined_model(task):
    tf = pytest.importorskip("tensorflow")
    backbone = tiny_backbone(num_layers=1)
    randomize(backbone)
    if task == "classifier":
        joined = kv.ViTMSNClassifier(backbone, num_classes=3, preprocessor=_converter())
        split = kv.ViTMSNClassifier(backbone, num_classes=3, preprocessor=None)
        split.classifier.set_weights(joined.classifier.get_weights())
    else:
        joined = kv.ViTMSNFeatureExtractor(backbone, preprocessor=_converter())
        split = kv.ViTMSNFeatureExtractor(backbone, preprocessor=None)
    images, labels = _images(), np.arange(4) % 3
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    mapped = ds.map(joined.preprocessor)
    np.testing.assert_allclose(
        split.predict(mapped, verbose=0), joined.predict(ds, verbose=0), atol=1e-5
    )
    if task == "classifier":
        split.fit(mapped, epochs=1, verbose=0)


def test_a_bare_converter_still_works_as_preprocessor():
    clf = _classifier()  # built from a ViTMSNImageConverter: wrapped, same outputs
    images = _images()
    reference = kv.ViTMSNClassifier(clf.backbone, num_classes=3)
    reference.classifier.set_weights(clf.classifier.get_weights())
    np.testing.assert_allclose(
        clf.predict(images, verbose=0),
        reference.predict(_converter()(images), verbose=0),
        atol=1e-5,
    )


# -- B, G. image_shape in data_format order; old files load the same ------------------


def test_channels_first_image_shape_is_channels_height_width():
    backbone = kv.ViTMSNBackbone(
        image_shape=(3, 32, 16),
        patch_size=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        data_format="channels_first",
    )
    assert backbone.image_shape == (3, 32, 16)
    assert backbone.grid_size == (4, 2)
    out = backbone(np.zeros((1, 3, 32, 16), "float32"))["last_hidden_state"]
    assert tuple(out.shape) == (1, 9, 16)
    again = kv.ViTMSNBackbone.from_config(backbone.get_config())
    assert again.image_shape == (3, 32, 16)


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_files_written_before_load_with_the_same_outputs(tmp_path, data_format):
    expected = np.load(os.path.join(LEGACY, "expected.npz"))
    images = expected["images_channels_first"]
    if data_format == "channels_last":
        images = np.transpose(images, (0, 2, 3, 1))
    # .keras files are ignored by git, so the legacy ones carry another suffix.
    path = str(tmp_path / "old.keras")
    shutil.copy(os.path.join(LEGACY, f"classifier_{data_format}.keras_legacy"), path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), expected[f"logits_{data_format}"], atol=1e-5
    )
    preset = os.path.join(LEGACY, f"classifier_{data_format}_preset")
    from_preset = kv.ViTMSNClassifier.from_preset(preset)
    for model in (loaded, from_preset):
        assert model.backbone.data_format == data_format
        expected_shape = (3, 32, 16) if data_format == "channels_first" else (32, 16, 3)
        assert model.backbone.image_shape == expected_shape
    np.testing.assert_allclose(
        from_preset.predict(images, verbose=0), expected[f"logits_{data_format}"], atol=1e-5
    )
    backbone = kv.ViTMSNBackbone.from_preset(preset)
    features = backbone(from_preset.preprocessor(images))["last_hidden_state"]
    np.testing.assert_allclose(to_numpy(features), expected[f"features_{data_format}"], atol=1e-5)


def test_save_to_preset_follows_the_loading_data_format(tmp_path):
    backbone = tiny_backbone(num_layers=1, image_shape=(32, 16, 3))
    randomize(backbone)
    backbone.save_to_preset(str(tmp_path / "p"))
    images = np.random.default_rng(0).normal(size=(2, 32, 16, 3)).astype("float32")
    reference = to_numpy(backbone(images)["last_hidden_state"])
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        loaded = kv.ViTMSNBackbone.from_preset(str(tmp_path / "p"))
    finally:
        keras.config.set_image_data_format(previous)
    assert loaded.data_format == "channels_first"
    assert loaded.image_shape == (3, 32, 16)
    out = loaded(np.transpose(images, (0, 3, 1, 2)))["last_hidden_state"]
    np.testing.assert_allclose(to_numpy(out), reference, atol=1e-5)


# -- C. compile=False ------------------------------------------------------------------


def test_compile_false_leaves_the_task_uncompiled(tmp_path):
    clf = _classifier(compile=False)
    assert not clf.compiled
    with pytest.raises(ValueError, match="You must call `compile"):
        clf.fit(_images(), np.arange(4) % 3, verbose=0)
    assert _classifier().compiled
    clf.save_to_preset(str(tmp_path / "p"))
    assert not kv.ViTMSNClassifier.from_preset(str(tmp_path / "p"), compile=False).compiled
    assert kv.ViTMSNClassifier.from_preset(str(tmp_path / "p")).compiled


# -- D. a frozen backbone stays frozen after reloading ---------------------------------


def _fit_one_step(model):
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=model.loss)
    model.fit(_images(), np.arange(4) % 3, batch_size=4, epochs=1, verbose=0)


def _assert_linear_probe(model):
    assert model.backbone.trainable is False
    before = [to_numpy(w) for w in model.backbone.weights]
    head = to_numpy(model.classifier.kernel)
    _fit_one_step(model)
    changed = [
        w.path for w, b in zip(model.backbone.weights, before) if not np.array_equal(to_numpy(w), b)
    ]
    assert not changed, f"frozen backbone weights changed: {changed}"
    assert not np.array_equal(to_numpy(model.classifier.kernel), head)


def test_linear_probe_survives_keras_file(tmp_path):
    clf = _classifier()
    clf.backbone.trainable = False
    clf.save(str(tmp_path / "probe.keras"))
    _assert_linear_probe(keras.models.load_model(str(tmp_path / "probe.keras")))


def test_linear_probe_survives_preset(tmp_path):
    clf = _classifier()
    clf.backbone.trainable = False
    clf.save_to_preset(str(tmp_path / "p"))
    _assert_linear_probe(kv.ViTMSNClassifier.from_preset(str(tmp_path / "p")))


# -- E. a failed predict leaves the model usable ---------------------------------------


@pytest.mark.parametrize("task", ["classifier", "feature_extractor"])
def test_predict_after_a_wrong_input_still_works(task):
    clf = _classifier(preprocessor=False)
    model = clf if task == "classifier" else kv.ViTMSNFeatureExtractor(clf.backbone)
    good = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    reference = model.predict(good, verbose=0)
    with pytest.raises(ValueError, match="doesn't match the model"):
        model.predict(np.zeros((2, 48, 48, 3), "float32"), verbose=0)
    np.testing.assert_allclose(model.predict(good, verbose=0), reference, atol=1e-6)


# -- F. labels outside [0, num_classes) ------------------------------------------------


def test_fit_refuses_out_of_range_labels():
    clf = _classifier()
    with pytest.raises(ValueError, match=r"label 3 .*\[0, 3\)"):
        clf.fit(_images(), np.array([0, 1, 2, 3]), verbose=0)
    with pytest.raises(ValueError, match=r"label -1 .*\[0, 3\)"):
        clf.fit(_images(), np.array([0, -1, 2, 1]), verbose=0)
    clf.fit(_images(), np.array([0, 1, 2, 1]), verbose=0)


def test_fit_refuses_out_of_range_labels_in_a_dataset():
    tf = pytest.importorskip("tensorflow")
    clf = _classifier()
    ds = tf.data.Dataset.from_tensor_slices((_images(), np.array([0, 1, 7, 1]))).batch(2)
    with pytest.raises(ValueError, match=r"label 7 .*\[0, 3\)"):
        clf.fit(ds, verbose=0)


# -- H. the backbone refuses integer images --------------------------------------------


def test_backbone_refuses_integer_images():
    backbone = tiny_backbone(num_layers=1)
    with pytest.raises(ValueError, match="ViTMSNImageConverter"):
        backbone(_images(2))
    # Symbolic calls and tasks with a converter still take uint8.
    spec = backbone.compute_output_spec(keras.KerasTensor((None, 32, 32, 3), "float32"))
    assert spec["last_hidden_state"].shape == (None, 17, 32)
    clf = kv.ViTMSNClassifier(backbone, num_classes=2, preprocessor=_converter())
    assert clf.predict(_images(2), verbose=0).shape == (2, 2)
