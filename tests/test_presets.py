"""Presets: the table, Keras preset directories, hf:// loading with its cache, errors.

hf:// is exercised for real but offline: a huggingface_hub cache is populated in its
on-disk layout with checkpoints written by transformers, and huggingface_hub runs in
offline mode, so ``hf_hub_download`` takes the same code path as after a download.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers reference needs torch")
transformers = pytest.importorskip("transformers", reason="these tests compare with transformers")

from checkpoint_helpers import FAKE_REVISION
from checkpoint_helpers import populate_hf_cache
from helpers import BACKEND
from helpers import max_abs_diff
from helpers import nchw_to_nhwc
from helpers import to_numpy
from hf_reference import SMALL
from hf_reference import TINY
from hf_reference import make_hf_model

import keras_vitmsn as kv
from keras_vitmsn import presets
from keras_vitmsn.backend import keras_internals
from keras_vitmsn.conversion import checkpoints
from keras_vitmsn.conversion import hub
from keras_vitmsn.errors import CheckpointError
from keras_vitmsn.errors import PresetDownloadError
from keras_vitmsn.presets import file_format

TOL = 1e-4
CLASSES = (kv.ViTMSNBackbone, kv.ViTMSNClassifier, kv.ViTMSNImageConverter)


def weights_of(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


def assert_same_weights(a, b):
    wa, wb = weights_of(a), weights_of(b)
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def save_released_processor(directory, size):
    """The released ViT-MSN preprocessor_config.json, at ``size``."""
    transformers.ViTImageProcessor(
        size={"height": size, "width": size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(directory)


def hf_checkpoint(directory, config=TINY, cls_name="ViTMSNModel", processor=True, **kwargs):
    model, state, cfg = make_hf_model(directory, config, cls_name=cls_name, **kwargs)
    if processor:
        save_released_processor(directory, config["image_size"])
    return model


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An offline huggingface_hub with an empty cache, and an empty KERAS_HOME."""
    import huggingface_hub.constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))

    def publish(repo_id, directory, only=None):
        files = sorted(only or os.listdir(directory))
        populate_hf_cache(str(cache), repo_id, {f: os.path.join(directory, f) for f in files})

    publish.cache = cache
    publish.keras_home = tmp_path / "keras_home"
    return publish


def forbid_conversion(monkeypatch):
    """Make any transformers conversion or hub access fail loudly."""

    def fail(*args, **kwargs):
        raise AssertionError("converted or downloaded although a Keras cache entry exists")

    monkeypatch.setattr(checkpoints, "load_transformers_files", fail)
    monkeypatch.setattr(hub, "fetch_transformers_files", fail)


# -- the table --------------------------------------------------------------------------


def test_preset_table():
    expected = {
        "vit_msn_small": ("facebook/vit-msn-small", 16, "vits16_800ep.pth.tar"),
        "vit_msn_base": ("facebook/vit-msn-base", 16, "vitb16_600ep.pth.tar"),
        "vit_msn_large": ("facebook/vit-msn-large", 16, "vitl16_600ep.pth.tar"),
        "vit_msn_base_4": ("facebook/vit-msn-base-4", 4, "vitb4_300ep.pth.tar"),
        "vit_msn_large_7": ("facebook/vit-msn-large-7", 7, "vitl7_200ep.pth.tar"),
    }
    for cls in CLASSES:
        assert list(cls.presets) == list(expected)
    for name, (repo, patch, original) in expected.items():
        entry = kv.ViTMSNBackbone.presets[name]
        meta = entry["metadata"]
        assert entry["hf_handle"] == f"hf://{repo}"
        assert meta["patch_size"] == entry["architecture"]["patch_size"] == patch
        assert meta["original_checkpoint"] == original
        assert meta["license"] == "apache-2.0" and "CC-BY-NC" in meta["license_note"]
        assert meta["source"] == "https://github.com/facebookresearch/msn"
        assert meta["params"] == presets.architecture_parameter_count(entry["architecture"])
        assert presets.preset_for_original_checkpoint(original) == name
    # The table is a copy: callers cannot corrupt it.
    kv.ViTMSNBackbone.presets["vit_msn_small"]["hf_handle"] = "hf://x/y"
    assert kv.ViTMSNBackbone.presets["vit_msn_small"]["hf_handle"] == "hf://facebook/vit-msn-small"


