"""One set of rules for image folders: the labelled reader (ImageFolder: finetune,
lowshot) and the unlabelled one (msn_multiview_dataset: pretrain) accept the same
files, and both report every undecodable image before any training starts."""

import doctest
import os
import warnings

import numpy as np
import pytest
from PIL import Image

import keras_vitmsn as kv
from keras_vitmsn.images import image_files
from keras_vitmsn.images.folders import ImageFolder
from keras_vitmsn.images.image_files import BadImageError
from keras_vitmsn.images.image_files import BadImageWarning
from keras_vitmsn.images.image_files import list_image_files
from keras_vitmsn.msn import MSNAugmentation
from keras_vitmsn.msn import msn_multiview_dataset


def noise(seed, shape=(24, 24, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_bad_files(cat, dog):
    """A PNG that is random bytes, and a JPEG cut in half; returns their paths."""
    corrupt = cat / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    truncated = dog / "truncated.jpg"
    Image.fromarray(noise(1, (48, 64, 3))).save(truncated, quality=95)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return str(corrupt), str(truncated)


@pytest.fixture
def bad_folder(tmp_path):
    """Two classes of three good PNGs each, plus one bad file in each class."""
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(noise(i)).save(tmp_path / name / f"{i}.png")
    bad = write_bad_files(tmp_path / "cat", tmp_path / "dog")
    return tmp_path, bad


def tiny_augmentation(size=16):
    return MSNAugmentation(global_size=size, focal_size=8, num_focal_views=0, blur_probability=0.0)


def read_labelled(root, **kwargs):
    return ImageFolder(str(root), **kwargs).paths


def read_unlabelled(root, **kwargs):
    dataset = msn_multiview_dataset(str(root), 6, tiny_augmentation(), seed=0, **kwargs)
    return [batch["target"].shape[0] for batch in dataset]  # decodes every image


READERS = {"ImageFolder": read_labelled, "msn_multiview_dataset": read_unlabelled}


def test_docstring_examples_run():
    result = doctest.testmod(image_files, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize("reader", READERS)
def test_every_bad_image_is_named_in_one_error(bad_folder, reader):
    root, (corrupt, truncated) = bad_folder
    with pytest.raises(BadImageError) as info:
        READERS[reader](root)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "2 of 8 image file(s)" in message
    assert corrupt in message and truncated in message
    assert "skip_bad_images=True" in message and "--skip-bad-images" in message
    assert sorted(path for path, _ in info.value.bad) == sorted([corrupt, truncated])


@pytest.mark.parametrize("reader", READERS)
def test_skip_bad_images_warns_and_keeps_the_good_ones(bad_folder, reader):
    root, (corrupt, truncated) = bad_folder
    with pytest.warns(BadImageWarning) as caught:
        result = READERS[reader](root, skip_bad_images=True)
    (warning,) = caught
    message = str(warning.message)
    assert "Skipping 2 of 8" in message and corrupt in message and truncated in message
    if reader == "ImageFolder":
        assert [os.path.relpath(p, root) for p in result] == [
            os.path.join(c, f"{i}.png") for c in ("cat", "dog") for i in range(3)
        ]
    else:
        assert result == [6]


def test_a_class_left_empty_by_skipping_is_an_error(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
    Image.fromarray(noise(0)).save(tmp_path / "cat" / "0.png")
    (tmp_path / "dog" / "0.png").write_bytes(b"not a png")
    with (
        pytest.warns(BadImageWarning),
        pytest.raises(ValueError, match=r"dog.* holds no readable images"),
    ):
        ImageFolder(str(tmp_path), skip_bad_images=True)


def write_mixed_folder(root):
    """Classes with .webp, .tif, .JPG and .bmp images at several depths, plus files
    that are not images: hidden ones, a text file and a hidden folder."""
    layout = {
        "cat/a.png": 0,
        "cat/b.webp": 1,
        "cat/deep/er/c.tif": 2,
        "cat/deep/d.JPG": 3,
        "dog/e.bmp": 4,
        "dog/sub/f.webp": 5,
    }
    for rel, seed in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise(seed)).save(root / rel, lossless=True)  # lossless: WebP only
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"not even a png")
    (root / "dog" / ".cache").mkdir()
    (root / "dog" / ".cache" / "g.png").write_bytes(b"not a png either")
    os.symlink(root / "dog" / "sub", root / "dog" / "sub" / "loop")  # read once, no cycle


def test_both_readers_find_the_same_images_in_the_same_order(tmp_path):
    write_mixed_folder(tmp_path)
    expected = [
        "cat/a.png",
        "cat/b.webp",
        "cat/deep/d.JPG",
        "cat/deep/er/c.tif",
        "dog/e.bmp",
        "dog/sub/f.webp",
    ]
    labelled = ImageFolder(str(tmp_path))
    assert [os.path.relpath(p, tmp_path) for p in labelled.paths] == expected
    assert labelled.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert list_image_files(tmp_path) == labelled.paths
    (batch,) = msn_multiview_dataset(str(tmp_path), 6, tiny_augmentation(), seed=0)
    assert tuple(batch["target"].shape) == (6, 16, 16, 3)
    assert np.all(np.isfinite(np.asarray(batch["target"])))


def test_tensorflow_and_pillow_decoding_give_the_same_pixels(tmp_path):
    # PNGs are decoded by TensorFlow, TIFFs and lossless WebPs by Pillow: whole-image
    # views with every random transform off must be the pixels ImageFolder loads.
    images = [noise(i, (16, 16, 3)) for i in range(3)]
    for i, image in enumerate(images):
        for ext in ("png", "tif", "webp"):
            (tmp_path / ext).mkdir(exist_ok=True)
            Image.fromarray(image).save(tmp_path / ext / f"{i}.{ext}", lossless=True)
    augmentation = MSNAugmentation(
        global_size=16,
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
    (batch,) = msn_multiview_dataset(str(tmp_path), 9, augmentation, shuffle=False)
    loaded = ImageFolder(str(tmp_path)).load(size=(16, 16))
    np.testing.assert_allclose(np.asarray(batch["target"]), loaded, atol=1e-3)
    np.testing.assert_array_equal(loaded, np.concatenate([images] * 3))


def test_a_file_changed_after_reading_is_checked_again(tmp_path):
    Image.fromarray(noise(0)).save(tmp_path / "a.png")
    Image.fromarray(noise(1)).save(tmp_path / "b.png")
    assert len(list_image_files(tmp_path)) == 2
    (tmp_path / "b.png").write_bytes(b"broken now")
    with pytest.raises(BadImageError, match="b.png"):
        list_image_files(tmp_path)


def test_extensions_are_what_pillow_decodes():
    extensions = image_files.image_extensions()
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} <= set(extensions)
    # Pillow saves PDFs but cannot read them, and only identifies MPEG and HDF5.
    assert not {".pdf", ".mpg", ".h5"} & set(extensions)
    assert all(e == e.lower() and e.startswith(".") for e in extensions)


def test_no_warning_without_bad_images(tmp_path):
    Image.fromarray(noise(0)).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list_image_files(tmp_path, skip_bad_images=True)) == 1


def _paper_crop_reference(image, crop, resize):
    """torchvision's Resize(resize) + CenterCrop(crop) on a PIL image, written out here."""
    width, height = image.size
    if height <= width:
        size = (int(resize * width / height), resize)
    else:
        size = (resize, int(resize * height / width))
    resized = np.asarray(image.resize(size, Image.BILINEAR))
    top = int(round((resized.shape[0] - crop) / 2.0))
    left = int(round((resized.shape[1] - crop) / 2.0))
    return resized[top : top + crop, left : left + crop]


def test_folder_paper_transform_is_resize_then_centre_crop(tmp_path):
    rng = np.random.default_rng(0)
    shapes = {"a": [(300, 400), (375, 500)], "b": [(301, 257), (150, 200)]}
    originals = []
    for name, sizes in shapes.items():
        os.makedirs(tmp_path / name)
        for i, (h, w) in enumerate(sizes):
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            image.save(tmp_path / name / f"{i}.png")
            originals.append(image)
    folder = ImageFolder(str(tmp_path))
    paper = folder.load((224, 224), resize_mode="paper")
    hub = folder.load((224, 224))
    for got, image in zip(paper, originals):
        np.testing.assert_array_equal(got, _paper_crop_reference(image, 224, 256))
    assert np.abs(paper.astype(int) - hub.astype(int)).max() > 50
    # Scaled with the model size: 112 is cropped from a 128 cover.
    small = folder.load((112, 112), resize_mode="paper")
    np.testing.assert_array_equal(small[0], _paper_crop_reference(originals[0], 112, 128))
    with pytest.raises(ValueError, match=r"resize_mode must be one of \('hub', 'paper'\)"):
        folder.load((224, 224), resize_mode="crop")
