"""hf:// presets: a transformers checkpoint on the hub is fetched, converted once, and
cached as a Keras preset; a Keras preset uploaded to the hub is used directly from
huggingface_hub's cache.

Cache: ``$KERAS_HOME/keras_vitmsn/hf/<org>--<repo>/`` (``KERAS_HOME`` defaults to
``~/.keras``). An entry is written to a temporary directory next to it and renamed
into place only when complete, so an interrupted or failed conversion leaves nothing
behind. Once an entry exists, loading it touches neither the network nor the
Hugging Face cache; delete the directory to convert again (e.g. after the hub
repository changed).
"""

import os
import shutil
import tempfile
import warnings

from keras_vitmsn.conversion import checkpoints
from keras_vitmsn.conversion import hub
from keras_vitmsn.presets import file_format as ff
from keras_vitmsn.presets.sources import ConvertedSource
from keras_vitmsn.presets.sources import KerasPresetSource
from keras_vitmsn.utils import read_json


def is_current(repo_id):
    """A complete cache entry in the weights layout this version writes."""
    return is_current_entry(hub.cache_dir_for(repo_id))


def is_current_entry(folder):
    """``folder`` holds a complete converted preset in the layout this version writes
    (the test for any hub's cache entry: hf:// here, kaggle:// in
    :mod:`keras_vitmsn.presets.kaggle`)."""
    complete = all(
        os.path.exists(os.path.join(folder, name))
        for name in (ff.CONFIG_FILE, ff.MODEL_WEIGHTS_FILE, ff.METADATA_FILE)
    )
    return complete and ff.preset_format(folder) == ff.PRESET_FORMAT_VERSION


def fetch_keras_preset(repo_id, config_path, load_weights=True):
    """Download the other files of a Keras preset stored on the hub; returns its folder.

    huggingface_hub puts them next to ``config.json`` in its snapshot folder, which
    is then the preset directory (its cache is the only cache needed).
    """
    required = [ff.METADATA_FILE]
    if load_weights:
        required.append(ff.MODEL_WEIGHTS_FILE)
    for name in required:
        hub.download(repo_id, name)
    for name in (ff.IMAGE_CONVERTER_FILE, ff.TASK_CONFIG_FILE, ff.MSN_HEAD_FILE):
        found = hub.download(repo_id, name, optional=True)
        if name == ff.TASK_CONFIG_FILE and isinstance(found, str) and load_weights:
            hub.download(repo_id, ff.TASK_WEIGHTS_FILE)
    return os.path.dirname(config_path)


def write_cache_entry(source, repo_id, classes, metadata=None):
    """Write ``source`` (a :class:`ConvertedSource`) into the cache, atomically."""
    return write_entry(source, hub.cache_dir_for(repo_id), classes, metadata)


def write_entry(source, target, classes, metadata=None):
    """Write ``source`` as the converted preset ``target``, atomically: a temporary
    sibling is renamed into place only when complete."""
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        source.write_keras_preset(tmp, classes, metadata=metadata)
        if os.path.exists(target):
            # Not a complete current entry (those are loaded, never rewritten): written
            # in an older weights layout, a leftover from a crash, or made by hand.
            warnings.warn(
                f"Replacing the outdated or incomplete Keras preset cache entry {target}."
            )
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_current_entry(target):
                raise
            # Another process finished the same conversion first: keep its entry.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_hf_source(handle, load_weights, classes):
    """A source for ``hf://org/repo``: the Keras cache if present, else the hub.

    With ``load_weights=True`` a cache miss on a transformers repository downloads,
    converts and writes the cache entry, then loads from it; with
    ``load_weights=False`` only config files are fetched and nothing is cached.
    """
    repo_id = hub.parse_hf_handle(handle)
    origin = f"hf://{repo_id}"
    if is_current(repo_id):
        return KerasPresetSource(hub.cache_dir_for(repo_id), origin=origin)
    config_path = hub.download(repo_id, "config.json")
    config = read_json(config_path, "config")
    if isinstance(config, dict) and "class_name" in config and "config" in config:
        # A Keras preset uploaded to the hub: nothing to convert.
        folder = fetch_keras_preset(repo_id, config_path, load_weights=load_weights)
        return KerasPresetSource(folder, origin=origin)
    files = hub.fetch_transformers_files(repo_id, load_weights=load_weights, config=config_path)
    source = ConvertedSource(
        checkpoints.load_transformers_files(
            files["config"], files["weights"], files["preprocessor"], origin=origin
        )
    )
    if not load_weights:
        return source
    metadata = {
        "source": origin,
        "source_revision": hub.revision_of(files["config"]),
        "source_weights_file": os.path.basename(files["weights"]),
    }
    return KerasPresetSource(write_cache_entry(source, repo_id, classes, metadata), origin=origin)
