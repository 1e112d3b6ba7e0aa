"""Internal helpers shared across the package (not public API): JSON files, atomic
writes, output checks, argument checks, the Keras home folder, default model names and
the ImageNet statistics.

keras is imported only where it is used: the command line reads its argument checks
from here before it configures TensorFlow, which keras may import.
"""

import contextlib
import json
import numbers
import os
import shutil
import tempfile

import numpy as np

from keras_vitmsn.errors import CheckpointError

# The released ViT-MSN processors normalise with ImageNet's per-channel statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def keras_home():
    """``$KERAS_HOME`` or ``~/.keras``, as Keras itself resolves it."""
    return os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))


def read_json(path, what):
    """Parse a JSON file; a malformed one raises :class:`CheckpointError` naming ``what``."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} ({what}) is truncated or corrupted: {e}.") from e


def _json_default(obj):
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _umask():
    # Only os.umask reads it, by setting it: put back at once.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def apply_umask(path):
    """Give ``path`` (and, for a folder, everything in it) the mode a plain ``open`` or
    ``mkdir`` would have: ``mkstemp`` and ``mkdtemp`` make theirs private (0600, 0700),
    which a written model or preset should not stay."""
    umask = _umask()
    for folder, dirs, files in os.walk(path) if os.path.isdir(path) else [("", [], [path])]:
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~umask)
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~umask)
    if os.path.isdir(path):
        os.chmod(path, 0o777 & ~umask)


def write_json(obj, path):
    """Write ``obj`` as indented JSON (tuples as lists, NumPy scalars as numbers).

    The file is written beside ``path`` and renamed over it, so a reader never sees
    half of it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(target, replace=None):
    """Yield a temporary sibling of ``target`` to fill; on success it becomes ``target``.

    An error or interruption inside the block leaves ``target`` as it was and removes
    the temporary folder, so readers never see a half-written directory. The result
    and everything in it get the modes of a plain ``mkdir`` / ``open`` under the user's
    umask (the temporary folder is private while it is written).

    Args:
        target: the directory to create or replace.
        replace: None to refuse an existing non-empty ``target`` (FileExistsError), or
            a callable ``path -> None`` that raises unless the existing ``target`` may
            be replaced; it is then swapped out whole (nothing stale survives).
    """
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    exists = os.path.isdir(target) and bool(os.listdir(target))
    if os.path.exists(target) and not os.path.isdir(target):
        raise FileExistsError(f"{target} exists and is not a directory.")
    if exists:
        if replace is None:
            raise FileExistsError(f"{target} already exists and is not empty.")
        replace(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        yield tmp
        apply_umask(tmp)  # the folder and every file in it, whoever wrote them
        if os.path.isdir(target):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
            os.rmdir(old)
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def default_name(name, base):
    """``name``, or a readable unique default: Keras would derive "vi_tmsn_backbone"
    from the class name."""
    import keras

    if name:
        return name
    uid = keras.backend.get_uid(base)
    return base if uid == 1 else f"{base}_{uid - 1}"


def positive_int(value, name, minimum=1):
    """``value`` as an int, or a ValueError naming ``name``.

    Only integers are accepted: ``2.5`` is not silently truncated to 2, and ``True``
    or ``"2"`` are refused rather than read as 1 or 2. ``minimum=0`` also accepts 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"`{name}` must be {what}; got {value!r}.")
    return int(value)


def check_can_create(path):
    """Raise unless ``path`` (a file or folder that may not exist yet) can be created.

    Missing parent folders are fine (callers create them); the nearest existing one
    must be a directory we can write in. Writability is probed by creating (and
    removing) a file there, which also holds for root and read-only file systems,
    where ``os.access`` says yes.

    Raises:
        NotADirectoryError: a parent of ``path`` is a file.
        PermissionError: the nearest existing parent is not writable.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"Cannot write {path}: {parent} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise PermissionError(
            f"Cannot write {path}: the folder {parent} is not writable ({e.strerror})."
        ) from e
