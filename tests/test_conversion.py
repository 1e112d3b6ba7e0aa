"""Checkpoint conversion: file readers, key handling, strict accounting, MSN originals.

Every checkpoint is built here with transformers (random weights, save_pretrained) or
re-keyed from one; nothing touches the network.
"""

import json
import os
import sys

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers reference needs torch")
from checkpoint_helpers import hub_state_to_msn_encoder
from checkpoint_helpers import write_msn_checkpoint
from helpers import BACKEND
from helpers import max_abs_diff
from helpers import nchw_to_nhwc
from helpers import to_numpy
from hf_reference import TINY
from hf_reference import make_hf_model
from safetensors.numpy import save_file

import keras_vitmsn as kv
from keras_vitmsn.conversion import CheckpointError
from keras_vitmsn.conversion import load_safetensors
from keras_vitmsn.conversion import load_torch_file
from keras_vitmsn.conversion.transformers_weights import backbone_kwargs_from_hf_config
from keras_vitmsn.conversion.transformers_weights import canonicalize_transformers_state

TOL = 1e-4
TOOLS_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "tools")


def reference_hidden(model, pixels, **kwargs):
    with torch.no_grad():
        return model(torch.from_numpy(pixels), **kwargs).last_hidden_state.numpy()


def pixels_for(config, rng, batch=2):
    size = config.get("image_size", 224)
    return rng.standard_normal((batch, config.get("num_channels", 3), size, size)).astype("float32")


# -- safetensors reader --------------------------------------------------------------


def test_safetensors_reader_matches_the_reference_library(tmp_path, rng):
    import ml_dtypes
    from safetensors.numpy import load_file

    tensors = {
        "f32": rng.standard_normal((3, 4)).astype("float32"),
        "f16": rng.standard_normal((5,)).astype("float16"),
        "f64": rng.standard_normal((2, 2, 2)),
        "i64": np.arange(7, dtype=np.int64),
        "u8": np.arange(9, dtype=np.uint8).reshape(3, 3),
        "bool": np.array([True, False, True]),
        "scalar": np.array(3.5, dtype="float32"),
        "empty": np.zeros((0, 3), dtype="float32"),
    }
    path = str(tmp_path / "t.safetensors")
    save_file(tensors, path, metadata={"format": "np"})
    ours, reference = load_safetensors(path), load_file(path)
    assert list(ours) == list(reference)
    for name, value in reference.items():
        assert ours[name].dtype == value.dtype and ours[name].shape == value.shape, name
        np.testing.assert_array_equal(ours[name], value)

    # bfloat16 comes back as ml_dtypes.bfloat16 (the torch writer is the only one for it).
    from safetensors.torch import save_file as torch_save_file

    bf16 = torch.randn(4, 3).to(torch.bfloat16)
    torch_save_file({"w": bf16}, str(tmp_path / "bf16.safetensors"))
    loaded = load_safetensors(str(tmp_path / "bf16.safetensors"))["w"]
    assert loaded.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(loaded.astype("float32"), bf16.float().numpy())