def test_parameter_count_matches_a_built_model():
    architecture = kv.ViTMSNBackbone.presets["vit_msn_small"]["architecture"]
    assert kv.ViTMSNBackbone(**architecture).count_params() == 21_665_664


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_unknown_preset_name_lists_the_valid_ones(cls):
    with pytest.raises(ValueError) as info:
        cls.from_preset("vit_msn_tiny")
    message = str(info.value)
    assert "Unknown ViT-MSN preset 'vit_msn_tiny'" in message
    for name in presets.preset_names():
        assert name in message


def test_unusable_sources_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="Invalid Kaggle handle"):
        kv.ViTMSNBackbone.from_preset("kaggle://keras/vit_msn")
    with pytest.raises(ValueError, match="Unsupported preset handle 'gs://"):
        kv.ViTMSNBackbone.from_preset("gs://bucket/vit_msn")
    with pytest.raises(ValueError, match="Invalid Hugging Face handle"):
        kv.ViTMSNBackbone.from_preset("hf://just-a-name")
    with pytest.raises(ValueError, match="holds neither a Keras preset"):
        kv.ViTMSNBackbone.from_preset(str(tmp_path))
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="only reads original MSN checkpoints"):
        kv.ViTMSNBackbone.from_preset(str(tmp_path / "weights.npz"))
    with pytest.raises(TypeError, match="`preset` must be a string or path"):
        kv.ViTMSNBackbone.from_preset(3)


# -- Keras preset directories ---------------------------------------------------------------


@pytest.fixture
def tiny_hf_dir(tmp_path):
    ref_model = hf_checkpoint(tmp_path / "hf")
    return ref_model, str(tmp_path / "hf")


def test_backbone_preset_round_trip_is_exact(tmp_path, tiny_hf_dir, rng):
    _, hf_dir = tiny_hf_dir
    backbone = kv.ViTMSNBackbone.from_preset(hf_dir)
    backbone.save_to_preset(str(tmp_path / "keras"))
    assert sorted(os.listdir(tmp_path / "keras")) == [
        "config.json",
        "metadata.json",
        "model.weights.h5",
    ]
    metadata = json.loads((tmp_path / "keras" / "metadata.json").read_text())
    assert metadata["parameter_count"] == backbone.count_params()
    assert metadata["keras_version"] == keras.__version__
    restored = kv.ViTMSNBackbone.from_preset(str(tmp_path / "keras"))
    assert restored.get_config() == backbone.get_config()
    assert_same_weights(restored, backbone)
    images = rng.standard_normal((2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(
        to_numpy(restored(images)["last_hidden_state"]),
        to_numpy(backbone(images)["last_hidden_state"]),
    )


def test_classifier_preset_round_trip_is_exact(tmp_path, tiny_hf_dir, rng):
    _, hf_dir = tiny_hf_dir
    clf = kv.ViTMSNClassifier.from_preset(hf_dir, num_classes=3, activation="softmax", dropout=0.1)
    clf.save_to_preset(str(tmp_path / "keras"))
    assert sorted(os.listdir(tmp_path / "keras")) == [
        "config.json",
        "image_converter.json",
        "metadata.json",
        "model.weights.h5",
        "task.json",
        "task.weights.h5",
    ]
    restored = kv.ViTMSNClassifier.from_preset(str(tmp_path / "keras"))
    assert (restored.num_classes, restored.dropout) == (3, 0.1)
    assert restored.activation is keras.activations.softmax
    assert (
        restored.preprocessor.image_converter.get_config()
        == clf.preprocessor.image_converter.get_config()
    )
    assert_same_weights(restored, clf)
    images = rng.integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        restored.predict(images, verbose=0), clf.predict(images, verbose=0)
    )

    # num_classes asks for a new head on the same backbone.
    fresh = kv.ViTMSNClassifier.from_preset(str(tmp_path / "keras"), num_classes=3)
    assert_same_weights(fresh.backbone, clf.backbone)
    assert not np.array_equal(to_numpy(fresh.classifier.kernel), to_numpy(clf.classifier.kernel))
    # The backbone of a task preset loads alone.
    assert_same_weights(kv.ViTMSNBackbone.from_preset(str(tmp_path / "keras")), clf.backbone)


def test_image_converter_preset_round_trip(tmp_path):
    converter = kv.ViTMSNImageConverter(
        image_size=(64, 48), mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bicubic"
    )
    converter.save_to_preset(str(tmp_path))
    assert os.listdir(tmp_path) == ["image_converter.json"]
    restored = kv.ViTMSNImageConverter.from_preset(str(tmp_path))
    assert restored.get_config() == converter.get_config()


def test_dtype_and_load_weights_overrides(tmp_path, tiny_hf_dir):
    _, hf_dir = tiny_hf_dir
    reference = kv.ViTMSNBackbone.from_preset(hf_dir)
    reference.save_to_preset(str(tmp_path / "keras"))
    for source in (hf_dir, str(tmp_path / "keras")):
        half = kv.ViTMSNBackbone.from_preset(source, dtype="bfloat16")
        assert half.dtype_policy.name == "bfloat16"
        assert all(v.dtype == "bfloat16" for v in half.weights)
        for h, r in zip(half.weights, reference.weights):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(keras.ops.cast(h, "float32")),
                keras.ops.convert_to_numpy(
                    keras.ops.cast(keras.ops.cast(r, "bfloat16"), "float32")
                ),
            )
        blank = kv.ViTMSNBackbone.from_preset(source, load_weights=False)
        assert {k: v for k, v in blank.get_config().items() if k != "name"} == {
            k: v for k, v in reference.get_config().items() if k != "name"
        }
        # Fresh init: the position table starts at zero, the checkpoint's is random.
        assert not np.any(to_numpy(blank.embeddings.position_embeddings))
        assert np.any(to_numpy(reference.embeddings.position_embeddings))


