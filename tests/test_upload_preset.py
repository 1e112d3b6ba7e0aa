"""upload_preset, offline: the hub clients' calls are intercepted and record exactly what
would be sent (the files' names and bytes), or that nothing was sent at all."""

import json
import os
import sys

import h5py
import pytest

import keras_vitmsn as kv
from keras_vitmsn.presets import file_format as ff

huggingface_hub = pytest.importorskip("huggingface_hub")


def tiny_backbone():
    return kv.ViTMSNBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        hidden_dim=32,
        num_layers=1,
        num_heads=4,
        intermediate_dim=64,
    )


@pytest.fixture
def classifier_preset(tmp_path):
    path = tmp_path / "clf"
    kv.ViTMSNClassifier(
        tiny_backbone(),
        num_classes=3,
        preprocessor=kv.ViTMSNImageConverter(image_size=(32, 32)),
    ).save_to_preset(path)
    return path


def contents(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.fixture
def sent(monkeypatch):
    """Intercepts both hubs' clients: every call lands in the returned list."""
    from pathlib import Path

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("hf.create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append(("hf.upload_folder", repo_id, contents(Path(folder_path)), kwargs))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    try:
        import kagglehub
    except ImportError:
        pass
    else:

        def model_upload(handle, local_model_dir, **kwargs):
            calls.append(("kaggle.model_upload", handle, contents(Path(local_model_dir)), kwargs))

        monkeypatch.setattr(kagglehub, "model_upload", model_upload)
    return calls


EXPECTED = [
    "config.json",
    "image_converter.json",
    "metadata.json",
    "model.weights.h5",
    "task.json",
    "task.weights.h5",
]


def test_hf_upload_sends_exactly_the_checked_preset(classifier_preset, sent):
    assert kv.upload_preset("hf://me/vit-msn-tiny", classifier_preset) == EXPECTED
    (create, repo_id, kwargs), upload = sent
    assert (create, repo_id) == ("hf.create_repo", "me/vit-msn-tiny")
    assert kwargs["exist_ok"] is True and kwargs["repo_type"] == "model"
    assert upload[:2] == ("hf.upload_folder", "me/vit-msn-tiny")
    assert upload[2] == contents(classifier_preset)
    assert list(upload[2]) == EXPECTED
    assert upload[3]["repo_type"] == "model"


def test_kaggle_upload_sends_exactly_the_checked_preset(classifier_preset, sent):
    pytest.importorskip("kagglehub")
    files = kv.upload_preset("kaggle://me/vit-msn/keras/tiny", str(classifier_preset))
    assert files == EXPECTED
    [(call, handle, uploaded, kwargs)] = sent
    assert (call, handle) == ("kaggle.model_upload", "me/vit-msn/keras/tiny")
    assert uploaded == contents(classifier_preset)


def test_without_kagglehub_nothing_is_read_or_sent(classifier_preset, sent, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)
    with pytest.raises(ImportError, match="pip install kagglehub") as info:
        kv.upload_preset("kaggle://me/vit-msn/keras/tiny", classifier_preset)
    assert "\n" not in str(info.value)
    assert sent == []


@pytest.mark.parametrize(
    "uri, message",
    [
        ("kaggle://me/vit-msn/keras/tiny/2", "leave the version out"),
        ("kaggle://me/vit-msn/transformers/tiny", "framework 'transformers' is not one of 'keras'"),
        ("kaggle://me/vit-msn", "Invalid Kaggle handle"),
        ("hf://just-a-name", "Invalid Hugging Face handle"),
        (
            "s3://bucket/preset",
            "expected 'hf://org/repo' or 'kaggle://owner/model/keras/variation'",
        ),
    ],
)
def test_bad_uris_are_refused_before_reading_the_preset(tmp_path, sent, uri, message):
    with pytest.raises(ValueError, match=message):
        kv.upload_preset(uri, tmp_path / "does-not-exist")
    assert sent == []


def _damage(kind, path):
    if kind == "missing weights":
        (path / ff.MODEL_WEIGHTS_FILE).unlink()
    elif kind == "missing head weights":
        (path / ff.TASK_WEIGHTS_FILE).unlink()
    elif kind == "truncated config":
        (path / ff.CONFIG_FILE).write_text('{"class_name": "ViTMSNBack')
    elif kind == "corrupt weights":
        (path / ff.MODEL_WEIGHTS_FILE).write_bytes(b"not an hdf5 file")
    elif kind == "foreign file":
        (path / "notes.txt").write_text("hello")
    elif kind == "other layout":
        meta = json.loads((path / ff.METADATA_FILE).read_text())
        meta["preset_format"] = 1
        (path / ff.METADATA_FILE).write_text(json.dumps(meta))
    elif kind == "config of another class":
        config = json.loads((path / ff.CONFIG_FILE).read_text())
        config["class_name"] = "SomethingElse"
        (path / ff.CONFIG_FILE).write_text(json.dumps(config))


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing weights", "not a complete keras-vitmsn preset: model.weights.h5 missing"),
        ("missing head weights", "not a complete keras-vitmsn preset: task.weights.h5 missing"),
        ("truncated config", "does not load, so it is not uploaded: CheckpointError"),
        ("corrupt weights", "does not load, so it is not uploaded"),
        ("foreign file", "not part of a keras-vitmsn preset: notes.txt"),
        ("other layout", "records preset_format=1, not 2"),
        ("config of another class", "describes a 'SomethingElse'"),
    ],
)
@pytest.mark.parametrize("uri", ["hf://me/vit-msn-tiny", "kaggle://me/vit-msn/keras/tiny"])
def test_damaged_presets_are_refused_and_nothing_is_sent(
    classifier_preset, sent, kind, message, uri
):
    if uri.startswith("kaggle"):
        pytest.importorskip("kagglehub")
    _damage(kind, classifier_preset)
    with pytest.raises(ValueError, match=message):
        kv.upload_preset(uri, classifier_preset)
    assert sent == []


def test_a_transformers_checkpoint_is_pointed_to_convert_to_preset(tmp_path, sent):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit_msn"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"not part of a keras-vitmsn preset: model.safetensors"):
        kv.upload_preset("hf://me/vit-msn-tiny", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"transformers checkpoint: convert it first"):
        kv.upload_preset("hf://me/vit-msn-tiny", tmp_path)
    assert sent == []


@pytest.fixture
def pretraining_preset(tmp_path):
    path = tmp_path / "msn"
    tiny_backbone().save_to_preset(path)
    with h5py.File(path / ff.MSN_TRAINING_STATE_FILE, "w") as f:
        f.attrs["format"] = "keras_vitmsn.msn_training_state/1"
    return path


def test_training_state_is_refused_unless_excluded_or_included(pretraining_preset, sent):
    uri = "hf://me/vit-msn-tiny"
    with pytest.raises(ValueError, match="training_state='exclude'"):
        kv.upload_preset(uri, pretraining_preset)
    assert sent == []
    backbone_files = ["config.json", "metadata.json", "model.weights.h5"]
    assert kv.upload_preset(uri, pretraining_preset, training_state="exclude") == backbone_files
    assert list(sent[-1][2]) == backbone_files
    # Left out of the upload, not removed from the preset.
    assert (pretraining_preset / ff.MSN_TRAINING_STATE_FILE).exists()
    included = kv.upload_preset(uri, pretraining_preset, training_state="include")
    assert included == sorted(backbone_files + [ff.MSN_TRAINING_STATE_FILE])
    assert list(sent[-1][2]) == included
    with pytest.raises(ValueError, match="training_state='keep'"):
        kv.upload_preset(uri, pretraining_preset, training_state="keep")