def _corrupt(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("damage", ["truncated", "header", "short", "offsets", "length"])
def test_safetensors_reader_rejects_damaged_files(tmp_path, rng, damage):
    path = str(tmp_path / "w.safetensors")
    save_file({"a": rng.standard_normal((64, 64)).astype("float32")}, path)
    data = open(path, "rb").read()
    header_len = int.from_bytes(data[:8], "little")
    if damage == "truncated":
        _corrupt(path, data[: len(data) - 100])
        match = "truncated.*only has"
    elif damage == "header":
        _corrupt(path, data[:8] + b"{not json" + data[17:])
        match = "corrupted safetensors header"
    elif damage == "short":
        _corrupt(path, data[:5])
        match = "shorter than the 8-byte"
    elif damage == "offsets":
        header = json.loads(data[8 : 8 + header_len])
        header["a"]["data_offsets"] = [0, 12]
        raw = json.dumps(header, separators=(",", ":")).encode().ljust(header_len)
        _corrupt(path, data[:8] + raw + data[8 + header_len :])
        match = "does not hold a F32 tensor of shape"
    else:
        _corrupt(path, (10**12).to_bytes(8, "little") + data[8:])
        match = "header claims"
    with pytest.raises(CheckpointError, match=match):
        load_safetensors(path)


# -- torch reader ------------------------------------------------------------------------


class _Payload:
    """Anything not allowed by weights_only=True."""

    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_torch_reader_refuses_arbitrary_objects(tmp_path, capsys):
    path = str(tmp_path / "evil.bin")
    torch.save({"w": torch.zeros(2), "payload": _Payload()}, path)
    capsys.readouterr()
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_torch_file(path)
    assert "unpickled arbitrary code" not in capsys.readouterr().out


def test_torch_reader_rejects_truncated_files(tmp_path):
    path = str(tmp_path / "w.bin")
    torch.save({"w": torch.randn(256, 256)}, path)
    data = open(path, "rb").read()
    _corrupt(path, data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_torch_file(path)


def test_torch_reader_without_torch_says_what_to_install(tmp_path, monkeypatch):
    path = str(tmp_path / "pytorch_model.bin")
    torch.save({"w": torch.zeros(2)}, path)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="needs PyTorch.*pip install torch.*safetensors"):
        load_torch_file(path)


# -- key spellings -----------------------------------------------------------------------


def test_every_key_spelling_gives_the_same_state(tmp_path):
    _, hub_state, _ = make_hf_model(tmp_path / "b", TINY)
    clf_model, clf_state, _ = make_hf_model(
        tmp_path / "c", dict(TINY, num_labels=3), cls_name="ViTMSNForImageClassification"
    )
    # transformers 5.x writes vit.embeddings.* but an unprefixed encoder.layer.*.
    assert any(k.startswith("vit.embeddings.") for k in clf_state)
    assert any(k.startswith("encoder.layer.") for k in clf_state)
    in_memory = {k: v.numpy() for k, v in clf_model.state_dict().items()}
    assert any(".q_proj." in k for k in in_memory)
    hub_prefixed = {
        ("vit." + k if not k.startswith("classifier.") else k): v
        for k, v in clf_state.items()
        if not k.startswith("vit.")
    }
    hub_prefixed.update({k: v for k, v in clf_state.items() if k.startswith("vit.")})

    expected_backbone, expected_head, _ = canonicalize_transformers_state(clf_state)
    assert set(expected_backbone) == set(hub_state)
    assert set(expected_head) == {"classifier.weight", "classifier.bias"}
    for variant in (in_memory, hub_prefixed):
        backbone, head, names = canonicalize_transformers_state(variant)
        assert set(backbone) == set(expected_backbone)
        for key in backbone:
            np.testing.assert_array_equal(backbone[key], expected_backbone[key])
        np.testing.assert_array_equal(head["classifier.weight"], expected_head["classifier.weight"])
        assert names  # renamed keys remember their spelling in the file


def test_two_spellings_of_one_weight_are_an_error():
    state = {
        "vit.layernorm.weight": np.ones(4),
        "layernorm.weight": np.ones(4),
    }
    with pytest.raises(ValueError, match="two copies of 'layernorm.weight'"):
        canonicalize_transformers_state(state)


def test_hf_config_maps_every_field(tmp_path, rng):
    config = dict(
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=80,
        image_size=36,
        patch_size=6,
        num_channels=4,
        layer_norm_eps=1e-5,
        hidden_act="gelu_new",
        qkv_bias=False,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.2,
    )
    ref_model, _, cfg = make_hf_model(tmp_path, config)
    assert backbone_kwargs_from_hf_config(cfg) == dict(
        image_shape=(36, 36, 4),
        patch_size=6,
        hidden_dim=48,
        num_layers=3,
        num_heads=3,
        intermediate_dim=80,
        layer_norm_epsilon=1e-5,
        dropout_rate=0.1,
        attention_dropout=0.2,
        qkv_bias=False,
        hidden_act="gelu_new",
    )
    backbone = kv.ViTMSNBackbone.from_preset(str(tmp_path))
    assert backbone.attention_dropout == 0.2 and backbone.layer_norm_epsilon == 1e-5
    pixels = pixels_for(config, rng)
    diff = max_abs_diff(
        backbone(nchw_to_nhwc(pixels))["last_hidden_state"], reference_hidden(ref_model, pixels)
    )
    assert diff <= TOL


def test_unsupported_hf_config_is_rejected(tmp_path):
    make_hf_model(tmp_path, TINY)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_act"] = "quick_gelu"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Unsupported hidden_act 'quick_gelu'"):
        kv.ViTMSNBackbone.from_preset(str(tmp_path))
    config["model_type"] = "vit"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match="has model_type 'vit': keras-vitmsn reads transformers checkpoints of ViT-MSN only",
    ):
        kv.ViTMSNBackbone.from_preset(str(tmp_path))