def test_image_shape_override_resamples_positions_once(tmp_path, tiny_hf_dir, rng):
    ref_model, hf_dir = tiny_hf_dir
    kv.ViTMSNBackbone.from_preset(hf_dir).save_to_preset(str(tmp_path / "keras"))
    pixels = rng.standard_normal((2, 3, 48, 40)).astype("float32")
    with torch.no_grad():
        expected = ref_model(
            torch.from_numpy(pixels), interpolate_pos_encoding=True
        ).last_hidden_state.numpy()
    tables = []
    for source in (hf_dir, str(tmp_path / "keras")):
        backbone = kv.ViTMSNBackbone.from_preset(source, image_shape=(48, 40, 3))
        assert backbone.image_shape == (48, 40, 3) and backbone.grid_size == (6, 5)
        diff = max_abs_diff(backbone(nchw_to_nhwc(pixels))["last_hidden_state"], expected)
        assert diff <= TOL
        tables.append(to_numpy(backbone.embeddings.position_embeddings))
    np.testing.assert_array_equal(tables[0], tables[1])
    clf = kv.ViTMSNClassifier.from_preset(hf_dir, num_classes=2, image_shape=(48, 40, 3))
    assert clf.preprocessor.image_size == (48, 40)
    assert tuple(
        clf.predict(rng.integers(0, 256, (1, 20, 20, 3), dtype=np.uint8), verbose=0).shape
    ) == (1, 2)


def test_unknown_override_is_rejected(tiny_hf_dir):
    with pytest.raises(
        ValueError, match="Unknown from_preset argument.*hidden_size.*Accepted: image_shape"
    ):
        kv.ViTMSNBackbone.from_preset(tiny_hf_dir[1], hidden_size=64)


