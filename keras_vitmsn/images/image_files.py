"""The one set of rules for reading image folders, shared by every loader and command.

Used by :class:`keras_vitmsn.images.folders.ImageFolder` (``finetune``, ``lowshot``) and by
:func:`keras_vitmsn.msn.msn_multiview_dataset` (``pretrain``), so a folder that one
accepts the other accepts too, with the same images in the same order.

- **Which files**: every file whose extension (any case) belongs to a format this
  Pillow can decode, :func:`image_extensions` (.jpg, .png, .webp, .tif, .bmp, .gif
  and more, depending on the installed Pillow). Other files are ignored, and so are
  hidden files and folders (names starting with ``.``, e.g. macOS's ``._x.jpg``).
- **Where**: an unlabelled folder (:func:`read_image_folder`) holds its images at any
  depth below it; sub-folder names are not used. A labelled folder
  (:func:`read_class_folders`) has one sub-folder per class, named after it, and every
  image at any depth below a class folder belongs to that class; files directly in
  the root are ignored. Symbolic links are followed, each real folder read once.
- **Order**: deterministic. In each folder its images in name order, then its
  sub-folders in name order; classes in name order. A seed thus fixes a shuffle.
- **Depth**: each file is read at its own depth and brought to one scale, [0, 255],
  the scale :class:`~keras_vitmsn.images.converter.ViTMSNImageConverter` gives every
  dtype (:func:`read_pixels`). 8-bit files (and every colour or palette file: Pillow
  has no 16-bit colour mode, so 16-bit colour PNGs arrive as their high byte) are
  read by Pillow's ``convert("RGB")`` and stay uint8; 16-bit grayscale files (PNG,
  TIFF) are read as [0, 65535] and float files (32-bit float TIFF) as [0, 1], both
  scaled to float32 [0, 255]. 32-bit integer files, signed 16-bit ones, and float
  files with values outside [0, 1] or not finite have no stated white: they are bad
  files. A folder holding any 16-bit or float file is read as float32 throughout.
- **Bad files**: each image is opened and decoded by Pillow when the folder is read
  (JPEGs at 1/8 scale, which still reads all their data), so a corrupt, truncated or
  misnamed file shows up before training, not mid-epoch. That costs about one
  decode per image, spread over threads. All bad files are reported together in one
  :class:`BadImageError` (a ``ValueError``); with ``skip_bad_images=True`` they are
  left out with one :class:`BadImageWarning` naming them.

This module depends on Pillow and NumPy only (and on :mod:`.pixel_range`'s ranges).

Example:
>>> import os, tempfile
>>> import numpy as np
>>> from PIL import Image
>>> root = tempfile.mkdtemp()
>>> os.makedirs(os.path.join(root, "cat", "more"))
>>> image = Image.fromarray(np.zeros((8, 8, 3), "uint8"))
>>> image.save(os.path.join(root, "cat", "b.png"))
>>> image.save(os.path.join(root, "cat", "more", "a.webp"))
>>> with open(os.path.join(root, "cat", "broken.jpg"), "wb") as f:
...     _ = f.write(b"not a jpeg")
>>> read_image_folder(root)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
keras_vitmsn.images.image_files.BadImageError: 1 of 3 image file(s) in ... cannot be decoded...
>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     paths = list_image_files(root, skip_bad_images=True)
>>> [os.path.relpath(p, root) for p in paths], [str(w.message)[:20] for w in caught]
(['cat/b.png', 'cat/more/a.webp'], ['Skipping 1 of 3 imag'])
"""

import collections
import concurrent.futures
import functools
import os
import warnings

import numpy as np

# One image's path, with the format and mode Pillow found in it, and its depth
# (one of DEPTHS).
ImageInfo = collections.namedtuple(
    "ImageInfo", ["path", "format", "mode", "depth"], defaults=("uint8",)
)

#: What one channel of an image file holds, as :func:`pixel_depth` reads it.
DEPTHS = ("uint8", "uint16", "float")
#: The values a float image file (mode "F") must hold; its white is the top.
FLOAT_FILE_RANGE = (0.0, 1.0)
# Pillow's modes of unsigned 16-bit grayscale, white at 65535.
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

# Pillow opens these but cannot decode their pixels (identify-only plugins).
_IDENTIFY_ONLY = frozenset({"MPEG"})
_CHECK_CHUNK = 64  # images per thread-pool task: few futures even for millions of files


class BadImageError(ValueError):
    """Files with an image extension that Pillow cannot decode.

    ``bad`` holds ``(path, reason)`` pairs, every bad file of the folder.
    """

    def __init__(self, message, bad=()):
        super().__init__(message)
        self.bad = list(bad)