# -- transformers directories ----------------------------------------------------------------


def test_transformers_directory_parity(tmp_path, rng):
    ref_model, _, _ = make_hf_model(tmp_path, TINY)
    backbone = kv.ViTMSNBackbone.from_preset(str(tmp_path))
    pixels = pixels_for(TINY, rng)
    diff = max_abs_diff(
        backbone(nchw_to_nhwc(pixels))["last_hidden_state"], reference_hidden(ref_model, pixels)
    )
    print(f"\n[conversion {BACKEND} tiny dir] {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("spelling", ["hub", "in_memory"])
def test_pytorch_model_bin_parity(tmp_path, rng, spelling):
    ref_model, hub_state, _ = make_hf_model(tmp_path, TINY)
    os.remove(tmp_path / "model.safetensors")
    if spelling == "hub":  # what save_pretrained(safe_serialization=False) wrote in 4.x
        state = {k: torch.from_numpy(np.array(v)) for k, v in hub_state.items()}
    else:  # torch.save(model.state_dict()) with transformers 5.x module names
        state = ref_model.state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    backbone = kv.ViTMSNBackbone.from_preset(str(tmp_path))
    pixels = pixels_for(TINY, rng)
    diff = max_abs_diff(
        backbone(nchw_to_nhwc(pixels))["last_hidden_state"], reference_hidden(ref_model, pixels)
    )
    assert diff <= TOL


def test_classification_checkpoint_ports_the_head(tmp_path, rng):
    config = dict(TINY, num_labels=5)
    ref_model, _, _ = make_hf_model(tmp_path, config, cls_name="ViTMSNForImageClassification")
    pixels = pixels_for(config, rng, batch=3)
    with torch.no_grad():
        ref_logits = ref_model(torch.from_numpy(pixels)).logits.numpy()

    clf = kv.ViTMSNClassifier.from_preset(str(tmp_path), preprocessor=None)
    assert clf.num_classes == 5
    diff = max_abs_diff(clf(nchw_to_nhwc(pixels)), ref_logits)
    print(f"\n[conversion {BACKEND} classifier head] {diff:.2e}")
    assert diff <= TOL

    # Passing num_classes asks for a new head, even when it has the same size.
    fresh = kv.ViTMSNClassifier.from_preset(str(tmp_path), num_classes=5, preprocessor=None)
    assert max_abs_diff(fresh(nchw_to_nhwc(pixels)), ref_logits) > 1e-2
    np.testing.assert_array_equal(
        to_numpy(fresh.backbone.embeddings.position_embeddings),
        to_numpy(clf.backbone.embeddings.position_embeddings),
    )
    # A backbone ignores the head.
    backbone = kv.ViTMSNBackbone.from_preset(str(tmp_path))
    with torch.no_grad():
        ref_hidden = ref_model.vit(torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert max_abs_diff(backbone(nchw_to_nhwc(pixels))["last_hidden_state"], ref_hidden) <= TOL


def test_id2label_disagreeing_with_the_head_is_an_error(tmp_path):
    make_hf_model(tmp_path, dict(TINY, num_labels=5), cls_name="ViTMSNForImageClassification")
    config = json.loads((tmp_path / "config.json").read_text())
    config["id2label"] = {str(i): f"c{i}" for i in range(3)}
    config["label2id"] = {f"c{i}": i for i in range(3)}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="5 outputs but its config's id2label lists 3"):
        kv.ViTMSNClassifier.from_preset(str(tmp_path))


def test_backbone_only_checkpoint_needs_num_classes(tmp_path):
    make_hf_model(tmp_path, TINY)
    with pytest.raises(ValueError, match="no classification head: pass `num_classes`"):
        kv.ViTMSNClassifier.from_preset(str(tmp_path))


# -- strict accounting ---------------------------------------------------------------------


def _rewrite_state(directory, edit):
    path = os.path.join(directory, "model.safetensors")
    state = {k: np.array(v) for k, v in load_safetensors(path).items()}
    edit(state)
    save_file(state, path)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    make_hf_model(tmp_path, TINY)

    def edit(state):
        del state["encoder.layer.1.output.dense.bias"]
        state["encoder.layer.7.output.dense.bias"] = np.zeros(32, "float32")
        state["pooler.dense.weight"] = np.zeros((32, 32), "float32")

    _rewrite_state(tmp_path, edit)
    with pytest.raises(ValueError) as info:
        kv.ViTMSNBackbone.from_preset(str(tmp_path))
    message = str(info.value)
    assert "missing keys (1): encoder.layer.1.output.dense.bias" in message
    assert "unexpected keys (2)" in message
    assert "encoder.layer.7.output.dense.bias" in message and "pooler.dense.weight" in message


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    make_hf_model(tmp_path, TINY)
    _rewrite_state(
        tmp_path,
        lambda s: s.__setitem__(
            "encoder.layer.0.intermediate.dense.weight", np.zeros((48, 32), "float32")
        ),
    )
    with pytest.raises(
        ValueError,
        match=r"encoder.layer.0.intermediate.dense.weight: checkpoint \(48, 32\)"
        r".*vs model \(32, 64\)",
    ):
        kv.ViTMSNBackbone.from_preset(str(tmp_path))


def test_in_memory_names_appear_in_errors_as_written(tmp_path):
    ref_model, _, _ = make_hf_model(tmp_path, TINY)
    os.remove(tmp_path / "model.safetensors")
    state = dict(ref_model.state_dict())
    state["layers.0.mlp.fc1.weight"] = torch.zeros(48, 32)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(
        ValueError,
        match=r"layers.0.mlp.fc1.weight \(as encoder.layer.0.intermediate.dense.weight\)",
    ):
        kv.ViTMSNBackbone.from_preset(str(tmp_path))


def test_absent_mask_token_is_fine(tmp_path, rng):
    ref_model, state, _ = make_hf_model(tmp_path, TINY)
    assert "embeddings.mask_token" not in state
    backbone = kv.ViTMSNBackbone.from_preset(str(tmp_path), use_mask_token=True)
    assert backbone.embeddings.mask_token is not None
    pixels = pixels_for(TINY, rng)
    diff = max_abs_diff(
        backbone(nchw_to_nhwc(pixels))["last_hidden_state"], reference_hidden(ref_model, pixels)
    )
    assert diff <= TOL


def test_mask_token_is_loaded_when_present(tmp_path):
    ref_model, state, _ = make_hf_model(tmp_path, TINY, use_mask_token=True)
    backbone = kv.ViTMSNBackbone.from_preset(str(tmp_path), use_mask_token=True)
    np.testing.assert_array_equal(
        to_numpy(backbone.embeddings.mask_token), state["embeddings.mask_token"]
    )
    # Without a mask token in the model, the checkpoint's one has nowhere to go.
    with pytest.raises(ValueError, match="unexpected keys.*embeddings.mask_token"):
        kv.ViTMSNBackbone.from_preset(str(tmp_path))


# -- original MSN checkpoints --------------------------------------------------------------

MSN_TINY = dict(TINY, hidden_size=128, num_attention_heads=2, intermediate_size=256)


def _write_msn(tmp_path, rng, config):
    ref_model, state, _ = make_hf_model(tmp_path / "hf", config)
    encoder = hub_state_to_msn_encoder(state, config["num_hidden_layers"], rng)
    path = str(tmp_path / "msn.pth.tar")
    prototypes = write_msn_checkpoint(path, encoder, rng)
    return ref_model, encoder, prototypes, path


@pytest.fixture
def msn_checkpoint(tmp_path, rng):
    """A re-keyed transformers model with 64-dimensional heads, as the released ones."""
    return _write_msn(tmp_path, rng, MSN_TINY)


def test_msn_checkpoint_parity(msn_checkpoint, rng):
    ref_model, _, _, path = msn_checkpoint
    backbone = kv.ViTMSNBackbone.from_preset(path, num_heads=2)  # 128 wide: not a released width
    assert (backbone.num_heads, backbone.intermediate_dim, backbone.num_layers) == (2, 256, 2)
    pixels = pixels_for(MSN_TINY, rng)
    diff = max_abs_diff(
        backbone(nchw_to_nhwc(pixels))["last_hidden_state"], reference_hidden(ref_model, pixels)
    )
    print(f"\n[conversion {BACKEND} msn .pth.tar] {diff:.2e}")
    assert diff <= TOL


def test_msn_checkpoint_with_other_head_width_needs_num_heads(tmp_path, rng):
    ref_model, _, _, path = _write_msn(tmp_path, rng, TINY)  # 32-wide tokens, 4 heads
    with pytest.raises(ValueError, match=r"none of the released MSN widths.*num_heads=\.\.\."):
        kv.ViTMSNBackbone.from_preset(path)
    backbone = kv.ViTMSNBackbone.from_preset(path, num_heads=4)
    pixels = pixels_for(TINY, rng)
    diff = max_abs_diff(
        backbone(nchw_to_nhwc(pixels))["last_hidden_state"], reference_hidden(ref_model, pixels)
    )
    assert diff <= TOL


def _torch_head(head):
    layers = [
        ("fc1", "linear"),
        ("bn1", "bn"),
        ("g1", "gelu"),
        ("fc2", "linear"),
        ("bn2", "bn"),
        ("g2", "gelu"),
        ("fc3", "linear"),
    ]
    modules = []
    for name, kind in layers:
        if kind == "linear":
            kernel = head[f"{name}/kernel"]
            m = torch.nn.Linear(*kernel.shape)
            m.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.T))
            m.bias.data = torch.from_numpy(head[f"{name}/bias"])
        elif kind == "bn":
            m = torch.nn.BatchNorm1d(head[f"{name}/gamma"].shape[0])
            m.weight.data = torch.from_numpy(head[f"{name}/gamma"])
            m.bias.data = torch.from_numpy(head[f"{name}/beta"])
            m.running_mean.data = torch.from_numpy(head[f"{name}/moving_mean"])
            m.running_var.data = torch.from_numpy(head[f"{name}/moving_variance"])
        else:
            m = torch.nn.GELU()
        modules.append(m)
    return torch.nn.Sequential(*modules).eval()