@pytest.mark.parametrize(
    "override, stored",
    [
        ({"hidden_dim": 64}, "hidden_dim=64 (stored: 32)"),
        ({"num_layers": 3}, "num_layers=3 (stored: 2)"),
        ({"image_shape": (32, 32, 1)}, "1 channels (stored: 3)"),
    ],
)
def test_overrides_that_contradict_the_weights_say_which_can_be_overridden(
    tmp_path, tiny_hf_dir, override, stored
):
    # They used to fail deep in weight loading ("expected 2 variables").
    _, hf_dir = tiny_hf_dir
    kv.ViTMSNBackbone.from_preset(hf_dir).save_to_preset(str(tmp_path / "keras"))
    for source in (hf_dir, str(tmp_path / "keras")):
        with pytest.raises(ValueError, match="conflict with the weights stored in") as info:
            kv.ViTMSNBackbone.from_preset(source, **override)
        message = str(info.value)
        assert stored in message and "Arguments that can: image_shape (height and width" in message
        assert "load_weights=False" in message
        assert kv.ViTMSNBackbone.from_preset(source, load_weights=False, **override)
    # A Keras preset records its head count and mask token as well; the same values pass.
    with pytest.raises(ValueError, match=r"num_heads=2 \(stored: 4\)"):
        kv.ViTMSNBackbone.from_preset(str(tmp_path / "keras"), num_heads=2)
    with pytest.raises(ValueError, match=r"use_mask_token=True \(stored: False\)"):
        kv.ViTMSNBackbone.from_preset(str(tmp_path / "keras"), use_mask_token=True)
    same = kv.ViTMSNClassifier.from_preset(
        str(tmp_path / "keras"), num_classes=2, hidden_dim=32, dropout_rate=0.1
    )
    assert same.backbone.dropout_rate == 0.1


def test_damaged_keras_presets(tmp_path, tiny_hf_dir):
    _, hf_dir = tiny_hf_dir
    kv.ViTMSNClassifier.from_preset(hf_dir, num_classes=2).save_to_preset(str(tmp_path / "p"))
    weights = tmp_path / "p" / "model.weights.h5"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        kv.ViTMSNBackbone.from_preset(str(tmp_path / "p"))

    kv.ViTMSNClassifier.from_preset(hf_dir, num_classes=2).save_to_preset(str(tmp_path / "q"))
    (tmp_path / "q" / "task.json").write_text('{"module": "keras_vitmsn", "class_na')
    with pytest.raises(CheckpointError, match="task.json.*truncated or corrupted"):
        kv.ViTMSNClassifier.from_preset(str(tmp_path / "q"))

    kv.ViTMSNClassifier.from_preset(hf_dir, num_classes=2).save_to_preset(str(tmp_path / "r"))
    os.remove(tmp_path / "r" / "task.weights.h5")
    with pytest.raises(FileNotFoundError, match="task.weights.h5 is missing"):
        kv.ViTMSNClassifier.from_preset(str(tmp_path / "r"))

    # A converter-only preset is not a backbone.
    kv.ViTMSNImageConverter().save_to_preset(str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        kv.ViTMSNBackbone.from_preset(str(tmp_path / "c"))


# -- the classifier's preprocessor ------------------------------------------------------------


def test_classifier_from_preset_preprocesses_uint8(tiny_hf_dir, rng):
    _, hf_dir = tiny_hf_dir
    clf = kv.ViTMSNClassifier.from_preset(hf_dir, num_classes=4)
    assert isinstance(clf.preprocessor.image_converter, kv.ViTMSNImageConverter)
    images = rng.integers(0, 256, (3, 50, 70, 3), dtype=np.uint8)
    logits = clf.predict(images, verbose=0)
    assert logits.shape == (3, 4)
    # Same as preprocessing outside and running without a preprocessor.
    bare = kv.ViTMSNClassifier(clf.backbone, num_classes=4)
    bare.classifier.set_weights(clf.classifier.get_weights())
    np.testing.assert_allclose(bare.predict(clf.preprocessor(images), verbose=0), logits, atol=1e-5)
    # Opting out, e.g. to preprocess in tf.data.
    assert (
        kv.ViTMSNClassifier.from_preset(hf_dir, num_classes=4, preprocessor=None).preprocessor
        is None
    )
    history = clf.fit(images, np.array([0, 1, 2]), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_classifier_with_preprocessor_serialises(tmp_path, tiny_hf_dir, rng):
    _, hf_dir = tiny_hf_dir
    clf = kv.ViTMSNClassifier.from_preset(hf_dir, num_classes=4)
    config = clf.get_config()
    clone = kv.ViTMSNClassifier.from_config(config)
    assert clone.get_config() == config
    path = str(tmp_path / "clf.keras")
    clf.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.preprocessor.image_converter, kv.ViTMSNImageConverter)
    assert loaded.get_config() == config
    images = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), clf.predict(images, verbose=0))


