"""Image files are read at their own depth: 8-bit, 16-bit and float files reach every
reader (load_image, ImageFolder, msn_multiview_dataset) on one [0, 255] scale, the
scale ViTMSNImageConverter gives uint16 arrays; depths without a stated white are
refused, naming the file."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

import keras_vitmsn as kv
from keras_vitmsn.images import image_files
from keras_vitmsn.images.folders import ImageFolder
from keras_vitmsn.images.folders import load_image
from keras_vitmsn.images.image_files import BadImageError
from keras_vitmsn.images.image_files import BadImageWarning
from keras_vitmsn.images.image_files import decode_rgb
from keras_vitmsn.images.image_files import read_image_folder
from keras_vitmsn.msn import MSNAugmentation
from keras_vitmsn.msn import msn_multiview_dataset

SIZE = 16


def ramp16():
    """A 16x16 uint16 ramp over the whole range: 0, 257, ..., 65535 (k * 257, so the
    [0, 255] values are the integers 0..255), then a few off-grid values."""
    values = np.arange(256, dtype=np.uint32) * 257
    values[-4:] = (1, 128, 40000, 65534)
    return values.reshape(SIZE, SIZE).astype(np.uint16)


def expected_pixels(array16):
    """[0, 255] float32 RGB: what uint16 means to ViTMSNImageConverter."""
    gray = array16.astype(np.float64) * (255.0 / 65535.0)
    return np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)


def write_png16(path, array16=None):
    Image.fromarray(ramp16() if array16 is None else array16).save(path)  # mode I;16
    return str(path)


def unit_ramp():
    return (np.arange(SIZE * SIZE, dtype=np.float32) / (SIZE * SIZE - 1)).reshape(SIZE, SIZE)


def write_float_tiff(path, array=None):
    Image.fromarray(unit_ramp() if array is None else array.astype(np.float32)).save(path)
    return str(path)


def identity_augmentation():
    """Whole-image views with every random transform off: the pixels as read."""
    return MSNAugmentation(
        global_size=SIZE,
        num_focal_views=0,
        global_scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip_probability=0.0,
        color_jitter=None,
        grayscale_probability=0.0,
        blur_probability=0.0,
        image_converter=kv.ViTMSNImageConverter(
            image_size=None, mean=None, std=None, rescale_factor=None
        ),
    )


def msn_pixels(root, count):
    (batch,) = msn_multiview_dataset(str(root), count, identity_augmentation(), shuffle=False)
    return np.asarray(batch["target"])


def test_pillow_opens_the_test_files_at_their_depth(tmp_path):
    with Image.open(write_png16(tmp_path / "a.png")) as image:
        assert image.mode == "I;16"
    with Image.open(write_float_tiff(tmp_path / "a.tif")) as image:
        assert image.mode == "F"


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = write_png16(tmp_path / "ramp.png")
    expected = expected_pixels(ramp16())
    for got in (load_image(path, (SIZE, SIZE)), decode_rgb(path)):
        assert got.dtype == np.float32 and got.shape == (SIZE, SIZE, 3)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    # Before, 95% of such a ramp read as 255: Pillow's convert("RGB") clips.
    assert np.mean(load_image(path, (SIZE, SIZE)) >= 254.5) < 0.01
    gray = load_image(path, (SIZE, SIZE), channels=1)
    np.testing.assert_allclose(gray, expected[..., :1], atol=1e-4)


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    path = write_float_tiff(tmp_path / "ramp.tif")
    expected = np.repeat(unit_ramp()[..., None] * 255.0, 3, axis=-1)
    for got in (load_image(path, (SIZE, SIZE)), decode_rgb(path)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_every_reader_gives_the_converter_s_pixels(tmp_path):
    """ImageFolder, load_image and msn_multiview_dataset read 16-bit and float files
    alike, on the scale ViTMSNImageConverter gives the same uint16 array."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    write_png16(tmp_path / "a" / "ramp16.png")
    write_float_tiff(tmp_path / "b" / "ramp.tif", ramp16() / 65535.0)
    # The same ramp as an 8-bit file (k * 257 / 257 = k; off-grid values rounded).
    eight = np.round(ramp16() / 257.0).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "b" / "ramp8.png")

    converter = kv.ViTMSNImageConverter(image_size=None, mean=None, std=None, rescale_factor=1)
    reference = keras.ops.convert_to_numpy(converter(np.repeat(ramp16()[..., None], 3, axis=-1)))
    np.testing.assert_allclose(reference, expected_pixels(ramp16()), atol=1e-3)

    folder = ImageFolder(str(tmp_path))
    loaded = folder.load(size=(SIZE, SIZE))
    # One dtype for the whole folder, so every batch of a dataset has the same one.
    assert loaded.dtype == np.float32
    assert folder.as_dataset((SIZE, SIZE), batch_size=1)[2][0].dtype == np.float32
    np.testing.assert_allclose(loaded[0], reference, atol=1e-3)  # a/ramp16.png
    np.testing.assert_allclose(loaded[1], reference, atol=1e-3)  # b/ramp.tif
    np.testing.assert_array_equal(loaded[2], np.repeat(eight[..., None], 3, -1))  # b/ramp8.png

    views = msn_pixels(tmp_path, 3)
    np.testing.assert_allclose(views, loaded, atol=1e-3)