def test_msn_head_and_prototypes_are_kept(msn_checkpoint, tmp_path, rng):
    _, encoder, prototypes, path = msn_checkpoint
    state = kv.load_msn_pretraining_state(path)
    np.testing.assert_array_equal(state["prototypes"], prototypes)
    head = state["head"]
    np.testing.assert_array_equal(head["fc1/kernel"], encoder["module.fc.fc1.weight"].T)
    np.testing.assert_array_equal(head["bn2/moving_variance"], encoder["module.fc.bn2.running_var"])
    assert state["encoder"] == "target_encoder" and state["epoch"] == 800

    # The documented layout drives Keras layers to the same outputs as torch's head.
    layers = [
        keras.layers.Dense(head["fc1/kernel"].shape[1]),
        keras.layers.BatchNormalization(
            epsilon=state["batchnorm_epsilon"], momentum=state["batchnorm_momentum"]
        ),
        keras.layers.Activation(lambda x: keras.activations.gelu(x, approximate=False)),
        keras.layers.Dense(head["fc2/kernel"].shape[1]),
        keras.layers.BatchNormalization(
            epsilon=state["batchnorm_epsilon"], momentum=state["batchnorm_momentum"]
        ),
        keras.layers.Activation(lambda x: keras.activations.gelu(x, approximate=False)),
        keras.layers.Dense(head["fc3/kernel"].shape[1]),
    ]
    keras_head = keras.Sequential([keras.Input((MSN_TINY["hidden_size"],))] + layers)
    for layer, name in zip(layers, ("fc1", "bn1", None, "fc2", "bn2", None, "fc3")):
        if name and name.startswith("fc"):
            layer.set_weights([head[f"{name}/kernel"], head[f"{name}/bias"]])
        elif name:
            layer.set_weights(
                [head[f"{name}/{p}"] for p in ("gamma", "beta", "moving_mean", "moving_variance")]
            )
    features = rng.standard_normal((4, MSN_TINY["hidden_size"])).astype("float32")
    with torch.no_grad():
        expected = _torch_head(head)(torch.from_numpy(features)).numpy()
    assert max_abs_diff(keras_head(features, training=False), expected) <= 1e-5

    # Converted presets carry them too, in msn_head.weights.h5.
    out = tmp_path / "preset"
    kv.convert_to_preset(path, str(out), num_heads=2)
    assert (out / "msn_head.weights.h5").exists()
    reloaded = kv.load_msn_pretraining_state(str(out))
    assert set(reloaded["head"]) == set(head)
    for key in head:
        np.testing.assert_array_equal(reloaded["head"][key], head[key])
    np.testing.assert_array_equal(reloaded["prototypes"], prototypes)
    assert reloaded["epoch"] == 800 and reloaded["batchnorm_momentum"] == 0.9


