"""One MSNPretrainer training step equals the authors' step, and runs resume exactly.

The reference (``msn_torch_reference.py``) composes the original's step by hand in
PyTorch: per-crop-size head calls with BatchNorm batch statistics, the loss with
sharpening, Sinkhorn, me-max and entropy terms, ``clip_grad_norm_`` over the encoder
and head, torch's AdamW with its three parameter groups and schedules advanced before
the update, and the EMA. It saves its state as an original ``.pth.tar``; loading that
back (``MSNPretrainer.from_preset(..., restore_optimizer=True)``) gives the expected
value of every Keras weight and optimizer moment after the step.
"""

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference step is written in PyTorch")

import msn_torch_reference as ref  # noqa: E402
from helpers import BACKEND  # noqa: E402
from helpers import to_numpy  # noqa: E402

from keras_vitmsn import msn  # noqa: E402
from keras_vitmsn.msn.resume import weights_by_relative_path  # noqa: E402

BATCH, FOCAL, IMAGE, FOCAL_IMAGE, PATCH = 4, 2, 16, 8, 4
RECIPE = dict(
    total_steps=10,
    warmup_steps=5,
    ipe_scale=1.25,
    lr=1e-3,
    start_lr=2e-4,
    final_lr=1e-6,
    wd=0.04,
    final_wd=0.4,
    T=0.25,
    final_T=0.3,
    m=0.9,
    tau=0.1,
    me_max=1.0,
    sinkhorn=True,
    entropy=0.5,
    clip=0.5,
)
SETTINGS = dict(
    num_heads=2,
    mask_ratio=0.5,
    total_steps=10,
    warmup_steps=5,
    ipe_scale=1.25,
    learning_rate=1e-3,
    start_learning_rate=2e-4,
    final_learning_rate=1e-6,
    weight_decay=0.04,
    final_weight_decay=0.4,
    sharpen_temperature=0.25,
    final_sharpen_temperature=0.3,
    ema_momentum=0.9,
    final_ema_momentum=1.0,
    temperature=0.1,
    me_max_weight=1.0,
    use_sinkhorn=True,
    entropy_weight=0.5,
    gradient_clip_norm=0.5,
    seed=0,
)
# Max abs differences measured per backend are printed (pytest -s) for the record.
TOLERANCE = 1e-5
# Parameters whose gradient is exactly zero in exact arithmetic: a key bias shifts all
# of a query's logits alike (softmax ignores it); the head's fc1/fc2 biases and the
# final LayerNorm's beta shift every sample alike before a BatchNorm, which removes
# it. Their float32 gradients are rounding noise (~1e-9, below Adam's epsilon), which
# AdamW turns into steps of up to lr that differ from one implementation to another:
# for them both sides must stay within one step of each other (2 lr), and their
# moments within TOLERANCE. The test checks that they are these and only these.
ZERO_GRADIENT = (
    "attention/key/bias",
    "projection_head/fc1/bias",
    "projection_head/fc2/bias",
    "encoder/layernorm/beta",
)


def make_run(seed=0, target_noise=0.05):
    encoder = ref.MSNEncoder(
        IMAGE, PATCH, dim=16, depth=2, heads=2, mlp_dim=32, head_hidden=32, head_out=8
    )
    ref.randomize(encoder, seed)
    generator = torch.Generator().manual_seed(seed + 2)
    prototypes = (torch.rand(10, 8, generator=generator) - 0.5) * 0.5
    return ref.Run(encoder, prototypes, RECIPE, target_noise=target_noise, seed=seed)


