"""Backbone/classifier behaviour: config round trips, saving, dtype policies, fit, errors."""

import keras
import numpy as np
import pytest
from helpers import max_abs_diff
from helpers import to_numpy

import keras_vitmsn as kv

TINY_KWARGS = dict(
    image_shape=(32, 32, 3),
    patch_size=8,
    hidden_dim=32,
    num_layers=2,
    num_heads=4,
    intermediate_dim=64,
)


def tiny_backbone(**overrides):
    return kv.ViTMSNBackbone(**dict(TINY_KWARGS, **overrides))


def randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign((0.1 * rng.standard_normal(v.shape)).astype(v.dtype))
    return model


@pytest.fixture
def images(rng):
    return rng.standard_normal((2, 32, 32, 3)).astype("float32")


# --- configuration and serialisation ---------------------------------------------------


def test_defaults_are_vit_msn_base():
    config = kv.ViTMSNBackbone().get_config()
    expected = dict(
        image_shape=(224, 224, 3),
        patch_size=16,
        hidden_dim=768,
        num_layers=12,
        num_heads=12,
        intermediate_dim=3072,
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        attention_dropout=0.0,
        qkv_bias=True,
        hidden_act="gelu",
        use_mask_token=False,
    )
    assert {k: config[k] for k in expected} == expected


def test_parameter_count_matches_vit_msn_small():
    backbone = kv.ViTMSNBackbone(hidden_dim=384, num_heads=6, intermediate_dim=1536)
    # transformers' ViTMSNModel at vit-msn-small has 21,665,664 parameters.
    assert backbone.count_params() == 21_665_664


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "use_mask_token": True,
            "hidden_act": "gelu_new",
            "data_format": "channels_first",
            "image_shape": (3, 32, 32),  # in data_format order
            "qkv_bias": False,
        },
    ],
)
def test_backbone_config_round_trip(overrides):
    backbone = tiny_backbone(**overrides)
    config = backbone.get_config()
    clone = kv.ViTMSNBackbone.from_config(config)
    assert clone.get_config() == config
    assert len(clone.weights) == len(backbone.weights)


def test_classifier_config_round_trip():
    clf = kv.ViTMSNClassifier(tiny_backbone(), num_classes=7, activation="softmax", dropout=0.1)
    config = clf.get_config()
    clone = kv.ViTMSNClassifier.from_config(config)
    assert clone.get_config() == config


@pytest.mark.parametrize("with_mask_token", [False, True])
def test_backbone_save_and_load(tmp_path, images, with_mask_token):
    backbone = randomize(tiny_backbone(use_mask_token=with_mask_token))
    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kv.ViTMSNBackbone)
    assert loaded.get_config() == backbone.get_config()
    expected = to_numpy(backbone(images)["last_hidden_state"])
    assert max_abs_diff(loaded(images)["last_hidden_state"], expected) == 0.0


def test_classifier_save_and_load(tmp_path, images):
    clf = randomize(kv.ViTMSNClassifier(tiny_backbone(), num_classes=3))
    path = str(tmp_path / "clf.keras")
    clf.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kv.ViTMSNClassifier)
    assert (
        max_abs_diff(loaded.predict(images, verbose=0), to_numpy(clf.predict(images, verbose=0)))
        == 0.0
    )


# --- dtype policies ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["float32", "bfloat16", "mixed_bfloat16", "mixed_float16"])
def test_dtype_policies(images, policy):
    backbone = tiny_backbone(dtype=policy)
    clf = kv.ViTMSNClassifier(backbone, num_classes=3)
    policy_obj = keras.dtype_policies.get(policy)
    for layer in backbone._flatten_layers(include_self=False):
        assert layer.dtype_policy.name == policy_obj.name, layer.name
    for var in backbone.weights:
        assert var.dtype == policy_obj.variable_dtype, var.path
    out = backbone(images, output_attentions=True)
    assert (
        keras.backend.standardize_dtype(out["last_hidden_state"].dtype) == policy_obj.compute_dtype
    )
    assert np.isfinite(to_numpy(out["last_hidden_state"])).all()
    logits = clf(images)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.isfinite(to_numpy(logits)).all()
    # Outputs stay close to float32 ones computed with the same weights.
    reference = tiny_backbone()
    reference.set_weights(
        [
            np.asarray(w, "float32")
            for w in [
                keras.ops.convert_to_numpy(keras.ops.cast(v, "float32")) for v in backbone.weights
            ]
        ]
    )
    expected = to_numpy(reference(images)["last_hidden_state"])
    tol = 1e-5 if policy == "float32" else 0.15
    assert max_abs_diff(out["last_hidden_state"], expected) < tol


def test_global_mixed_policy_is_followed(images):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        backbone = tiny_backbone()
        assert backbone.dtype_policy.name == "mixed_bfloat16"
        assert backbone.encoder_layers[0].attention.qkv.dtype_policy.name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --- training ---------------------------------------------------------------------------


