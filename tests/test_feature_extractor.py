"""``ViTMSNFeatureExtractor``: every pooling against the backbone's own outputs, the
patch grid, predict on arrays and tf.data, saving (config, .keras, presets), export
reloaded with its runtime, int8 quantisation, and its use by ``kv.lowshot``."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import BACKEND
from helpers import randomize
from helpers import tiny_backbone
from helpers import to_numpy
from test_export import FORMATS
from test_export import RUNTIMES
from test_export import TOL
from test_export import artefact_path
from test_export import runner

import keras_vitmsn as kv
from keras_vitmsn.models.export import supported_export_formats

POOLINGS = ("cls", "cls_pre_norm", "mean", "patch")


@pytest.fixture(scope="module")
def backbone():
    model = tiny_backbone()
    randomize(model)
    return model


def images(batch=3, seed=0, size=(32, 32)):
    return np.random.default_rng(seed).standard_normal((batch,) + size + (3,)).astype("float32")


def expected_features(backbone, x, pooling, **call_kwargs):
    """Each pooling written out by hand from the backbone's outputs."""
    out = backbone(x, output_hidden_states=True, **call_kwargs)
    tokens = to_numpy(out["last_hidden_state"])
    if pooling == "cls_pre_norm":
        return to_numpy(out["hidden_states"][-1][:, 0])
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "mean":
        return tokens[:, 1:].mean(axis=1)
    rows, cols = x.shape[1] // backbone.patch_size, x.shape[2] // backbone.patch_size
    return tokens[:, 1:].reshape(len(x), rows, cols, backbone.hidden_dim)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_matches_the_backbone(backbone, pooling):
    x = images()
    extractor = kv.ViTMSNFeatureExtractor(backbone, pooling=pooling)
    got = extractor(x)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    expected = expected_features(backbone, x, pooling)
    assert tuple(got.shape) == expected.shape
    np.testing.assert_allclose(to_numpy(got), expected, atol=1e-5)


def test_poolings_differ_and_default_is_the_papers(backbone):
    x = images()
    default = kv.ViTMSNFeatureExtractor(backbone)
    assert default.pooling == "cls_pre_norm"
    pooled = {p: to_numpy(kv.ViTMSNFeatureExtractor(backbone, pooling=p)(x)) for p in POOLINGS}
    np.testing.assert_array_equal(to_numpy(default(x)), pooled["cls_pre_norm"])
    for a, b in (("cls", "cls_pre_norm"), ("cls", "mean")):
        assert np.abs(pooled[a] - pooled[b]).max() > 1e-2, f"{a} and {b} coincide"
    # "cls" is the final LayerNorm of "cls_pre_norm".
    np.testing.assert_allclose(
        to_numpy(backbone.layernorm(pooled["cls_pre_norm"])), pooled["cls"], atol=1e-5
    )


def test_patch_grid_is_row_major_at_the_input_size():
    # No transformer block: each output token depends on its own patch only, so a
    # change inside patch (row 4, col 1) of a 48x40 input must move grid[:, 4, 1] only.
    backbone = tiny_backbone(num_layers=0)
    randomize(backbone)
    extractor = kv.ViTMSNFeatureExtractor(backbone, pooling="patch", interpolate_pos_encoding=True)
    x = images(2, size=(48, 40))
    base = to_numpy(extractor(x))
    assert base.shape == (2, 6, 5, 32)
    np.testing.assert_allclose(
        base, expected_features(backbone, x, "patch", interpolate_pos_encoding=True), atol=1e-5
    )
    changed = x.copy()
    changed[:, 32:40, 8:16] += 1.0
    moved = np.abs(to_numpy(extractor(changed)) - base).max(axis=(0, 3))
    assert moved[4, 1] > 1e-3
    moved[4, 1] = 0.0
    assert moved.max() < 1e-6, f"other grid cells changed: {np.argwhere(moved > 1e-6)}"


def test_patch_grid_channels_first(backbone):
    first = tiny_backbone(data_format="channels_first")
    for src, dst in zip(backbone.weights, first.weights):
        dst.assign(src)
    x = images()
    got = kv.ViTMSNFeatureExtractor(first, pooling="patch")(np.transpose(x, (0, 3, 1, 2)))
    expected = kv.ViTMSNFeatureExtractor(backbone, pooling="patch")(x)
    np.testing.assert_allclose(to_numpy(got), to_numpy(expected), atol=1e-5)