def test_classifier_rejects_mismatched_preprocessors(tiny_hf_dir):
    backbone = kv.ViTMSNBackbone.from_preset(tiny_hf_dir[1])
    with pytest.raises(ValueError, match="must be a keras_vitmsn.ViTMSNImageConverter or None"):
        kv.ViTMSNClassifier(backbone, 2, preprocessor=keras.layers.Rescaling(1 / 255))
    with pytest.raises(ValueError, match="data_format .'channels_first'. must match"):
        kv.ViTMSNClassifier(
            backbone,
            2,
            preprocessor=kv.ViTMSNImageConverter((32, 32), data_format="channels_first"),
        )
    with pytest.raises(
        ValueError, match=r"resizes to \(48, 48\) but the backbone expects \(32, 32\)"
    ):
        kv.ViTMSNClassifier(backbone, 2, preprocessor=kv.ViTMSNImageConverter((48, 48)))
    clf = kv.ViTMSNClassifier(
        backbone, 2, preprocessor=kv.ViTMSNImageConverter((48, 48)), interpolate_pos_encoding=True
    )
    assert clf.preprocessor.image_size == (48, 48)


# -- hf:// -------------------------------------------------------------------------------------


def test_hf_handle_converts_once_then_loads_from_the_keras_cache(
    tmp_path, offline_hub, monkeypatch, rng
):
    ref_model = hf_checkpoint(tmp_path / "ck")
    offline_hub("org/tiny-msn", tmp_path / "ck")
    backbone = kv.ViTMSNBackbone.from_preset("hf://org/tiny-msn")
    pixels = rng.standard_normal((2, 3, 32, 32)).astype("float32")
    with torch.no_grad():
        expected = ref_model(torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert max_abs_diff(backbone(nchw_to_nhwc(pixels))["last_hidden_state"], expected) <= TOL

    entry = hub.cache_dir_for("org/tiny-msn")
    assert entry == str(offline_hub.keras_home / "keras_vitmsn" / "hf" / "org--tiny-msn")
    assert sorted(os.listdir(entry)) == [
        "config.json",
        "image_converter.json",
        "metadata.json",
        "model.weights.h5",
    ]
    assert os.listdir(os.path.dirname(entry)) == ["org--tiny-msn"]  # no temporary leftovers
    metadata = json.loads(open(os.path.join(entry, "metadata.json")).read())
    assert metadata["source"] == "hf://org/tiny-msn"
    assert metadata["source_revision"] == FAKE_REVISION
    assert metadata["source_weights_file"] == "model.safetensors"

    # Second load: no conversion, no hub, not even the Hugging Face cache.
    forbid_conversion(monkeypatch)
    import shutil

    shutil.rmtree(offline_hub.cache)
    again = kv.ViTMSNBackbone.from_preset("hf://org/tiny-msn")
    assert_same_weights(again, backbone)
    converter = kv.ViTMSNImageConverter.from_preset("hf://org/tiny-msn")
    assert converter.image_size == (32, 32) and converter.mean == (0.485, 0.456, 0.406)
    clf = kv.ViTMSNClassifier.from_preset("hf://org/tiny-msn", num_classes=3)
    assert clf.predict(rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8), verbose=0).shape == (
        2,
        3,
    )


def test_cache_entry_of_an_older_weights_layout_is_converted_again(tmp_path, offline_hub):
    """Entries written in another weights layout (metadata.json's preset_format)
    cannot be read by this version: they are converted again instead of failing."""
    hf_checkpoint(tmp_path / "ck")
    offline_hub("org/tiny-msn", tmp_path / "ck")
    first = kv.ViTMSNBackbone.from_preset("hf://org/tiny-msn")
    entry = hub.cache_dir_for("org/tiny-msn")
    metadata_path = os.path.join(entry, "metadata.json")
    metadata = json.loads(open(metadata_path).read())
    assert metadata["preset_format"] == file_format.PRESET_FORMAT_VERSION
    old_format = file_format.PRESET_FORMAT_VERSION - 1
    json.dump(dict(metadata, preset_format=old_format), open(metadata_path, "w"))
    with open(os.path.join(entry, "model.weights.h5"), "wb") as f:
        f.write(b"an old layout")  # unreadable: must not be loaded
    with pytest.warns(UserWarning, match="outdated or incomplete"):
        again = kv.ViTMSNBackbone.from_preset("hf://org/tiny-msn")
    assert_same_weights(again, first)
    assert (
        json.loads(open(metadata_path).read())["preset_format"] == file_format.PRESET_FORMAT_VERSION
    )


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    backbone = kv.ViTMSNBackbone(
        image_shape=(16, 16, 3),
        patch_size=8,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
    )
    backbone.save_to_preset(tmp_path / "p")
    import h5py

    with h5py.File(tmp_path / "p" / "model.weights.h5", "r+") as f:
        groups = []
        f.visit(lambda name: groups.append(name) if name.endswith("attention/qkv") else None)
        for name in groups:
            f.move(name, name[: -len("qkv")] + "query")
    with pytest.raises(ValueError, match="does not fit the backbone described by config.json"):
        kv.ViTMSNBackbone.from_preset(str(tmp_path / "p"))


