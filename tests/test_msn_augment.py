"""MSN multi-view augmentation: each transform against an independent expectation, the
view recipe, the tf.data pipeline (three kinds of source), seeding and every error."""

import colorsys
import doctest
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_vitmsn as kv
from keras_vitmsn.images.folders import write_toy_image_folder
from keras_vitmsn.msn import augment
from keras_vitmsn.msn.augment import MSNAugmentation
from keras_vitmsn.msn.augment import msn_multiview_dataset
from keras_vitmsn.msn.augment import random_resized_crop_box

LUMA = np.array([0.299, 0.587, 0.114], "float32")
TINY = dict(global_size=16, focal_size=8, num_focal_views=3)
# Hands the views over in [0, 255], so the tests see the transforms alone.
RAW = dict(image_size=None, mean=None, std=None, rescale_factor=None)


def plain(**overrides):
    """Whole-image crops, every random transform off, no normalisation."""
    kwargs = dict(
        global_size=16,
        focal_size=8,
        num_focal_views=0,
        global_scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip_probability=0.0,
        color_jitter=None,
        grayscale_probability=0.0,
        blur_probability=0.0,
        image_converter=kv.ViTMSNImageConverter(**RAW),
    )
    kwargs.update(overrides)
    return MSNAugmentation(**kwargs)


def np_views(augmentation, image, seed):
    return {k: np.asarray(v) for k, v in augmentation.views(image, seed).items()}


def batches(dataset):
    return [{k: np.asarray(v) for k, v in b.items()} for b in dataset]


def colour_image(seed=0, size=16):
    """Saturated random colours, so every pixel has a well-defined hue."""
    rng = np.random.default_rng(seed)
    hsv = np.stack(
        [
            rng.random((size, size)),
            rng.uniform(0.5, 1.0, (size, size)),
            rng.uniform(0.4, 0.9, (size, size)),
        ],
        -1,
    )
    rgb = np.array([colorsys.hsv_to_rgb(*p) for p in hsv.reshape(-1, 3)]).reshape(hsv.shape)
    return (rgb * 255).astype("float32")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def recipe():
    """The paper's recipe at tiny sizes (blur radius 6 fits the 8-px focal views)."""
    return MSNAugmentation(**TINY)


# -- the examples in the docstrings --------------------------------------------------------


@pytest.mark.parametrize("module", [augment.recipe, augment.ops, augment.dataset, augment.batched])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


# -- one image: the recipe --------------------------------------------------------------


def test_views_keys_shapes_dtypes_and_seeding(recipe, images):
    views = np_views(recipe, images[0], [3, 4])
    assert list(views) == ["target", "anchor", "focal"]
    assert views["target"].shape == views["anchor"].shape == (16, 16, 3)
    assert views["focal"].shape == (3, 8, 8, 3)
    assert all(v.dtype == np.float32 for v in views.values())
    again = np_views(recipe, tf.constant(images[0]), tf.constant([3, 4], tf.int32))
    for k in views:
        np.testing.assert_array_equal(views[k], again[k])
    other = np_views(recipe, images[0], [3, 5])
    assert not np.allclose(views["target"], other["target"])
    assert not np.allclose(views["target"], views["anchor"])  # two different crops
    focal = views["focal"].reshape(3, -1)
    assert not np.allclose(focal[0], focal[1]) and not np.allclose(focal[1], focal[2])
    # Float images in [0, 255] give the same views as uint8 ones.
    as_float = np_views(recipe, images[0].astype("float32"), [3, 4])
    np.testing.assert_allclose(as_float["focal"], views["focal"], atol=1e-5)


