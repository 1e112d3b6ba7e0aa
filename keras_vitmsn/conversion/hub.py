"""hf:// presets: fetch a transformers checkpoint with huggingface_hub, convert it once,
and cache the result as a Keras preset. (A Keras preset uploaded to the hub is used
directly from huggingface_hub's cache.)

Cache: ``$KERAS_HOME/keras_vitmsn/hf/<org>--<repo>/`` (``KERAS_HOME`` defaults to
``~/.keras``). An entry is written to a temporary directory next to it and renamed
into place only when complete, so an interrupted or failed conversion leaves nothing
behind. Once an entry exists, loading it touches neither the network nor the
Hugging Face cache; delete the directory to convert again (e.g. after the hub
repository changed). huggingface_hub keeps the downloaded files in its own cache
(``HF_HUB_CACHE``) and shows its progress bars while downloading.
"""

import json
import os
import re
import shutil
import tempfile
import warnings

from keras_vitmsn.conversion import checkpoints

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_CACHE_FILES = ("config.json", "model.weights.h5", "metadata.json")
# The weights layout of the Keras presets this version writes (metadata.json's
# "preset_format"). 2: the attention's query/key/value live in one fused `qkv`
# Dense. Cache entries of another layout are converted again.
PRESET_FORMAT_VERSION = 2


def preset_format(folder):
    """The ``preset_format`` in ``folder``'s metadata.json (1 if unrecorded), or None
    when the file is missing or unreadable."""
    try:
        with open(os.path.join(folder, "metadata.json"), encoding="utf-8") as f:
            metadata = json.load(f)
    except (OSError, ValueError):
        return None
    return metadata.get("preset_format", 1) if isinstance(metadata, dict) else None


class PresetDownloadError(ConnectionError):
    """A file of an hf:// preset could not be fetched (no network, offline mode, or
    not in the local Hugging Face cache)."""


def keras_home():
    return os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))


def parse_hf_handle(handle):
    """``"hf://org/repo"`` -> ``"org/repo"``, validated."""
    repo_id = handle[len("hf://") :] if handle.startswith("hf://") else handle
    repo_id = repo_id.strip("/")
    if not _REPO_ID.match(repo_id):
        raise ValueError(
            f"Invalid Hugging Face handle {handle!r}: expected 'hf://org/repo', e.g. "
            "'hf://facebook/vit-msn-small'."
        )
    return repo_id


def cache_dir_for(repo_id):
    """Where the Keras preset converted from ``repo_id`` is cached."""
    return os.path.join(keras_home(), "keras_vitmsn", "hf", repo_id.replace("/", "--"))


def is_cached(repo_id):
    folder = cache_dir_for(repo_id)
    complete = all(os.path.exists(os.path.join(folder, f)) for f in _CACHE_FILES)
    return complete and preset_format(folder) == PRESET_FORMAT_VERSION


def _local_alternative(repo_id):
    return (
        "To load it without the hub, fetch the checkpoint on a machine with access "
        f"(e.g. `hf download {repo_id} --local-dir DIR`, or "
        f"`transformers.ViTMSNModel.from_pretrained('{repo_id}').save_pretrained(DIR)`) "
        "and pass that directory: `from_preset(DIR)`. A Keras preset directory written "
        "by save_to_preset or conversion/convert_checkpoint.py works the same way."
    )


def _download(repo_id, filename, optional=False):
    """Path of ``filename`` in the local HF cache, downloading it if needed.

    Returns None for an ``optional`` file the repository does not have.
    """
    import huggingface_hub
    from huggingface_hub import errors

    from keras_vitmsn.version import __version__

    try:
        return huggingface_hub.hf_hub_download(
            repo_id,
            filename,
            library_name="keras_vitmsn",
            library_version=__version__,
        )
    except errors.RepositoryNotFoundError as e:
        raise ValueError(
            f"hf://{repo_id} was not found on the Hugging Face hub (or it is private / "
            f"gated and no valid token is set). Detail: {e}"
        ) from e
    except errors.LocalEntryNotFoundError as e:
        # Raised both offline (HF_HUB_OFFLINE=1) and when the hub is unreachable,
        # whenever the file is not already in the local Hugging Face cache.
        if optional:
            return _Unavailable(str(e))
        raise PresetDownloadError(
            f"Could not fetch {filename} of hf://{repo_id}: the Hugging Face hub is not "
            "reachable (no network, or offline mode with HF_HUB_OFFLINE=1) and the file "
            f"is not in the local Hugging Face cache. {_local_alternative(repo_id)} "
            f"Detail: {e}"
        ) from e
    except errors.EntryNotFoundError as e:
        if optional:
            return None
        raise FileNotFoundError(
            f"hf://{repo_id} has no {filename}: it is neither a transformers ViT-MSN "
            f"checkpoint nor a Keras preset repository. Detail: {e}"
        ) from e
    except (errors.HfHubHTTPError, OSError) as e:
        raise PresetDownloadError(
            f"Could not fetch {filename} of hf://{repo_id}: {e}. "
            f"{_local_alternative(repo_id)}"
        ) from e


class _Unavailable:
    """An optional file we could not check for (offline and not cached)."""

    def __init__(self, reason):
        self.reason = reason