def test_one_fit_step_updates_weights(images):
    clf = kv.ViTMSNClassifier(tiny_backbone(), num_classes=3)
    before = [to_numpy(v) for v in clf.trainable_weights]
    history = clf.fit(images, np.array([0, 2]), epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [to_numpy(v) for v in clf.trainable_weights]
    assert sum(not np.array_equal(a, b) for a, b in zip(before, after)) == len(before)


def test_default_optimizer_is_torchs_adamw_and_survives_saving(images, tmp_path):
    """The default compile trains with torch's AdamW update (as transformers
    fine-tunes), and a saved model resumes with the same optimizer and moments."""
    from keras_vitmsn.models.optimizer import ScheduledAdamW

    clf = kv.ViTMSNClassifier(tiny_backbone(), num_classes=3)
    opt = clf.optimizer
    assert type(opt) is ScheduledAdamW
    assert (float(opt.learning_rate), float(opt.weight_decay), opt.epsilon) == (
        pytest.approx(5e-5),
        pytest.approx(0.01),
        1e-8,
    )
    clf.fit(images, np.array([0, 2]), epochs=1, batch_size=2, verbose=0)
    moments = [to_numpy(t) for v in clf.trainable_variables for t in opt.moments(v)]
    assert any(np.abs(m).max() > 0 for m in moments)
    clf.save(tmp_path / "clf.keras")
    loaded = keras.saving.load_model(tmp_path / "clf.keras")
    assert type(loaded.optimizer) is ScheduledAdamW and int(loaded.optimizer.iterations) == 1
    restored = [
        to_numpy(t) for v in loaded.trainable_variables for t in loaded.optimizer.moments(v)
    ]
    for a, b in zip(moments, restored):
        np.testing.assert_array_equal(a, b)


def test_regression_head_uses_mse(images):
    clf = kv.ViTMSNClassifier(tiny_backbone(), num_classes=1)
    assert isinstance(clf.loss, keras.losses.MeanSquaredError)
    history = clf.fit(images, np.array([0.5, -1.0], "float32"), verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_dropout_only_in_training(images):
    backbone = randomize(tiny_backbone(dropout_rate=0.5, attention_dropout=0.5))
    a = to_numpy(backbone(images, training=False)["last_hidden_state"])
    b = to_numpy(backbone(images, training=False)["last_hidden_state"])
    c = to_numpy(backbone(images, training=True)["last_hidden_state"])
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


# --- errors -----------------------------------------------------------------------------


def test_wrong_channel_count(rng):
    with pytest.raises(ValueError, match=r"4 channels but the model expects 3"):
        tiny_backbone()(rng.standard_normal((1, 32, 32, 4)).astype("float32"))


def test_wrong_size_without_interpolation(rng):
    with pytest.raises(
        ValueError,
        match=r"\(48x40\) doesn't match the model \(32x32\).*interpolate_pos_encoding=True",
    ):
        tiny_backbone()(rng.standard_normal((1, 48, 40, 3)).astype("float32"))


def test_size_not_divisible_by_patch(rng):
    with pytest.raises(ValueError, match=r"\(36x32\) must be divisible by the patch size \(8\)"):
        tiny_backbone()(
            rng.standard_normal((1, 36, 32, 3)).astype("float32"), interpolate_pos_encoding=True
        )


def test_wrong_rank(rng):
    with pytest.raises(ValueError, match=r"must be a batch of shape.*got shape \(32, 32, 3\)"):
        tiny_backbone()(rng.standard_normal((32, 32, 3)).astype("float32"))


def test_mask_without_mask_token(images):
    with pytest.raises(ValueError, match="use_mask_token=True"):
        tiny_backbone()(images, bool_masked_pos=np.zeros((2, 16), bool))


def test_mask_of_wrong_shape(images):
    with pytest.raises(
        ValueError, match=r"\(batch, 16\) for a 4x4 patch grid; got shape \(2, 15\)"
    ):
        tiny_backbone(use_mask_token=True)(images, bool_masked_pos=np.zeros((2, 15), bool))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"image_shape": (30, 32, 3)}, r"\(30, 32\) must be divisible by `patch_size` \(8\)"),
        ({"image_shape": (32, 32)}, r"must be \(height, width, channels\)"),
        ({"hidden_dim": 30}, r"hidden_dim \(30\) must be a multiple of num_heads \(4\)"),
        ({"hidden_act": "mish"}, r"Unsupported hidden_act 'mish'. Supported: gelu, gelu_new"),
        ({"data_format": "nhwc"}, r"'channels_last' or 'channels_first', got 'nhwc'"),
        ({"patch_size": 0}, r"`patch_size` must be a positive int; got 0"),
        ({"patch_size": 2.5}, r"`patch_size` must be a positive int; got 2.5"),
        ({"hidden_dim": 0}, r"`hidden_dim` must be a positive int; got 0"),
        ({"num_heads": 0}, r"`num_heads` must be a positive int; got 0"),
        ({"num_layers": -1}, r"`num_layers` must be an int >= 0; got -1"),
        ({"intermediate_dim": True}, r"`intermediate_dim` must be a positive int; got True"),
        (
            {"image_shape": (0, 32, 3)},
            r"`image_shape` must be \(height, width, channels\) of positive ints",
        ),
        ({"image_shape": (32.5, 32, 3)}, r"of positive ints, got \(32.5, 32, 3\)"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_backbone(**kwargs)


def test_classifier_argument_errors():
    with pytest.raises(ValueError, match="must be a ViTMSNBackbone, got Dense"):
        kv.ViTMSNClassifier(keras.layers.Dense(2), num_classes=2)
    with pytest.raises(ValueError, match=r"`num_classes` must be a positive int; got 0"):
        kv.ViTMSNClassifier(tiny_backbone(), num_classes=0)


@pytest.mark.parametrize("num_classes", [2.5, 2.0, True, "2", None, -1])
def test_num_classes_must_be_a_positive_int(num_classes):
    # 2.5 used to become a 2-class head silently, and True a 1-output regressor.
    with pytest.raises(
        ValueError, match=f"`num_classes` must be a positive int; got {num_classes!r}"
    ):
        kv.ViTMSNClassifier(tiny_backbone(), num_classes)
    assert kv.ViTMSNClassifier(tiny_backbone(), np.int64(3)).num_classes == 3


def summary_shapes(model):
    """``{layer name: output shape column}`` of ``model.summary()``."""
    lines = []
    model.summary(print_fn=lambda line, line_break=None: lines.append(line), line_length=100)
    rows = {}
    for line in "\n".join(lines).splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) >= 2 and cells[0].endswith(")") and cells[1]:
            rows[cells[0].split(" (")[0]] = cells[1]
    return rows