def test_builtin_name_resolves_to_its_hub_repository(tmp_path, offline_hub, monkeypatch):
    # A tiny checkpoint published under the real repo id: only the id mapping matters.
    hf_checkpoint(tmp_path / "ck")
    offline_hub("facebook/vit-msn-base-4", tmp_path / "ck")
    backbone = kv.ViTMSNBackbone.from_preset("vit_msn_base_4")
    assert os.path.isdir(hub.cache_dir_for("facebook/vit-msn-base-4"))
    forbid_conversion(monkeypatch)
    assert_same_weights(kv.ViTMSNBackbone.from_preset("hf://facebook/vit-msn-base-4"), backbone)
    assert_same_weights(kv.ViTMSNBackbone.from_preset("vit_msn_base_4"), backbone)


def test_keras_preset_uploaded_to_the_hub_loads_without_conversion(
    tmp_path, offline_hub, monkeypatch, rng
):
    hf_checkpoint(
        tmp_path / "ck", dict(TINY, num_labels=3), cls_name="ViTMSNForImageClassification"
    )
    clf = kv.ViTMSNClassifier.from_preset(str(tmp_path / "ck"))
    clf.save_to_preset(str(tmp_path / "keras"))
    offline_hub("user/keras-preset", tmp_path / "keras")
    forbid_conversion(monkeypatch)
    restored = kv.ViTMSNClassifier.from_preset("hf://user/keras-preset")
    assert_same_weights(restored, clf)
    images = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        restored.predict(images, verbose=0), clf.predict(images, verbose=0)
    )
    assert not os.path.exists(hub.cache_dir_for("user/keras-preset"))


