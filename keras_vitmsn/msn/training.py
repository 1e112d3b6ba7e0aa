"""One function builds an MSN training run from a recipe: views, dataset, pretrainer,
optimizer. ``keras-vitmsn pretrain`` and the MSN demo both use it."""

import dataclasses
import os

import keras
import numpy as np

from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.msn import recipes
from keras_vitmsn.msn.augment import MSNAugmentation
from keras_vitmsn.msn.augment import list_image_files
from keras_vitmsn.msn.augment import msn_multiview_dataset
from keras_vitmsn.msn.pretrainer import MSNPretrainer


@dataclasses.dataclass
class MSNTraining:
    """What :func:`build_msn_training` returns: call :meth:`fit`, then
    ``pretrainer.save_to_preset(...)``."""

    pretrainer: MSNPretrainer
    dataset: object  # a repeating tf.data.Dataset of view batches
    augmentation: MSNAugmentation
    config: dict  # the recipe as run (views sized for the encoder)
    num_images: int
    batch_size: int
    steps_per_epoch: int

    @property
    def total_steps(self):
        return self.steps_per_epoch * self.config["epochs"]

    def fit(self, **kwargs):
        """``pretrainer.fit`` up to the recipe's epochs (``**kwargs``: verbose, callbacks,
        ...). A restored run starts at the epoch its optimizer step has reached, as the
        original: ``epochs`` is the length of the whole run."""
        kwargs.setdefault("epochs", self.config["epochs"])
        step = int(keras.ops.convert_to_numpy(self.pretrainer.optimizer.iterations))
        kwargs.setdefault("initial_epoch", step // self.steps_per_epoch)
        return self.pretrainer.fit(
            self.dataset, steps_per_epoch=self.steps_per_epoch, shuffle=False, **kwargs
        )


def build_msn_training(
    data,
    recipe="msn_vits16",
    backbone_or_preset=None,
    load_weights=True,
    restore_optimizer=False,
    seed=0,
    skip_bad_images=False,
    **overrides,
):
    """Views, dataset, pretrainer and optimizer of an MSN run, from a recipe.

    Args:
        data: a folder of images (searched recursively; labels unused) or a NumPy
            array ``(N, H, W, C)`` (see :func:`msn_multiview_dataset`).
        recipe: a recipe name (:func:`keras_vitmsn.msn.recipes.recipe_names`) or a
            complete recipe config dict.
        backbone_or_preset: None (from scratch, the recipe's architecture), a
            :class:`ViTMSNBackbone`, or a preset / checkpoint to continue from.
        load_weights: with a preset: False keeps its architecture, random weights.
        restore_optimizer: continue the optimizer of a checkpoint or saved preset
            (:meth:`MSNPretrainer.from_preset`); else compile a new one.
        seed: seeds the masks, the data order and the views.
        skip_bad_images: a folder's unreadable images are dropped with a warning
            instead of an error naming them (see :mod:`keras_vitmsn.images.image_files`).
        **overrides: recipe keys, e.g. ``epochs=100, batch_size=64``. With a preset
            or backbone the views take the encoder's image size (unless
            ``global_size`` is given: the preset is then loaded at that size) and
            the focal views keep the recipe's focal/global ratio, on the patch grid
            (unless ``focal_size`` is given). ``batch_size`` is capped at the
            number of images.

    Returns:
        :class:`MSNTraining`.

    Example:
    >>> import numpy as np
    >>> images = np.random.default_rng(0).integers(0, 256, (8, 24, 24, 3), dtype="uint8")
    >>> run = build_msn_training(
    ...     images, epochs=2, warmup_epochs=1, batch_size=4, global_size=16, focal_size=8,
    ...     num_focal_views=1, patch_size=4, hidden_dim=16, num_layers=1, num_heads=2,
    ...     intermediate_dim=32, head_hidden_dim=16, head_output_dim=8, num_prototypes=4)
    >>> run.steps_per_epoch, run.total_steps, run.pretrainer.compiled
    (2, 4, True)
    """
    num_images = _count_images(data, skip_bad_images)
    config = recipes.get_recipe(recipe, **overrides)
    batch_size = min(config["batch_size"], num_images)
    steps_per_epoch = num_images // batch_size
    preset_kwargs = {}
    if isinstance(backbone_or_preset, ViTMSNBackbone):
        size = (config["global_size"],) * 2
        if "global_size" in overrides and backbone_or_preset.image_shape[:2] != size:
            raise ValueError(
                f"global_size={config['global_size']} but the given backbone takes "
                f"{backbone_or_preset.image_shape[:2]} images."
            )
    elif backbone_or_preset is not None:
        preset_kwargs["restore_optimizer"] = restore_optimizer
        if "global_size" in overrides:
            preset_kwargs["image_shape"] = (config["global_size"], config["global_size"], 3)
    elif restore_optimizer:
        raise ValueError("`restore_optimizer=True` needs a preset or checkpoint to restore from.")
    pretrainer = MSNPretrainer.from_recipe(
        config,
        backbone_or_preset,
        steps_per_epoch=steps_per_epoch,
        load_weights=load_weights,
        seed=seed,
        **preset_kwargs,
    )
    config = _views_for_encoder(config, pretrainer.encoder, overrides)
    augmentation = MSNAugmentation(**recipes.augmentation_kwargs(config))
    dataset = msn_multiview_dataset(
        data,
        batch_size,
        augmentation=augmentation,
        seed=seed,
        repeat=True,
        skip_bad_images=skip_bad_images,
    )
    if not pretrainer.compiled:
        pretrainer.compile()
    return MSNTraining(
        pretrainer, dataset, augmentation, config, num_images, batch_size, steps_per_epoch
    )


def _count_images(data, skip_bad_images=False):
    if isinstance(data, (str, os.PathLike)):
        return len(list_image_files(data, skip_bad_images=skip_bad_images))
    if isinstance(data, np.ndarray):
        if data.ndim != 4 or not len(data):
            raise ValueError(
                f"Image arrays must be (N, H, W, C) with N >= 1; got shape {data.shape}."
            )
        return len(data)
    raise ValueError(
        "`data` must be a folder of images or a NumPy array (N, H, W, C); got "
        f"{type(data).__name__}."
    )


def _views_for_encoder(config, encoder, overrides):
    height, width = encoder.image_shape[:2]
    if height != width:
        raise ValueError(f"MSN views are square; the encoder takes {height}x{width} images.")
    config = dict(config)
    patch = encoder.patch_size
    if height != config["global_size"]:
        if "focal_size" not in overrides:
            ratio = config["focal_size"] / config["global_size"]
            config["focal_size"] = max(patch, round(height * ratio / patch) * patch)
        config["global_size"] = height
    if config["num_focal_views"] and config["focal_size"] % patch:
        raise ValueError(
            f"focal_size {config['focal_size']} must be a multiple of the patch size {patch}."
        )
    return config
