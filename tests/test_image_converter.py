"""ViTMSNImageConverter: agreement with transformers' ViTImageProcessor, layouts, tf.data."""

import json
import warnings

import keras
import numpy as np
import pytest

transformers = pytest.importorskip("transformers", reason="these tests compare with transformers")

from helpers import BACKEND
from helpers import to_numpy
from hf_reference import TINY
from hf_reference import make_hf_model

import keras_vitmsn as kv
from keras_vitmsn.images.converter import paper_resize_geometry

MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")
# PIL resizes uint8 images and rounds to uint8 after each of its two passes; a float
# pipeline cannot reproduce those roundings, so single values may differ by up to one
# uint8 step, 1 / (255 * std) after normalisation (0.0171-0.0175 per channel).
ONE_UINT8_STEP = 1.0 / (255.0 * STD)


def processor():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "falls back to ViTImageProcessorPil" without torchvision
        return transformers.ViTImageProcessor(
            size={"height": 224, "width": 224}, image_mean=MEAN.tolist(), image_std=STD.tolist()
        )


def reference(image):
    return processor()(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)


def smooth_image(rng, height, width):
    """Photo-like: smooth colour fields with a hard edge."""
    coarse = rng.random((height // 16 + 2, width // 16 + 2, 3)).astype("float32") * 255
    image = keras.ops.convert_to_numpy(
        keras.ops.image.resize(coarse[None], (height, width), interpolation="bicubic")
    )[0]
    image[height // 3 : height // 2, :, 0] = 255
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


CASES = {
    "noise_upscale_100x150": lambda rng: rng.integers(0, 256, (100, 150, 3), dtype=np.uint8),
    "noise_downscale_480x640": lambda rng: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
    "noise_downscale_300x260": lambda rng: rng.integers(0, 256, (300, 260, 3), dtype=np.uint8),
    "photo_downscale_375x500": lambda rng: smooth_image(rng, 375, 500),
    "photo_upscale_160x96": lambda rng: smooth_image(rng, 160, 96),
    "same_size_224": lambda rng: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_vit_image_processor(case, rng):
    image = CASES[case](rng)
    converter = kv.ViTMSNImageConverter()
    diff = np.abs(to_numpy(converter(image)) - reference(image))
    within = float(np.mean(diff <= 1e-2))
    print(
        f"\n[image converter {BACKEND} vs ViTImageProcessor, {case}] max {diff.max():.4f}, "
        f"mean {diff.mean():.5f}, {100 * within:.1f}% of values within 1e-2"
    )
    assert diff.mean() <= 1e-2
    assert np.all(diff.max(axis=(0, 1)) <= ONE_UINT8_STEP + 1e-5)
    if case == "same_size_224":
        assert diff.max() <= 1e-5  # no resize: only rescale and normalise


def test_antialias_is_what_matches_pil_when_downscaling(rng):
    image = CASES["photo_downscale_375x500"](rng)
    aliased = kv.ViTMSNImageConverter(antialias=False)
    diff = np.abs(to_numpy(aliased(image)) - reference(image)).max()
    print(f"\n[image converter {BACKEND}] antialias=False downscaling: max diff {diff:.3f}")
    assert diff > 0.2


def test_uint8_float_single_and_batched_inputs_agree(rng):
    converter = kv.ViTMSNImageConverter(image_size=(64, 48))
    images = rng.integers(0, 256, (3, 80, 90, 3), dtype=np.uint8)
    batched = to_numpy(converter(images))
    assert batched.shape == (3, 64, 48, 3) and batched.dtype == np.float32
    np.testing.assert_allclose(to_numpy(converter(images.astype("float32"))), batched, atol=1e-6)
    np.testing.assert_allclose(to_numpy(converter(images[1])), batched[1], atol=1e-6)
    backend_tensor = keras.ops.convert_to_tensor(images)
    np.testing.assert_allclose(to_numpy(converter(backend_tensor)), batched, atol=1e-6)


def test_channels_first(rng):
    images = rng.integers(0, 256, (2, 50, 70, 3), dtype=np.uint8)
    last = to_numpy(
        kv.ViTMSNImageConverter(image_size=(32, 40), data_format="channels_last")(images)
    )
    first = kv.ViTMSNImageConverter(image_size=(32, 40), data_format="channels_first")
    out = to_numpy(first(np.transpose(images, (0, 3, 1, 2))))
    assert out.shape == (2, 3, 32, 40)
    np.testing.assert_allclose(np.transpose(out, (0, 2, 3, 1)), last, atol=1e-5)
    single = to_numpy(first(np.transpose(images[0], (2, 0, 1))))
    np.testing.assert_allclose(single, out[0], atol=1e-5)


def test_rescale_and_normalisation_can_be_switched_off(rng):
    images = rng.random((2, 16, 16, 3)).astype("float32")
    identity = kv.ViTMSNImageConverter(image_size=None, mean=None, std=None, rescale_factor=None)
    np.testing.assert_array_equal(to_numpy(identity(images)), images)
    unit = kv.ViTMSNImageConverter(image_size=None, rescale_factor=None)
    np.testing.assert_allclose(to_numpy(unit(images)), (images - MEAN) / STD, atol=1e-6)


def test_inside_tf_data_under_every_backend(rng):
    tf = pytest.importorskip("tensorflow")
    converter = kv.ViTMSNImageConverter(image_size=(48, 40))
    images = rng.integers(0, 256, (4, 60, 50, 3), dtype=np.uint8)
    eager = to_numpy(converter(images))

    per_image = tf.data.Dataset.from_tensor_slices(images).map(converter).batch(4)
    batch = next(iter(per_image))
    assert isinstance(batch, tf.Tensor) and batch.dtype == tf.float32
    np.testing.assert_allclose(batch.numpy(), eager, atol=1e-4)

    batched = tf.data.Dataset.from_tensor_slices(images).batch(2).map(converter)
    np.testing.assert_allclose(np.concatenate([b.numpy() for b in batched]), eager, atol=1e-4)

    # Decoded images of unknown, varying sizes.
    sizes = [(30, 70), (64, 64), (100, 20)]
    variable = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(variable), output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    ).map(converter)
    for image, out in zip(variable, dataset):
        assert out.shape == (48, 40, 3)
        np.testing.assert_allclose(out.numpy(), to_numpy(converter(image)), atol=1e-4)


def test_symbolic_use_in_a_functional_model(rng):
    converter = kv.ViTMSNImageConverter(image_size=(32, 32))
    inputs = keras.Input((None, None, 3), dtype="uint8")
    outputs = converter(inputs)
    assert tuple(outputs.shape) == (None, 32, 32, 3)
    model = keras.Model(inputs, outputs)
    images = rng.integers(0, 256, (2, 50, 40, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        model.predict(images, verbose=0), to_numpy(converter(images)), atol=1e-5
    )


def paper_reference(image, crop=224, resize=256):
    """torchvision's Resize(resize) + CenterCrop(crop) on a PIL image, normalised."""
    from PIL import Image

    height, width = image.shape[:2]
    # Resize(int): the shorter side becomes `resize`, the longer int(resize * long / short).
    if height <= width:
        size = (int(resize * width / height), resize)
    else:
        size = (resize, int(resize * height / width))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    top = int(round((resized.shape[0] - crop) / 2.0))
    left = int(round((resized.shape[1] - crop) / 2.0))
    cropped = resized[top : top + crop, left : left + crop].astype("float32") / 255.0
    return (cropped - MEAN) / STD


@pytest.mark.parametrize(
    "shape", [(300, 400), (500, 375), (480, 640), (301, 257), (224, 224), (200, 150)]
)
def test_paper_transform_matches_resize_then_center_crop(shape, rng):
    image = smooth_image(rng, *shape)
    converter = kv.ViTMSNImageConverter(image_size=(224, 224), resize_mode="paper")
    got = to_numpy(converter(image))
    diff = np.abs(got - paper_reference(image))
    print(f"\n[paper transform {BACKEND}, {shape}] max {diff.max():.4f}, mean {diff.mean():.5f}")
    assert got.shape == (224, 224, 3)
    assert diff.mean() <= 1e-2
    assert np.all(diff.max(axis=(0, 1)) <= ONE_UINT8_STEP + 1e-5)
    # Not the hub transform (which squeezes the whole image into 224x224).
    assert np.abs(got - to_numpy(kv.ViTMSNImageConverter()(image))).max() > 0.1


def test_paper_transform_scales_with_the_model_size(rng):
    image = smooth_image(rng, 150, 180)
    converter = kv.ViTMSNImageConverter(image_size=(112, 112), resize_mode="paper")
    assert paper_resize_geometry(150, 180, (112, 112)) == (128, 153, 8, 20)
    diff = np.abs(to_numpy(converter(image)) - paper_reference(image, crop=112, resize=128))
    assert np.all(diff.max(axis=(0, 1)) <= ONE_UINT8_STEP + 1e-5)


def test_paper_transform_in_tf_data_and_in_a_model(rng):
    tf = pytest.importorskip("tensorflow")
    converter = kv.ViTMSNImageConverter(image_size=(48, 40), resize_mode="paper")
    sizes = [(30, 70), (64, 64), (100, 21), (57, 40)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    ).map(converter)
    assert dataset.element_spec.shape == (48, 40, 3)
    for image, out in zip(images, dataset):
        np.testing.assert_allclose(out.numpy(), to_numpy(converter(image)), atol=1e-4)
    inputs = keras.Input((57, 40, 3), dtype="uint8")
    model = keras.Model(inputs, converter(inputs))
    batch = np.stack([images[3], images[3][::-1]])
    np.testing.assert_allclose(
        model.predict(batch, verbose=0), to_numpy(converter(batch)), atol=1e-5
    )
    first = kv.ViTMSNImageConverter(
        image_size=(48, 40), resize_mode="paper", data_format="channels_first"
    )
    out = to_numpy(first(np.transpose(batch, (0, 3, 1, 2))))
    np.testing.assert_allclose(
        np.transpose(out, (0, 2, 3, 1)), to_numpy(converter(batch)), atol=1e-5
    )


def test_input_range_comes_from_the_dtype_or_is_declared(rng):
    images = rng.integers(0, 256, (2, 40, 36, 3), dtype=np.uint8)
    expected = to_numpy(kv.ViTMSNImageConverter(image_size=(32, 32))(images))
    as_uint16 = images.astype(np.uint16) * 257  # the same picture at 16 bits
    for declared in [(0, 255), (0, 1)]:  # the dtype wins over a declared range
        converter = kv.ViTMSNImageConverter(image_size=(32, 32), input_range=declared)
        np.testing.assert_allclose(to_numpy(converter(images)), expected, atol=1e-5)
        np.testing.assert_allclose(to_numpy(converter(as_uint16)), expected, atol=1e-5)
    unit = kv.ViTMSNImageConverter(image_size=(32, 32), input_range=(0, 1))
    np.testing.assert_allclose(to_numpy(unit(images / np.float32(255))), expected, atol=1e-5)
    signed = kv.ViTMSNImageConverter(image_size=(32, 32), input_range=(-1, 1))
    np.testing.assert_allclose(
        to_numpy(signed(images / np.float32(127.5) - 1)), expected, atol=1e-5
    )


def test_float_input_outside_the_declared_range_raises(rng):
    images = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(
        ValueError,
        match=r"values in \[0, 65535\], outside the converter's "
        r"input_range \(0.0, 255.0\).*input_range=\(0, 1\)",
    ):
        kv.ViTMSNImageConverter()(images.astype("float32") * 257)
    unit = kv.ViTMSNImageConverter(input_range=(0, 1))
    with pytest.raises(ValueError, match=r"outside the converter's input_range \(0.0, 1.0\)"):
        unit(keras.ops.convert_to_tensor(images.astype("float32")))  # eager backend tensors too
    with pytest.raises(ValueError, match="outside the converter's input_range"):
        kv.ViTMSNImageConverter()(images.astype("float32") - 1)


def test_uint16_images_in_tf_data_keep_their_range(rng):
    # Inside tf.data, Keras casts inputs to float32 before `call`; the dtype is read first.
    tf = pytest.importorskip("tensorflow")
    images = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    converter = kv.ViTMSNImageConverter(image_size=(16, 16))
    as_uint16 = images.astype(np.uint16) * 257
    out = next(iter(tf.data.Dataset.from_tensor_slices(as_uint16).batch(2).map(converter)))
    np.testing.assert_allclose(out.numpy(), to_numpy(converter(images)), atol=1e-4)


@pytest.mark.parametrize("input_range", [(1, 0), (0, 0), (0,), "0-255", (0, float("inf")), None])
def test_invalid_input_range(input_range):
    with pytest.raises(
        ValueError, match="`input_range` must be \\(low, high\\) with finite low < high"
    ):
        kv.ViTMSNImageConverter(input_range=input_range)


def test_config_round_trip():
    paper = kv.ViTMSNImageConverter(image_size=(96, 96), resize_mode="paper")
    assert kv.ViTMSNImageConverter.from_config(paper.get_config()).resize_mode == "paper"
    converter = kv.ViTMSNImageConverter(
        image_size=(96, 64),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bicubic",
        antialias=False,
        rescale_factor=1 / 127.5,
        data_format="channels_first",
        name="conv",
        input_range=(0, 1),
    )
    assert converter.get_config()["input_range"] == (0.0, 1.0)
    config = converter.get_config()
    assert kv.ViTMSNImageConverter.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(converter))
    assert isinstance(restored, kv.ViTMSNImageConverter) and restored.get_config() == config


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(interpolation="area"), "`interpolation` must be one of bilinear"),
        (dict(mean=(0.5,) * 3, std=None), "both be given or both be None"),
        (dict(std=(0.2, 0.0, 0.2)), "`std` values must be positive"),
        (dict(mean=(0.5,) * 4), "one value per channel each; got 4 and 3"),
        (dict(image_size=(224,)), r"`image_size` must be \(height, width\)"),
        (dict(data_format="nhwc"), "`data_format` must be"),
        (dict(resize_mode="crop"), "`resize_mode` must be one of hub, paper"),
        (dict(resize_mode="paper", image_size=None), "give an image_size"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kv.ViTMSNImageConverter(**kwargs)


def test_invalid_inputs():
    converter = kv.ViTMSNImageConverter(image_size=(32, 32))
    with pytest.raises(ValueError, match=r"Images must be \(height, width, channels\)"):
        converter(np.zeros((32, 32), "uint8"))
    with pytest.raises(ValueError, match="Images have 4 channels.*`mean`/`std` have 3 values"):
        converter(np.zeros((1, 32, 32, 4), "uint8"))


def test_from_transformers_preprocessor_config(tmp_path):
    make_hf_model(tmp_path, TINY)
    config = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": 48, "width": 40},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 0.5,
        "do_normalize": True,
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6],
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    converter = kv.ViTMSNImageConverter.from_preset(str(tmp_path))
    assert converter.image_size == (48, 40) and converter.interpolation == "bicubic"
    assert converter.rescale_factor == 0.5
    assert converter.mean == (0.1, 0.2, 0.3) and converter.std == (0.4, 0.5, 0.6)

    # The old feature-extractor format of the hub repositories (size as an int).
    legacy = {
        "feature_extractor_type": "ViTFeatureExtractor",
        "size": 32,
        "resample": 2,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    converter = kv.ViTMSNImageConverter.from_preset(str(tmp_path))
    assert converter.image_size == (32, 32) and converter.rescale_factor == pytest.approx(1 / 255)

    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(dict(config, do_center_crop=True))
    )
    with pytest.raises(ValueError, match="center crop"):
        kv.ViTMSNImageConverter.from_preset(str(tmp_path))
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(dict(config, image_processor_type="CLIPImageProcessor"))
    )
    with pytest.raises(ValueError, match="Unsupported image processor 'CLIPImageProcessor'"):
        kv.ViTMSNImageConverter.from_preset(str(tmp_path))
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(dict(config, size={"shortest_edge": 224}))
    )
    with pytest.raises(ValueError, match="Unsupported resize size"):
        kv.ViTMSNImageConverter.from_preset(str(tmp_path))


def test_defaults_without_a_preprocessor_config(tmp_path):
    make_hf_model(tmp_path, TINY)  # save_pretrained of a model writes none
    converter = kv.ViTMSNImageConverter.from_preset(str(tmp_path))
    assert converter.image_size == (32, 32)
    assert converter.mean == (0.485, 0.456, 0.406) and converter.std == (0.229, 0.224, 0.225)
    assert converter.interpolation == "bilinear" and converter.antialias