def test_predict_on_numpy_and_tf_data(backbone):
    # Batches of 2 everywhere: jitted backends compile predict once per input shape.
    x = images(4, seed=1)
    extractor = kv.ViTMSNFeatureExtractor(backbone, pooling="patch")
    expected = expected_features(backbone, x, "patch")
    np.testing.assert_allclose(extractor.predict(x, batch_size=2, verbose=0), expected, atol=1e-5)
    labelled = tf.data.Dataset.from_tensor_slices((x, np.arange(4))).batch(2)
    np.testing.assert_allclose(extractor.predict(labelled, verbose=0), expected, atol=1e-5)
    only_images = tf.data.Dataset.from_tensor_slices(x).batch(2)
    np.testing.assert_allclose(extractor.predict(only_images, verbose=0), expected, atol=1e-5)


def test_preprocessor_takes_raw_images(backbone):
    converter = kv.ViTMSNImageConverter(image_size=(32, 32))
    extractor = kv.ViTMSNFeatureExtractor(backbone, pooling="mean", preprocessor=converter)
    raw = np.random.default_rng(2).integers(0, 256, (2, 40, 52, 3), dtype=np.uint8)
    expected = expected_features(backbone, to_numpy(converter(raw)), "mean")
    np.testing.assert_allclose(extractor.predict(raw, verbose=0), expected, atol=1e-5)


def test_invalid_arguments_raise(backbone):
    with pytest.raises(
        ValueError,
        match="`pooling` must be one of 'cls', 'cls_pre_norm', 'mean', 'patch'; got 'avg'",
    ):
        kv.ViTMSNFeatureExtractor(backbone, pooling="avg")
    with pytest.raises(ValueError, match="must be a ViTMSNBackbone"):
        kv.ViTMSNFeatureExtractor(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        kv.ViTMSNFeatureExtractor(
            backbone, preprocessor=kv.ViTMSNImageConverter(image_size=(48, 48))
        )


def test_config_round_trip_and_keras_file(backbone, tmp_path):
    converter = kv.ViTMSNImageConverter(image_size=(32, 32))
    extractor = kv.ViTMSNFeatureExtractor(
        backbone, pooling="mean", preprocessor=converter, name="features"
    )
    config = extractor.get_config()
    rebuilt = kv.ViTMSNFeatureExtractor.from_config(config)
    assert rebuilt.get_config() == config
    raw = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "features.keras"
    extractor.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, kv.ViTMSNFeatureExtractor)
    assert restored.get_config() == config
    np.testing.assert_array_equal(to_numpy(restored(raw)), to_numpy(extractor(raw)))