def test_resized_16_bit_matches_its_8_bit_copy(tmp_path):
    """Resizing works at the file's depth too (Pillow's float mode, same filter)."""
    grid = (np.arange(256, dtype=np.uint32) * 257).reshape(SIZE, SIZE).astype(np.uint16)
    write_png16(tmp_path / "deep.png", grid)
    Image.fromarray((grid // 257).astype(np.uint8)).save(tmp_path / "eight.png")
    for mode in ("hub", "paper"):
        deep = load_image(str(tmp_path / "deep.png"), (10, 12), resize_mode=mode)
        eight = load_image(str(tmp_path / "eight.png"), (10, 12), resize_mode=mode)
        assert deep.shape == eight.shape == (10, 12, 3)
        # Pillow rounds 8-bit results to integers after each of its two passes; the
        # float ones keep the fraction: within one 8-bit step, and unbiased.
        difference = deep - eight.astype(np.float32)
        assert np.abs(difference).max() <= 1.0 and abs(difference.mean()) < 0.25


def test_an_8_bit_folder_stays_uint8(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((SIZE, SIZE, 3), 7, np.uint8)).save(tmp_path / name / "x.png")
    assert ImageFolder(str(tmp_path)).load(size=(SIZE, SIZE)).dtype == np.uint8


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK"])
def test_8_bit_modes_read_as_before(tmp_path, mode):
    rgb = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    path = str(tmp_path / ("x.tif" if mode == "CMYK" else "x.png"))
    image.save(path)
    with Image.open(path) as reopened:
        expected = np.asarray(reopened.convert("RGB"))
    for got in (load_image(path, (SIZE, SIZE)), decode_rgb(path)):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


def write_int32_tiff(path):
    Image.fromarray(np.arange(SIZE * SIZE, dtype=np.int32).reshape(SIZE, SIZE) * 1000).save(path)
    return str(path)


def float_out_of_range(path):
    return write_float_tiff(path, unit_ramp() * 255.0)


def float_with_nan(path):
    array = unit_ramp()
    array[3, 4] = np.nan
    return write_float_tiff(path, array)


REFUSED = {
    "int32": (write_int32_tiff, "32-bit integer"),
    "float_0_255": (float_out_of_range, r"outside \[0, 1\]"),
    "float_nan": (float_with_nan, "not finite"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_unreadable_depths_are_refused_naming_the_file(tmp_path, kind):
    write, match = REFUSED[kind]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "a" / "ok.png")
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "b" / "ok.png")
    path = write(tmp_path / "b" / "bad.tif")
    for read in (load_image, lambda p, size: decode_rgb(p)):
        with pytest.raises(ValueError, match=match) as caught:
            read(path, (SIZE, SIZE))
        assert path in str(caught.value)
    # Folder readers refuse it when the folder is read, before any training.
    for read in (ImageFolder, read_image_folder):
        with pytest.raises(BadImageError, match=match) as caught:
            read(str(tmp_path))
        assert caught.value.bad[0][0] == path
    with pytest.raises(BadImageError, match=match):
        msn_multiview_dataset(str(tmp_path), 1, identity_augmentation())
    # ...or leave it out with a warning, like any other bad file.
    with pytest.warns(BadImageWarning, match=os.path.basename(path)):
        folder = ImageFolder(str(tmp_path), skip_bad_images=True)
    assert len(folder) == 2


def test_16_bit_colour_png_is_read_at_8_bits_alike_by_every_reader(tmp_path):
    """Pillow has no 16-bit colour mode: it keeps the high byte, as TensorFlow's
    decoder does, so the labelled and the pretraining readers agree."""
    tf = pytest.importorskip("tensorflow")
    rgb16 = np.stack([ramp16(), ramp16()[::-1], ramp16().T], axis=-1)
    path = tmp_path / "rgb16.png"
    path.write_bytes(tf.io.encode_png(tf.constant(rgb16)).numpy())
    high_byte = (rgb16 >> 8).astype(np.uint8)
    loaded = load_image(str(path), (SIZE, SIZE))
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, high_byte)
    np.testing.assert_allclose(msn_pixels(tmp_path, 1)[0], high_byte, atol=1e-3)


class FakeImage:
    """What pixel_depth reads of an opened image: its mode and its tiles' raw modes."""

    def __init__(self, mode, rawmode):
        self.mode = mode
        self.tile = [("raw", (0, 0, 2, 2), 0, (rawmode, 0, 1))]


def test_mode_i_is_read_as_16_bit_only_when_the_file_stores_16_bits():
    # Older Pillows open 16-bit grayscale PNGs as mode I (int32) from raw mode I;16B.
    assert image_files.pixel_depth(FakeImage("I", "I;16B"), "old.png") == "uint16"
    for rawmode, match in (("I;32S", "32-bit integers"), ("I;16S", "32-bit integers")):
        with pytest.raises(ValueError, match=match) as caught:
            image_files.pixel_depth(FakeImage("I", rawmode), "x.tif")
        assert "x.tif" in str(caught.value)
    with pytest.raises(ValueError, match="I;16S.*no stated white"):
        image_files.pixel_depth(FakeImage("I;16S", "I;16S"), "s.tif")
    scaled = image_files.scale_pixels(np.array([0, 257, 65535], np.int32), "uint16", "old.png")
    np.testing.assert_allclose(scaled, [0.0, 1.0, 255.0])
    with pytest.raises(ValueError, match=r"old.png.*outside \[0, 65535\]"):
        image_files.scale_pixels(np.array([0, 70000], np.int32), "uint16", "old.png")