def test_hf_pytorch_model_bin_fallback(tmp_path, offline_hub, rng):
    ref_model, state, _ = make_hf_model(tmp_path / "ck", TINY)
    os.remove(tmp_path / "ck" / "model.safetensors")
    torch.save(
        {k: torch.from_numpy(np.array(v)) for k, v in state.items()},
        tmp_path / "ck" / "pytorch_model.bin",
    )
    save_released_processor(tmp_path / "ck", 32)
    offline_hub("org/bin-only", tmp_path / "ck")
    backbone = kv.ViTMSNBackbone.from_preset("hf://org/bin-only")
    pixels = rng.standard_normal((1, 3, 32, 32)).astype("float32")
    with torch.no_grad():
        expected = ref_model(torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert max_abs_diff(backbone(nchw_to_nhwc(pixels))["last_hidden_state"], expected) <= TOL
    metadata = json.loads(
        open(os.path.join(hub.cache_dir_for("org/bin-only"), "metadata.json")).read()
    )
    assert metadata["source_weights_file"] == "pytorch_model.bin"


def test_hf_classification_checkpoint_keeps_its_head(tmp_path, offline_hub, rng):
    config = dict(TINY, num_labels=6)
    ref_model = hf_checkpoint(tmp_path / "ck", config, cls_name="ViTMSNForImageClassification")
    offline_hub("org/tiny-clf", tmp_path / "ck")
    clf = kv.ViTMSNClassifier.from_preset("hf://org/tiny-clf", preprocessor=None)
    assert {"task.json", "task.weights.h5"} <= set(os.listdir(hub.cache_dir_for("org/tiny-clf")))
    pixels = rng.standard_normal((2, 3, 32, 32)).astype("float32")
    with torch.no_grad():
        expected = ref_model(torch.from_numpy(pixels)).logits.numpy()
    assert clf.num_classes == 6
    assert max_abs_diff(clf(nchw_to_nhwc(pixels)), expected) <= TOL


def test_missing_preprocessor_config_warns_and_uses_released_settings(tmp_path, offline_hub):
    hf_checkpoint(tmp_path / "ck", processor=False)
    offline_hub("org/no-processor", tmp_path / "ck")
    with pytest.warns(UserWarning, match="preprocessor_config.json of hf://org/no-processor"):
        converter = kv.ViTMSNImageConverter.from_preset("hf://org/no-processor")
    assert converter.image_size == (32, 32) and converter.std == (0.229, 0.224, 0.225)


def test_no_network_error_names_repo_file_and_local_alternative(tmp_path, offline_hub):
    with pytest.raises(PresetDownloadError) as info:
        kv.ViTMSNBackbone.from_preset("vit_msn_small")
    message = str(info.value)
    assert "config.json of hf://facebook/vit-msn-small" in message
    assert "from_preset(DIR)" in message and "hf download facebook/vit-msn-small" in message
    assert not os.path.exists(hub.cache_dir_for("facebook/vit-msn-small"))

    # Config cached, weights not: the error names the weight files.
    hf_checkpoint(tmp_path / "ck")
    offline_hub(
        "org/config-only", tmp_path / "ck", only=["config.json", "preprocessor_config.json"]
    )
    with pytest.raises(
        PresetDownloadError,
        match="weights of hf://org/config-only .model.safetensors or pytorch_model.bin",
    ):
        kv.ViTMSNBackbone.from_preset("hf://org/config-only")
    # The architecture alone needs no weights.
    blank = kv.ViTMSNBackbone.from_preset("hf://org/config-only", load_weights=False)
    assert blank.hidden_dim == 32
    assert not os.path.exists(hub.cache_dir_for("org/config-only"))


@pytest.mark.parametrize("damage", ["truncated", "mismatched"])
def test_bad_hub_checkpoint_leaves_no_cache_entry(tmp_path, offline_hub, damage):
    hf_checkpoint(tmp_path / "ck")
    weights = tmp_path / "ck" / "model.safetensors"
    if damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) - 1000])
        error, match = CheckpointError, "truncated"
    else:
        config = json.loads((tmp_path / "ck" / "config.json").read_text())
        config["intermediate_size"] = 48
        (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
        error, match = ValueError, r"intermediate.dense.weight: checkpoint \(64, 32\)"
    offline_hub("org/broken", tmp_path / "ck")
    with pytest.raises(error, match=match):
        kv.ViTMSNBackbone.from_preset("hf://org/broken")
    parent = os.path.dirname(hub.cache_dir_for("org/broken"))
    assert not os.path.exists(parent) or os.listdir(parent) == []


def test_failure_while_writing_the_cache_leaves_nothing(tmp_path, offline_hub, monkeypatch):
    hf_checkpoint(tmp_path / "ck")
    offline_hub("org/tiny-msn", tmp_path / "ck")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file_format, "write_image_converter", disk_full)
    with pytest.raises(OSError, match="No space left"):
        kv.ViTMSNBackbone.from_preset("hf://org/tiny-msn")
    assert os.listdir(os.path.dirname(hub.cache_dir_for("org/tiny-msn"))) == []
    monkeypatch.undo()


def test_hf_offline_through_environment_variables(tmp_path):
    """The documented route: HF_HUB_OFFLINE=1 and HF_HUB_CACHE set before starting."""
    hf_checkpoint(tmp_path / "ck")
    populate_hf_cache(
        str(tmp_path / "hf_cache"),
        "org/env-msn",
        {f: str(tmp_path / "ck" / f) for f in os.listdir(tmp_path / "ck")},
    )
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(tmp_path / "hf_cache"),
        KERAS_HOME=str(tmp_path / "keras_home"),
        KERAS_BACKEND=BACKEND,
    )
    script = (
        "import keras, numpy as np, keras_vitmsn as kv\n"
        "a = kv.ViTMSNBackbone.from_preset('hf://org/env-msn')\n"
        "b = kv.ViTMSNBackbone.from_preset('hf://org/env-msn')\n"
        "print('SUM', float(sum(np.abs(keras.ops.convert_to_numpy(v)).sum() for v in b.weights)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(
        tmp_path / "keras_home" / "keras_vitmsn" / "hf" / "org--env-msn" / "model.weights.h5"
    )
    direct = kv.ViTMSNBackbone.from_preset(str(tmp_path / "ck"))
    expected = float(sum(np.abs(keras.ops.convert_to_numpy(v)).sum() for v in direct.weights))
    printed = float(result.stdout.split("SUM")[1])
    assert abs(printed - expected) <= 1e-3 * expected