def test_msn_checkpoint_errors(tmp_path, rng, msn_checkpoint):
    _, encoder, _, _ = msn_checkpoint
    not_msn = str(tmp_path / "other.pth.tar")
    torch.save({"model": {"w": torch.zeros(1)}}, not_msn)
    with pytest.raises(CheckpointError, match="no 'target_encoder' entry.*found \\['model'\\]"):
        kv.ViTMSNBackbone.from_preset(not_msn)

    broken = dict(encoder)
    del broken["module.blocks.1.mlp.fc2.bias"]
    broken["module.head.weight"] = np.zeros((3, 3), "float32")
    path = str(tmp_path / "broken.pth.tar")
    write_msn_checkpoint(path, broken, rng)
    with pytest.raises(ValueError) as info:
        kv.ViTMSNBackbone.from_preset(path, num_heads=2)
    message = str(info.value)
    assert "missing keys (1): encoder.layer.1.output.dense.bias" in message
    assert "unexpected keys (1): module.head.weight" in message

    shape = dict(encoder)
    shape["module.blocks.0.attn.proj.weight"] = np.zeros((128, 16), "float32")
    path = str(tmp_path / "shape.pth.tar")
    write_msn_checkpoint(path, shape, rng)
    with pytest.raises(
        ValueError,
        match=r"module.blocks.0.attn.proj.weight "
        r"\(as encoder.layer.0.attention.output.dense.weight\): checkpoint \(128, 16\)",
    ):
        kv.ViTMSNBackbone.from_preset(path, num_heads=2)

    evil = str(tmp_path / "evil.pth.tar")
    torch.save({"target_encoder": {"x": torch.zeros(1)}, "args": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        kv.ViTMSNBackbone.from_preset(evil)

    truncated = str(tmp_path / "trunc.pth.tar")
    data = open(msn_checkpoint[3], "rb").read()
    _corrupt(truncated, data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        kv.ViTMSNBackbone.from_preset(truncated)


# -- the conversion script ------------------------------------------------------------------


@pytest.fixture
def convert_script(monkeypatch):
    monkeypatch.syspath_prepend(os.path.abspath(TOOLS_DIR))
    import convert_checkpoint

    return convert_checkpoint


def test_convert_script_verifies_a_transformers_directory(tmp_path, convert_script, capsys):
    make_hf_model(
        tmp_path / "hf", dict(TINY, num_labels=4), cls_name="ViTMSNForImageClassification"
    )
    out = tmp_path / "preset"
    assert (
        convert_script.main(["--source", str(tmp_path / "hf"), "--output", str(out), "--verify"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "verify OK" in printed
    diffs = json.loads(printed.split("max abs diff vs transformers: ")[1].splitlines()[0])
    print(f"\n[convert_checkpoint {BACKEND} tiny classifier] {diffs}")
    assert set(diffs) == {"last_hidden_state", "logits"} and max(diffs.values()) <= TOL
    assert {
        "config.json",
        "model.weights.h5",
        "metadata.json",
        "task.json",
        "task.weights.h5",
        "image_converter.json",
    } <= set(os.listdir(out))


def test_convert_script_verifies_an_msn_checkpoint(tmp_path, rng, convert_script, capsys):
    _, _, _, path = _write_msn(tmp_path, rng, MSN_TINY)
    out = tmp_path / "preset"
    assert (
        convert_script.main(
            ["--source", path, "--output", str(out), "--num-heads", "2", "--verify"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "verify OK" in printed
    assert "msn_head.weights.h5" in os.listdir(out)


def test_convert_script_fails_when_verification_fails(
    tmp_path, convert_script, monkeypatch, capsys
):
    make_hf_model(tmp_path / "hf", TINY)
    monkeypatch.setattr(convert_script, "verify", lambda *a, **k: {"last_hidden_state": 0.5})
    assert (
        convert_script.main(
            ["--source", str(tmp_path / "hf"), "--output", str(tmp_path / "out"), "--verify"]
        )
        == 1
    )
    assert "verify FAILED" in capsys.readouterr().err
