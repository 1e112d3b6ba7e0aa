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
from keras_vitmsn.images.image_files import DepthError
from keras_vitmsn.images.image_files import folder_dtype
from keras_vitmsn.images.image_files import pixel_depth
from keras_vitmsn.images.image_files import read_class_folders
from keras_vitmsn.images.image_files import read_pixels


def load_image(path, size, channels=3, resize_mode="hub"):
    """Decode ``path`` and bring it to ``size = (height, width)`` with Pillow's bilinear filter.

    ``resize_mode="hub"`` resizes straight to ``size`` (the hub processor's way);
    ``"paper"`` is the MSN paper's evaluation transform, torchvision's ``Resize(256)`` +
    ``CenterCrop(224)`` scaled with ``size``: keep the aspect ratio, resize to cover
    ``size * 256 / 224``, crop the centre ``size``
    (:func:`keras_vitmsn.images.converter.paper_resize_geometry`, the geometry
    ``ViTMSNImageConverter(resize_mode="paper")`` uses too).

    Each file is read at its own depth onto [0, 255]
    (:func:`keras_vitmsn.images.image_files.read_pixels`): 8-bit files as uint8,
    16-bit grayscale files (read as [0, 65535]) and float files (read as [0, 1]) as
    float32, resized with the same filter without rounding to 8 bits.

    Returns:
        array ``(height, width, channels)`` on [0, 255]: uint8 for 8-bit files,
        float32 for 16-bit and float ones.

    Raises:
        ValueError: naming the file, when it is missing, not an image Pillow can
            read, or of a depth without a stated white (32-bit integers, float
            values outside [0, 1]); or an unknown ``resize_mode``.

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
            depth = pixel_depth(image, os.fsdecode(path))
            pixels = read_pixels(image, depth, os.fsdecode(path), channels)
        # Deeper files are resized as Pillow float images: no rounding to 8 bits.
        image = Image.fromarray(pixels)  # float32 pixels make a mode-F image
        if resize_mode == "paper":
            new_h, new_w, top, left = paper_resize_geometry(
                image.height, image.width, (height, width)
            )
            image = image.resize((new_w, new_h), Image.BILINEAR)
            image = image.crop((left, top, left + width, top + height))
        else:
            image = image.resize((width, height), Image.BILINEAR)
        array = np.asarray(image)
        if depth != "uint8":
            # Bilinear weights are non-negative and sum to one: only float rounding
            # can leave [0, 255], and the converter's range check would refuse it.
            array = np.clip(array, 0.0, 255.0)
    except DepthError:
        raise
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ValueError(f"Cannot read image {path}: {exc}") from exc
    if array.ndim == 2:
        array = array[..., None]
    if channels == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


class ImageFolder:
    """A directory with one sub-folder of images per class.

    Class names are the sub-folder names, sorted; labels index them. Images are
    found at any depth below each class folder and checked when the folder is read,
    by the rules of :mod:`keras_vitmsn.images.image_files`. Pixels are on [0, 255]:
    uint8 when every file is 8-bit, float32 (``dtype``) when any is 16-bit or float,
    so that every batch of a folder has one dtype.

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
        #: "uint8", or "float32" when any file is deeper than 8 bits.
        self.dtype = folder_dtype(images)

    def __len__(self):
        return len(self.paths)

    def class_counts(self):
        return {name: int(np.sum(self.labels == i)) for i, name in enumerate(self.class_names)}

    def load(self, size, indices=None, channels=3, resize_mode="hub"):
        """All (or ``indices``) images as one array ``(n, height, width, channels)`` of
        this folder's ``dtype``, on [0, 255].

        ``resize_mode``: ``"hub"`` (resize) or ``"paper"`` (resize, centre crop), as
        :func:`load_image`.
        """
        indices = range(len(self.paths)) if indices is None else indices
        images = [load_image(self.paths[i], size, channels, resize_mode) for i in indices]
        return np.stack(images).astype(self.dtype, copy=False)

    def as_dataset(self, size, batch_size=32, shuffle=False, seed=0, channels=3, **kwargs):
        """A :class:`ImageFolderDataset` over this folder."""
        return ImageFolderDataset(self, size, batch_size, shuffle, seed, channels, **kwargs)


class ImageFolderDataset(keras.utils.PyDataset):
    """Batches ``(images, labels)`` decoded on the fly; reshuffled every epoch.

    Images are of the folder's ``dtype`` (uint8, or float32 on [0, 255] for folders
    with 16-bit or float files).

    With ``shuffle``, epoch ``e``'s order is a permutation drawn from a generator
    seeded by ``(seed, e)``: a pure function of the seed and the epoch, not of how
    many batches were read before. Keras may read ahead while it calls
    ``on_epoch_end``, and a resumed run starts at its ``initial_epoch``: either way
    each epoch sees the order an uninterrupted run's does. ``on_epoch_end`` moves to
    the next epoch; :meth:`set_epoch` goes to any. ``seed=None`` draws a fresh seed.

    Example:
    >>> import tempfile
    >>> folder = ImageFolder(write_toy_image_folder(tempfile.mkdtemp(), 2, 4, size=8))
    >>> data = folder.as_dataset((8, 8), batch_size=8, shuffle=True, seed=0)
    >>> first = data[0][1].tolist()
    >>> data.on_epoch_end(); data.set_epoch(0)
    >>> data[0][1].tolist() == first
    True
    """

    def __init__(
        self, folder, size, batch_size=32, shuffle=False, seed=0, channels=3, epoch=0, **kwargs
    ):
        super().__init__(**kwargs)
        self.folder = folder
        self.size = tuple(size)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.channels = channels
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % 2**63)
        self.seed = int(seed)
        self.epoch = 0
        self._orders = {}
        self.set_epoch(epoch)

    def set_epoch(self, epoch):
        """Serve epoch ``epoch``'s order (0-based) from now on."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"`epoch` must be a non-negative int; got {epoch!r}.")
        self.epoch = int(epoch)

    def order(self, epoch=None):
        """The indices of the folder's images in epoch ``epoch`` (default: the
        current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return np.arange(len(self.folder))
        if epoch not in self._orders:
            # Only the current and the next epoch are asked for: keep a few.
            if len(self._orders) > 4:
                self._orders.clear()
            rng = np.random.default_rng((self.seed, epoch))
            self._orders[epoch] = rng.permutation(len(self.folder))
        return self._orders[epoch]

    def __len__(self):
        return math.ceil(len(self.folder) / self.batch_size)

    def __getitem__(self, index):
        idx = self.order()[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.folder.load(self.size, idx, self.channels)
        return images, self.folder.labels[idx]

    def on_epoch_end(self):
        self.epoch += 1


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