class DepthError(ValueError):
    """An image file whose pixels cannot be read faithfully: a depth without a stated
    white, or float values outside [0, 1]. The message names the file."""


class BadImageWarning(UserWarning):
    """Bad image files were left out (``skip_bad_images=True``)."""


@functools.lru_cache(maxsize=None)
def image_extensions():
    """The lower-case extensions of every format this Pillow can decode, sorted.

    From ``PIL.Image.registered_extensions()``, restricted to the formats with an
    open function (not the save-only ones such as PDF), without the identify-only
    ones (MPEG, and stubs such as HDF5 or WMF with no handler registered), and
    without EPS unless Ghostscript, which renders it, is installed.

    Example:
    >>> {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif"} <= set(image_extensions())
    True
    """
    from PIL import EpsImagePlugin
    from PIL import Image
    from PIL import ImageFile

    Image.init()  # Image.OPEN is empty until every plugin is registered
    formats = set()
    for name, (factory, _) in Image.OPEN.items():
        if (
            isinstance(factory, type)
            and issubclass(factory, ImageFile.StubImageFile)
            and getattr(factory, "_handler", None) is None
        ):
            continue
        if name in _IDENTIFY_ONLY or (name == "EPS" and not EpsImagePlugin.has_ghostscript()):
            continue
        formats.add(name)
    if "JPEG" in formats:
        formats.add("MPO")  # multi-picture JPEGs: JPEG's open function reads them
    return tuple(
        sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in formats)
    )


def read_image_folder(directory, skip_bad_images=False):
    """Every image below ``directory``, checked, as :class:`ImageInfo` in order.

    Raises:
        ValueError: ``directory`` is missing, not a directory, or holds no images.
        BadImageError: some image files cannot be decoded (all of them are listed),
            unless ``skip_bad_images``.
    """
    return _read_image_folder(directory, skip_bad_images)


def list_image_files(directory, skip_bad_images=False):
    """The paths of :func:`read_image_folder`: every image below ``directory``."""
    return [image.path for image in _read_image_folder(directory, skip_bad_images)]


def _read_image_folder(directory, skip_bad_images):
    directory = _check_directory(directory)
    images = _check_images(
        _find_images(directory), f"folder {directory!r}", skip_bad_images, stacklevel=4
    )  # the caller of read_image_folder/list_image_files
    if not images:
        raise ValueError(
            f"Image folder {directory!r} holds no {'readable ' if skip_bad_images else ''}"
            f"images (looked at every depth for {_extension_summary()})."
        )
    return images


def read_class_folders(directory, min_classes=2, skip_bad_images=False):
    """A labelled folder: one sub-folder of images per class.

    Returns:
        ``(class_names, images, labels)``: sorted class names, :class:`ImageInfo`
        list, and for each image the index of its class.

    Raises:
        ValueError: missing folder, fewer than ``min_classes`` class folders, or a
            class without images.
        BadImageError: some image files cannot be decoded (all of them, across
            classes, are listed), unless ``skip_bad_images``.
    """
    directory = _check_directory(directory)
    class_names = sorted(
        d
        for d in os.listdir(directory)
        if not d.startswith(".") and os.path.isdir(os.path.join(directory, d))
    )
    if len(class_names) < min_classes:
        raise ValueError(
            f"Image folder {directory!r} has {len(class_names)} class sub-folder(s) "
            f"{class_names}; at least {min_classes} are needed (one sub-folder of images "
            "per class)."
        )
    found = {name: _find_images(os.path.join(directory, name)) for name in class_names}
    for name, paths in found.items():
        if not paths:
            raise ValueError(
                f"Class folder {os.path.join(directory, name)!r} holds no images (looked "
                f"at every depth for {_extension_summary()})."
            )
    label_of = {p: label for label, name in enumerate(class_names) for p in found[name]}
    images = _check_images(
        [p for name in class_names for p in found[name]],
        f"folder {directory!r}",
        skip_bad_images,
        stacklevel=3,
    )
    labels = [label_of[image.path] for image in images]
    for label, name in enumerate(class_names):
        if label not in labels:
            raise ValueError(
                f"Class folder {os.path.join(directory, name)!r} holds no readable images "
                "once the bad ones are skipped."
            )
    return class_names, images, labels


