"""MSNPretrainer: EMA target, gradients, schedules, optimizer, fit, export, errors."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import BACKEND
from helpers import max_abs_diff
from helpers import to_numpy

import keras_vitmsn as kv
from keras_vitmsn import msn

ENCODER = dict(
    image_shape=(16, 16, 3),
    patch_size=4,
    hidden_dim=16,
    num_layers=2,
    num_heads=2,
    intermediate_dim=32,
)
HEAD = dict(head_hidden_dim=32, head_output_dim=8, num_prototypes=10)


def make_pretrainer(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    options = dict(mask_ratio=0.5, total_steps=10, seed=seed, **HEAD)
    options.update(kwargs)
    return msn.MSNPretrainer(kv.ViTMSNBackbone(**ENCODER), **options)


def make_views(batch=4, focal=2, seed=0):
    rng = np.random.default_rng(seed)
    views = {
        "target": rng.normal(size=(batch, 16, 16, 3)).astype("float32"),
        "anchor": rng.normal(size=(batch, 16, 16, 3)).astype("float32"),
    }
    if focal:
        views["focal"] = rng.normal(size=(batch, focal, 8, 8, 3)).astype("float32")
    return views


def values(variables):
    return [to_numpy(v).copy() for v in variables]


def test_target_starts_as_a_frozen_copy():
    pretrainer = make_pretrainer()
    pairs = pretrainer._ema_pairs(include_statistics=True)
    # Every encoder and head weight has a twin; the teacher trains nothing.
    assert len(pairs) == len(pretrainer.encoder.weights) + len(pretrainer.projection_head.weights)
    for source, target in pairs:
        np.testing.assert_array_equal(to_numpy(source), to_numpy(target))
    # The EMA averages parameters only: BatchNorm moving statistics are each head's own.
    averaged = {s.path for s, _ in pretrainer._ema_pairs()}
    assert averaged == {
        s.path for s, _ in pairs if not s.path.endswith(("moving_mean", "moving_variance"))
    }
    assert len(averaged) == len(pairs) - 4
    assert pretrainer.target_encoder.trainable_weights == []
    assert pretrainer.target_projection_head.trainable_weights == []
    trainable = {id(v) for v in pretrainer.trainable_weights}
    assert id(pretrainer.prototypes.prototypes) in trainable
    assert not trainable & {id(t) for _, t in pairs}


def test_ema_update_is_exact_after_one_step():
    pretrainer = make_pretrainer(total_steps=4, ema_momentum=0.9, final_ema_momentum=1.0)
    pretrainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    pairs = pretrainer._ema_pairs()
    target_before = values(t for _, t in pairs)
    pretrainer.fit(make_views(), batch_size=4, epochs=1, verbose=0)
    # The first update uses the schedule's start value: m = 0.9.
    worst = max(
        max_abs_diff(t, 0.9 * t0 + 0.1 * to_numpy(s)) for (s, t), t0 in zip(pairs, target_before)
    )
    assert worst <= 1e-6
    assert int(to_numpy(pretrainer.ema_steps)) == 1
    # The encoder did move, so the check above is not vacuous.
    assert any(max_abs_diff(s, t0) > 1e-4 for (s, _), t0 in zip(pairs, target_before))
    # Linear schedule: 0.9 + 0.1 * 1 / 4 for the next update.
    assert abs(float(to_numpy(pretrainer.current_ema_momentum())) - 0.925) <= 1e-6


def test_target_gets_no_gradient_and_prototypes_train():
    # With momentum 1 the EMA leaves the target alone, so any change would be a gradient.
    pretrainer = make_pretrainer(ema_momentum=1.0, final_ema_momentum=1.0)
    pretrainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    pairs = pretrainer._ema_pairs()
    target_before = values(t for _, t in pairs)
    encoder_before = values(s for s, _ in pretrainer._ema_pairs(include_statistics=True))
    prototypes_before = to_numpy(pretrainer.prototypes.prototypes).copy()
    pretrainer.fit(make_views(), batch_size=4, epochs=2, verbose=0)
    for (_, target), before in zip(pairs, target_before):
        np.testing.assert_array_equal(to_numpy(target), before)
    assert max_abs_diff(pretrainer.prototypes.prototypes, prototypes_before) > 1e-4
    # Every trainable anchor weight moved (BatchNorm moving statistics move too, by the
    # forward pass, but they are not the point here).
    pairs = pretrainer._ema_pairs(include_statistics=True)
    for (source, _), before in zip(pairs, encoder_before):
        if source.trainable:
            assert max_abs_diff(source, before) > 0, source.path


def test_fit_lowers_the_loss_on_a_toy_set():
    # A fixed batch, no masking (deterministic objective): a few Adam steps must lower it.
    pretrainer = make_pretrainer(mask_ratio=0.0)
    pretrainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    views = make_views(batch=8)
    history = pretrainer.fit(views, batch_size=8, epochs=8, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] - 0.05, history["loss"]
    for part in msn.pretrainer.LOGGED_PARTS:
        assert np.all(np.isfinite(history[part])), part


def test_forward_matches_the_parts_composed_by_hand():
    pretrainer = make_pretrainer(mask_ratio=0.0)
    views = make_views(batch=4, focal=3)
    parts = pretrainer(views, training=True)

    encoder, target_encoder = pretrainer.encoder, pretrainer.target_encoder
    cls = lambda enc, x, **kw: to_numpy(enc(x, **kw)["last_hidden_state"])[:, 0]
    focal = views["focal"].transpose(1, 0, 2, 3, 4).reshape(12, 8, 8, 3)  # view-major
    head = pretrainer.projection_head
    # One head call per resolution group: BatchNorm statistics of each group alone.
    anchors = np.concatenate(
        [
            to_numpy(head(cls(encoder, views["anchor"]), use_batch_statistics=True)),
            to_numpy(
                head(cls(encoder, focal, interpolate_pos_encoding=True), use_batch_statistics=True)
            ),
        ]
    )
    targets = pretrainer.target_projection_head(
        cls(target_encoder, views["target"]), use_batch_statistics=True
    )
    expected = msn.msn_loss(anchors, targets, pretrainer.prototypes.prototypes, use_sinkhorn=True)
    for key in ("loss", "ce", "me_max"):
        assert abs(float(to_numpy(parts[key])) - float(to_numpy(expected[key]))) <= 1e-5
    # One head call over all anchor views (the bug this replaced) gives another loss.
    together = head(
        np.concatenate(
            [cls(encoder, views["anchor"]), cls(encoder, focal, interpolate_pos_encoding=True)]
        ),
        use_batch_statistics=True,
    )
    mixed = msn.msn_loss(together, targets, pretrainer.prototypes.prototypes, use_sinkhorn=True)
    assert abs(float(to_numpy(mixed["loss"])) - float(to_numpy(parts["loss"]))) > 1e-3


def test_masking_drops_anchor_tokens_only():
    pretrainer = make_pretrainer(mask_ratio=0.5)
    seen = []
    original = pretrainer.encoder.call

    def spy(images, **kwargs):
        outputs = original(images, **kwargs)
        seen.append((tuple(images.shape), tuple(outputs["last_hidden_state"].shape)))
        return outputs

    pretrainer.encoder.call = spy
    pretrainer(make_views(batch=4, focal=2), training=True)
    # Anchor: 16 patches -> CLS + 8 kept; focal views: 8x8 -> 4 patches, all kept.
    assert seen == [((4, 16, 16, 3), (4, 9, 16)), ((8, 8, 8, 3), (8, 5, 16))]


def test_target_head_uses_batch_statistics():
    pretrainer = make_pretrainer()
    head = pretrainer.target_projection_head
    x = np.random.default_rng(1).normal(3.0, 2.0, (6, 16)).astype("float32")

    # Independent computation: torch train-mode BatchNorm1d (biased variance).
    def bn(h, layer):
        mean, var = h.mean(0), h.var(0)
        return (h - mean) / np.sqrt(var + layer.epsilon) * to_numpy(layer.gamma) + to_numpy(
            layer.beta
        )

    gelu = lambda h: to_numpy(keras.ops.gelu(h, approximate=False))
    dense = lambda h, layer: h @ to_numpy(layer.kernel) + to_numpy(layer.bias)
    h = gelu(bn(dense(x, head.fc1), head.bn1))
    h = gelu(bn(dense(h, head.fc2), head.bn2))
    expected = dense(h, head.fc3)
    moving = values([head.bn1.moving_mean, head.bn1.moving_variance])
    assert max_abs_diff(head(x, use_batch_statistics=True), expected) <= 1e-4
    np.testing.assert_array_equal(to_numpy(head.bn1.moving_mean), moving[0])


def test_weight_decay_exclusions_and_scheduled_decay():
    pretrainer = make_pretrainer(total_steps=4)
    pretrainer.compile()  # the default recipe
    optimizer = pretrainer.optimizer
    assert isinstance(optimizer, msn.ScheduledAdamW)
    assert optimizer.global_clipnorm == 3.0
    decayed = {v.path for v in pretrainer.trainable_variables if optimizer._use_weight_decay(v)}
    excluded = {v.path for v in pretrainer.trainable_variables} - decayed
    assert pretrainer.prototypes.prototypes.path in excluded
    for path in decayed:
        assert path.endswith(("kernel", "cls_token", "position_embeddings")), path
    for path in excluded:
        assert path.endswith(("bias", "gamma", "beta", "prototypes")), path

    # As the original, update t uses the schedules at t + 1: with 1 warm-up step of 4
    # the first update is already at the peak lr, and the decay 0.04 -> 0.4 has moved.
    def cosine(position):
        return 0.4 - 0.36 * (1 + np.cos(np.pi * position / 4)) / 2

    assert abs(float(to_numpy(optimizer.learning_rate)) - 1e-3) <= 1e-9
    assert abs(float(to_numpy(optimizer.weight_decay)) - cosine(1)) <= 1e-6
    pretrainer.fit(make_views(), batch_size=4, epochs=2, verbose=0)
    assert abs(float(to_numpy(optimizer.weight_decay)) - cosine(3)) <= 1e-6
    # The prototypes are left out of the gradient clipping (the original clips the
    # encoder's parameters only).
    clipped = {v.path for v in pretrainer.trainable_variables if optimizer.is_clipped(v)}
    assert clipped == {v.path for v in pretrainer.trainable_variables} - {
        pretrainer.prototypes.prototypes.path
    }


def test_msn_optimizer_keeps_the_papers_ratios_for_any_peak():
    # Paper: warm up from ref/5, decay to ref/1000; explicit rates still win. Update t
    # uses position t + 1: updates 1, 10 (end of warm-up) and 100 (the last).
    def rates(optimizer):
        values = []
        for step in (0, 9, 99):
            optimizer.iterations.assign(step)
            values.append(float(to_numpy(optimizer.learning_rate)))
        return values

    assert rates(msn.msn_optimizer(100, warmup_steps=10, ref_lr=2e-3)) == pytest.approx(
        [4e-4 + 1.6e-3 / 10, 2e-3, 2e-6]
    )
    explicit = msn.msn_optimizer(100, warmup_steps=10, start_lr=0.0, final_lr=0.0)
    assert rates(explicit) == pytest.approx([1e-4, 1e-3, 0.0], rel=1e-6, abs=1e-12)
    # The original's stretch: schedules over int(1.25 * 100) steps, stopped at 80%.
    stretched = msn.msn_optimizer(100, warmup_steps=10, ipe_scale=msn.ORIGINAL_IPE_SCALE)
    final = 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + np.cos(np.pi * 90 / 115))
    assert rates(stretched)[2] == pytest.approx(final, rel=1e-5)


@pytest.mark.parametrize("schedule", [True, False])
def test_scheduled_adamw_decays_like_torch_adamw(schedule):
    # Zero gradients: AdamW's update is the decoupled decay alone, v *= 1 - lr * wd_t.
    weight_decay = msn.CosineSchedule(0.5, 1.0, steps=2) if schedule else 0.5
    variable = keras.Variable(np.ones((3,), "float32"))
    optimizer = msn.ScheduledAdamW(learning_rate=0.1, weight_decay=weight_decay)
    optimizer.build([variable])
    factors = [0.5, 0.75, 1.0] if schedule else [0.5] * 3
    expected = 1.0
    for factor in factors:
        optimizer.apply([keras.ops.zeros((3,))], [variable])
        expected *= 1 - 0.1 * factor
        assert abs(float(to_numpy(variable)[0]) - expected) <= 1e-6
    clone = msn.ScheduledAdamW.from_config(optimizer.get_config())
    assert float(to_numpy(clone.weight_decay)) == pytest.approx(
        float(weight_decay(0)) if schedule else 0.5
    )


def test_schedules():
    values_at = lambda s, steps: [float(to_numpy(s(t))) for t in steps]
    lr = msn.WarmupCosineSchedule(2e-4, 1e-3, 1e-6, warmup_steps=10, steps=100)
    np.testing.assert_allclose(
        values_at(lr, [0, 5, 10, 55, 100, 150]),
        [2e-4, 6e-4, 1e-3, 1e-6 + (1e-3 - 1e-6) * 0.5, 1e-6, 1e-6],
        rtol=1e-5,
    )
    # msn_learning_rate: the same, one position ahead (the original's step convention).
    shifted = msn.msn_learning_rate(total_steps=100, warmup_steps=10)
    np.testing.assert_allclose(
        values_at(shifted, [0, 4, 9, 54]), values_at(lr, [1, 5, 10, 55]), rtol=1e-6
    )
    np.testing.assert_allclose(
        values_at(msn.LinearSchedule(0.996, 1.0, 4), [0, 1, 4, 9]),
        [0.996, 0.997, 1.0, 1.0],
        rtol=1e-7,
    )
    # Fractional lengths: the original's momentum increment over 1.25 * steps.
    np.testing.assert_allclose(
        values_at(msn.LinearSchedule(0.9, 1.0, 12.5), [1]), [0.908], rtol=1e-6
    )
    wd = msn.CosineSchedule(0.04, 0.4, 100)
    np.testing.assert_allclose(
        values_at(wd, [0, 25, 100]),
        [0.04, 0.4 - 0.36 * (1 + np.cos(np.pi / 4)) / 2, 0.4],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        values_at(msn.msn_weight_decay(100), [24]), values_at(wd, [25]), rtol=1e-6
    )
    with pytest.raises(ValueError, match="warmup_steps"):
        msn.msn_learning_rate(10, warmup_steps=10)
    with pytest.raises(ValueError, match="`steps` must be a positive"):
        msn.LinearSchedule(0.9, 1.0, 0)
    with pytest.raises(ValueError, match="`ipe_scale` must be a number >= 1"):
        msn.msn_learning_rate(10, ipe_scale=0.5)


def test_scheduled_adamw_updates_like_torch_adamw():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    start = rng.normal(size=(5,)).astype("float32")
    grads = [rng.normal(size=(5,)).astype("float32") * 1e-3 for _ in range(3)]
    variable = keras.Variable(start.copy())
    optimizer = msn.ScheduledAdamW(learning_rate=0.1, weight_decay=0.05)
    reference = torch.nn.Parameter(torch.from_numpy(start.copy()))
    torch_opt = torch.optim.AdamW([reference], lr=0.1, weight_decay=0.05)
    for g in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
        reference.grad = torch.from_numpy(g)
        torch_opt.step()
    # Keras' AdamW (epsilon before the bias correction, 1e-7) is visibly different here.
    assert max_abs_diff(variable, reference.detach().numpy()) <= 1e-6


def test_global_clipping_scales_only_the_clipped_gradients_once():
    """The first moment after one step is (1 - beta_1) * the gradient as clipped: the
    clipped variables' by torch's clip_grad_norm_ scale over them alone, the excluded
    one untouched (a second, Keras-side clipping of all gradients would shrink both)."""
    rng = np.random.default_rng(3)
    grads = [rng.normal(size=(4,)).astype("float32") * 10 for _ in range(3)]
    variables = [keras.Variable(np.zeros(4, "float32"), name=f"v{i}") for i in range(3)]
    optimizer = msn.ScheduledAdamW(learning_rate=0.1, weight_decay=0.0, global_clipnorm=3.0)
    optimizer.exclude_from_clipping([variables[2]])
    optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    norm = np.sqrt(sum(float(np.sum(g.astype("float64") ** 2)) for g in grads[:2]))
    scale = 3.0 / (norm + 1e-6)
    assert scale < 0.2
    expected = [0.1 * g * scale for g in grads[:2]] + [0.1 * grads[2]]
    for variable, want in zip(variables, expected):
        np.testing.assert_allclose(to_numpy(optimizer.moments(variable)[0]), want, rtol=1e-5)
    assert optimizer.global_clipnorm == 3.0  # restored after apply()


def _clipping_case():
    rng = np.random.default_rng(5)
    grads = [rng.normal(size=(4,)).astype("float32") * 10 for _ in range(3)]
    variables = [keras.Variable(np.zeros(4, "float32"), name=f"w{i}") for i in range(3)]
    optimizer = msn.ScheduledAdamW(learning_rate=0.1, weight_decay=0.0, global_clipnorm=3.0)
    optimizer.exclude_from_clipping([variables[2]])
    return grads, variables, optimizer


def test_global_clipping_leaves_the_callers_gradients_alone():
    grads, variables, optimizer = _clipping_case()
    given = [keras.ops.convert_to_tensor(g) for g in grads]
    optimizer.apply(given, variables)
    for tensor, original in zip(given, grads):
        np.testing.assert_array_equal(to_numpy(tensor), original)


@pytest.mark.skipif(BACKEND != "torch", reason="only torch has autograd .grad buffers")
def test_global_clipping_scales_autograd_buffers_in_place_with_the_same_result():
    """Keras' torch trainer passes each variable's own ``.grad``; those are scaled in
    place (as clip_grad_norm_ does), with the moments of the copying path."""
    import torch

    from keras_vitmsn import backend as fast_updates

    grads, variables, optimizer = _clipping_case()
    for v, g in zip(variables, grads):
        v.value.grad = torch.from_numpy(g.copy())
    buffers = [v.value.grad for v in variables]
    assert fast_updates.autograd_gradients(buffers, variables)
    assert not fast_updates.autograd_gradients([b.clone() for b in buffers], variables)
    optimizer.apply(buffers, variables)

    copy_grads, copy_variables, copy_optimizer = _clipping_case()
    copy_optimizer.apply([keras.ops.convert_to_tensor(g) for g in copy_grads], copy_variables)
    for v, w in zip(variables, copy_variables):
        for a, b in zip(optimizer.moments(v), copy_optimizer.moments(w)):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    scaled = [to_numpy(b) for b in buffers]
    assert np.max(np.abs(scaled[0] - grads[0])) > 1.0  # the clipped buffers were scaled
    np.testing.assert_array_equal(scaled[2], grads[2])  # the excluded one was not


def test_errors():
    pretrainer = make_pretrainer(total_steps=None)
    with pytest.raises(ValueError, match="pass `total_steps`"):
        pretrainer.compile()
    with pytest.raises(ValueError, match="`loss` cannot be given"):
        pretrainer.compile(optimizer="adam", loss="mse")
    views = make_views()
    with pytest.raises(ValueError, match=r"takes a dict of views .* got \['anchor'\]"):
        pretrainer({"anchor": views["anchor"]})
    with pytest.raises(ValueError, match=r"Unknown view keys \['extra'\]"):
        pretrainer({**views, "extra": views["anchor"]})
    with pytest.raises(ValueError, match="View 'focal' must have rank 5"):
        pretrainer({**views, "focal": views["anchor"]})
    encoder = kv.ViTMSNBackbone(**ENCODER)
    with pytest.raises(ValueError, match=r"`mask_ratio` must be in \[0, 1\)"):
        msn.MSNPretrainer(encoder, mask_ratio=1.0)
    with pytest.raises(ValueError, match="ema_momentum <= final_ema_momentum"):
        msn.MSNPretrainer(encoder, ema_momentum=0.999, final_ema_momentum=0.99)
    with pytest.raises(TypeError, match="must be a ViTMSNBackbone"):
        msn.MSNPretrainer(keras.layers.Dense(3))
    with pytest.raises(
        ValueError, match="takes 24-dimensional features but the encoder outputs 16"
    ):
        msn.MSNPretrainer(encoder, projection_head=msn.MSNProjectionHead(32, 8, input_dim=24))
    with pytest.raises(ValueError, match="outputs 8 features but the prototypes have 4"):
        msn.MSNPretrainer(encoder, prototypes=msn.MSNPrototypes(10, 4), **HEAD)
    other = kv.ViTMSNBackbone(**{**ENCODER, "num_layers": 1})
    with pytest.raises(ValueError, match="`target_encoder` must have the encoder's architecture"):
        msn.MSNPretrainer(encoder, target_encoder=other)


def test_config_and_keras_file_round_trip(tmp_path):
    pretrainer = make_pretrainer(use_sinkhorn=True, me_max_weight=5.0)
    pretrainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    pretrainer.fit(make_views(), batch_size=4, epochs=1, verbose=0)
    clone = msn.MSNPretrainer.from_config(pretrainer.get_config())
    assert clone.get_config() == pretrainer.get_config()
    path = str(tmp_path / "pretrainer.keras")
    pretrainer.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(pretrainer.weights, loaded.weights):
        assert a.path.split("/", 1)[-1] == b.path.split("/", 1)[-1]
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert int(to_numpy(loaded.ema_steps)) == 1
    # Compiled again on load, optimizer state restored: training resumes where it was.
    assert loaded.compiled and int(to_numpy(loaded.optimizer.iterations)) == 1
    for a, b in zip(pretrainer.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_export_target_encoder_and_continue(tmp_path):
    pretrainer = make_pretrainer(ema_momentum=0.5, final_ema_momentum=0.5)
    pretrainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    pretrainer.fit(make_views(), batch_size=4, epochs=2, verbose=0)
    preset = str(tmp_path / "msn_preset")
    pretrainer.save_to_preset(preset)
    assert sorted(os.listdir(preset)) == [
        "config.json",
        "image_converter.json",
        "metadata.json",
        "model.weights.h5",
        "msn_head.weights.h5",
        "msn_training_state.h5",
    ]
    with open(os.path.join(preset, "config.json")) as f:
        config = json.load(f)["config"]
    assert config["name"] == pretrainer.encoder.name and config["trainable"] is True
    images = make_views()["target"]
    backbone = kv.ViTMSNBackbone.from_preset(preset)
    expected = pretrainer.target_encoder(images)["last_hidden_state"]
    assert max_abs_diff(backbone(images)["last_hidden_state"], expected) == 0.0
    # The anchor differs from the target (momentum 0.5), so this is the target's export.
    assert max_abs_diff(pretrainer.encoder(images)["last_hidden_state"], expected) > 1e-4
    classifier = kv.ViTMSNClassifier.from_preset(preset, num_classes=3)
    assert classifier.preprocessor.image_size == (16, 16)

    # With the training state, every part comes back where it was (and the settings).
    resumed = msn.MSNPretrainer.from_preset(preset)
    assert resumed.get_config() | {"name": None} == pretrainer.get_config() | {"name": None}
    np.testing.assert_array_equal(
        to_numpy(resumed.prototypes.prototypes), to_numpy(pretrainer.prototypes.prototypes)
    )
    for part in ("encoder", "projection_head", "target_encoder", "target_projection_head"):
        for a, b in zip(getattr(resumed, part).weights, getattr(pretrainer, part).weights):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert int(to_numpy(resumed.ema_steps)) == 2

    # Exported without it: a normal preset whose target starts both branches again.
    pretrainer.save_to_preset(preset, training_state=False)
    assert "msn_training_state.h5" not in os.listdir(preset)
    restarted = msn.MSNPretrainer.from_preset(preset, mask_ratio=0.5, seed=0)
    for a, b in zip(restarted.projection_head.weights, pretrainer.target_projection_head.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    for a, b in zip(restarted.encoder.weights, pretrainer.target_encoder.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    with pytest.raises(ValueError, match="no optimizer state to restore"):
        msn.MSNPretrainer.from_preset(preset, restore_optimizer=True)


def test_from_original_msn_checkpoint(tmp_path, rng):
    from checkpoint_helpers import hub_state_to_msn_encoder
    from checkpoint_helpers import write_msn_checkpoint
    from hf_reference import TINY
    from hf_reference import make_hf_model

    _, state, config = make_hf_model(tmp_path, TINY)
    encoder_state = hub_state_to_msn_encoder(
        state, TINY["num_hidden_layers"], rng, hidden=64, out=32
    )
    path = str(tmp_path / "vit_tiny.pth.tar")
    prototypes = write_msn_checkpoint(path, encoder_state, rng, num_prototypes=16, prototype_dim=32)
    pretrainer = msn.MSNPretrainer.from_preset(
        path, num_heads=TINY["num_attention_heads"], total_steps=3, mask_ratio=0.3
    )
    np.testing.assert_array_equal(to_numpy(pretrainer.prototypes.prototypes), prototypes)
    # The online branch from `encoder` (the helper writes target + 0.01), the EMA
    # target from `target_encoder`.
    np.testing.assert_allclose(
        to_numpy(pretrainer.projection_head.fc1.kernel),
        encoder_state["module.fc.fc1.weight"].T + 0.01,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        to_numpy(pretrainer.target_projection_head.fc1.kernel),
        encoder_state["module.fc.fc1.weight"].T,
    )
    np.testing.assert_allclose(
        to_numpy(pretrainer.encoder.layers[0].cls_token) - 0.01,
        to_numpy(pretrainer.target_encoder.layers[0].cls_token),
        atol=1e-7,
    )
    # A file with the EMA encoder only: both branches start from it.
    from checkpoint_helpers import save_torch_file

    target_only = str(tmp_path / "target_only.pth.tar")
    save_torch_file({"target_encoder": encoder_state, "prototypes": prototypes}, target_only)
    single = msn.MSNPretrainer.from_preset(target_only, num_heads=TINY["num_attention_heads"])
    for a, b in zip(single.encoder.weights, pretrainer.target_encoder.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    with pytest.raises(kv.conversion.CheckpointError, match="no 'opt' entry"):
        msn.MSNPretrainer.from_preset(
            target_only,
            num_heads=TINY["num_attention_heads"],
            total_steps=3,
            restore_optimizer=True,
        )
    # The width is not a released one (384, 768, 1024): no guessing of the heads.
    with pytest.raises(ValueError, match="none of the released MSN widths .* num_heads="):
        msn.MSNPretrainer.from_preset(path, total_steps=3)
    size = TINY["image_size"]
    views = {
        k: np.random.default_rng(0).normal(size=(4, size, size, 3)).astype("float32")
        for k in ("target", "anchor")
    }
    pretrainer.compile()
    history = pretrainer.fit(views, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.DataParallel is JAX-only")
def test_data_parallel_equals_single_device(tmp_path):
    # 8 virtual CPU devices need XLA_FLAGS before JAX starts: run both in a fresh process.
    script = textwrap.dedent(
        """
        import os, sys, json
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        os.environ["KERAS_BACKEND"] = "jax"
        import jax, keras, numpy as np
        import keras_vitmsn as kv
        from keras_vitmsn import msn
        assert len(jax.devices()) == 8

        def run(distributed):
            if distributed:
                keras.distribution.set_distribution(keras.distribution.DataParallel())
            keras.utils.set_random_seed(0)
            encoder = kv.ViTMSNBackbone(image_shape=(16, 16, 3), patch_size=4, hidden_dim=16,
                                        num_layers=2, num_heads=2, intermediate_dim=32)
            pretrainer = msn.MSNPretrainer(encoder, mask_ratio=0.5, total_steps=3, seed=0,
                                           head_hidden_dim=32, head_output_dim=8,
                                           num_prototypes=10, use_sinkhorn=True)
            pretrainer.compile()
            rng = np.random.default_rng(0)
            views = {"target": rng.normal(size=(16, 16, 16, 3)).astype("float32"),
                     "anchor": rng.normal(size=(16, 16, 16, 3)).astype("float32"),
                     "focal": rng.normal(size=(16, 2, 8, 8, 3)).astype("float32")}
            history = pretrainer.fit(views, batch_size=16, epochs=3, verbose=0, shuffle=False)
            shards = len(pretrainer.encoder.weights[0].value.sharding.device_set)
            # Parameters with an exactly zero gradient (key biases; fc1/fc2 biases and
            # the final LayerNorm beta, before a BatchNorm) get float-noise AdamW steps
            # of up to lr, which a different reduction order changes: left out, with
            # the online head's BatchNorm moving means, which track those biases.
            # The key biases are the middle third of each fused qkv bias.
            zero = ("fc1/bias", "fc2/bias", "/layernorm/beta",
                    "^projection_head/bn1/moving_mean", "^projection_head/bn2/moving_mean")
            weights = []
            for v in pretrainer.weights:
                value = np.asarray(v.value)
                if v.path.endswith("attention/qkv/bias"):
                    query, _, values = np.split(value, 3)
                    value = np.concatenate([query, values])
                if not ("^" + v.path).endswith(zero):
                    weights.append((v.path, value))
            keras.distribution.set_distribution(None)
            return history.history, weights, shards

        single, w_single, _ = run(False)
        multi, w_multi, shards = run(True)
        print(json.dumps({
            "shards": shards,
            "loss_single": single["loss"], "loss_multi": multi["loss"],
            "weight_diffs": sorted(
                ((float(np.abs(a - b).max()), path)
                 for (path, a), (_, b) in zip(w_single, w_multi)),
                reverse=True,
            )[:3],
        }))
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shards"] == 8  # replicated weights: the run really used 8 devices
    np.testing.assert_allclose(result["loss_multi"], result["loss_single"], rtol=1e-4)
    assert result["weight_diffs"][0][0] <= 1e-4, result


