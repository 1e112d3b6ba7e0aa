"""The MSN pretraining recipes behind the five released checkpoints, by name.

``msn_vits16`` is the authors' only config file, ``configs/pretrain/msn_vits16.yaml``
(facebookresearch/msn); the others come from the paper (Assran et al. 2022, arXiv
2204.07141: pretraining details in its appendix; epochs from the repository's
README). Where the paper does not state a value for a model, the entry lists the key
under ``"unstated"`` and takes ``msn_vits16``'s.

Every recipe uses one masked global anchor view, the unmasked global target view
(``rand_views: 1`` in the config) and ``num_focal_views`` unmasked focal views, the
layout :class:`MSNPretrainer` implements. ``batch_size`` is the global batch (the
config's 64 per GPU on the 16 GPUs of the README's command). ``ipe_scale`` is 1.0
here: the original stretched every schedule by 1.25 and stopped at 80% of it
(``keras_vitmsn.msn.schedules.ORIGINAL_IPE_SCALE``); pass ``ipe_scale=1.25`` to
reproduce that exactly.

Keys of a recipe (:func:`get_recipe`):

- architecture: ``patch_size``, ``hidden_dim``, ``num_layers``, ``num_heads``,
  ``intermediate_dim`` (``global_size`` is the image size; LayerNorm epsilon 1e-6,
  qkv bias, exact GELU as every released model), ``preset`` (the released model);
- run: ``epochs``, ``batch_size``, ``warmup_epochs``;
- optimizer: ``learning_rate``, ``start_learning_rate``, ``final_learning_rate``,
  ``weight_decay``, ``final_weight_decay``, ``gradient_clip_norm``, ``ipe_scale``;
- target: ``ema_momentum``, ``final_ema_momentum``;
- loss: ``mask_ratio``, ``temperature``, ``sharpen_temperature``,
  ``final_sharpen_temperature``, ``me_max_weight``, ``use_sinkhorn``,
  ``sinkhorn_iters``, ``entropy_weight``;
- head: ``num_prototypes``, ``head_hidden_dim``, ``head_output_dim``,
  ``head_batch_norm``;
- views: ``global_size``, ``focal_size``, ``num_focal_views``, ``global_scale``,
  ``focal_scale``, ``color_jitter_strength`` (torchvision ColorJitter(0.8 s, 0.8 s,
  0.8 s, 0.2 s) with p=0.8, then grayscale p=0.2, blur p=0.5), and ``augmentation``
  (extra :class:`MSNAugmentation` arguments; empty in every released recipe).
"""

import copy
import numbers

_VITS16_CONFIG = dict(
    preset="vit_msn_small",
    patch_size=16,
    hidden_dim=384,
    num_layers=12,
    num_heads=6,
    intermediate_dim=1536,
    epochs=800,
    batch_size=1024,
    warmup_epochs=15,
    learning_rate=1e-3,
    start_learning_rate=2e-4,
    final_learning_rate=1e-6,
    weight_decay=0.04,
    final_weight_decay=0.4,
    gradient_clip_norm=3.0,
    ipe_scale=1.0,
    ema_momentum=0.996,
    final_ema_momentum=1.0,
    mask_ratio=0.15,
    temperature=0.1,
    sharpen_temperature=0.25,
    final_sharpen_temperature=0.25,
    me_max_weight=1.0,
    use_sinkhorn=True,
    sinkhorn_iters=3,
    entropy_weight=0.0,  # the config sets use_ent: true with ent_weight: 0.0
    num_prototypes=1024,
    head_hidden_dim=2048,
    head_output_dim=256,
    head_batch_norm=True,
    global_size=224,
    focal_size=96,
    num_focal_views=10,
    global_scale=(0.3, 1.0),
    focal_scale=(0.05, 0.3),
    color_jitter_strength=0.5,
    augmentation={},
)
RECIPE_KEYS = tuple(_VITS16_CONFIG)