def test_channels_first_converter_transposes_the_same_views(recipe, images):
    first = MSNAugmentation(
        **TINY, image_converter=kv.ViTMSNImageConverter(data_format="channels_first")
    )
    assert first.data_format == "channels_first" and recipe.data_format == "channels_last"
    a, b = np_views(recipe, images[1], [0, 7]), np_views(first, images[1], [0, 7])
    assert b["target"].shape == b["anchor"].shape == (3, 16, 16)
    assert b["focal"].shape == (3, 3, 8, 8)
    np.testing.assert_allclose(b["target"], a["target"].transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_allclose(b["focal"], a["focal"].transpose(0, 3, 1, 2), atol=1e-6)


def test_no_focal_views():
    views = np_views(plain(num_focal_views=0), np.zeros((20, 20, 3), "uint8"), [0, 0])
    assert set(views) == {"target", "anchor"}


def test_normalisation_is_the_converters(images):
    # Its image_size is ignored: views are never resized by the converter.
    converter = kv.ViTMSNImageConverter(image_size=(224, 224))
    image = images[2, :16, :16]
    views = np_views(plain(image_converter=converter), image, [0, 1])
    expected = np.asarray(kv.ViTMSNImageConverter(image_size=None)(image))  # backend's ops
    np.testing.assert_allclose(views["target"], expected, atol=1e-5)
    np.testing.assert_allclose(views["anchor"], expected, atol=1e-5)
    mean, std = np.array(kv.utils.IMAGENET_MEAN), np.array(kv.utils.IMAGENET_STD)
    np.testing.assert_allclose(views["target"], (image / 255.0 - mean) / std, atol=1e-5)


def test_config_round_trip_through_json():
    augmentation = MSNAugmentation(
        global_size=(32, 24),
        focal_size=12,
        num_focal_views=2,
        color_jitter=None,
        blur_sigma=(0.5, 1.5),
        image_converter=kv.ViTMSNImageConverter(
            data_format="channels_first", mean=(0.5,) * 3, std=(0.25,) * 3
        ),
    )
    config = json.loads(json.dumps(augmentation.get_config()))
    restored = MSNAugmentation.from_config(config)
    assert restored.get_config() == augmentation.get_config()
    assert restored.global_size == (32, 24) and restored.focal_size == (12, 12)
    assert restored.data_format == "channels_first" and restored.color_jitter is None
    assert restored.image_converter.mean == (0.5,) * 3
    default = MSNAugmentation.from_config(MSNAugmentation().get_config())
    assert default.get_config() == MSNAugmentation().get_config()
    assert default.image_converter is None and default.data_format in (
        "channels_last",
        "channels_first",
    )
    assert default.global_size == (224, 224) and default.num_focal_views == 10
    assert "global_size=(224, 224)" in repr(default)


# -- each transform alone -------------------------------------------------------------------


def pil_resize(image, size):
    """PIL's antialiased bilinear resize of a float image, channel by channel."""
    channels = [
        Image.fromarray(np.ascontiguousarray(image[..., c], "float32"), mode="F").resize(
            (size[1], size[0]), Image.BILINEAR
        )
        for c in range(image.shape[-1])
    ]
    return np.stack([np.asarray(c) for c in channels], -1)


def test_crop_of_whole_image_is_a_resize(images):
    image = images[3].astype("float32")
    views = np_views(plain(global_size=(16, 12)), image, [1, 1])
    np.testing.assert_allclose(views["target"], pil_resize(image, (16, 12)), atol=0.05)
    # Upscaling (no antialiasing then) matches too.
    views = np_views(plain(global_size=48), image, [1, 1])
    np.testing.assert_allclose(views["target"], pil_resize(image, (48, 48)), atol=0.05)


def test_impossible_crop_falls_back_to_the_central_crop(images):
    image = images[4, :24, :].astype("float32")  # 24 x 32: wider than ratio allows
    views = np_views(plain(global_size=24), image, [2, 2])
    np.testing.assert_allclose(views["target"], image[:, 4:28], atol=1e-4)


def test_flip_reverses_columns(images):
    image = images[5, :16, :16]
    views = np_views(plain(flip_probability=1.0), image, [0, 3])
    np.testing.assert_allclose(views["target"], image[:, ::-1], atol=1e-4)


def test_flip_probability_is_respected(images):
    augmentation = plain(flip_probability=0.5)
    image = images[5, :16, :16].astype("float32")
    flipped = [
        np.allclose(np_views(augmentation, image, [i, 0])["target"], image[:, ::-1], atol=1e-4)
        for i in range(40)
    ]
    assert 8 <= sum(flipped) <= 32


def test_grayscale_is_the_601_luma_in_three_channels(images):
    image = images[6, :16, :16].astype("float32")
    view = np_views(plain(grayscale_probability=1.0), image, [0, 0])["target"]
    np.testing.assert_allclose(view, np.repeat((image @ LUMA)[..., None], 3, -1), atol=1e-3)


def recovered_factor(out, image, base):
    """Least-squares f in out = f * image + (1 - f) * base, on the unclipped pixels."""
    keep = (out > 0.5) & (out < 254.5)
    a, b = (image - base)[keep], (out - base)[keep]
    f = float(np.sum(a * b) / np.sum(a * a))
    return f, float(np.max(np.abs(f * a - b)))


@pytest.mark.parametrize("part", ["brightness", "contrast", "saturation"])
def test_brightness_contrast_saturation_blend_with_a_factor_in_range(part, images):
    jitter = {
        "brightness": (0.4, 0, 0, 0),
        "contrast": (0, 0.4, 0, 0),
        "saturation": (0, 0, 0.4, 0),
    }[part]
    augmentation = plain(color_jitter=jitter, color_jitter_probability=1.0)
    image = images[7, :16, :16].astype("float32")
    luma = image @ LUMA
    base = {
        "brightness": np.zeros_like(image),
        "contrast": np.full_like(image, luma.mean()),
        "saturation": np.repeat(luma[..., None], 3, -1),
    }[part]
    factors = []
    for i in range(12):
        out = np_views(augmentation, image, [i, 1])["target"]
        f, residual = recovered_factor(out, image, base)
        assert residual < 0.05, (part, f, residual)
        # Clipped pixels are the ones the blend pushes out of [0, 255].
        np.testing.assert_allclose(out, np.clip(f * image + (1 - f) * base, 0, 255), atol=0.05)
        factors.append(f)
    assert 0.6 - 1e-4 <= min(factors) and max(factors) <= 1.4 + 1e-4
    assert max(factors) - min(factors) > 0.2  # drawn anew for every view


def test_hue_shifts_only_the_hue_within_range():
    image = colour_image()
    augmentation = plain(color_jitter=(0, 0, 0, 0.1), color_jitter_probability=1.0)
    hsv_in = np.array([colorsys.rgb_to_hsv(*p) for p in (image / 255).reshape(-1, 3)])
    shifts = []
    for i in range(6):
        out = np_views(augmentation, image, [i, 9])["target"]
        hsv = np.array([colorsys.rgb_to_hsv(*p) for p in (out / 255).reshape(-1, 3)])
        np.testing.assert_allclose(hsv[:, 1:], hsv_in[:, 1:], atol=2e-3)  # S and V kept
        shift = (hsv[:, 0] - hsv_in[:, 0] + 0.5) % 1.0 - 0.5
        assert np.ptp(shift) < 2e-3  # the same shift everywhere
        assert abs(shift.mean()) <= 0.1 + 1e-3
        shifts.append(shift.mean())
    assert np.ptp(shifts) > 0.02


def test_jitter_probability_and_all_four_together():
    image = colour_image(1)
    never = plain(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_probability=0.0)
    np.testing.assert_allclose(np_views(never, image, [0, 0])["target"], image, atol=1e-3)
    always = plain(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_probability=1.0)
    outs = [np_views(always, image, [i, 2])["target"] for i in range(4)]
    for out in outs:
        assert 0.0 <= out.min() and out.max() <= 255.0 + 1e-3
        assert not np.allclose(out, image, atol=1.0)
    assert not np.allclose(outs[0], outs[1])


def gaussian_kernel(sigma, radius):
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def numpy_blur(image, sigma, radius):
    """Separable Gaussian blur with reflect padding, in NumPy."""
    k = gaussian_kernel(sigma, radius)
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(k[t] * padded[t : t + image.shape[0]] for t in range(2 * radius + 1))
    return sum(k[t] * rows[:, t : t + image.shape[1]] for t in range(2 * radius + 1))


def test_blur_keeps_a_constant_image():
    image = np.full((16, 16, 3), 77.0, "float32")
    augmentation = plain(blur_probability=1.0, blur_sigma=(0.1, 2.0))
    for i in range(3):
        np.testing.assert_allclose(np_views(augmentation, image, [i, 0])["target"], 77.0, atol=1e-3)


@pytest.mark.parametrize("where", ["centre", "corner"])
def test_blur_with_a_fixed_sigma_matches_numpy_reflect_blur(where):
    image = np.zeros((16, 16, 3), "float32")
    image[(8, 8) if where == "centre" else (0, 1)] = 255.0
    augmentation = plain(blur_probability=1.0, blur_sigma=(1.2, 1.2))  # radius 4
    view = np_views(augmentation, image, [0, 0])["target"]
    np.testing.assert_allclose(view, numpy_blur(image, 1.2, 4), atol=1e-3)
    if where == "centre":
        np.testing.assert_allclose(view.sum(axis=(0, 1)), 255.0, rtol=1e-5)  # mean kept
        np.testing.assert_allclose(view[1:, 1:], view[:0:-1, :0:-1], atol=1e-4)  # symmetric


def test_random_sigma_blur_keeps_the_mean_and_has_sigma_in_range():
    image = np.zeros((32, 32, 3), "float32")
    image[16, 16] = 255.0
    augmentation = plain(global_size=32, blur_probability=1.0, blur_sigma=(0.5, 2.0))
    sigmas = []
    for i in range(6):
        view = np_views(augmentation, image, [i, 4])["target"][..., 0]
        np.testing.assert_allclose(view.sum(), 255.0, rtol=1e-5)
        profile = view.sum(axis=0) / 255.0
        t = np.arange(32) - 16
        sigmas.append(np.sqrt(np.sum(profile * t**2)))
    # The kernel is cut at 3 sigma of the largest sigma, which changes its spread < 1%.
    assert 0.5 * 0.99 <= min(sigmas) and max(sigmas) <= 2.0 * 1.01
    assert max(sigmas) - min(sigmas) > 0.2


def test_crop_box_sampler_statistics():
    scale, ratio = (0.05, 0.3), (3 / 4, 4 / 3)
    seeds = tf.stack([tf.range(1000, dtype=tf.int64), tf.fill([1000], tf.constant(7, tf.int64))], 1)
    draw = tf.function(
        lambda s: tf.map_fn(
            lambda x: random_resized_crop_box(200, 300, scale, ratio, x),
            s,
            fn_output_signature=tf.int32,
            parallel_iterations=100,
        )
    )
    top, left, h, w = np.asarray(draw(seeds)).T.astype("float64")
    assert top.min() >= 0 and left.min() >= 0 and (top + h).max() <= 200 and (left + w).max() <= 300
    area = h * w / (200 * 300)
    # Rounding the sides to whole pixels moves them by at most 0.5 px.
    assert area.min() >= scale[0] * 0.95 and area.max() <= scale[1] * 1.03
    assert np.exp(np.log(w / h)).min() >= ratio[0] * 0.97 and (w / h).max() <= ratio[1] * 1.03
    assert abs(area.mean() - np.mean(scale)) < 0.01  # uniform in scale
    assert abs(np.log(w / h).mean()) < 0.02  # log-uniform in ratio, centred on 1
    assert abs(np.mean(top / (200 - h)) - 0.5) < 0.05  # uniform position
    assert len({tuple(b) for b in zip(top, left, h, w)}) > 500


def test_crop_box_fallback_and_whole_image():
    box = lambda h, w, s, r: random_resized_crop_box(h, w, s, r, [0, 0]).numpy().tolist()
    assert box(100, 200, (1, 1), (1, 1)) == [0, 50, 100, 100]
    assert box(200, 100, (1, 1), (1, 1)) == [50, 0, 100, 100]
    assert box(100, 100, (1, 1), (1, 1)) == [0, 0, 100, 100]
    assert box(60, 80, (1, 1), (3 / 4, 4 / 3)) == [0, 0, 60, 80]  # aspect already allowed


# -- the tf.data pipeline --------------------------------------------------------------------


def test_dataset_batches_seeding_and_epochs(images):
    # Colour jitter off only to trace faster; views() is checked with it above.
    recipe = MSNAugmentation(**TINY, color_jitter=None)
    first = msn_multiview_dataset(images, 4, recipe, seed=1)
    assert len(first) == 2
    epoch_1, epoch_2 = batches(first), batches(first)
    b = epoch_1[0]
    assert list(b) == ["target", "anchor", "focal"]
    assert b["target"].shape == b["anchor"].shape == (4, 16, 16, 3)
    assert b["focal"].shape == (4, 3, 8, 8, 3)
    assert all(v.dtype == np.float32 for v in b.values())
    assert not np.allclose(epoch_1[0]["target"], epoch_2[0]["target"])  # new epoch, new views
    # Built again with the same seed: the same batches; repeat only adds passes.
    repeated = batches(msn_multiview_dataset(images, 4, recipe, seed=1, repeat=True).take(4))
    for k in b:
        np.testing.assert_array_equal(repeated[0][k], epoch_1[0][k])
        np.testing.assert_array_equal(repeated[1][k], epoch_1[1][k])
    assert not np.allclose(repeated[2]["target"], repeated[0]["target"])


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_arrays_get_the_views_of_the_per_image_path(images, data_format):
    """An array's views are rendered a batch at a time (batched.py); a tf.data source
    of the same images takes the per-image ``views``. Same seed, same order: the same
    views, with every transform of the paper's recipe on, and the last short batch."""
    converter = kv.ViTMSNImageConverter(image_size=None, data_format=data_format)
    recipe = MSNAugmentation(**dict(TINY, image_converter=converter))
    source = np.concatenate([images, images[:3, ::-1]])  # 11 images: batches of 4, 4, 3
    kwargs = dict(batch_size=4, augmentation=recipe, shuffle=False, seed=5, drop_remainder=False)
    by_batch = batches(msn_multiview_dataset(source, **kwargs))
    per_image = batches(msn_multiview_dataset(tf.data.Dataset.from_tensor_slices(source), **kwargs))
    assert [b["target"].shape[0] for b in by_batch] == [4, 4, 3]
    for got, want in zip(by_batch, per_image, strict=True):
        assert set(got) == set(want) == {"target", "anchor", "focal"}
        for k in want:
            assert got[k].shape == want[k].shape
            np.testing.assert_allclose(got[k], want[k], atol=1e-4)


def test_batched_resize_is_tensorflows_antialiased_resize_of_the_crop():
    rng = np.random.default_rng(4)
    x = rng.random((6, 23, 17, 3)).astype("float32")
    boxes = np.array(
        [
            [0, 0, 23, 17],
            [3, 2, 5, 4],
            [1, 6, 20, 11],
            [10, 0, 1, 1],
            [2, 3, 14, 9],
            [0, 16, 23, 1],
        ],
        "int32",
    )
    for size in [(8, 8), (32, 20), (5, 31)]:  # down, up, mixed
        got = augment.batched.resize_crops(x, boxes, size).numpy()
        for i, (t, l, h, w) in enumerate(boxes):
            want = tf.image.resize(x[i, t : t + h, l : l + w], size, antialias=True).numpy()
            np.testing.assert_allclose(got[i], want, atol=1e-5)


def test_dataset_without_focal_views_and_remainder(images):
    dataset = msn_multiview_dataset(
        images[:6], 4, plain(flip_probability=0.5), drop_remainder=False, shuffle=False, seed=None
    )
    sizes = [(set(b), b["target"].shape[0]) for b in batches(dataset)]
    assert sizes == [({"target", "anchor"}, 4), ({"target", "anchor"}, 2)]


def test_dataset_from_a_folder(tmp_path):
    root = write_toy_image_folder(tmp_path / "images", num_classes=2, per_class=3, size=32)
    nested = tmp_path / "images" / "class_1" / "more"
    nested.mkdir()
    Image.fromarray(np.full((20, 28, 3), 200, "uint8")).save(nested / "x.JPG")
    Image.fromarray(np.full((20, 28), 50, "uint8")).save(nested / "gray.bmp")  # decoded to RGB
    (nested / "notes.txt").write_text("not an image")
    paths = augment.list_image_files(root)
    assert len(paths) == 8 and all(not p.endswith(".txt") for p in paths)
    dataset = msn_multiview_dataset(
        root, 8, plain(num_focal_views=1, focal_scale=(0.05, 0.3), ratio=(3 / 4, 4 / 3)), seed=0
    )
    (batch,) = batches(dataset)
    assert batch["target"].shape == (8, 16, 16, 3) and batch["focal"].shape == (8, 1, 8, 8, 3)
    assert np.all(np.isfinite(batch["focal"]))


def test_dataset_from_a_one_channel_array(images):
    gray = images[:4, :, :, :1]
    augmentation = plain(
        global_scale=(0.3, 1.0),
        ratio=(3 / 4, 4 / 3),
        flip_probability=0.5,
        blur_probability=0.5,
        num_focal_views=2,
        focal_scale=(0.05, 0.3),
        focal_size=12,
    )
    (batch,) = batches(msn_multiview_dataset(gray, 4, augmentation, seed=0))
    assert batch["focal"].shape == (4, 2, 12, 12, 3)
    for views in batch.values():  # the channel is replicated
        np.testing.assert_allclose(views[..., 0], views[..., 1], atol=1e-4)
        np.testing.assert_allclose(views[..., 0], views[..., 2], atol=1e-4)


def test_dataset_from_tf_data_pairs_drops_labels(images):
    labels = np.arange(8)
    pairs = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)  # batched: unbatched
    dataset = msn_multiview_dataset(pairs, 4, plain(num_focal_views=1), seed=0, shuffle=True)
    out = batches(dataset)
    assert len(out) == 2 and set(out[0]) == {"target", "anchor", "focal"}
    plain_images = tf.data.Dataset.from_tensor_slices(images[:, :16, :16])
    (batch, _) = batches(msn_multiview_dataset(plain_images, 4, plain(), shuffle=False))
    np.testing.assert_allclose(batch["target"], images[:4, :16, :16], atol=1e-4)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(global_size=0), r"`global_size` must be a positive int or \(height, width\)"),
        (dict(focal_size=(96, 96, 3)), r"`focal_size` must be a positive int"),
        (dict(focal_size="96"), r"`focal_size` must be a positive int"),
        (dict(num_focal_views=-1), r"`num_focal_views` must be an int >= 0"),
        (dict(num_focal_views=2.5), r"`num_focal_views` must be an int >= 0"),
        (
            dict(global_scale=(0.0, 1.0)),
            r"`global_scale` must be a pair \(low, high\) with 0 < low <= high <= 1",
        ),
        (dict(focal_scale=(0.3, 0.05)), r"`focal_scale` must be a pair .* 0 < low <= high <= 1"),
        (dict(focal_scale=(0.5, 1.5)), r"`focal_scale` must be a pair"),
        (dict(global_scale=0.5), r"`global_scale` must be a pair"),
        (dict(ratio=(4 / 3, 3 / 4)), r"`ratio` must be a pair \(low, high\) with 0 < low <= high;"),
        (dict(ratio=(-1, 1)), r"`ratio` must be a pair"),
        (
            dict(flip_probability=1.5),
            r"`flip_probability` must be a probability in \[0, 1\]; got 1.5",
        ),
        (dict(color_jitter_probability=-0.1), r"`color_jitter_probability` must be a probability"),
        (dict(grayscale_probability="0.2"), r"`grayscale_probability` must be a probability"),
        (dict(blur_probability=2), r"`blur_probability` must be a probability"),
        (
            dict(color_jitter=(0.4, 0.4, 0.4)),
            r"`color_jitter` must be None or \(brightness, contrast, saturation, hue\)",
        ),
        (dict(color_jitter=(0.4, -0.4, 0.4, 0.1)), r"each >= 0"),
        (dict(color_jitter=(0.4, 0.4, 0.4, 0.6)), r"hue <= 0.5"),
        (
            dict(blur_sigma=(0.0, 2.0)),
            r"`blur_sigma` must be a pair \(low, high\) with 0 < low <= high",
        ),
        (dict(blur_sigma=(2.0, 1.0)), r"`blur_sigma` must be a pair"),
        (
            dict(focal_size=6),
            r"blur kernel radius of ceil\(3 \* 2.0\) = 6 pixels.*smallest view side is 6",
        ),
        (
            dict(image_converter="imagenet"),
            r"`image_converter` must be a keras_vitmsn.ViTMSNImageConverter",
        ),
    ],
)
def test_augmentation_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MSNAugmentation(**kwargs)