def test_preset_round_trip(backbone, tmp_path):
    converter = kv.ViTMSNImageConverter(image_size=(32, 32))
    extractor = kv.ViTMSNFeatureExtractor(backbone, pooling="patch", preprocessor=converter)
    preset = str(tmp_path / "preset")
    extractor.save_to_preset(preset)
    raw = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)

    restored = kv.ViTMSNFeatureExtractor.from_preset(preset)
    assert restored.pooling == "patch" and restored.preprocessor is not None
    np.testing.assert_array_equal(to_numpy(restored(raw)), to_numpy(extractor(raw)))
    other = kv.ViTMSNFeatureExtractor.from_preset(preset, pooling="cls", preprocessor=None)
    x = to_numpy(converter(raw))
    np.testing.assert_allclose(to_numpy(other(x)), expected_features(backbone, x, "cls"), atol=1e-5)

    # Copying the preset keeps the task (its pooling), not just the backbone.
    kv.convert_to_preset(preset, str(tmp_path / "copy"))
    assert kv.ViTMSNFeatureExtractor.from_preset(str(tmp_path / "copy")).pooling == "patch"

    # The same preset is a backbone preset, and a classifier preset once given a head.
    kv.ViTMSNBackbone.from_preset(preset)
    with pytest.raises(ValueError, match="no classification head: pass `num_classes`"):
        kv.ViTMSNClassifier.from_preset(preset)
    clf = kv.ViTMSNClassifier.from_preset(preset, num_classes=3)
    assert clf.num_classes == 3

    # A classifier's preset gives its backbone and converter; the head is not loaded.
    clf.save_to_preset(tmp_path / "clf")
    from_clf = kv.ViTMSNFeatureExtractor.from_preset(str(tmp_path / "clf"))
    assert from_clf.pooling == "cls_pre_norm" and from_clf.preprocessor is not None
    np.testing.assert_allclose(
        to_numpy(from_clf(raw)), expected_features(backbone, x, "cls_pre_norm"), atol=1e-5
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_reloads_with_its_runtime(backbone, tmp_path, fmt):
    # The patch grid (a reshape that must keep the batch dynamic) behind the image
    # converter (uint8 input): the float32 input path is the backbone's, in test_export.
    if fmt not in supported_export_formats():
        pytest.skip(f"format={fmt!r} is not supported on the {BACKEND} backend")
    pytest.importorskip(RUNTIMES[fmt], reason=f"reloading {fmt} needs {RUNTIMES[fmt]}")
    converter = kv.ViTMSNImageConverter(image_size=(32, 32))
    model = kv.ViTMSNFeatureExtractor(backbone, pooling="patch", preprocessor=converter)
    (spec,) = model.export_input_signature()
    assert (tuple(spec.shape), spec.dtype) == ((None, 32, 32, 3), "uint8")
    path = artefact_path(tmp_path, fmt)
    model.export(path, format=fmt, verbose=False)
    run = runner(fmt, path)
    for batch, seed in ((3, 1), (1, 2)):  # neither is the batch size traced
        x = np.random.default_rng(seed).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        expected = to_numpy(model(x))
        got = run(x)
        assert got.shape == expected.shape == (batch, 4, 4, 32)
        diff = float(np.max(np.abs(got - expected)))
        assert diff <= TOL, f"{fmt} batch {batch}: max abs diff {diff:.2e} > {TOL}"


def cosine(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_int8_quantisation_and_keras_round_trip(tmp_path):
    backbone = tiny_backbone()
    randomize(backbone, scale=0.1)
    extractor = kv.ViTMSNFeatureExtractor(backbone, pooling="cls")
    x = images(4, seed=5)
    reference = to_numpy(extractor(x))
    extractor.quantize("int8")
    assert backbone.encoder_layers[0].attention.qkv.kernel.dtype == "int8"
    quantised = to_numpy(extractor(x))
    assert cosine(quantised, reference).min() >= 0.99
    extractor.save(tmp_path / "int8.keras")
    restored = keras.saving.load_model(tmp_path / "int8.keras")
    assert restored.backbone.encoder_layers[1].attention.qkv.quantization_mode == "int8"
    np.testing.assert_array_equal(to_numpy(restored(x)), quantised)
    restored.save_to_preset(tmp_path / "preset")
    again = kv.ViTMSNFeatureExtractor.from_preset(str(tmp_path / "preset"))
    assert again.pooling == "cls"
    np.testing.assert_array_equal(to_numpy(again(x)), quantised)


def test_lowshot_uses_the_extractor(backbone):
    x = images(5, seed=6)
    extractor = kv.ViTMSNFeatureExtractor(backbone)
    from_backbone = kv.lowshot.extract_features(backbone, x, batch_size=2, verbose=0)
    np.testing.assert_array_equal(
        kv.lowshot.extract_features(extractor, x, batch_size=2, verbose=0), from_backbone
    )
    np.testing.assert_allclose(
        from_backbone, expected_features(backbone, x, "cls_pre_norm"), atol=1e-5
    )
    with pytest.raises(ValueError, match="pooling must be one of"):
        kv.lowshot.extract_features(
            kv.ViTMSNFeatureExtractor(backbone, pooling="mean"), x, verbose=0
        )
    with_converter = kv.ViTMSNFeatureExtractor(
        backbone, preprocessor=kv.ViTMSNImageConverter(image_size=(32, 32))
    )
    with pytest.raises(ValueError, match="has its own preprocessor"):
        kv.lowshot.extract_features(with_converter, x, preprocessing="hub", verbose=0)