# The paper describes the loss options for the method as a whole, not per model.
_LOSS_OPTIONS = ("use_sinkhorn", "sinkhorn_iters", "entropy_weight", "final_sharpen_temperature")


def _paper_recipe(preset, architecture, mask_ratio, epochs, unstated=()):
    config = dict(_VITS16_CONFIG, preset=preset, mask_ratio=mask_ratio, epochs=epochs)
    config.update(architecture)
    return {
        "source": "paper (arXiv 2204.07141) appendix; epochs from the authors' README",
        "unstated": tuple(_LOSS_OPTIONS) + tuple(unstated),
        "config": config,
    }


_BASE = dict(hidden_dim=768, num_layers=12, num_heads=12, intermediate_dim=3072)
_LARGE = dict(hidden_dim=1024, num_layers=24, num_heads=16, intermediate_dim=4096)

MSN_RECIPES = {
    "msn_vits16": {
        "source": "facebookresearch/msn configs/pretrain/msn_vits16.yaml",
        "unstated": (),
        "config": dict(_VITS16_CONFIG),
    },
    "msn_vitb16": _paper_recipe("vit_msn_base", dict(_BASE, patch_size=16), 0.3, 600),
    # The paper gives no masking ratio for ViT-L/16: vits16's is taken.
    "msn_vitl16": _paper_recipe(
        "vit_msn_large", dict(_LARGE, patch_size=16), 0.15, 600, unstated=("mask_ratio",)
    ),
    "msn_vitb4": _paper_recipe("vit_msn_base_4", dict(_BASE, patch_size=4), 0.7, 300),
    "msn_vitl7": _paper_recipe("vit_msn_large_7", dict(_LARGE, patch_size=7), 0.7, 200),
}


def recipe_names():
    """Names of the recipes, in release order.

    Example:
    >>> recipe_names()
    ('msn_vits16', 'msn_vitb16', 'msn_vitl16', 'msn_vitb4', 'msn_vitl7')
    """
    return tuple(MSN_RECIPES)


def get_recipe(recipe="msn_vits16", **overrides):
    """A recipe's config dict (a copy), with ``overrides`` applied and checked.

    Args:
        recipe: a name from :func:`recipe_names`, or a config dict (e.g. one returned
            before) to check and override.
        **overrides: new values for recipe keys (see the module docstring).

    Raises:
        ValueError: an unknown name or key, a missing key, or a value out of range.

    Example:
    >>> config = get_recipe("msn_vitb16", epochs=10, warmup_epochs=1)
    >>> config["mask_ratio"], config["epochs"], config["use_sinkhorn"]
    (0.3, 10, True)
    """
    if isinstance(recipe, str):
        if recipe not in MSN_RECIPES:
            raise ValueError(
                f"Unknown MSN recipe {recipe!r}; known recipes: {', '.join(MSN_RECIPES)}."
            )
        config = copy.deepcopy(MSN_RECIPES[recipe]["config"])
    elif isinstance(recipe, dict):
        config = copy.deepcopy(recipe)
    else:
        raise ValueError(
            f"`recipe` must be a recipe name or a config dict; got {type(recipe).__name__}."
        )
    unknown = sorted(set(overrides) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"Unknown MSN recipe keys {unknown}; known keys: {list(RECIPE_KEYS)}.")
    config.update(copy.deepcopy(overrides))
    check_recipe(config)
    return config


