"""save_to_preset / convert_to_preset over an existing folder: atomic, whole, and never
into someone else's folder."""

import os

import numpy as np
import pytest

import keras_vitmsn as kv

TINY = dict(
    image_shape=(32, 32, 3),
    patch_size=8,
    hidden_dim=32,
    num_layers=1,
    num_heads=4,
    intermediate_dim=64,
)


def classifier(preprocessor):
    converter = kv.ViTMSNImageConverter(image_size=(32, 32)) if preprocessor else None
    return kv.ViTMSNClassifier(kv.ViTMSNBackbone(**TINY), num_classes=3, preprocessor=converter)


def test_a_classifier_without_converter_replaces_one_with_it(tmp_path):
    folder = str(tmp_path / "p")
    classifier(preprocessor=True).save_to_preset(folder)
    classifier(preprocessor=False).save_to_preset(folder)
    assert "image_converter.json" not in os.listdir(folder)
    assert kv.ViTMSNClassifier.from_preset(folder).preprocessor is None


def test_a_backbone_over_a_classifier_preset_leaves_no_stale_head(tmp_path):
    folder = str(tmp_path / "p")
    classifier(preprocessor=True).save_to_preset(folder)
    backbone = kv.ViTMSNBackbone(**TINY)
    backbone.save_to_preset(folder)
    assert not {"task.json", "task.weights.h5"} & set(os.listdir(folder))
    with pytest.raises(ValueError, match="no classification head"):
        kv.ViTMSNClassifier.from_preset(folder)


def test_convert_over_a_classifier_preset_keeps_no_old_task(tmp_path):
    source, out = str(tmp_path / "src"), str(tmp_path / "out")
    kv.ViTMSNBackbone(**TINY).save_to_preset(source)
    classifier(preprocessor=True).save_to_preset(out)
    kv.convert_to_preset(source, out)
    assert "task.json" not in os.listdir(out)


@pytest.mark.parametrize("writer", ["backbone", "classifier", "convert"])
def test_a_foreign_folder_is_refused_and_left_untouched(tmp_path, writer):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a keras-vitmsn preset"):
        if writer == "backbone":
            kv.ViTMSNBackbone(**TINY).save_to_preset(str(folder))
        elif writer == "classifier":
            classifier(preprocessor=True).save_to_preset(str(folder))
        else:
            source = str(tmp_path / "src")
            kv.ViTMSNBackbone(**TINY).save_to_preset(source)
            kv.convert_to_preset(source, str(folder))
    assert os.listdir(folder) == ["notes.txt"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".mine.")]


def test_a_failed_write_leaves_the_old_preset_whole(tmp_path, monkeypatch):
    from keras_vitmsn.presets import file_format

    folder = str(tmp_path / "p")
    old = classifier(preprocessor=True)
    old.save_to_preset(folder)
    before = sorted(os.listdir(folder))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file_format, "write_task", disk_full)
    with pytest.raises(OSError, match="No space left"):
        classifier(preprocessor=False).save_to_preset(folder)
    assert sorted(os.listdir(folder)) == before
    x = np.zeros((1, 32, 32, 3), "uint8")
    np.testing.assert_allclose(
        kv.ViTMSNClassifier.from_preset(folder).predict(x, verbose=0),
        old.predict(x, verbose=0),
        atol=1e-6,
    )
