"""One function builds an MSN training run from a recipe: views, dataset, pretrainer,
optimizer. ``keras-vitmsn pretrain`` and the MSN demo both use it."""

import dataclasses
import json
import os

import keras
import numpy as np

from keras_vitmsn.backend import keras_internals
from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.models.backbone import image_shape_for
from keras_vitmsn.msn import recipes
from keras_vitmsn.msn.augment import MSNAugmentation
from keras_vitmsn.msn.augment import list_image_files
from keras_vitmsn.msn.augment import msn_multiview_dataset
from keras_vitmsn.msn.checkpoints import current_step
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

    checkpoints: object = None  # RunCheckpoints, with checkpoint_dir
    run_info: dict = None  # what run.json records of this run
    resumed_from: dict = None  # {"epoch", "step", "path"} of the checkpoint continued
    # (start_batch=0) -> a new pipeline, the same stream as `dataset` from that batch
    make_dataset: object = None
    checkpoint_every_minutes: float = None
    max_checkpoint_overhead: float = None

    @property
    def step(self):
        """Optimizer steps taken so far (a resumed run starts at its checkpoint's)."""
        return current_step(self.pretrainer)

    def fit(self, handle_signals=False, **kwargs):
        """``pretrainer.fit`` up to the recipe's epochs (``**kwargs``: verbose, callbacks,
        ``epochs`` to stop earlier, ...). A restored run starts at the step its
        optimizer has reached, on the batch an uninterrupted run would train on there
        (the pipeline starts there, ``start_batch``, without rendering the batches
        before it), so it ends with the same weights.

        With ``checkpoint_dir`` (:func:`build_msn_training`), a checkpoint is written
        at the end of every epoch (and every ``checkpoint_every_minutes``), one line
        per epoch is printed to stderr and ``metrics.csv`` / ``msn_curves.png`` are
        written there (:mod:`keras_vitmsn.msn.logs`).

        Args:
            handle_signals: SIGINT (Ctrl-C) and SIGTERM then stop training after the
                step in flight, write a checkpoint (with ``checkpoint_dir``) and raise
                :class:`keras_vitmsn.msn.checkpoints.TrainingInterrupted`; a second
                signal ends the process at once. Main thread only.

        Returns:
            a ``keras.callbacks.History`` of the epochs run in this call.
        """
        from keras_vitmsn.msn import checkpoints as ckpt
        from keras_vitmsn.msn.logs import MSNRunLog

        epochs = kwargs.pop("epochs", self.config["epochs"])
        kwargs.pop("initial_epoch", None)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        spe = self.steps_per_epoch
        saver = None
        if self.checkpoints is not None:
            saver = ckpt.CheckpointEveryEpoch(
                self.checkpoints,
                {**self.run_info, "epochs": self.config["epochs"]},
                spe,
                every_minutes=self.checkpoint_every_minutes,
                max_overhead=self.max_checkpoint_overhead,
            )
            callbacks.append(
                MSNRunLog(
                    self.checkpoints.directory,
                    spe,
                    self.config["epochs"],
                    self.batch_size,
                    resume_step=self.step,
                )
            )
            callbacks.append(saver)
        stopper = None
        if handle_signals:
            stopper = ckpt.StopOnSignal()
            if stopper.install():
                # Last: a signal that lands during another callback's batch end still
                # stops after this step.
                callbacks.append(stopper)
            else:
                stopper = None
        merged = {}
        history = None
        try:
            step = self.step
            while step < epochs * spe:
                # An interrupted epoch is finished first, then the whole epochs.
                epoch, offset = divmod(step, spe)
                history = self.pretrainer.fit(
                    self._dataset_at(step),
                    steps_per_epoch=spe - offset if offset else spe,
                    epochs=epoch + 1 if offset else epochs,
                    initial_epoch=epoch,
                    shuffle=False,
                    callbacks=callbacks,
                    **kwargs,
                )
                for key, values in history.history.items():
                    merged.setdefault(key, []).extend(values)
                new_step = self.step
                if self.pretrainer.stop_training or new_step == step:
                    break
                step = new_step
        finally:
            if stopper is not None:
                stopper.uninstall()
        if stopper is not None and stopper.signum is not None:
            path = saver.save() if saver is not None else None
            raise ckpt.TrainingInterrupted(stopper.signum, self.step // spe, self.step, path)
        if history is None:
            history = keras.callbacks.History()
        history.history = merged
        return history

    def _dataset_at(self, step):
        # A pipeline's shuffle order and views change with each new iteration of it:
        # each fit gets a pipeline not iterated before, so that batch k of the run is
        # the same whichever fit call (and process) trains on it. A later step skips
        # the (image, seed) pairs before it in the pipeline, unrendered.
        used = getattr(self, "_dataset_used", False)
        self._dataset_used = True
        if step == 0 and not used:
            return self.dataset
        return self.make_dataset(start_batch=step)


def build_msn_training(
    data,
    recipe="msn_vits16",
    backbone_or_preset=None,
    load_weights=True,
    restore_optimizer=False,
    seed=0,
    skip_bad_images=False,
    checkpoint_dir=None,
    restart=False,
    keep_checkpoints=2,
    checkpoint_every_minutes=None,
    max_checkpoint_overhead=0.05,
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
        checkpoint_dir: None, or the run's output folder: :meth:`MSNTraining.fit`
            then writes a checkpoint there at every epoch
            (:mod:`keras_vitmsn.msn.checkpoints`) and its logs, and a run built again
            with the same folder continues from the newest checkpoint (it must
            repeat the data, recipe, overrides, preset and seed; else ValueError
            naming the differences). ``resumed_from`` then says where it continues.
        restart: with ``checkpoint_dir``: delete its checkpoints and start over.
        keep_checkpoints: how many checkpoints to keep (the newest).
        checkpoint_every_minutes: also write one every this many minutes within an
            epoch (None: at epoch ends only).
        max_checkpoint_overhead: the largest share of the run's time spent writing
            checkpoints: an epoch end comes sooner after the last checkpoint than
            its writing time / this share is skipped (epochs of seconds; the last
            epoch and an interrupted one are always written). None: every epoch.

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
    run_info = checkpoints = resumed_from = None
    if checkpoint_dir is not None:
        from keras_vitmsn.msn import checkpoints as ckpt

        run_info = _run_info(
            data, num_images, batch_size, seed, backbone_or_preset, load_weights, config
        )
        run_info["steps_per_epoch"] = steps_per_epoch
        checkpoints = ckpt.RunCheckpoints(checkpoint_dir, keep=keep_checkpoints)
        if restart:
            checkpoints.clear()
        checkpoints.remove_leftovers()
        latest = checkpoints.latest()
        if latest is not None:
            path, saved = latest
            ckpt.check_same_run(saved, run_info, checkpoint_dir)
            resumed_from = {"epoch": saved["epoch"], "step": saved["step"], "path": path}
            # The checkpoint holds the whole state: the run goes on from it.
            backbone_or_preset = ckpt.preset_of(path)
            load_weights = restore_optimizer = True
    preset_kwargs = {}
    if isinstance(backbone_or_preset, ViTMSNBackbone):
        size = (config["global_size"],) * 2
        if "global_size" in overrides and backbone_or_preset.image_size != size:
            raise ValueError(
                f"global_size={config['global_size']} but the given backbone takes "
                f"{backbone_or_preset.image_size} images."
            )
    elif backbone_or_preset is not None:
        preset_kwargs["restore_optimizer"] = restore_optimizer
        if "global_size" in overrides:
            side = config["global_size"]
            preset_kwargs["image_shape"] = image_shape_for(side, side)
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

    def make_dataset(start_batch=0):
        return msn_multiview_dataset(
            data,
            batch_size,
            augmentation=augmentation,
            seed=seed,
            repeat=True,
            skip_bad_images=skip_bad_images,
            start_batch=start_batch,
        )

    dataset = make_dataset()
    if not pretrainer.compiled:
        pretrainer.compile()
    _build(pretrainer, dataset.element_spec)
    return MSNTraining(
        pretrainer,
        dataset,
        augmentation,
        config,
        num_images,
        batch_size,
        steps_per_epoch,
        checkpoints=checkpoints,
        run_info=run_info,
        resumed_from=resumed_from,
        make_dataset=make_dataset,
        checkpoint_every_minutes=checkpoint_every_minutes,
        max_checkpoint_overhead=max_checkpoint_overhead,
    )


def _build(pretrainer, element_spec):
    """Build the pretrainer and its optimizer from the pipeline's element spec.

    ``fit`` on an unbuilt model takes its first batch to build it, and then trains
    from the second: built here, every run (fresh or resumed) trains on batch k at
    step k.
    """
    layers = keras_internals.all_layers(pretrainer)
    if not pretrainer.built or not all(layer.built for layer in layers):
        symbolic = {
            key: keras.KerasTensor(tuple(spec.shape), spec.dtype.name)
            for key, spec in element_spec.items()
        }
        pretrainer(symbolic, training=False)
    if not pretrainer.optimizer.built:
        pretrainer.optimizer.build(pretrainer.trainable_variables)


def _run_info(data, num_images, batch_size, seed, backbone_or_preset, load_weights, config):
    if isinstance(data, (str, os.PathLike)):
        source = os.path.abspath(os.fspath(data))
    else:
        source = f"array of shape {tuple(int(n) for n in data.shape)}"
    if backbone_or_preset is None:
        preset = None
    elif isinstance(backbone_or_preset, ViTMSNBackbone):
        preset = f"backbone {backbone_or_preset.name}"
    else:
        preset = os.fspath(backbone_or_preset)
        if os.path.exists(preset):
            preset = os.path.abspath(preset)
        if not load_weights:
            preset += " (architecture only)"
    return {
        "data": source,
        "num_images": int(num_images),
        "batch_size": int(batch_size),
        "seed": seed,
        "preset": preset,
        # JSON's view of it, as run.json stores it (tuples become lists).
        "recipe": json.loads(json.dumps(config)),
    }


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
    height, width = encoder.image_size
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