def fetch_transformers_files(repo_id, load_weights=True, config=None):
    """Local paths of a transformers checkpoint's files on the hub (downloading them).

    Returns:
        ``{"config": path, "weights": path or None, "preprocessor": path or None}``.
    """
    config = config or _download(repo_id, "config.json")
    weights = None
    if load_weights:
        weights = _download(repo_id, "model.safetensors", optional=True)
        if not isinstance(weights, str):
            fallback = _download(repo_id, "pytorch_model.bin", optional=True)
            if not isinstance(fallback, str):
                reasons = [w.reason for w in (weights, fallback) if isinstance(w, _Unavailable)]
                if reasons:
                    raise PresetDownloadError(
                        f"Could not fetch the weights of hf://{repo_id} (model.safetensors "
                        "or pytorch_model.bin): the hub is not reachable and neither file "
                        f"is in the local Hugging Face cache. {_local_alternative(repo_id)} "
                        f"Detail: {reasons[0]}"
                    )
                raise FileNotFoundError(
                    f"hf://{repo_id} has neither model.safetensors nor pytorch_model.bin."
                )
            weights = fallback
    preprocessor = _download(repo_id, "preprocessor_config.json", optional=True)
    if isinstance(preprocessor, _Unavailable):
        warnings.warn(
            f"preprocessor_config.json of hf://{repo_id} is neither in the local Hugging "
            "Face cache nor reachable; the image converter uses the released ViT-MSN "
            "settings (bilinear resize to the model size, 1/255, ImageNet mean/std).",
            stacklevel=3,
        )
        preprocessor = None
    return {"config": config, "weights": weights, "preprocessor": preprocessor}


def fetch_keras_preset(repo_id, config_path, load_weights=True):
    """Download the other files of a Keras preset stored on the hub; returns its folder.

    huggingface_hub puts them next to ``config.json`` in its snapshot folder, which
    is then the preset directory (its cache is the only cache needed).
    """
    from keras_vitmsn.conversion.msn_checkpoint import MSN_HEAD_FILE
    from keras_vitmsn.models import preset_io

    required = [preset_io.METADATA_FILE]
    if load_weights:
        required.append(preset_io.MODEL_WEIGHTS_FILE)
    for name in required:
        _download(repo_id, name)
    optional = [preset_io.IMAGE_CONVERTER_FILE, preset_io.TASK_CONFIG_FILE, MSN_HEAD_FILE]
    for name in optional:
        found = _download(repo_id, name, optional=True)
        if name == preset_io.TASK_CONFIG_FILE and isinstance(found, str) and load_weights:
            _download(repo_id, preset_io.TASK_WEIGHTS_FILE)
    return os.path.dirname(config_path)


def _revision_of(path):
    # huggingface_hub's layout: .../models--org--repo/snapshots/<commit>/<file>.
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) >= 3 and parts[-3] == "snapshots":
        return parts[-2]
    return None


def write_cache_entry(source, repo_id, metadata=None):
    """Write ``source`` as a Keras preset into the cache, atomically.

    Returns:
        The backbone built while writing (so the caller need not build it again).
    """
    target = cache_dir_for(repo_id)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        backbone = source.save_keras_preset(tmp, metadata=metadata)
        if os.path.exists(target):
            # Not a complete current entry (those are loaded, never rewritten): written
            # in an older weights layout, a leftover from a crash, or made by hand.
            warnings.warn(f"Replacing the outdated or incomplete Keras preset cache entry {target}.")
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_cached(repo_id):
                raise
            # Another process finished the same conversion first: keep its entry.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return backbone


def load_hf_source(handle, load_weights=True):
    """A preset source for ``hf://org/repo``: the Keras cache if present, else the hub.

    The repository may hold a transformers checkpoint (converted, then cached) or a
    Keras preset uploaded with ``save_to_preset`` + ``huggingface_hub.upload_folder``
    (used as is from huggingface_hub's cache). With ``load_weights=True`` a cache
    miss on a transformers repository downloads, converts and writes the cache
    entry; with ``load_weights=False`` only config files are fetched and nothing is
    cached.
    """
    from keras_vitmsn.models.preset_io import KerasPresetSource

    repo_id = parse_hf_handle(handle)
    if is_cached(repo_id):
        return KerasPresetSource(cache_dir_for(repo_id), origin=f"hf://{repo_id}")
    config_path = _download(repo_id, "config.json")
    config = checkpoints.read_json(config_path, "config")
    if isinstance(config, dict) and "class_name" in config and "config" in config:
        # A Keras preset uploaded to the hub: nothing to convert.
        folder = fetch_keras_preset(repo_id, config_path, load_weights=load_weights)
        return KerasPresetSource(folder, origin=f"hf://{repo_id}")
    files = fetch_transformers_files(repo_id, load_weights=load_weights, config=config_path)
    source = checkpoints.load_transformers_files(
        files["config"], files["weights"], files["preprocessor"], origin=f"hf://{repo_id}"
    )
    if load_weights:
        metadata = {
            "source": f"hf://{repo_id}",
            "source_revision": _revision_of(files["config"]),
            "source_weights_file": os.path.basename(files["weights"]),
        }
        source._native_backbone = write_cache_entry(source, repo_id, metadata)
    return source