# -- from scratch: the original MSN's CLS / position-table start ------------------------

SCRATCH = dict(
    steps_per_epoch=2,
    epochs=1,
    warmup_epochs=0,
    global_size=16,
    patch_size=4,
    hidden_dim=16,
    num_layers=1,
    num_heads=2,
    intermediate_dim=32,
    **HEAD,
)


def embedding_tables(backbone):
    e = backbone.embeddings
    return [to_numpy(v) for v in (e.cls_token, e.position_embeddings)]


def test_pretraining_from_scratch_starts_embeddings_as_the_original(tmp_path):
    # facebookresearch/msn src/deit.py: trunc_normal_(std=.02) on cls_token and pos_embed;
    # transformers (and so a fresh ViTMSNBackbone) starts them at zero.
    fresh = kv.ViTMSNBackbone(**ENCODER)
    assert all(not t.any() for t in embedding_tables(fresh))
    scratch = msn.MSNPretrainer.from_recipe("msn_vits16", seed=3, **SCRATCH)
    kv.ViTMSNBackbone(
        image_shape=(16, 16, 3),
        patch_size=4,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
    ).save_to_preset(str(tmp_path / "p"))
    # keras-vitmsn pretrain --from-scratch --preset P: from_recipe(P, load_weights=False).
    from_preset = msn.MSNPretrainer.from_recipe(
        "msn_vits16", str(tmp_path / "p"), load_weights=False, seed=3, **SCRATCH
    )
    for pretrainer in (scratch, from_preset):
        cls, table = embedding_tables(pretrainer.encoder)
        assert cls.shape == (1, 1, 16) and table.shape == (1, 17, 16)
        drawn = np.concatenate([cls.ravel(), table.ravel()])
        assert 0.015 < drawn.std() < 0.025 and abs(drawn.mean()) < 0.005
        # The EMA target starts as a copy of the online encoder.
        for online, target in zip(
            embedding_tables(pretrainer.encoder), embedding_tables(pretrainer.target_encoder)
        ):
            np.testing.assert_array_equal(online, target)
    np.testing.assert_array_equal(
        embedding_tables(scratch.encoder)[1], embedding_tables(from_preset.encoder)[1]
    )  # seeded
    # Weights that are loaded, or a backbone handed over, are left as they are.
    given = msn.MSNPretrainer.from_recipe("msn_vits16", fresh, **SCRATCH)
    assert all(not t.any() for t in embedding_tables(given.encoder))
    loaded = msn.MSNPretrainer.from_recipe("msn_vits16", str(tmp_path / "p"), **SCRATCH)
    assert all(not t.any() for t in embedding_tables(loaded.encoder))
