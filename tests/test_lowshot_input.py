"""Low-shot input: integer images (raw pixels) never reach the backbone unnormalised.

With ``preprocessing=None`` the images go to the backbone as they are, so integer
ones are refused with an error saying what to pass; float images and integer images
with a preprocessing choice (or an extractor with its own preprocessor) go through.
"""

import keras
import numpy as np
import pytest

import keras_vitmsn as kv
from keras_vitmsn import lowshot

tf = pytest.importorskip("tensorflow")

TINY_BACKBONE = dict(
    image_shape=(32, 32, 3),
    patch_size=8,
    hidden_dim=32,
    num_layers=1,
    num_heads=4,
    intermediate_dim=64,
)


@pytest.fixture(scope="module")
def extractor():
    keras.utils.set_random_seed(0)
    return kv.ViTMSNFeatureExtractor(kv.ViTMSNBackbone(**TINY_BACKBONE))


@pytest.fixture(scope="module")
def pixels():
    labels = np.repeat(np.arange(2), 3)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    return images, labels


class Batches(keras.utils.PyDataset):
    def __init__(self, images, labels):
        super().__init__()
        self.images, self.labels = images, labels

    def __len__(self):
        return 2

    def __getitem__(self, index):
        part = slice(3 * index, 3 * index + 3)
        return self.images[part], self.labels[part]


def integer_sources(images, labels):
    return {
        "uint8 array": images,
        "uint16 array": images.astype(np.uint16) * 257,
        "int32 array": images.astype(np.int32),
        "tf.data": tf.data.Dataset.from_tensor_slices((images, labels)).batch(3),
        "PyDataset": Batches(images, labels),
        "generator": iter([(images[:3], labels[:3]), (images[3:], labels[3:])]),
    }


REFUSAL = r"integer images .*preprocessing=None.*preprocessing='hub'"


@pytest.mark.parametrize(
    "source",
    ["uint8 array", "uint16 array", "int32 array", "tf.data", "PyDataset", "generator"],
)
def test_extract_features_refuses_raw_integer_pixels(extractor, pixels, source):
    data = integer_sources(*pixels)[source]
    with pytest.raises(ValueError, match=REFUSAL):
        lowshot.extract_features(extractor, data, verbose=0)


def test_lowshot_eval_refuses_raw_integer_pixels_before_any_work(extractor, pixels):
    images, labels = pixels
    floats = images.astype("float32") / 127.5 - 1.0
    calls = []
    original = extractor.predict_on_batch
    extractor.predict_on_batch = lambda x: calls.append(1) or original(x)
    try:
        for train, test in ((images, images), (floats, images), (images, floats)):
            with pytest.raises(ValueError, match=REFUSAL):
                lowshot.lowshot_eval(
                    extractor, train, test, labels, labels, shots=(1,), num_splits=1, verbose=0
                )
    finally:
        del extractor.predict_on_batch
    assert calls == []  # refused before the training features were extracted


def test_lowshot_eval_on_a_backbone_refuses_uint8(pixels):
    images, labels = pixels
    keras.utils.set_random_seed(0)
    backbone = kv.ViTMSNBackbone(**TINY_BACKBONE)
    with pytest.raises(ValueError, match=REFUSAL):
        lowshot.lowshot_eval(backbone, images, images, labels, labels, shots=(1,), verbose=0)


def test_integer_pixels_with_a_preprocessing_choice_are_normalised(extractor, pixels):
    images, labels = pixels
    converter = kv.ViTMSNImageConverter(image_size=(32, 32))
    normalised = keras.ops.convert_to_numpy(converter(images))
    expected = lowshot.extract_features(extractor, normalised, verbose=0)
    for preprocessing in ("hub", converter):
        got = lowshot.extract_features(extractor, images, preprocessing=preprocessing, verbose=0)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    # An extractor with its own preprocessor normalises integer images itself.
    own = kv.ViTMSNFeatureExtractor(extractor.backbone, preprocessor=converter)
    np.testing.assert_allclose(
        lowshot.extract_features(own, images, verbose=0), expected, atol=1e-5
    )
    results = lowshot.lowshot_eval(
        extractor, images, images, labels, labels, shots=(1,), preprocessing="hub", verbose=0
    )
    assert 0.0 <= results[1].mean <= 1.0


def test_float_images_still_go_through_as_they_are(extractor, pixels):
    images, _ = pixels
    floats = images.astype("float32")
    direct = keras.ops.convert_to_numpy(extractor.predict_on_batch(floats))
    np.testing.assert_allclose(
        lowshot.extract_features(extractor, floats, verbose=0), direct, atol=1e-5
    )
