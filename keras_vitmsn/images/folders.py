"""Labelled image folders (one sub-folder per class) as NumPy arrays or a Keras PyDataset.

Backend-agnostic on purpose: images are decoded with Pillow and batched by a
``keras.utils.PyDataset``, so the command line works with only JAX or PyTorch
installed. (``keras.utils.image_dataset_from_directory`` needs TensorFlow.) Which
files count as images, and how bad ones are handled, is decided by
:mod:`keras_vitmsn.images.image_files`, shared with MSN pretraining.
"""

import math
import os

import keras
import numpy as np

from keras_vitmsn.images.converter import RESIZE_MODES
from keras_vitmsn.images.converter import paper_resize_geometry
from keras_vitmsn.images.image_files import read_class_folders


def load_image(path, size, channels=3, resize_mode="hub"):
    """Decode ``path`` and bring it to ``size = (height, width)`` with Pillow's bilinear filter.

    ``resize_mode="hub"`` resizes straight to ``size`` (the hub processor's way);
    ``"paper"`` is the MSN paper's evaluation transform, torchvision's ``Resize(256)`` +
    ``CenterCrop(224)`` scaled with ``size``: keep the aspect ratio, resize to cover
    ``size * 256 / 224``, crop the centre ``size``
    (:func:`keras_vitmsn.images.converter.paper_resize_geometry`, the geometry
    ``ViTMSNImageConverter(resize_mode="paper")`` uses too).

    Returns:
        uint8 array ``(height, width, channels)``.

    Raises:
        ValueError: the file is missing or not an image Pillow can read, or an
            unknown ``resize_mode``.

    Example:
    >>> import tempfile, os
    >>> from PIL import Image
    >>> path = os.path.join(tempfile.mkdtemp(), "wide.png")
    >>> Image.fromarray(np.zeros((300, 400, 3), "uint8")).save(path)
    >>> load_image(path, (224, 224), resize_mode="paper").shape
    (224, 224, 3)
    """
    from PIL import Image
    from PIL import UnidentifiedImageError

    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}; got {resize_mode!r}.")
    height, width = int(size[0]), int(size[1])
    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            if resize_mode == "paper":
                new_h, new_w, top, left = paper_resize_geometry(
                    image.height, image.width, (height, width)
                )
                image = image.resize((new_w, new_h), Image.BILINEAR)
                image = image.crop((left, top, left + width, top + height))
            else:
                image = image.resize((width, height), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ValueError(f"Cannot read image {path}: {exc}") from exc
    return array if array.ndim == 3 else array[..., None]


class ImageFolder:
    """A directory with one sub-folder of images per class.

    Class names are the sub-folder names, sorted; labels index them. Images are
    found at any depth below each class folder and checked when the folder is read,
    by the rules of :mod:`keras_vitmsn.images.image_files`.

    Args:
        directory: the root folder.
        min_classes: fewest classes accepted (2 for classification).
        skip_bad_images: leave out, with a warning, the image files Pillow cannot
            decode, instead of raising :class:`keras_vitmsn.images.image_files.BadImageError`.

    Raises:
        ValueError: missing folder, too few classes, a class without images, or
            (``BadImageError``) image files that cannot be decoded, all listed.

    Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> for name in ("cat", "dog"):
    ...     os.makedirs(os.path.join(root, name))
    ...     Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(os.path.join(root, name, "a.png"))
    >>> folder = ImageFolder(root)
    >>> folder.class_names, folder.labels.tolist()
    (['cat', 'dog'], [0, 1])
    >>> folder.load(size=(4, 4)).shape
    (2, 4, 4, 3)
    """

    def __init__(self, directory, min_classes=2, skip_bad_images=False):
        self.directory = directory
        self.class_names, images, labels = read_class_folders(
            directory, min_classes=min_classes, skip_bad_images=skip_bad_images
        )
        self.paths = [image.path for image in images]
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self):
        return len(self.paths)

    def class_counts(self):
        return {name: int(np.sum(self.labels == i)) for i, name in enumerate(self.class_names)}

    def load(self, size, indices=None, channels=3, resize_mode="hub"):
        """All (or ``indices``) images as one uint8 array ``(n, height, width, channels)``.

        ``resize_mode``: ``"hub"`` (resize) or ``"paper"`` (resize, centre crop), as
        :func:`load_image`.
        """
        indices = range(len(self.paths)) if indices is None else indices
        return np.stack([load_image(self.paths[i], size, channels, resize_mode) for i in indices])

    def as_dataset(self, size, batch_size=32, shuffle=False, seed=0, channels=3, **kwargs):
        """A :class:`ImageFolderDataset` over this folder."""
        return ImageFolderDataset(self, size, batch_size, shuffle, seed, channels, **kwargs)


class ImageFolderDataset(keras.utils.PyDataset):
    """Batches ``(uint8 images, labels)`` decoded on the fly; reshuffled every epoch."""

    def __init__(self, folder, size, batch_size=32, shuffle=False, seed=0, channels=3, **kwargs):
        super().__init__(**kwargs)
        self.folder = folder
        self.size = tuple(size)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.channels = channels
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(folder))
        if shuffle:
            self._rng.shuffle(self._order)

    def __len__(self):
        return math.ceil(len(self.folder) / self.batch_size)

    def __getitem__(self, index):
        idx = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.folder.load(self.size, idx, self.channels)
        return images, self.folder.labels[idx]

    def on_epoch_end(self):
        if self.shuffle:
            self._rng.shuffle(self._order)


def write_toy_image_folder(root, num_classes=3, per_class=8, size=64, seed=0):
    """Write a small labelled image folder of coloured shapes (offline demos and tests).

    Class ``c`` draws a filled square, disc or triangle (by ``c % 3``) in a colour that
    also depends on the class, at a random place and scale, on a noisy background.

    Returns:
        ``root`` as a string.

    Example:
    >>> import tempfile
    >>> root = write_toy_image_folder(tempfile.mkdtemp(), num_classes=2, per_class=2)
    >>> ImageFolder(root).class_counts()
    {'class_0': 2, 'class_1': 2}
    """
    from PIL import Image
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    palette = [(220, 60, 60), (60, 180, 80), (70, 90, 230), (230, 200, 50), (200, 80, 200)]
    for c in range(num_classes):
        class_dir = os.path.join(str(root), f"class_{c}")
        os.makedirs(class_dir, exist_ok=True)
        for i in range(per_class):
            background = rng.integers(0, 90, (size, size, 3)).astype("uint8")
            image = Image.fromarray(background)
            draw = ImageDraw.Draw(image)
            side = int(rng.integers(size // 3, size // 2))
            x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
            box = (x0, y0, x0 + side, y0 + side)
            colour = palette[c % len(palette)]
            shape = c % 3
            if shape == 0:
                draw.rectangle(box, fill=colour)
            elif shape == 1:
                draw.ellipse(box, fill=colour)
            else:
                corners = [(x0, y0 + side), (x0 + side, y0 + side), (x0 + side // 2, y0)]
                draw.polygon(corners, fill=colour)
            image.save(os.path.join(class_dir, f"{i:03d}.png"))
    return str(root)
