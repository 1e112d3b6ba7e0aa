"""The released MSN recipes by name, MSNPretrainer.from_recipe, and the training setup
shared by `keras-vitmsn pretrain` and the demo."""

import inspect

import numpy as np
import pytest
from helpers import to_numpy

import keras_vitmsn as kv
from keras_vitmsn import msn
from keras_vitmsn.cli.main import build_parser
from keras_vitmsn.msn import recipes

# configs/pretrain/msn_vits16.yaml of facebookresearch/msn (global batch: 64 per GPU on
# the 16 GPUs of its README's launch command).
VITS16_YAML = dict(
    epochs=800,
    warmup_epochs=15,
    learning_rate=1e-3,
    start_learning_rate=2e-4,
    final_learning_rate=1e-6,
    weight_decay=0.04,
    final_weight_decay=0.4,
    gradient_clip_norm=3.0,
    mask_ratio=0.15,
    temperature=0.1,
    sharpen_temperature=0.25,
    final_sharpen_temperature=0.25,
    me_max_weight=1.0,
    use_sinkhorn=True,
    entropy_weight=0.0,
    num_prototypes=1024,
    head_hidden_dim=2048,
    head_output_dim=256,
    head_batch_norm=True,
    global_size=224,
    focal_size=96,
    num_focal_views=10,
    color_jitter_strength=0.5,
    batch_size=64 * 16,
)
# The paper / README: epochs and masking ratio of each released model.
RELEASED = {
    "msn_vits16": ("vit_msn_small", 800, 0.15),
    "msn_vitb16": ("vit_msn_base", 600, 0.3),
    "msn_vitl16": ("vit_msn_large", 600, None),  # the paper gives no ratio for L/16
    "msn_vitb4": ("vit_msn_base_4", 300, 0.7),
    "msn_vitl7": ("vit_msn_large_7", 200, 0.7),
}
TINY = dict(
    global_size=16,
    focal_size=8,
    patch_size=4,
    hidden_dim=16,
    num_layers=1,
    num_heads=2,
    intermediate_dim=32,
    head_hidden_dim=16,
    head_output_dim=8,
    num_prototypes=6,
)


def test_vits16_recipe_is_the_released_config():
    config = msn.get_recipe("msn_vits16")
    assert {k: config[k] for k in VITS16_YAML} == VITS16_YAML
    assert msn.MSN_RECIPES["msn_vits16"]["unstated"] == ()


@pytest.mark.parametrize("name", list(RELEASED))
def test_every_recipe_matches_its_released_model(name):
    preset, epochs, mask_ratio = RELEASED[name]
    config = msn.get_recipe(name)
    assert config["preset"] == preset and config["epochs"] == epochs
    architecture = kv.presets.get_preset(preset)["architecture"]
    built = recipes.backbone_kwargs(config)
    assert {k: built[k] for k in architecture} == {
        k: tuple(v) if isinstance(v, list) else v for k, v in architecture.items()
    }
    entry = msn.MSN_RECIPES[name]
    vits16 = msn.get_recipe("msn_vits16")
    # What the paper leaves unstated is said so, and taken from msn_vits16.
    for key in entry["unstated"]:
        assert key in recipes.RECIPE_KEYS and config[key] == vits16[key], key
    if mask_ratio is None:
        assert "mask_ratio" in entry["unstated"]
    else:
        assert config["mask_ratio"] == mask_ratio


def test_pretrainer_and_cli_defaults_are_the_vits16_recipe():
    config = msn.get_recipe("msn_vits16")
    defaults = {
        name: p.default for name, p in inspect.signature(msn.MSNPretrainer).parameters.items()
    }
    for key, value in recipes.pretrainer_kwargs(config).items():
        default = defaults[key]
        if key == "start_learning_rate":  # None: learning_rate / 5
            assert default is None and value == defaults["learning_rate"] / 5
        elif key == "final_learning_rate":  # None: learning_rate / 1000
            assert default is None and value == pytest.approx(defaults["learning_rate"] / 1000)
        elif key == "final_sharpen_temperature":  # None: constant
            assert default is None and value == defaults["sharpen_temperature"]
        else:
            assert default == value, key
    args = build_parser().parse_args(["pretrain", "--data", "d", "--output", "o"])
    assert args.recipe == "msn_vits16" and args.preset is None
    # Every recipe flag defaults to "take the recipe's value".
    from keras_vitmsn.cli.commands import _RECIPE_FLAGS

    assert all(getattr(args, flag) is None for flag in _RECIPE_FLAGS)


