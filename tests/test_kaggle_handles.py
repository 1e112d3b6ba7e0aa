"""kaggle:// handles in from_preset, offline: kagglehub itself resolves each handle, from
its own cache (``KAGGLEHUB_CACHE``) populated in its on-disk layout, with every socket
of the process refusing to open, so any network attempt fails the test."""

import os
import shutil
import socket
import sys

import keras
import numpy as np
import pytest

import keras_vitmsn as kv
from keras_vitmsn.errors import PresetDownloadError
from keras_vitmsn.presets import kaggle

kagglehub = pytest.importorskip("kagglehub")

HANDLE = "kaggle://me/vit-msn/keras/tiny/1"


def weights_of(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt (name lookup included) is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def kaggle_cache(tmp_path, monkeypatch):
    """An empty kagglehub cache and KERAS_HOME; ``publish(handle, folder)`` puts a
    folder where kagglehub keeps a downloaded versioned model, as a download would."""
    cache = tmp_path / "kagglehub"
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    # Not a Kaggle notebook, whatever the machine running the tests is.
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)

    def publish(handle, folder):
        owner, model, framework, variation, version = handle[len("kaggle://") :].split("/")
        base = cache / "models" / owner / model / framework / variation
        shutil.copytree(folder, base / version)
        # kagglehub's completion marker for a whole model version.
        (base / f"{version}.complete").touch()
        return base / version

    publish.keras_home = tmp_path / "keras_home"
    return publish


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    path = tmp_path_factory.mktemp("preset") / "tiny"
    backbone = kv.ViTMSNBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        hidden_dim=32,
        num_layers=1,
        num_heads=4,
        intermediate_dim=64,
    )
    backbone.save_to_preset(path)
    kv.ViTMSNImageConverter(image_size=(32, 32)).save_to_preset(path)
    return path, weights_of(backbone)


def test_versioned_handle_loads_offline_from_kagglehubs_cache(
    tiny_preset, kaggle_cache, no_network
):
    folder, expected = tiny_preset
    kaggle_cache(HANDLE, folder)
    backbone = kv.ViTMSNBackbone.from_preset(HANDLE)
    for got, want in zip(weights_of(backbone), expected):
        np.testing.assert_array_equal(got, want)
    converter = kv.ViTMSNImageConverter.from_preset(HANDLE)
    assert tuple(converter.image_size) == (32, 32)
    clf = kv.ViTMSNClassifier.from_preset(HANDLE, num_classes=3)
    assert clf.predict(np.zeros((1, 32, 32, 3), "uint8"), verbose=0).shape == (1, 3)
    assert no_network == []
    # A Keras preset is read from kagglehub's cache: nothing is written to ours.
    assert not os.path.exists(kaggle_cache.keras_home / "keras_vitmsn" / "kaggle")


def test_transformers_model_is_converted_once_then_loaded_from_the_keras_cache(
    tmp_path, kaggle_cache, no_network, monkeypatch
):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hf_reference import TINY
    from hf_reference import make_hf_model

    make_hf_model(tmp_path / "hf", TINY)
    handle = "kaggle://me/vit-msn/transformers/tiny/3"
    kaggle_cache(handle, tmp_path / "hf")
    first = kv.ViTMSNBackbone.from_preset(handle)
    entry = (
        kaggle_cache.keras_home / "keras_vitmsn" / "kaggle" / "me--vit-msn--transformers--tiny--3"
    )
    assert sorted(os.listdir(entry)) == [
        "config.json",
        "image_converter.json",
        "metadata.json",
        "model.weights.h5",
    ]

    def fail():
        raise AssertionError("kagglehub asked although the converted preset is cached")

    monkeypatch.setattr(kaggle, "import_kagglehub", fail)
    second = kv.ViTMSNBackbone.from_preset(handle)
    for a, b in zip(weights_of(first), weights_of(second)):
        np.testing.assert_array_equal(a, b)
    assert no_network == []


@pytest.mark.parametrize(
    "handle, why",
    [
        ("kaggle://keras/vit_msn", "2 '/'-separated parts"),
        ("kaggle://me/vit-msn/keras/tiny/1/extra", "6 '/'-separated parts"),
        ("kaggle://me/vit-msn/keras/tiny/0", "the version '0' is not a positive integer"),
        ("kaggle://me/vit-msn/keras/tiny/latest", "the version 'latest' is not a positive"),
        ("kaggle://me//keras/tiny/1", "'' is not a Kaggle slug"),
        ("kaggle://me/vit msn/keras/tiny/1", "'vit msn' is not a Kaggle slug"),
        ("kaggle://me/vit-msn/pyTorch/tiny/1", "framework 'pyTorch' is not one of"),
    ],
)
def test_malformed_handles_are_one_clear_line(handle, why):
    with pytest.raises(ValueError) as info:
        kv.ViTMSNBackbone.from_preset(handle)
    message = str(info.value)
    assert message.startswith(f"Invalid Kaggle handle {handle!r}: {why}")
    assert "kaggle://owner/model/framework/variation/version" in message
    assert "\n" not in message


def test_without_kagglehub_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # import kagglehub now fails
    with pytest.raises(ImportError) as info:
        kv.ViTMSNBackbone.from_preset(HANDLE)
    message = str(info.value)
    assert "pip install kagglehub" in message and "\n" not in message


def test_unversioned_handle_needs_the_network(tiny_preset, kaggle_cache, no_network):
    kaggle_cache(HANDLE, tiny_preset[0])
    with pytest.raises(PresetDownloadError) as info:
        kv.ViTMSNBackbone.from_preset("kaggle://me/vit-msn/keras/tiny")
    message = str(info.value)
    assert "asks Kaggle for the latest version, which needs the network" in message
    assert "(cached: 1)" in message
    assert no_network, "kagglehub should have tried to ask Kaggle"


def test_versioned_handle_missing_from_the_cache_offline(tiny_preset, kaggle_cache, no_network):
    kaggle_cache(HANDLE, tiny_preset[0])
    with pytest.raises(
        PresetDownloadError, match=r"Version 2 is not in kagglehub's cache \(cached: 1\)"
    ):
        kv.ViTMSNBackbone.from_preset("kaggle://me/vit-msn/keras/tiny/2")


def test_a_folder_that_is_no_preset_is_refused(tmp_path, kaggle_cache, no_network):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"")
    kaggle_cache(HANDLE, tmp_path / "junk")
    with pytest.raises(ValueError, match="holds neither a Keras preset"):
        kv.ViTMSNBackbone.from_preset(HANDLE)