def decode_rgb(path):
    """Decode ``path`` with Pillow to an RGB array ``(height, width, 3)`` on [0, 255].

    uint8 for 8-bit files, float32 for 16-bit and float ones (:func:`read_pixels`).
    The first frame of an animation; alpha is dropped, grayscale copied to 3 channels.

    Raises:
        ValueError: naming the file, when Pillow cannot decode it or its depth has no
            stated white (:func:`pixel_depth`, :func:`scale_pixels`).
    """
    from PIL import Image

    path = os.fsdecode(path)
    try:
        with Image.open(path) as image:
            depth = pixel_depth(image, path)
            pixels = read_pixels(image, depth, path)
    except DepthError:
        raise
    except Exception as exc:  # Pillow's plugins raise many types (OSError, SyntaxError...)
        raise ValueError(f"Cannot decode image {path}: {exc}") from exc
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return pixels


def pixel_depth(image, path):
    """What one channel of the opened (not yet loaded) Pillow ``image`` holds.

    ``"uint8"`` for every 8-bit mode (1, L, LA, P, RGB, RGBA, CMYK, ...), which
    ``convert("RGB")`` reads faithfully; ``"uint16"`` for unsigned 16-bit grayscale
    (modes I;16, I;16L, I;16B, I;16N, and mode I decoded from 16-bit data, as older
    Pillows open 16-bit PNGs); ``"float"`` for mode F (32-bit float TIFF).

    Raises:
        DepthError: (a ValueError) naming ``path``, for depths without a stated
            white: 32-bit integers, signed 16-bit integers, other high-depth modes.

    Example:
    >>> from PIL import Image
    >>> pixel_depth(Image.new("I;16", (2, 2)), "a.png")
    'uint16'
    >>> pixel_depth(Image.new("P", (2, 2)), "b.gif")
    'uint8'
    """
    mode = image.mode
    if mode in _UINT16_MODES:
        return "uint16"
    if mode == "F":
        return "float"
    if mode == "I":
        # The tile's raw mode is what the file stores; it is gone once loaded.
        rawmodes = {str(t[3][0] if isinstance(t[3], tuple) else t[3]) for t in image.tile}
        if rawmodes and all(r.startswith("I;16") and "S" not in r for r in rawmodes):
            return "uint16"
        stored = ", ".join(sorted(rawmodes)) or "unknown"
        raise DepthError(
            f"Cannot read image {path}: its pixels are signed or 32-bit integers (Pillow mode I, "
            f"stored as {stored}), which have no stated white. Save it as 8-bit, as "
            "16-bit unsigned (white 65535) or as float in [0, 1]."
        )
    if mode.startswith("I;") or mode.startswith("F;"):
        raise DepthError(
            f"Cannot read image {path}: Pillow mode {mode} (signed or non-standard "
            "integer/float pixels) has no stated white. Save it as 8-bit, as 16-bit "
            "unsigned (white 65535) or as float in [0, 1]."
        )
    return "uint8"


def scale_pixels(array, depth, path):
    """Pixels decoded at their own ``depth`` mapped onto float32 [0, 255].

    The one scaling of every reader: ``"uint16"`` as [0, 65535] (what
    :class:`~keras_vitmsn.images.converter.ViTMSNImageConverter` reads uint16 arrays
    as), ``"float"`` as :data:`FLOAT_FILE_RANGE`, [0, 1]. ``"uint8"`` arrays are
    already on that scale and are returned as they are.

    Raises:
        DepthError: (a ValueError) naming ``path``, for float pixels that are not
            finite or lie outside [0, 1], or uint16 values above 65535.

    Example:
    >>> scale_pixels(np.array([0, 257, 65535], "uint16"), "uint16", "a.png").tolist()
    [0.0, 1.0, 255.0]
    >>> scale_pixels(np.array([0.0, 0.5, 1.0], "float32"), "float", "a.tif").tolist()
    [0.0, 127.5, 255.0]
    """
    from keras_vitmsn.images.pixel_range import DTYPE_RANGES
    from keras_vitmsn.images.pixel_range import PIXEL_RANGE

    if depth == "uint8":
        return array
    if depth == "uint16":
        low, high = DTYPE_RANGES["uint16"]
    elif depth == "float":
        low, high = FLOAT_FILE_RANGE
    else:
        raise ValueError(f"`depth` must be one of {DEPTHS}; got {depth!r}.")
    values = np.asarray(array, dtype=np.float64)
    if values.size:
        if not np.all(np.isfinite(values)):
            raise DepthError(
                f"Cannot read image {path}: {np.size(values) - np.isfinite(values).sum()} "
                f"of its float pixels are not finite (NaN or infinity); float images must "
                f"hold values in [{low:g}, {high:g}]."
            )
        found = (float(values.min()), float(values.max()))
        if found[0] < low or found[1] > high:
            raise DepthError(
                f"Cannot read image {path}: its {depth} pixels hold values in "
                f"[{found[0]:g}, {found[1]:g}], outside [{low:g}, {high:g}], the range "
                f"{depth} image files are read in (white at {high:g}). Rescale it to "
                f"[{low:g}, {high:g}] or save it as 8-bit."
            )
    return ((values - low) * (PIXEL_RANGE[1] / (high - low))).astype(np.float32)