def test_summary_shows_every_output_shape():
    backbone = tiny_backbone()
    assert summary_shapes(backbone) == {
        "embeddings": "(None, 17, 32)",
        "encoder_layer_0": "(None, 17, 32)",
        "encoder_layer_1": "(None, 17, 32)",
        "layernorm": "(None, 17, 32)",
    }
    converter = kv.ViTMSNImageConverter(image_size=(32, 32), name="converter")
    # The preprocessor is called outside Keras' layer call (it takes labels too),
    # so the summary has no output shape for it.
    classifier = kv.ViTMSNClassifier(backbone, num_classes=5, preprocessor=converter)
    assert summary_shapes(classifier) == {
        backbone.name: "(None, 17, 32)",
        "head_dropout": "(None, 32)",
        "classifier": "(None, 5)",
    }


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize(
    "call",
    [
        dict(),
        dict(output_hidden_states=True, output_attentions=True),
        dict(interpolate_pos_encoding=True, size=48),
        dict(patch_keep_indices=np.array([[0, 3, 5], [1, 2, 15]])),
        dict(data_format="channels_first", output_attentions=True),
    ],
    ids=["plain", "hidden_states_attentions", "interpolate", "keep_indices", "channels_first"],
)
def test_compute_output_spec_matches_call(rng, policy, call):
    call = dict(call)
    size = call.pop("size", 32)
    data_format = call.pop("data_format", "channels_last")
    image_shape = (32, 32, 3) if data_format == "channels_last" else (3, 32, 32)
    backbone = tiny_backbone(dtype=policy, data_format=data_format, image_shape=image_shape)
    shape = (2, size, size, 3) if backbone.data_format == "channels_last" else (2, 3, size, size)
    images = rng.standard_normal(shape).astype("float32")
    spec = backbone.compute_output_spec(keras.KerasTensor(shape), **call)
    out = backbone(images, **call)
    flat_spec, flat_out = keras.tree.flatten(spec), keras.tree.flatten(out)
    assert keras.tree.flatten(keras.tree.map_structure(lambda _: 0, spec)) == [0] * len(flat_out)
    for s, o in zip(flat_spec, flat_out):
        assert tuple(s.shape) == tuple(o.shape)
        assert s.dtype == keras.backend.standardize_dtype(o.dtype)
    classifier = kv.ViTMSNClassifier(backbone, num_classes=3, interpolate_pos_encoding=True)
    logits_spec = classifier.compute_output_spec(keras.KerasTensor(shape))
    logits = classifier(images)
    assert tuple(logits_spec.shape) == tuple(logits.shape) and logits_spec.dtype == "float32"
    assert classifier.compute_output_shape((None,) + shape[1:]) == (None, 3)


def test_symbolic_call_in_a_functional_model(rng):
    backbone = tiny_backbone()
    inputs = keras.Input((32, 32, 3))
    outputs = backbone(inputs, output_hidden_states=True)
    assert tuple(outputs["last_hidden_state"].shape) == (None, 17, 32)
    assert len(outputs["hidden_states"]) == 3
    model = keras.Model(inputs, outputs["last_hidden_state"][:, 0])
    images = rng.standard_normal((2, 32, 32, 3)).astype("float32")
    expected = to_numpy(backbone(images)["last_hidden_state"][:, 0])
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)


@pytest.mark.parametrize(
    "shape,data_format",
    [
        ((8, 224, 160, 3), "channels_last"),
        ((8, 3, 224, 160), "channels_first"),
        ((224, 160, 3), "channels_last"),
        ((3, 224, 160), "channels_first"),
    ],
)
def test_spatial_shape_reads_height_and_width(shape, data_format):
    from keras_vitmsn.layers.core import spatial_shape

    assert spatial_shape(shape, data_format) == (224, 160)
