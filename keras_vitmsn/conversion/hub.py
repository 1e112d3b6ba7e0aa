"""Fetching hf:// checkpoints with huggingface_hub: handles, downloads, error messages.

Files only: turning them into models and the Keras-preset cache of converted
checkpoints are :mod:`keras_vitmsn.presets.hub_cache`'s. huggingface_hub keeps the
downloaded files in its own cache (``HF_HUB_CACHE``) and shows its progress bars while
downloading.
"""

import os
import warnings

from huggingface_hub.utils import HFValidationError
from huggingface_hub.utils import validate_repo_id

from keras_vitmsn.errors import PresetDownloadError
from keras_vitmsn.utils import keras_home
from keras_vitmsn.version import __version__

# A complete cache entry (see keras_vitmsn.presets.hub_cache) has at least these.
_CACHE_FILES = ("config.json", "model.weights.h5", "metadata.json")


def parse_hf_handle(handle):
    """``"hf://org/repo"`` -> ``"org/repo"``, validated."""
    repo_id = handle[len("hf://") :] if handle.startswith("hf://") else handle
    repo_id = repo_id.strip("/")
    message = (
        f"Invalid Hugging Face handle {handle!r}: expected 'hf://org/repo', e.g. "
        "'hf://facebook/vit-msn-small'."
    )
    if repo_id.count("/") != 1:  # the hub also has legacy org-less ids; ours name both
        raise ValueError(message)
    try:
        validate_repo_id(repo_id)  # the hub's own naming rules
    except HFValidationError as e:
        raise ValueError(f"{message} {e}") from None
    return repo_id


def cache_dir_for(repo_id):
    """Where the Keras preset converted from ``repo_id`` is cached."""
    return os.path.join(keras_home(), "keras_vitmsn", "hf", repo_id.replace("/", "--"))


def is_cached(repo_id):
    folder = cache_dir_for(repo_id)
    return all(os.path.exists(os.path.join(folder, f)) for f in _CACHE_FILES)


def _local_alternative(repo_id):
    return (
        "To load it without the hub, fetch the checkpoint on a machine with access "
        f"(e.g. `hf download {repo_id} --local-dir DIR`, or "
        f"`transformers.ViTMSNModel.from_pretrained('{repo_id}').save_pretrained(DIR)`) "
        "and pass that directory: `from_preset(DIR)`. A Keras preset directory written "
        "by save_to_preset or tools/convert_checkpoint.py works the same way."
    )


_UNREACHABLE = {}


def hub_unreachable(timeout=3.0):
    """Why the hub's host cannot be reached at all (no DNS, connection refused or timed
    out), or None when a TCP connection opens; asked once per process and endpoint.

    A slow download is not "unreachable": only the connection itself is probed.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if (host, port) not in _UNREACHABLE:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                reason = None
        except OSError as e:
            reason = f"{host}:{port}: {e.strerror or e}"
        _UNREACHABLE[(host, port)] = reason
    return _UNREACHABLE[(host, port)]


def download(repo_id, filename, optional=False):
    """Path of ``filename`` in the local HF cache, downloading it if needed.

    Returns None for an ``optional`` file the repository does not have.
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub import errors

    unreachable = None if constants.HF_HUB_OFFLINE else hub_unreachable()
    if unreachable is not None:
        # huggingface_hub would retry for ~25 s before falling back to its cache.
        cached = huggingface_hub.try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return cached
        if optional:
            return Unavailable(unreachable)
        raise PresetDownloadError(
            f"Could not fetch {filename} of hf://{repo_id}: the Hugging Face hub cannot be "
            f"reached ({unreachable}) and the file is not in the local Hugging Face cache. "
            f"{_local_alternative(repo_id)}"
        )
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
            return Unavailable(str(e))
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
            f"Could not fetch {filename} of hf://{repo_id}: {e}. {_local_alternative(repo_id)}"
        ) from e


class Unavailable:
    """An optional file we could not check for (offline and not cached)."""

    def __init__(self, reason):
        self.reason = reason


def fetch_transformers_files(repo_id, load_weights=True, config=None):
    """Local paths of a transformers checkpoint's files on the hub (downloading them).

    Returns:
        ``{"config": path, "weights": path or None, "preprocessor": path or None}``.
    """
    config = config or download(repo_id, "config.json")
    weights = None
    if load_weights:
        weights = download(repo_id, "model.safetensors", optional=True)
        if not isinstance(weights, str):
            fallback = download(repo_id, "pytorch_model.bin", optional=True)
            if not isinstance(fallback, str):
                reasons = [w.reason for w in (weights, fallback) if isinstance(w, Unavailable)]
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
    preprocessor = download(repo_id, "preprocessor_config.json", optional=True)
    if isinstance(preprocessor, Unavailable):
        warnings.warn(
            f"preprocessor_config.json of hf://{repo_id} is neither in the local Hugging "
            "Face cache nor reachable; the image converter uses the released ViT-MSN "
            "settings (bilinear resize to the model size, 1/255, ImageNet mean/std).",
            stacklevel=3,
        )
        preprocessor = None
    return {"config": config, "weights": weights, "preprocessor": preprocessor}


def revision_of(path):
    """The commit of a file in huggingface_hub's cache layout, or None."""
    # .../models--org--repo/snapshots/<commit>/<file>.
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) >= 3 and parts[-3] == "snapshots":
        return parts[-2]
    return None
