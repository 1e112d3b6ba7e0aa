"""kaggle:// presets: Kaggle Models fetched with kagglehub (an optional dependency,
``pip install kagglehub`` or ``keras-vitmsn[kaggle]``), with the rules of hf://
(:mod:`keras_vitmsn.presets.hub_cache`).

A handle is ``kaggle://owner/model/framework/variation/version``, e.g.
``kaggle://me/vit-msn/keras/vit_msn_small/1``:

- framework ``keras``: a Keras preset (``save_to_preset``, ``upload_preset``), used
  directly from kagglehub's cache (``KAGGLEHUB_CACHE``, ``~/.cache/kagglehub`` by
  default): that cache is the only one needed;
- framework ``transformers``: a ViT-MSN ``save_pretrained`` folder, converted once and
  cached as a Keras preset under
  ``$KERAS_HOME/keras_vitmsn/kaggle/<owner>--<model>--<framework>--<variation>--<version>/``,
  written atomically like the hf:// cache.

A versioned handle whose files are already in kagglehub's cache loads without the
network (kagglehub looks there first). Without the version, kagglehub asks Kaggle for
the latest one, which needs the network, except in a Kaggle notebook where the model
is attached; offline, pin the version.
"""

import os
import re

from keras_vitmsn.conversion import checkpoints
from keras_vitmsn.errors import PresetDownloadError
from keras_vitmsn.presets import hub_cache
from keras_vitmsn.presets.sources import ConvertedSource
from keras_vitmsn.presets.sources import KerasPresetSource
from keras_vitmsn.utils import keras_home
from keras_vitmsn.utils import read_json

KAGGLE_PREFIX = "kaggle://"
#: What from_preset can read, by the handle's framework segment.
FRAMEWORKS = ("keras", "transformers")
# Kaggle's slugs: letters, digits, '-', '_' and '.', never starting with a dot.
_SLUG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_EXAMPLE = "kaggle://me/vit-msn/keras/vit_msn_small/1"


def _invalid(handle, why):
    return ValueError(
        f"Invalid Kaggle handle {handle!r}: {why}. Expected "
        "'kaggle://owner/model/framework/variation/version', e.g. "
        f"{_EXAMPLE!r} (without the version, Kaggle is asked for the latest one)."
    )


def parse_kaggle_handle(handle, frameworks=FRAMEWORKS, versioned=None):
    """``"kaggle://o/m/f/v/N"`` -> ``(("o", "m", "f", "v"), N or None)``, validated.

    Args:
        handle: the handle, with its ``kaggle://`` prefix.
        frameworks: the framework segments accepted.
        versioned: True to require a version, False to refuse one, None for either.

    Example:
    >>> parse_kaggle_handle("kaggle://me/vit-msn/keras/vit_msn_small/2")
    (('me', 'vit-msn', 'keras', 'vit_msn_small'), 2)
    >>> parse_kaggle_handle("kaggle://me/vit-msn/keras/vit_msn_small")
    (('me', 'vit-msn', 'keras', 'vit_msn_small'), None)
    """
    if not handle.startswith(KAGGLE_PREFIX):
        raise _invalid(handle, f"it does not start with {KAGGLE_PREFIX!r}")
    parts = handle[len(KAGGLE_PREFIX) :].split("/")
    if len(parts) not in (4, 5):
        raise _invalid(handle, f"{len(parts)} '/'-separated parts, not 4 or 5")
    bad = [p for p in parts[:4] if not _SLUG.match(p)]
    if bad:
        raise _invalid(handle, f"{bad[0]!r} is not a Kaggle slug")
    if parts[2] not in frameworks:
        raise _invalid(
            handle,
            f"framework {parts[2]!r} is not one of {', '.join(map(repr, frameworks))}",
        )
    version = None
    if len(parts) == 5:
        if not parts[4].isdigit() or int(parts[4]) < 1:
            raise _invalid(handle, f"the version {parts[4]!r} is not a positive integer")
        version = int(parts[4])
    if versioned is True and version is None:
        raise _invalid(handle, "the version is missing")
    if versioned is False and version is not None:
        raise ValueError(
            f"Invalid Kaggle handle {handle!r} for an upload: leave the version out "
            f"(e.g. {_EXAMPLE.rsplit('/', 1)[0]!r}); Kaggle numbers each upload itself."
        )
    return tuple(parts[:4]), version