@pytest.mark.large
def test_vit_msn_small_conversion_parity(tmp_path, offline_hub, rng):
    """Full-size vit-msn-small (random weights), through the built-in preset name."""
    ref_model = hf_checkpoint(tmp_path / "ck", SMALL)
    offline_hub("facebook/vit-msn-small", tmp_path / "ck")
    backbone = kv.ViTMSNBackbone.from_preset("vit_msn_small")
    assert (
        backbone.count_params() == kv.ViTMSNBackbone.presets["vit_msn_small"]["metadata"]["params"]
    )
    pixels = rng.standard_normal((2, 3, 224, 224)).astype("float32")
    with torch.no_grad():
        expected = ref_model(torch.from_numpy(pixels)).last_hidden_state.numpy()
    diff = max_abs_diff(backbone(nchw_to_nhwc(pixels))["last_hidden_state"], expected)
    cached = kv.ViTMSNBackbone.from_preset("vit_msn_small")
    cached_diff = max_abs_diff(cached(nchw_to_nhwc(pixels))["last_hidden_state"], expected)
    print(
        f"\n[conversion parity {BACKEND} vit_msn_small] converted {diff:.2e}, "
        f"from cache {cached_diff:.2e}"
    )
    assert diff <= TOL and cached_diff <= TOL


def test_loading_initialises_every_variable_once_and_leaves_nothing_pending(
    tmp_path, tiny_hf_dir, rng
):
    _, hf_dir = tiny_hf_dir
    kv.ViTMSNBackbone.from_preset(hf_dir).save_to_preset(str(tmp_path / "keras"))
    for source, kwargs in (
        (hf_dir, {}),
        (str(tmp_path / "keras"), {}),
        (str(tmp_path / "keras"), {"image_shape": (40, 40, 3)}),
    ):
        backbone = kv.ViTMSNBackbone.from_preset(source, **kwargs)
        assert keras_internals.pending_variables() == []
        assert all(v._initializer is None for v in backbone.variables)
    _rewrite = tmp_path / "hf_broken"
    hf_checkpoint(_rewrite)
    config = json.loads((_rewrite / "config.json").read_text())
    (_rewrite / "config.json").write_text(json.dumps(dict(config, intermediate_size=48)))
    with pytest.raises(ValueError, match="shape mismatches"):
        kv.ViTMSNBackbone.from_preset(str(_rewrite))
    assert keras_internals.pending_variables() == []
    # Such a model trains like any other (dropout seed generators included).
    clf = kv.ViTMSNClassifier(
        kv.ViTMSNBackbone.from_preset(hf_dir, dropout_rate=0.1), num_classes=2, dropout=0.1
    )
    before = to_numpy(clf.backbone.embeddings.position_embeddings)
    history = clf.fit(
        rng.standard_normal((4, 32, 32, 3)).astype("float32"),
        np.array([0, 1, 0, 1]),
        epochs=2,
        verbose=0,
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.array_equal(before, to_numpy(clf.backbone.embeddings.position_embeddings))


def test_unreachable_hub_fails_within_seconds_and_uses_the_hf_cache(
    tmp_path, offline_hub, monkeypatch
):
    """Not offline mode, but no route to the hub (connection refused): fail fast with the
    good error instead of huggingface_hub's ~25 s of retries; cached files still load."""
    import time

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    hub._UNREACHABLE.clear()
    start = time.perf_counter()
    with pytest.raises(PresetDownloadError, match="cannot be reached .127.0.0.1:9"):
        kv.ViTMSNBackbone.from_preset("hf://org/not-cached")
    assert time.perf_counter() - start < 5
    hf_checkpoint(tmp_path / "ck")
    offline_hub("org/cached", tmp_path / "ck")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert kv.ViTMSNBackbone.from_preset("hf://org/cached").hidden_dim == 32
    hub._UNREACHABLE.clear()