def test_get_recipe_checks_its_input():
    with pytest.raises(ValueError, match="Unknown MSN recipe 'msn_vith14'"):
        msn.get_recipe("msn_vith14")
    with pytest.raises(ValueError, match=r"Unknown MSN recipe keys \['lr'\]"):
        msn.get_recipe("msn_vits16", lr=1.0)
    with pytest.raises(ValueError, match="warms up for 15 epochs of a 10-epoch run"):
        msn.get_recipe("msn_vits16", epochs=10)
    with pytest.raises(ValueError, match=r"missing \['epochs'\]"):
        config = msn.get_recipe("msn_vits16")
        del config["epochs"]
        msn.get_recipe(config)
    with pytest.raises(ValueError, match="'batch_size' must be a positive int"):
        msn.get_recipe("msn_vits16", batch_size=0)
    # A copy each time: editing one does not change the table.
    msn.get_recipe("msn_vits16")["augmentation"]["flip_probability"] = 0.0
    assert msn.get_recipe("msn_vits16")["augmentation"] == {}


def test_from_recipe_from_scratch_and_from_a_backbone():
    pretrainer = msn.MSNPretrainer.from_recipe(
        "msn_vitb4", steps_per_epoch=5, epochs=4, warmup_epochs=1.5, **TINY
    )
    encoder = pretrainer.encoder
    assert (encoder.patch_size, encoder.hidden_dim, encoder.image_shape) == (4, 16, (16, 16, 3))
    assert pretrainer.mask_ratio == 0.7 and pretrainer.use_sinkhorn
    assert (pretrainer.total_steps, pretrainer.warmup_steps) == (20, 7)  # int(1.5 * 5)
    pretrainer.compile()
    assert pretrainer.optimizer.global_clipnorm == 3.0
    # Overrides of MSNPretrainer arguments beyond the recipe, and a given backbone.
    other = msn.MSNPretrainer.from_recipe("msn_vits16", encoder, seed=3, **TINY)
    assert other.encoder is encoder and other.seed == 3 and other.total_steps is None


def test_build_msn_training_sizes_views_for_a_preset(tmp_path):
    backbone = kv.ViTMSNBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
    )
    preset = str(tmp_path / "preset")
    backbone.save_to_preset(preset)
    images = np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3), dtype="uint8")
    small = {k: TINY[k] for k in ("head_hidden_dim", "head_output_dim", "num_prototypes")}
    run = msn.build_msn_training(
        images,
        backbone_or_preset=preset,
        epochs=2,
        warmup_epochs=1,
        batch_size=8,
        num_focal_views=1,
        **small,
    )
    # The preset's 32 px, focal views at the recipe's 96/224 of it on the 8-px grid.
    assert (run.config["global_size"], run.config["focal_size"]) == (32, 16)
    assert (run.batch_size, run.steps_per_epoch, run.total_steps) == (6, 1, 2)
    batch = next(iter(run.dataset))
    assert tuple(batch["focal"].shape) == (6, 1, 16, 16, 3)
    history = run.fit(verbose=0)
    assert len(history.history["loss"]) == 2
    assert int(to_numpy(run.pretrainer.ema_steps)) == 2
    with pytest.raises(ValueError, match="focal_size 12 must be a multiple of the patch size 8"):
        msn.build_msn_training(
            images, backbone_or_preset=preset, epochs=2, warmup_epochs=1, focal_size=12, **small
        )
    with pytest.raises(ValueError, match="needs a preset or checkpoint"):
        msn.build_msn_training(images, restore_optimizer=True, epochs=2, warmup_epochs=1)