def import_kagglehub():
    """kagglehub, or an ImportError that says how to install it."""
    try:
        import kagglehub
    except ImportError:
        raise ImportError(
            "kaggle:// presets need the kagglehub package: pip install kagglehub "
            "(or pip install 'keras-vitmsn[kaggle]')."
        ) from None
    return kagglehub


def cache_dir_for(slugs, version):
    """Where a converted (transformers) Kaggle model is cached as a Keras preset."""
    return os.path.join(keras_home(), "keras_vitmsn", "kaggle", "--".join((*slugs, str(version))))


def kagglehub_versions(slugs):
    """The versions of a model kagglehub's cache holds complete, in order."""
    from kagglehub.config import get_cache_folder

    folder = os.path.join(get_cache_folder(), "models", *slugs)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(
        int(n[: -len(".complete")])
        for n in names
        if n.endswith(".complete") and n[: -len(".complete")].isdigit()
    )


def download(handle, slugs, version):
    """The local folder of the model (kagglehub's cache, or a Kaggle notebook's
    attached copy), fetching it if needed."""
    kagglehub = import_kagglehub()
    from kagglehub import exceptions

    # By name: older kagglehub releases lack some of these classes.
    def classes(*names):
        return tuple(getattr(exceptions, n) for n in names if hasattr(exceptions, n))

    ref = "/".join((*slugs, str(version))) if version else "/".join(slugs)
    try:
        return kagglehub.model_download(ref)
    except classes("NotFoundError", "UnauthenticatedError") as e:
        raise ValueError(
            f"{handle} was not found on Kaggle Models (or it is private and no valid "
            f"credentials are set: ~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY). "
            f"Detail: {e}"
        ) from e
    except (OSError, *classes("KaggleApiHTTPError", "BackendError")) as e:
        cached = kagglehub_versions(slugs)
        if version is None:
            hint = (
                "An unversioned handle asks Kaggle for the latest version, which needs "
                "the network; pin a version to use a copy kagglehub already holds"
                + (f" (cached: {', '.join(map(str, cached))})." if cached else ".")
            )
        else:
            hint = f"Version {version} is not in kagglehub's cache" + (
                f" (cached: {', '.join(map(str, cached))})." if cached else "."
            )
        raise PresetDownloadError(
            f"Could not fetch {handle}: Kaggle cannot be reached ({type(e).__name__}). "
            f"{hint} Without a network, copy the preset folder here and pass it: "
            f"from_preset(DIR). Detail: {str(e)[:300]}"
        ) from e


def load_kaggle_source(handle, load_weights, classes):
    """A source for a kaggle:// handle (see the module docstring)."""
    slugs, version = parse_kaggle_handle(handle)
    if version is not None and hub_cache.is_current_entry(cache_dir_for(slugs, version)):
        return KerasPresetSource(cache_dir_for(slugs, version), origin=handle)
    folder = download(handle, slugs, version)
    config_path = os.path.join(folder, "config.json")
    config = read_json(config_path, "config") if os.path.isfile(config_path) else None
    if isinstance(config, dict) and "class_name" in config and "config" in config:
        return KerasPresetSource(folder, origin=handle)
    if not (isinstance(config, dict) and "model_type" in config):
        raise ValueError(
            f"{handle} (downloaded to {folder}) holds neither a Keras preset (config.json "
            "with 'class_name', model.weights.h5, metadata.json) nor a transformers "
            "ViT-MSN checkpoint (config.json with 'model_type')."
        )
    source = ConvertedSource(
        checkpoints.load_transformers_checkpoint(folder, load_weights=load_weights)
    )
    source.origin = handle
    if version is None and os.path.basename(os.path.normpath(folder)).isdigit():
        version = int(os.path.basename(os.path.normpath(folder)))  # kagglehub's layout
    if not load_weights or version is None:
        # Nothing cached without a version to key it: converted in memory each time.
        return source
    metadata = {"source": f"{KAGGLE_PREFIX}{'/'.join(slugs)}/{version}"}
    target = cache_dir_for(slugs, version)
    return KerasPresetSource(
        hub_cache.write_entry(source, target, classes, metadata), origin=handle
    )