def test_small_views_are_fine_without_blur_or_focal_views():
    MSNAugmentation(focal_size=6, blur_probability=0.0)
    MSNAugmentation(focal_size=6, num_focal_views=0)


def test_views_errors():
    augmentation = plain(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_probability=0.8)
    with pytest.raises(
        ValueError, match=r"one image \(height, width, channels\); got shape \(2, 16, 16, 3\)"
    ):
        augmentation.views(np.zeros((2, 16, 16, 3), "uint8"), [0, 0])
    with pytest.raises(ValueError, match=r"need RGB images \(3 channels\); got 1 channel"):
        augmentation.views(np.zeros((16, 16, 1), "uint8"), [0, 0])
    with pytest.raises(ValueError, match=r"need RGB images.*got 4 channel"):
        plain(grayscale_probability=0.2).views(np.zeros((16, 16, 4), "uint8"), [0, 0])
    with pytest.raises(ValueError, match=r"`image` must be uint8 or float; got dtype bool"):
        augmentation.views(np.zeros((16, 16, 3), bool), [0, 0])
    with pytest.raises(ValueError, match=r"`seed` must be an int or a shape-\(2,\) int32/int64"):
        augmentation.views(np.zeros((16, 16, 3), "uint8"), [1, 2, 3])
    with pytest.raises(ValueError, match=r"`seed` must be .* got dtype float32"):
        augmentation.views(np.zeros((16, 16, 3), "uint8"), [0.5, 1.0])
    with pytest.raises(ValueError, match=r"`scale` must be a pair"):
        random_resized_crop_box(10, 10, (0.5, 2.0), (1, 1), [0, 0])