def check_recipe(config):
    """Check a recipe config dict: every key present, none unknown, values in range."""
    missing = sorted(set(RECIPE_KEYS) - set(config))
    unknown = sorted(set(config) - set(RECIPE_KEYS))
    if missing or unknown:
        raise ValueError(
            f"An MSN recipe needs exactly the keys {list(RECIPE_KEYS)}: missing "
            f"{missing or 'none'}, unknown {unknown or 'none'}."
        )
    positive_ints = (
        "patch_size",
        "hidden_dim",
        "num_layers",
        "num_heads",
        "intermediate_dim",
        "epochs",
        "batch_size",
        "num_prototypes",
        "head_hidden_dim",
        "head_output_dim",
        "global_size",
        "focal_size",
    )
    for key in positive_ints:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"Recipe key {key!r} must be a positive int; got {value!r}.")
    for key in ("num_focal_views", "sinkhorn_iters"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"Recipe key {key!r} must be an int >= 0; got {value!r}.")
    warmup = config["warmup_epochs"]
    if (
        not isinstance(warmup, numbers.Real)
        or isinstance(warmup, bool)
        or not 0 <= warmup < config["epochs"]
    ):
        raise ValueError(
            f"The recipe warms up for {warmup!r} epochs of a {config['epochs']}-epoch run; "
            "`warmup_epochs` must be >= 0 and below `epochs` (pass a smaller "
            "warmup_epochs for a shorter run)."
        )
    if not 0 <= config["mask_ratio"] < 1:
        raise ValueError(f"`mask_ratio` must be in [0, 1); got {config['mask_ratio']!r}.")
    if not isinstance(config["augmentation"], dict):
        raise ValueError(
            "Recipe key 'augmentation' must be a dict of MSNAugmentation arguments; got "
            f"{type(config['augmentation']).__name__}."
        )
    if config["preset"] is not None and not isinstance(config["preset"], str):
        raise ValueError(
            f"Recipe key 'preset' must be a preset name or None; got {config['preset']!r}."
        )
    return config


def backbone_kwargs(config):
    """ViTMSNBackbone config of a recipe's architecture (for training from scratch),
    ``image_shape`` as (height, width, channels): build with ``from_config``."""
    return dict(
        image_shape=(config["global_size"], config["global_size"], 3),
        patch_size=config["patch_size"],
        hidden_dim=config["hidden_dim"],
        num_layers=config["num_layers"],
        num_heads=config["num_heads"],
        intermediate_dim=config["intermediate_dim"],
        layer_norm_epsilon=1e-6,
        qkv_bias=True,
        hidden_act="gelu",
    )


_PRETRAINER_KEYS = (
    "mask_ratio",
    "temperature",
    "sharpen_temperature",
    "final_sharpen_temperature",
    "me_max_weight",
    "use_sinkhorn",
    "sinkhorn_iters",
    "entropy_weight",
    "ema_momentum",
    "final_ema_momentum",
    "head_hidden_dim",
    "head_output_dim",
    "head_batch_norm",
    "num_prototypes",
    "learning_rate",
    "start_learning_rate",
    "final_learning_rate",
    "weight_decay",
    "final_weight_decay",
    "gradient_clip_norm",
    "ipe_scale",
)


def pretrainer_kwargs(config, steps_per_epoch=None):
    """MSNPretrainer arguments of a recipe; with ``steps_per_epoch`` also the run length
    (``total_steps``) and the warm-up in steps (``int(warmup_epochs * steps_per_epoch)``,
    as the original)."""
    kwargs = {key: config[key] for key in _PRETRAINER_KEYS}
    if steps_per_epoch is not None:
        if (
            isinstance(steps_per_epoch, bool)
            or int(steps_per_epoch) != steps_per_epoch
            or steps_per_epoch < 1
        ):
            raise ValueError(f"`steps_per_epoch` must be a positive int; got {steps_per_epoch!r}.")
        kwargs["total_steps"] = int(config["epochs"] * steps_per_epoch)
        kwargs["warmup_steps"] = int(config["warmup_epochs"] * steps_per_epoch)
    return kwargs


def augmentation_kwargs(config):
    """MSNAugmentation arguments of a recipe."""
    s = config["color_jitter_strength"]
    kwargs = dict(
        global_size=config["global_size"],
        focal_size=config["focal_size"],
        num_focal_views=config["num_focal_views"],
        global_scale=tuple(config["global_scale"]),
        focal_scale=tuple(config["focal_scale"]),
        color_jitter=None if not s else (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
    )
    kwargs.update(config["augmentation"])
    return kwargs
