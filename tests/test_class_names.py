"""Class names travel inside the classifier: its config, ``.keras`` files, presets'
task.json, transformers' ``id2label``, and ``decode_predictions``."""

import json
import os

import keras
import numpy as np
import pytest

import keras_vitmsn as kv

TINY = dict(
    image_shape=(16, 16, 3),
    patch_size=8,
    hidden_dim=16,
    num_layers=1,
    num_heads=2,
    intermediate_dim=32,
)
NAMES = ["cat", "dog", "emu"]


def classifier(**kwargs):
    return kv.ViTMSNClassifier(kv.ViTMSNBackbone(**TINY), **dict(dict(num_classes=3), **kwargs))


def test_class_names_are_part_of_the_model(tmp_path):
    clf = classifier(class_names=tuple(np.array(NAMES)))  # NumPy strings become str
    assert clf.class_names == NAMES and all(type(n) is str for n in clf.class_names)
    assert classifier().class_names is None  # unknown
    clf.class_names.append("yak")  # a copy: the model's names do not change
    assert clf.class_names == NAMES
    config = clf.get_config()
    assert config["class_names"] == NAMES
    assert kv.ViTMSNClassifier.from_config(config).get_config() == config
    clf.save(str(tmp_path / "m.keras"))
    assert os.listdir(tmp_path) == ["m.keras"]
    assert keras.saving.load_model(str(tmp_path / "m.keras")).class_names == NAMES
    clf.class_names = ["a", "b", "c"]  # checked like the constructor argument
    assert clf.class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="`class_names` has 2 names for 3 classes"):
        clf.class_names = ["a", "b"]


@pytest.mark.parametrize(
    "names, message",
    [
        (["cat", "dog"], r"`class_names` has 2 names for 3 classes"),
        ("cat", r"must be a list of strings, one per class, or None; got 'cat'"),
        (["cat", 1, "emu"], r"must be strings; got 1 \(int\)"),
        (3, r"must be a list of strings"),
    ],
)
def test_bad_class_names(names, message):
    with pytest.raises(ValueError, match=message):
        classifier(class_names=names)


def test_class_names_in_presets(tmp_path):
    preset = str(tmp_path / "clf")
    classifier(class_names=NAMES).save_to_preset(preset)
    task = json.loads(open(os.path.join(preset, "task.json")).read())
    assert task["config"]["class_names"] == NAMES
    assert kv.ViTMSNClassifier.from_preset(preset).class_names == NAMES
    # A new head's outputs are not the old classes: their names go, unless given.
    assert kv.ViTMSNClassifier.from_preset(preset, num_classes=3).class_names is None
    assert kv.ViTMSNClassifier.from_preset(preset, num_classes=2).class_names is None
    renamed = kv.ViTMSNClassifier.from_preset(preset, class_names=["a", "b", "c"])
    assert renamed.class_names == ["a", "b", "c"]
    assert kv.ViTMSNClassifier.from_preset(preset, class_names=None).class_names is None
    new = kv.ViTMSNClassifier.from_preset(preset, num_classes=2, class_names=["x", "y"])
    assert (new.num_classes, new.class_names) == (2, ["x", "y"])
    with pytest.raises(
        ValueError,
        match="has 3 classes; to train a new head for these classes pass num_classes=2 as well",
    ):
        kv.ViTMSNClassifier.from_preset(preset, class_names=["x", "y"])
    # A backbone preset: the names say how many classes the new head has.
    kv.ViTMSNBackbone(**TINY).save_to_preset(str(tmp_path / "backbone"))
    fresh = kv.ViTMSNClassifier.from_preset(str(tmp_path / "backbone"), class_names=["x", "y"])
    assert (fresh.num_classes, fresh.class_names) == (2, ["x", "y"])


def test_id2label_becomes_class_names(tmp_path):
    pytest.importorskip("torch", reason="the transformers reference needs torch")
    pytest.importorskip("transformers", reason="checkpoints are written by transformers")
    from hf_reference import TINY as HF_TINY
    from hf_reference import make_hf_model

    labels = {"0": "tench", "1": "goldfish", "2": "shark"}
    make_hf_model(
        tmp_path / "named",
        dict(HF_TINY, num_labels=3, id2label=labels),
        cls_name="ViTMSNForImageClassification",
    )
    clf = kv.ViTMSNClassifier.from_preset(str(tmp_path / "named"))
    assert clf.class_names == ["tench", "goldfish", "shark"]
    kv.convert_to_preset(str(tmp_path / "named"), str(tmp_path / "converted"))
    task = json.loads((tmp_path / "converted" / "task.json").read_text())
    assert task["config"]["class_names"] == ["tench", "goldfish", "shark"]
    assert (
        kv.ViTMSNClassifier.from_preset(str(tmp_path / "converted")).class_names == clf.class_names
    )
    # transformers writes LABEL_0, LABEL_1, ... when no labels were given: unknown.
    make_hf_model(
        tmp_path / "unnamed", dict(HF_TINY, num_labels=2), cls_name="ViTMSNForImageClassification"
    )
    assert kv.ViTMSNClassifier.from_preset(str(tmp_path / "unnamed")).class_names is None


def test_decode_predictions():
    logits = np.array([[0.0, 3.0, 1.0], [2.0, 2.0, -5.0]], "float32")
    top = kv.decode_predictions(logits, NAMES, top_k=2)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert [[(i, n) for i, n, _ in row] for row in top] == [
        [(1, "dog"), (2, "emu")],
        [(0, "cat"), (1, "dog")],
    ]
    np.testing.assert_allclose([p for _, _, p in top[0]], probs[0, [1, 2]], rtol=1e-6)
    # Probabilities are taken as they are; top_k beyond the classes shows them all.
    from_probs = kv.decode_predictions(keras.ops.convert_to_tensor(probs), top_k=10)
    assert [i for i, _, _ in from_probs[0]] == [1, 2, 0] and from_probs[0][0][1] is None
    np.testing.assert_allclose([p for _, _, p in from_probs[0]], probs[0, [1, 2, 0]], rtol=1e-6)
    assert kv.decode_predictions(probs, top_k=1, from_logits=True)[0][0][2] < probs[0, 1]
    with pytest.raises(ValueError, match="`class_names` has 2 names for 3 classes"):
        kv.decode_predictions(logits, ["cat", "dog"])
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="`top_k` must be a positive int"):
            kv.decode_predictions(logits, top_k=k)
    with pytest.raises(ValueError, match=r"must be \(batch, num_classes\); got shape \(3,\)"):
        kv.decode_predictions(logits[0])