def read_pixels(image, depth, path, channels=3):
    """The opened Pillow ``image`` as an array on [0, 255], at its ``depth``.

    8-bit images: ``convert("RGB")`` (``"L"`` for ``channels=1``), uint8
    ``(height, width, channels)``. 16-bit and float images (grayscale): float32
    ``(height, width)`` from :func:`scale_pixels`; the caller resizes it as a Pillow
    mode-F image if needed, and copies it to 3 channels.
    """
    if depth == "uint8":
        return np.asarray(image.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    return scale_pixels(np.asarray(image), depth, path)


def folder_dtype(images):
    """``"float32"`` when any of ``images`` (:class:`ImageInfo`) is deeper than 8 bits,
    else ``"uint8"``: the one dtype a folder is read in, so all its batches agree."""
    return "uint8" if all(image.depth == "uint8" for image in images) else "float32"


# -- internals -----------------------------------------------------------------------------


def _check_directory(directory):
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"Image folder {directory!r} does not exist or is not a directory.")
    return directory


def _extension_summary():
    extensions = image_extensions()
    common = [
        e
        for e in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
        if e in extensions
    ]
    return (
        f"{', '.join(common)} and {len(extensions) - len(common)} more extensions "
        "Pillow decodes (keras_vitmsn.images.image_files.image_extensions())"
    )


def _find_images(folder):
    extensions = image_extensions()
    paths, visited = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # a link back up the tree, or a second link to one folder
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths += [
            os.path.join(root, f)
            for f in sorted(files)
            if not f.startswith(".") and f.lower().endswith(extensions)
        ]
    return paths


def _inspect(path):
    """``(ImageInfo, None)`` when Pillow decodes ``path``, else ``(None, reason)``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            depth = pixel_depth(image, path)
            info = ImageInfo(path, image.format, image.mode, depth)
            image.verify()  # checksums, where the format has them (PNG's CRCs)
        # verify() leaves the image unusable and ignores truncated JPEGs: decode too.
        with Image.open(path) as image:
            if image.format in ("JPEG", "MPO"):
                image.draft(image.mode, (1, 1))  # 1/8 scale: faster, still reads every byte
            image.load()
            if depth != "uint8":
                read_pixels(image, depth, path)  # its values: a float file's range
    except Exception as exc:  # Pillow's plugins raise many types (OSError, SyntaxError...)
        message = str(exc)
        prefix = f"Cannot read image {path}: "
        if message.startswith(prefix):  # the listing names the file already
            message = message[len(prefix) :]
        return None, f"{type(exc).__name__}: {message}"
    return info, None


# The last check's results, keyed by the files' paths, sizes and modification times:
# the command line counts a folder's images, then the pipeline reads the same folder.
_last_check = (None, None)


def _check_images(paths, where, skip_bad_images, stacklevel):
    global _last_check

    def stamp(path):
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ino

    key = tuple((p, stamp(p)) for p in paths)
    if _last_check[0] == key:
        results = _last_check[1]
    else:
        chunks = [paths[i : i + _CHECK_CHUNK] for i in range(0, len(paths), _CHECK_CHUNK)]
        workers = min(32, (os.cpu_count() or 1) + 4, max(1, len(chunks)))
        # Pillow decodes without holding the GIL, so threads give real parallelism.
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results = [
                r for chunk in pool.map(lambda c: [_inspect(p) for p in c], chunks) for r in chunk
            ]
        _last_check = (key, results)
    bad = [(path, reason) for path, (info, reason) in zip(paths, results) if info is None]
    if bad and not skip_bad_images:
        listing = "\n".join(f"  {path} ({reason})" for path, reason in bad)
        raise BadImageError(
            f"{len(bad)} of {len(paths)} image file(s) in {where} cannot be decoded by "
            f"Pillow:\n{listing}\nFix or remove them, or leave them out with "
            "skip_bad_images=True (--skip-bad-images on the command line).",
            bad,
        )
    if bad:
        warnings.warn(
            f"Skipping {len(bad)} of {len(paths)} image file(s) in {where} that Pillow "
            f"cannot decode: {', '.join(path for path, _ in bad)}.",
            BadImageWarning,
            stacklevel=stacklevel,
        )
    return [info for info, _ in results if info is not None]
