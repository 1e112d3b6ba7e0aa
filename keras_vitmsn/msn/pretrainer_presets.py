"""``MSNPretrainer``'s preset methods: continue from a preset or checkpoint, build from a
released recipe, save the target encoder and the run (see :mod:`keras_vitmsn.msn.resume`
and :mod:`keras_vitmsn.msn.recipes`)."""

from keras_vitmsn.msn import recipes
from keras_vitmsn.msn import resume


class PretrainerPresetsMixin:
    """``from_preset``, ``from_recipe`` and ``save_to_preset`` for :class:`MSNPretrainer`."""

    @classmethod
    def from_preset(cls, preset, load_weights=True, restore_optimizer=False, optimizer=None,
                    **kwargs):
        """A pretrainer that continues from released or saved weights.

        - An original MSN ``.pth.tar`` (``module.`` prefixes or not): the online
          encoder and head from its ``encoder`` (from ``target_encoder`` too when the
          file has no ``encoder``), the EMA target encoder and head from
          ``target_encoder``, the prototypes.
        - A preset written by :meth:`save_to_preset`: the target from the backbone
          preset and ``msn_head.weights.h5``; with its training state (the default)
          also the online encoder and head, the schedule position, the mask seed and
          the pretrainer's settings (``**kwargs`` override them), so that training
          continues exactly where it stopped.
        - Any other preset (a converted ``.pth.tar`` directory, a Hugging Face or
          built-in preset): the encoder and its EMA copy from
          ``ViTMSNBackbone.from_preset``; head and prototypes from
          ``msn_head.weights.h5`` when present, else new.

        Args:
            preset: a preset name, ``hf://`` handle, directory or checkpoint file.
            load_weights: False builds the architecture with random weights, CLS
                token and position table drawn as the original MSN does
                (:func:`keras_vitmsn.msn.init_embeddings_like_msn`).
            restore_optimizer: also restore the optimizer's state (this compiles the
                pretrainer: do not compile it again): from an original checkpoint
                its AdamW moments and step, so the next step is the one the original
                would take (with the run's ``total_steps``, warm-up and
                ``ipe_scale=1.25``); from our presets every optimizer variable. The
                schedules continue from that step (``ema_steps`` too).
            optimizer: the optimizer to compile with when ``restore_optimizer``
                (default: the pretrainer's recipe, :func:`msn_optimizer`; a run
                trained with another optimizer must pass it again).
            **kwargs: ``ViTMSNBackbone.from_preset`` overrides (e.g. ``num_heads``,
                ``image_shape``, ``dtype``) and other ``MSNPretrainer`` arguments.

        Example (not run: needs a checkpoint):
            pretrainer = MSNPretrainer.from_preset(
                "vits16_800ep.pth.tar", total_steps=800 * 1251, ipe_scale=1.25,
                restore_optimizer=True)
        """
        return resume.from_preset(
            cls, preset, load_weights=load_weights, restore_optimizer=restore_optimizer,
            optimizer=optimizer, **kwargs
        )

    @classmethod
    def from_recipe(cls, recipe="msn_vits16", backbone_or_preset=None, steps_per_epoch=None,
                    load_weights=True, **overrides):
        """A pretrainer configured by a released recipe (:mod:`keras_vitmsn.msn.recipes`).

        Args:
            recipe: a recipe name (``"msn_vits16"``, ``"msn_vitb16"``, ...) or a
                recipe config dict (:func:`keras_vitmsn.msn.get_recipe`).
            backbone_or_preset: None to pretrain from scratch with the recipe's
                architecture (random init, ``global_size`` pixels; CLS token and
                position table drawn as the original MSN:
                :func:`keras_vitmsn.msn.init_embeddings_like_msn`); a
                :class:`ViTMSNBackbone`; or a preset / checkpoint to continue from
                (:meth:`from_preset`). A given backbone or preset keeps its own
                architecture; the recipe sets everything else.
            steps_per_epoch: optimizer steps per epoch of your data; with it the
                schedules span ``epochs * steps_per_epoch`` steps and warm up for
                ``int(warmup_epochs * steps_per_epoch)`` (needed by the default
                ``compile()``).
            load_weights: with a preset: False for its architecture, random weights
                (started as the original MSN starts, like ``backbone_or_preset=None``).
            **overrides: recipe keys (e.g. ``epochs=100``, ``mask_ratio=0.3``) and
                other :class:`MSNPretrainer` / :meth:`from_preset` arguments (``seed``,
                ``restore_optimizer``, ``num_heads``, ...).

        Example:
        >>> from keras_vitmsn.msn import MSNPretrainer
        >>> pretrainer = MSNPretrainer.from_recipe(
        ...     "msn_vits16", steps_per_epoch=10, epochs=4, warmup_epochs=1, global_size=32,
        ...     patch_size=16, hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64,
        ...     head_hidden_dim=32, head_output_dim=16, num_prototypes=8)
        >>> pretrainer.total_steps, pretrainer.warmup_steps, pretrainer.use_sinkhorn
        (40, 10, True)
        """
        return recipes.build_pretrainer(
            cls, recipe, backbone_or_preset, steps_per_epoch, load_weights, overrides
        )

    def save_to_preset(self, preset_dir, training_state=True):
        """Export the target encoder as a normal backbone preset, and the training state.

        Writes ``config.json`` + ``model.weights.h5`` (the EMA target encoder, loadable
        with ``ViTMSNBackbone.from_preset`` / ``ViTMSNClassifier.from_preset``, usable
        by ``keras-vitmsn finetune`` and ``lowshot``), ``image_converter.json`` (resize
        to the encoder's size, ImageNet normalisation), ``msn_head.weights.h5`` (target
        head + prototypes) and, with ``training_state``, ``msn_training_state.h5``
        (online encoder and head, schedule position, mask seed, settings and optimizer
        state: :meth:`from_preset` then continues the run exactly; about twice the
        encoder's size more, three times with the optimizer).
        """
        resume.save_to_preset(self, preset_dir, training_state=training_state)