def make_views(seed):
    rng = np.random.default_rng(seed)
    views = {
        "target": rng.normal(size=(BATCH, IMAGE, IMAGE, 3)).astype("float32"),
        "anchor": rng.normal(size=(BATCH, IMAGE, IMAGE, 3)).astype("float32"),
        "focal": rng.normal(size=(BATCH, FOCAL, FOCAL_IMAGE, FOCAL_IMAGE, 3)).astype("float32"),
    }
    num_patches = (IMAGE // PATCH) ** 2
    keep = np.sort(rng.permutation(num_patches)[: num_patches // 2])
    return views, keep


def torch_step(run, views, keep):
    focal = views["focal"].transpose(1, 0, 2, 3, 4).reshape(-1, FOCAL_IMAGE, FOCAL_IMAGE, 3)
    return run.train_step(
        ref.nchw(views["target"]),
        ref.nchw(views["anchor"]),
        ref.nchw(focal),
        torch.from_numpy(keep).long(),
    )


@pytest.fixture
def fixed_masks(monkeypatch):
    """Make the pretrainer drop the reference's patches: ``keep[0]`` is read per step."""
    keep = [None]

    def keep_indices(self, anchor, layout):
        rows = np.repeat(keep[0][None], BATCH, axis=0).astype("int32")
        return keras.ops.convert_to_tensor(rows)

    monkeypatch.setattr(msn.MSNPretrainer, "_anchor_keep_indices", keep_indices)
    return keep


def split_fused_qkv_bias(values):
    """``.../attention/qkv/bias`` as its query, key and value thirds.

    The key third alone has a zero gradient, so it is compared under its own name.
    """
    out = {}
    for key, value in values.items():
        if key.endswith("attention/qkv/bias"):
            stem = key[: -len("qkv/bias")]
            for part, third in zip(("query", "key", "value"), np.split(value, 3)):
                out[f"{stem}{part}/bias"] = third
        else:
            out[key] = value
    return out


def named_values(pretrainer):
    """Every weight and AdamW moment, by a path shared by any two pretrainers."""
    out = {}
    for part in ("encoder", "projection_head", "target_encoder", "target_projection_head"):
        for key, variable in weights_by_relative_path(getattr(pretrainer, part)).items():
            out[f"{part}/{key}"] = to_numpy(variable)
    out["prototypes"] = to_numpy(pretrainer.prototypes.prototypes)
    out["ema_steps"] = to_numpy(pretrainer.ema_steps)
    optimizer = pretrainer.optimizer
    out["iterations"] = to_numpy(optimizer.iterations)
    for part in ("encoder", "projection_head", "prototypes"):
        for key, variable in weights_by_relative_path(getattr(pretrainer, part)).items():
            if variable.trainable:
                exp_avg, exp_avg_sq = optimizer.moments(variable)
                out[f"m/{part}/{key}"] = to_numpy(exp_avg)
                out[f"v/{part}/{key}"] = to_numpy(exp_avg_sq)
    return split_fused_qkv_bias(out)


def is_zero_gradient(key):
    return not key.startswith(("m/", "v/")) and key.endswith(ZERO_GRADIENT)


def compare(got, expected, label, zero_gradient_tolerance=0.0):
    assert sorted(got) == sorted(expected)
    diffs = {k: float(np.max(np.abs(got[k] - expected[k]))) for k in got}
    groups = {}
    for key, diff in diffs.items():
        group = key.split("/")[0] if key.split("/")[0] not in ("m", "v") else "adam_moments"
        if is_zero_gradient(key):
            group = "zero-gradient parameters"
        groups[group] = max(groups.get(group, 0.0), diff)
    print(f"\n[{BACKEND}] {label}: max abs diff per group {groups}")
    for key, diff in diffs.items():
        limit = max(TOLERANCE, zero_gradient_tolerance) if is_zero_gradient(key) else TOLERANCE
        assert diff <= limit, (key, diff, limit)
    return groups


def check_zero_gradient_parameters(expected):
    # The reference's second moments: zero-gradient parameters ~1e-20, all others
    # above 1e-12, so ZERO_GRADIENT names exactly the degenerate ones.
    second = {k[2:]: float(np.max(v)) for k, v in expected.items() if k.startswith("v/")}
    degenerate = sorted(k for k, v in second.items() if v < 1e-15)
    assert degenerate == sorted(k for k in second if is_zero_gradient(k)), degenerate
    assert min(v for k, v in second.items() if k not in degenerate) > 1e-12


def test_one_step_equals_the_authors_step(tmp_path, fixed_masks):
    run = make_run()
    start = str(tmp_path / "start.pth.tar")
    run.save(start)
    pretrainer = msn.MSNPretrainer.from_preset(start, **SETTINGS)
    pretrainer.compile()
    views, keep = make_views(seed=1)
    fixed_masks[0] = keep
    logs = pretrainer.train_on_batch(views, return_dict=True)
    loss, norm = torch_step(run, views, keep)
    assert norm > RECIPE["clip"]  # the clipping is active, so it is compared too
    print(f"\n[{BACKEND}] loss {logs['loss']:.6f} vs reference {loss:.6f}")
    assert abs(logs["loss"] - loss) <= TOLERANCE

    after = str(tmp_path / "after.pth.tar")
    run.save(after)
    expected = named_values(
        msn.MSNPretrainer.from_preset(after, restore_optimizer=True, **SETTINGS)
    )
    check_zero_gradient_parameters(expected)
    compare(
        named_values(pretrainer),
        expected,
        "one step from scratch",
        zero_gradient_tolerance=2 * RECIPE["lr"],
    )


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_resuming_an_original_checkpoint_takes_the_original_next_step(
    tmp_path, fixed_masks, prefix
):
    run = make_run(seed=3)
    for step in range(2):
        torch_step(run, *make_views(seed=10 + step))
    middle = str(tmp_path / "middle.pth.tar")
    run.save(middle, prefix=prefix)
    pretrainer = msn.MSNPretrainer.from_preset(middle, restore_optimizer=True, **SETTINGS)
    assert int(to_numpy(pretrainer.optimizer.iterations)) == 2
    # Online and target come from their own entries (they differ mid-training).
    online = to_numpy(pretrainer.encoder.weights[0])
    assert np.max(np.abs(online - to_numpy(pretrainer.target_encoder.weights[0]))) > 1e-3

    views, keep = make_views(seed=20)
    fixed_masks[0] = keep
    logs = pretrainer.train_on_batch(views, return_dict=True)
    loss, _ = torch_step(run, views, keep)
    print(f"\n[{BACKEND}] resumed loss {logs['loss']:.6f} vs reference {loss:.6f}")
    assert abs(logs["loss"] - loss) <= TOLERANCE
    after = str(tmp_path / "after.pth.tar")
    run.save(after)
    expected = named_values(
        msn.MSNPretrainer.from_preset(after, restore_optimizer=True, **SETTINGS)
    )
    check_zero_gradient_parameters(expected)
    compare(
        named_values(pretrainer),
        expected,
        "third step after resuming",
        zero_gradient_tolerance=2 * RECIPE["lr"],
    )


@pytest.mark.parametrize("how", ["keras_file", "preset"])
def test_our_checkpoints_resume_exactly(tmp_path, how):
    run = make_run(seed=7, target_noise=0.0)
    start = str(tmp_path / "start.pth.tar")
    run.save(start)
    pretrainer = msn.MSNPretrainer.from_preset(start, **SETTINGS)
    pretrainer.compile()
    # Random masks (not fixed): the mask seed's state must be restored too.
    pretrainer.train_on_batch(make_views(seed=30)[0], return_dict=True)
    if how == "keras_file":
        path = str(tmp_path / "run.keras")
        pretrainer.save(path)
        resumed = keras.saving.load_model(path)
    else:
        path = str(tmp_path / "preset")
        pretrainer.save_to_preset(path)
        resumed = msn.MSNPretrainer.from_preset(path, restore_optimizer=True)
    views = make_views(seed=31)[0]
    expected_logs = pretrainer.train_on_batch(views, return_dict=True)
    logs = resumed.train_on_batch(views, return_dict=True)
    assert abs(logs["loss"] - expected_logs["loss"]) <= 1e-6
    groups = compare(named_values(resumed), named_values(pretrainer), f"resumed from {how}")
    assert max(groups.values()) <= 1e-6