def test_dataset_errors(tmp_path, images, recipe):
    with pytest.raises(
        ValueError, match=r"Image folder .*missing.* does not exist or is not a directory"
    ):
        msn_multiview_dataset(str(tmp_path / "missing"), 2, recipe)
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    (tmp_path / "empty" / "class_a" / "readme.txt").write_text("x")
    with pytest.raises(
        ValueError,
        match=r"holds no images \(looked at every depth for \.jpg, \.jpeg, \.png, \.webp, .* more",
    ):
        msn_multiview_dataset(tmp_path / "empty", 2, recipe)
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive int; got 0"):
        msn_multiview_dataset(images, 0, recipe)
    with pytest.raises(
        ValueError, match=r"`augmentation` must be an MSNAugmentation or None; got dict"
    ):
        msn_multiview_dataset(images, 2, {"global_size": 16})
    with pytest.raises(ValueError, match=r"`seed` must be None or an int; got 1.5"):
        msn_multiview_dataset(images, 2, recipe, seed=1.5)
    with pytest.raises(
        ValueError, match=r"`num_parallel_calls` must be a positive int, tf.data.AUTOTUNE"
    ):
        msn_multiview_dataset(images, 2, recipe, num_parallel_calls=0)
    with pytest.raises(ValueError, match=r"`shuffle_buffer_size` must be None or a positive int"):
        msn_multiview_dataset(images, 2, recipe, shuffle_buffer_size=0)
    with pytest.raises(
        ValueError, match=r"`source` must be a directory path, a NumPy array .* got list"
    ):
        msn_multiview_dataset([images[0]], 2, recipe)
    with pytest.raises(
        ValueError,
        match=r"A NumPy `source` must be images \(N, height, width, "
        r"channels\) with 1 or 3 channels; got shape \(32, 32, 3\)",
    ):
        msn_multiview_dataset(images[0], 2, recipe)
    with pytest.raises(ValueError, match=r"with 1 or 3 channels; got shape \(8, 32, 32, 4\)"):
        msn_multiview_dataset(np.zeros((8, 32, 32, 4), "uint8"), 2, recipe)
    with pytest.raises(
        ValueError, match=r"must be uint8 or float \(in \[0, 255\]\); got dtype bool"
    ):
        msn_multiview_dataset(np.zeros((8, 32, 32, 3), bool), 2, recipe)
    with pytest.raises(
        ValueError,
        match=r"the array has 8 image\(s\), fewer than batch_size=16.*drop_remainder=False",
    ):
        msn_multiview_dataset(images, 16, recipe)
    with pytest.raises(
        ValueError, match=r"Images must have 1 or 3 channels; the tf.data.Dataset yields 4"
    ):
        msn_multiview_dataset(tf.data.Dataset.from_tensor_slices(np.zeros((4, 8, 8, 4))), 2, recipe)
    with pytest.raises(ValueError, match=r"must yield images or \(image, label, ...\) tuples"):
        msn_multiview_dataset(tf.data.Dataset.from_tensor_slices({"image": images}), 2, recipe)
    with pytest.raises(
        ValueError,
        match=r"must yield images \(height, width, channels\) or "
        r"batches of them; got elements of shape \(32, 32\)",
    ):
        msn_multiview_dataset(tf.data.Dataset.from_tensor_slices(images[..., 0]), 2, recipe)
