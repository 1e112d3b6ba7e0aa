"""``MSNPretrainer``: Masked Siamese Networks pretraining as a Keras model.

One training step, as in the paper (Assran et al. 2022, arXiv 2204.07141, Section 3)
and the authors' ``src/msn_train.py`` (facebookresearch/msn):

1. the ``"target"`` view goes unmasked through the EMA target encoder and target head
   (no gradient) -> ``h``;
2. the ``"anchor"`` view goes through the encoder with a fraction ``mask_ratio`` of its
   patch tokens dropped, then the projection head; the ``"focal"`` views go through
   them unmasked at their own resolution (interpolated position embeddings), as the
   original masks only the global anchor view. The head runs once per resolution
   group, as the original's encoder forward over a list of crops, so its BatchNorm
   normalises each group with that group's statistics -> ``z`` (view-major: the
   global anchor view first);
3. ``loss = msn_loss(z, h, prototypes)``; AdamW updates encoder, head and prototypes
   (gradients of encoder and head clipped to a global norm, not the prototypes');
4. target <- m * target + (1 - m) * anchor for every encoder and head parameter, ``m``
   rising linearly from ``ema_momentum`` to ``final_ema_momentum`` (BatchNorm moving
   statistics are not averaged: each head updates its own in its forward, as torch).

Step 4 runs inside the compiled train step, on every backend (JAX's stateless step
threads the new target values through the state it returns), so plain ``compile()`` +
``fit()`` is all it takes. On several devices (JAX's ``DataParallel``, a TensorFlow
``tf.distribute`` strategy) the masks, the loss's batch statistics, the head's BatchNorm
and the gradient clipping are those of the global batch, as on one device.
``docs/msn.md`` lists what still differs from the original.
"""

import os

import keras
from keras import ops

from keras_vitmsn import backend
from keras_vitmsn.backend.replicas import current as current_replicas
from keras_vitmsn.backend.replicas import global_rows
from keras_vitmsn.backend.replicas import local_rows
from keras_vitmsn.conversion.msn_checkpoint import is_msn_checkpoint_path
from keras_vitmsn.images.converter import ViTMSNImageConverter
from keras_vitmsn.layers.core import spatial_shape
from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.models.optimizer import ScheduledAdamW
from keras_vitmsn.msn import recipes
from keras_vitmsn.msn import resume
from keras_vitmsn.msn.head import MSNProjectionHead
from keras_vitmsn.msn.head import MSNPrototypes
from keras_vitmsn.msn.head import head_and_prototypes_from_state
from keras_vitmsn.msn.loss import msn_loss
from keras_vitmsn.msn.masking import random_patch_keep_indices
from keras_vitmsn.msn.schedules import LinearSchedule
from keras_vitmsn.msn.schedules import msn_learning_rate
from keras_vitmsn.msn.schedules import msn_weight_decay
from keras_vitmsn.msn.schedules import scaled_steps
from keras_vitmsn.presets import file_format
from keras_vitmsn.presets.file_format import MSN_HEAD_FILE
from keras_vitmsn.presets.file_format import MSN_TRAINING_STATE_FILE
from keras_vitmsn.presets.mixin import save_preset_directory

# Logged every step besides the total loss (see msn_loss for their meaning).
LOGGED_PARTS = (
    "ce",
    "me_max",
    "prototype_entropy",
    "prototype_perplexity",
    "anchor_entropy",
    "target_max",
    "num_target_prototypes",
)
VIEW_KEYS = ("target", "anchor", "focal")
_SEED_STATE_KEY = "mask_seed_state"
_MOVING_STATISTICS = ("moving_mean", "moving_variance")
# The constructor's settings (besides layers and name) and their types; None stays None.
_SETTINGS = dict(
    mask_ratio=float,
    temperature=float,
    sharpen_temperature=float,
    final_sharpen_temperature=float,
    me_max_weight=float,
    use_sinkhorn=bool,
    sinkhorn_iters=int,
    entropy_weight=float,
    ema_momentum=float,
    final_ema_momentum=float,
    total_steps=int,
    ipe_scale=float,
    learning_rate=float,
    start_learning_rate=float,
    final_learning_rate=float,
    warmup_steps=int,
    weight_decay=float,
    final_weight_decay=float,
    gradient_clip_norm=float,
    head_hidden_dim=int,
    head_output_dim=int,
    head_batch_norm=bool,
    num_prototypes=int,
    seed=lambda s: s,
)
# The original's trunc_normal_(std=0.02) start of the CLS token and position table
# (src/deit.py); its bounds are absolute (a=-2, b=2: 100 standard deviations), unlike
# Keras' TruncatedNormal, which cuts at 2 standard deviations.
MSN_EMBEDDING_STD = 0.02
MSN_TRUNCATION = 2.0


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class MSNPretrainer(keras.Model):
    """Masked Siamese Networks pretraining of a :class:`ViTMSNBackbone`.

    Train it with ``compile()`` and ``fit()`` on batches of views
    ``{"target": (B, H, W, C), "anchor": (B, H, W, C), "focal": (B, M, h, w, C)}``
    (``"focal"`` optional; :func:`keras_vitmsn.msn.msn_multiview_dataset` makes them),
    then export the target encoder with :meth:`save_to_preset`.

    Every default is the ``msn_vits16`` recipe (the authors' released config, see
    :mod:`keras_vitmsn.msn.recipes`); :meth:`from_recipe` builds one from any recipe.

    Args:
        encoder: the :class:`ViTMSNBackbone` to pretrain (the anchor encoder).
        projection_head: an :class:`MSNProjectionHead`, or None for a new one
            (``head_hidden_dim``, ``head_output_dim``, ``head_batch_norm``).
        prototypes: an :class:`MSNPrototypes`, or None for ``num_prototypes`` new ones.
        target_encoder: optional backbone for the EMA target (same architecture);
            None = a copy of ``encoder`` (the original starts the target as a copy).
            The target head always starts as a copy of ``projection_head``.
        mask_ratio: fraction of the anchor view's patches dropped (0.15 for S/16, 0.3
            for B/16, 0.7 for B/4 and L/7).
        temperature, me_max_weight, use_sinkhorn, sinkhorn_iters, entropy_weight: the
            loss's arguments (:func:`msn_loss`).
        sharpen_temperature, final_sharpen_temperature: the targets' sharpening T,
            linear from the first to the second over the schedule (None: constant).
        ema_momentum, final_ema_momentum: the target's momentum, linear from the first
            to the second over the schedule (constant ``ema_momentum`` when
            ``total_steps`` is None).
        total_steps: optimizer steps of the run; sets the schedules and lets
            ``compile()`` build the default optimizer (:func:`msn_optimizer`).
        ipe_scale: the schedules span ``ipe_scale * total_steps`` steps (1.0; the
            original stretched them by 1.25 and stopped at 80%: pass 1.25 to
            reproduce it).
        learning_rate, start_learning_rate, final_learning_rate, warmup_steps,
            weight_decay, final_weight_decay, gradient_clip_norm: the default
            optimizer's recipe (see :func:`msn_optimizer`; None start/final rates are
            ``learning_rate / 5`` and ``/ 1000``, None warm-up 15/800 of the run).
        head_hidden_dim, head_output_dim, head_batch_norm, num_prototypes: sizes of new
            heads and prototypes (2048, 256, with BatchNorm, 1024 as the paper).
        seed: int or None, seeds the random masks.

    Example:
    >>> import numpy as np, keras_vitmsn as kv
    >>> encoder = kv.ViTMSNBackbone(image_shape=(16, 16, 3), patch_size=4, hidden_dim=16,
    ...                             num_layers=1, num_heads=2, intermediate_dim=32)
    >>> pretrainer = kv.msn.MSNPretrainer(encoder, mask_ratio=0.5, total_steps=2,
    ...                                   head_hidden_dim=32, head_output_dim=8,
    ...                                   num_prototypes=10, seed=0)
    >>> pretrainer.compile()
    >>> rng = np.random.default_rng(0)
    >>> views = {"target": rng.normal(size=(4, 16, 16, 3)).astype("float32"),
    ...          "anchor": rng.normal(size=(4, 16, 16, 3)).astype("float32"),
    ...          "focal": rng.normal(size=(4, 2, 8, 8, 3)).astype("float32")}
    >>> history = pretrainer.fit(views, batch_size=4, epochs=2, verbose=0)
    >>> sorted(history.history)[:3]
    ['anchor_entropy', 'ce', 'loss']
    """

    def __init__(
        self,
        encoder,
        projection_head=None,
        prototypes=None,
        target_encoder=None,
        mask_ratio=0.15,
        temperature=0.1,
        sharpen_temperature=0.25,
        final_sharpen_temperature=None,
        me_max_weight=1.0,
        use_sinkhorn=True,
        sinkhorn_iters=3,
        entropy_weight=0.0,
        ema_momentum=0.996,
        final_ema_momentum=1.0,
        total_steps=None,
        ipe_scale=1.0,
        learning_rate=1e-3,
        start_learning_rate=None,
        final_learning_rate=None,
        warmup_steps=None,
        weight_decay=0.04,
        final_weight_decay=0.4,
        gradient_clip_norm=3.0,
        head_hidden_dim=2048,
        head_output_dim=256,
        head_batch_norm=True,
        num_prototypes=1024,
        seed=None,
        name="msn_pretrainer",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if not isinstance(encoder, ViTMSNBackbone):
            raise TypeError(f"`encoder` must be a ViTMSNBackbone; got {type(encoder).__name__}.")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be in [0, 1); got {mask_ratio!r}.")
        temperatures = (
            ("temperature", temperature),
            ("sharpen_temperature", sharpen_temperature),
            ("final_sharpen_temperature", final_sharpen_temperature),
        )
        for arg, value in temperatures:
            if value is not None and not value > 0:
                raise ValueError(f"`{arg}` must be > 0; got {value!r}.")
        if not 0.0 <= ema_momentum <= final_ema_momentum <= 1.0:
            raise ValueError(
                "Need 0 <= ema_momentum <= final_ema_momentum <= 1; got "
                f"{ema_momentum!r} and {final_ema_momentum!r}."
            )
        if total_steps is not None and (int(total_steps) != total_steps or total_steps < 1):
            raise ValueError(f"`total_steps` must be a positive int or None; got {total_steps!r}.")
        values = dict(locals())
        for key, convert in _SETTINGS.items():
            value = values[key]
            setattr(self, key, None if value is None else convert(value))
        # Checks ipe_scale (and total_steps) once, here.
        if self.total_steps is not None:
            scaled_steps(self.total_steps, self.ipe_scale)

        self.encoder = encoder
        if projection_head is None:
            projection_head = MSNProjectionHead(
                hidden_dim=self.head_hidden_dim,
                output_dim=self.head_output_dim,
                input_dim=encoder.hidden_dim,
                use_batch_norm=self.head_batch_norm,
                dtype=encoder.dtype_policy,
                name="projection_head",
            )
        elif not projection_head.built:
            projection_head.build((None, encoder.hidden_dim))
        if projection_head.input_dim != encoder.hidden_dim:
            raise ValueError(
                f"The projection head takes {projection_head.input_dim}-dimensional "
                f"features but the encoder outputs {encoder.hidden_dim}."
            )
        self.projection_head = projection_head
        if prototypes is None:
            prototypes = MSNPrototypes(
                num_prototypes=self.num_prototypes,
                dim=projection_head.output_dim,
                dtype=encoder.dtype_policy,
                name="prototypes",
            )
        if prototypes.dim != projection_head.output_dim:
            raise ValueError(
                f"The head outputs {projection_head.output_dim} features but the "
                f"prototypes have {prototypes.dim}."
            )
        self.prototypes = prototypes

        # The EMA teacher: frozen (no gradient, no weight decay); it starts as a copy.
        copy_encoder = target_encoder is None
        if copy_encoder:
            target_encoder = ViTMSNBackbone.from_config(
                {**encoder.get_config(), "name": f"target_{encoder.name}"}
            )
        elif target_encoder.get_config() | {"name": None} != encoder.get_config() | {"name": None}:
            raise ValueError("`target_encoder` must have the encoder's architecture (get_config).")
        self.target_encoder = target_encoder
        self.target_projection_head = MSNProjectionHead.from_config(
            {**projection_head.get_config(), "name": f"target_{projection_head.name}"}
        )
        self.target_encoder.trainable = False
        self.target_projection_head.trainable = False
        pairs = self._ema_pairs(include_encoder=copy_encoder, include_statistics=True)
        for source, target in pairs:
            # A copy: JAX would otherwise share (and donate twice) one buffer.
            target.assign(ops.copy(source))

        self.ema_steps = self.add_weight(
            shape=(), initializer="zeros", dtype="int32", trainable=False, name="ema_steps"
        )
        self.seed_generator = keras.random.SeedGenerator(seed, name="mask_seed_generator")
        self.part_trackers = [keras.metrics.Mean(name=part) for part in LOGGED_PARTS]

    # ----------------------------------------------------------------- forward
    def call(self, inputs, training=None):
        target, anchor, focal = self._views(inputs)
        layout = self.encoder.data_format

        # Anchor branch: the masked global view, then the unmasked focal views, each
        # resolution group through encoder AND head on its own (per-group BatchNorm
        # statistics, as the original's forward over a list of crop sizes).
        keep = None
        if self.mask_ratio > 0:
            keep = self._anchor_keep_indices(anchor, layout)
        masked = self._cls(self.encoder, anchor, training, patch_keep_indices=keep)
        anchors = [self.projection_head(masked, training=training)]
        num_views = 1
        if focal is not None:
            num_views += focal.shape[1]
            # (B, M, ...) -> (M * B, ...): view-major, as msn_loss expects.
            flat = ops.reshape(ops.swapaxes(focal, 0, 1), (-1,) + tuple(focal.shape[2:]))
            anchors.append(
                self.projection_head(self._cls(self.encoder, flat, training), training=training)
            )
        anchors = ops.concatenate(anchors, axis=0) if len(anchors) > 1 else anchors[0]

        # Target branch: EMA encoder, unmasked, no gradient; its head in torch's
        # training mode (batch statistics, its own moving statistics updated).
        targets = self.target_projection_head(
            self._cls(self.target_encoder, target, False),
            training=training,
            use_batch_statistics=True,
        )
        return msn_loss(
            anchors,
            ops.stop_gradient(targets),
            self.prototypes.prototypes,
            temperature=self.temperature,
            sharpen_temperature=self.current_sharpen_temperature(),
            me_max_weight=self.me_max_weight,
            use_sinkhorn=self.use_sinkhorn,
            sinkhorn_iters=self.sinkhorn_iters,
            entropy_weight=self.entropy_weight,
            num_anchor_views_per_target=num_views,
            replicas=current_replicas(),
        )

    def _anchor_keep_indices(self, anchor, layout):
        # Under tf.distribute every replica draws the masks of the whole global batch
        # from its copy of the (identical) seed state and keeps its own rows: the masks
        # of a single-device run with the same seed.
        replicas = current_replicas()
        local_batch = ops.shape(anchor)[0]
        keep = random_patch_keep_indices(
            global_rows(local_batch, replicas),
            self._num_patches(anchor.shape, layout),
            self.mask_ratio,
            seed=self.seed_generator,
        )
        return local_rows(keep, replicas, local_batch)

    def _views(self, inputs):
        if not isinstance(inputs, dict) or not {"target", "anchor"} <= set(inputs):
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(
                "MSNPretrainer takes a dict of views {'target': (B, H, W, C), 'anchor': "
                f"(B, H, W, C), 'focal': (B, M, h, w, C) (optional)}}; got {got}."
            )
        unknown = sorted(set(inputs) - set(VIEW_KEYS))
        if unknown:
            raise ValueError(f"Unknown view keys {unknown}; accepted: {list(VIEW_KEYS)}.")
        target, anchor, focal = (inputs.get(k) for k in VIEW_KEYS)
        for key, view, rank in (("target", target, 4), ("anchor", anchor, 4), ("focal", focal, 5)):
            if view is not None and len(view.shape) != rank:
                raise ValueError(
                    f"View {key!r} must have rank {rank} (batch{', views' if rank == 5 else ''}, "
                    f"image axes); got shape {tuple(view.shape)}."
                )
        return target, anchor, focal

    def _num_patches(self, shape, layout):
        height, width = spatial_shape(shape, layout)
        patch = self.encoder.patch_size
        return (height // patch) * (width // patch)

    def _cls(self, encoder, images, training, patch_keep_indices=None):
        resized = spatial_shape(images.shape, encoder.data_format) != encoder.image_size
        outputs = encoder(
            images,
            interpolate_pos_encoding=resized,
            patch_keep_indices=patch_keep_indices,
            training=training,
        )
        return outputs["last_hidden_state"][:, 0]

    # ---------------------------------------------- compile, loss, train step
    def compile(self, optimizer=None, exclude_from_weight_decay=True, **kwargs):
        """Compile with MSN's optimizer recipe unless another optimizer is given.

        Args:
            optimizer: None for :func:`msn_optimizer` with this pretrainer's recipe
                (``total_steps``, ``learning_rate``, ..., ``gradient_clip_norm``,
                ``ipe_scale``), or any Keras optimizer / identifier. A
                :class:`ScheduledAdamW` leaves the prototypes out of its gradient
                clipping, as the original; another optimizer's ``global_clipnorm``
                clips every gradient.
            exclude_from_weight_decay: exclude biases, norm parameters (every
                variable of rank <= 1) and the prototypes from weight decay, as the
                original; applied to any optimizer with a ``weight_decay``.
            **kwargs: other ``keras.Model.compile`` arguments (not ``loss`` or
                ``metrics``: the MSN loss and its logged parts are built in).
        """
        for arg in ("loss", "metrics", "weighted_metrics"):
            if kwargs.get(arg) is not None:
                raise ValueError(
                    f"MSNPretrainer computes the MSN loss and logs its parts itself; "
                    f"`{arg}` cannot be given to compile()."
                )
        if optimizer is None:
            if self.total_steps is None:
                raise ValueError(
                    "The default MSN optimizer needs the run length: pass `total_steps` "
                    "to MSNPretrainer (epochs * steps_per_epoch), or an optimizer to "
                    "compile()."
                )
            optimizer = msn_optimizer(
                self.total_steps,
                warmup_steps=self.warmup_steps,
                start_lr=self.start_learning_rate,
                ref_lr=self.learning_rate,
                final_lr=self.final_learning_rate,
                start_weight_decay=self.weight_decay,
                final_weight_decay=self.final_weight_decay,
                global_clipnorm=self.gradient_clip_norm,
                ipe_scale=self.ipe_scale,
            )
        optimizer = keras.optimizers.get(optimizer)
        if exclude_from_weight_decay and getattr(optimizer, "weight_decay", None) is not None:
            optimizer.exclude_from_weight_decay(var_list=self.no_weight_decay_variables())
        if isinstance(optimizer, ScheduledAdamW):
            # The original clips encoder.parameters() (encoder and head) only.
            optimizer.exclude_from_clipping([self.prototypes.prototypes])
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        if not self.compiled:
            return None
        return {"optimizer": keras.saving.serialize_keras_object(self.optimizer)}

    def compile_from_config(self, config):
        # compile() re-derives the weight-decay exclusions, which are not serialisable.
        self.compile(optimizer=keras.saving.deserialize_keras_object(config["optimizer"]))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def no_weight_decay_variables(self):
        """Trainable variables the original excludes from weight decay: biases and norm
        parameters (rank <= 1) and the prototypes."""
        out = [v for v in self.trainable_variables if len(v.shape) <= 1]
        return out + [self.prototypes.prototypes]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = y_pred["loss"]
        if self.losses:
            loss = loss + ops.sum(ops.stack([ops.cast(term, "float32") for term in self.losses]))
        # Under tf.distribute the loss is already the global one on every replica, and
        # its all-reduced statistics carry every replica's gradient to every replica:
        # the share 1 / count is what Keras' losses return there (the optimizer sums
        # the replicas' gradients; the loss tracker multiplies the share back).
        count = current_replicas().count
        return loss if count == 1 else loss / count

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for tracker in self.part_trackers:
            tracker.update_state(y_pred[tracker.name])
        return self.get_metrics_result()

    def train_step(self, *args, **kwargs):
        # Keras' step, then the EMA target update (threaded through JAX's stateless
        # state by the backend).
        return backend.train_step_with_target_update(
            self, super().train_step, self.update_target, *args, **kwargs
        )

    # ------------------------------------------------- schedules, EMA target
    def _linear(self, start, end):
        # The original's momentum and sharpening generators: value k at step k, over
        # ipe_scale * total_steps steps.
        if self.total_steps is None or end is None or end == start:
            return ops.convert_to_tensor(start, "float32")
        return LinearSchedule(start, end, self.ipe_scale * self.total_steps)(self.ema_steps)

    def current_ema_momentum(self):
        """The momentum the next target update uses (a scalar tensor)."""
        return self._linear(self.ema_momentum, self.final_ema_momentum)

    def current_sharpen_temperature(self):
        """The sharpening temperature of the current step (a scalar tensor)."""
        return self._linear(self.sharpen_temperature, self.final_sharpen_temperature)

    def update_target(self):
        """target <- m * target + (1 - m) * anchor for every encoder and head parameter.

        Called by ``train_step`` after each optimizer update; advances the momentum
        (and sharpening) schedule by one step. BatchNorm moving statistics are not
        averaged: the target head updates its own in its training-mode forward, as
        the original (whose EMA runs over ``parameters()``, not buffers).
        """
        pairs = self._ema_pairs()
        backend.ema_update(
            [t for _, t in pairs], [s for s, _ in pairs], self.current_ema_momentum()
        )
        self.ema_steps.assign(self.ema_steps + 1)

    def _ema_pairs(self, include_encoder=True, include_statistics=False):
        pairs = []
        groups = [(self.projection_head, self.target_projection_head)]
        if include_encoder:
            groups.insert(0, (self.encoder, self.target_encoder))
        for source_layer, target_layer in groups:
            source = resume.weights_by_relative_path(source_layer)
            target = resume.weights_by_relative_path(target_layer)
            if set(source) != set(target):
                raise ValueError(
                    f"{source_layer.name} and {target_layer.name} do not have the same "
                    f"weights: {sorted(set(source) ^ set(target))}."
                )
            keys = sorted(source)
            if not include_statistics:
                keys = [k for k in keys if not k.endswith(_MOVING_STATISTICS)]
            pairs += [(source[k], target[k]) for k in keys]
        return pairs

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(
        cls, preset, load_weights=True, restore_optimizer=False, optimizer=None, **kwargs
    ):
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
                (:func:`init_embeddings_like_msn`).
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
        backbone_kwargs = resume.split_backbone_kwargs(kwargs)
        path = os.fspath(preset) if isinstance(preset, (str, os.PathLike)) else None
        if restore_optimizer and not load_weights:
            raise ValueError("`restore_optimizer=True` needs `load_weights=True`.")
        if load_weights and path is not None and is_msn_checkpoint_path(path):
            # An original checkpoint: online and EMA branches differ mid-training.
            checkpoint = resume.read_original_checkpoint(path, backbone_kwargs, restore_optimizer)
            for key in ("projection_head", "prototypes"):
                if checkpoint[key] is not None:
                    kwargs.setdefault(key, checkpoint[key])
            pretrainer = cls(checkpoint["online"], target_encoder=checkpoint["target"], **kwargs)
            if checkpoint["target_head"]:
                pretrainer.target_projection_head.set_msn_weights(checkpoint["target_head"])
            if restore_optimizer:
                resume.restore_original_optimizer(pretrainer, checkpoint, optimizer)
            return pretrainer

        encoder = ViTMSNBackbone.from_preset(preset, load_weights=load_weights, **backbone_kwargs)
        if not load_weights:  # from scratch, as the original MSN starts
            init_embeddings_like_msn(encoder, kwargs.get("seed"))
        has_head = (
            path is not None
            and os.path.isdir(path)
            and os.path.exists(os.path.join(path, MSN_HEAD_FILE))
        )
        if not load_weights or not has_head:
            if restore_optimizer:
                raise ValueError(
                    f"{preset!r} holds no MSN training state to restore an optimizer from."
                )
            return cls(encoder, **kwargs)
        head, prototypes = head_and_prototypes_from_state(path, dtype=encoder.dtype_policy)
        state_path = os.path.join(path, MSN_TRAINING_STATE_FILE)
        if not os.path.exists(state_path):
            if restore_optimizer:
                raise ValueError(
                    f"{path} has no {MSN_TRAINING_STATE_FILE} (written by "
                    "MSNPretrainer.save_to_preset with training_state=True): there is no "
                    "optimizer state to restore."
                )
            kwargs.setdefault("projection_head", head)
            kwargs.setdefault("prototypes", prototypes)
            return cls(encoder, **kwargs)

        # One of our presets with its training state: the saved settings, overridden by
        # kwargs. The preset's backbone is the target; the online encoder takes its name
        # back.
        state = resume.read_training_state(state_path)
        kwargs = {**state["settings"], **kwargs}
        config = encoder.get_config()
        online = ViTMSNBackbone.from_config(config)
        target = ViTMSNBackbone.from_config({**config, "name": f"target_{config['name']}"})
        target.set_weights(encoder.get_weights())
        kwargs["projection_head"] = MSNProjectionHead.from_config(
            {**head.get_config(), "name": "projection_head"}
        )
        if "prototypes" not in kwargs:
            kwargs["prototypes"] = MSNPrototypes.from_config(
                {**prototypes.get_config(), "name": "prototypes"}
            )
            kwargs["prototypes"].prototypes.assign(prototypes.prototypes)
        pretrainer = cls(online, target_encoder=target, **kwargs)
        resume.restore_training_state(
            pretrainer, state, head, state_path, restore_optimizer, optimizer
        )
        return pretrainer

    @classmethod
    def from_recipe(
        cls,
        recipe="msn_vits16",
        backbone_or_preset=None,
        steps_per_epoch=None,
        load_weights=True,
        **overrides,
    ):
        """A pretrainer configured by a released recipe (:mod:`keras_vitmsn.msn.recipes`).

        Args:
            recipe: a recipe name (``"msn_vits16"``, ``"msn_vitb16"``, ...) or a
                recipe config dict (:func:`keras_vitmsn.msn.get_recipe`).
            backbone_or_preset: None to pretrain from scratch with the recipe's
                architecture (random init, ``global_size`` pixels; CLS token and
                position table drawn as the original MSN:
                :func:`init_embeddings_like_msn`); a :class:`ViTMSNBackbone`; or a
                preset / checkpoint to continue from (:meth:`from_preset`). A given
                backbone or preset keeps its own architecture; the recipe sets
                everything else.
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
        overrides = dict(overrides)
        recipe_overrides = {
            k: overrides.pop(k) for k in list(overrides) if k in recipes.RECIPE_KEYS
        }
        config = recipes.get_recipe(recipe, **recipe_overrides)
        kwargs = {**recipes.pretrainer_kwargs(config, steps_per_epoch), **overrides}
        if backbone_or_preset is None:
            architecture = recipes.backbone_kwargs(config)
            if "dtype" in kwargs:
                architecture["dtype"] = kwargs.pop("dtype")
            # from_config: the recipe's image_shape is (height, width, channels).
            encoder = ViTMSNBackbone.from_config(architecture)
            encoder = init_embeddings_like_msn(encoder, kwargs.get("seed"))
            return cls(encoder, **kwargs)
        if isinstance(backbone_or_preset, ViTMSNBackbone):
            return cls(backbone_or_preset, **kwargs)
        return cls.from_preset(backbone_or_preset, load_weights=load_weights, **kwargs)

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

        def write(directory):
            file_format.write_backbone(
                self.target_encoder,
                directory,
                metadata={"msn_pretraining_steps": int(ops.convert_to_numpy(self.ema_steps))},
                # The EMA copy is frozen here; the exported backbone is a normal, trainable one.
                config_overrides={"name": self.encoder.name, "trainable": True},
            )
            converter = ViTMSNImageConverter(
                image_size=self.encoder.image_size, data_format=self.encoder.data_format
            )
            file_format.write_image_converter(converter, directory)
            resume.write_msn_head(self, os.path.join(directory, MSN_HEAD_FILE))
            state_path = os.path.join(directory, MSN_TRAINING_STATE_FILE)
            if training_state:
                resume.write_training_state(self, state_path)
            elif os.path.exists(state_path):
                os.remove(state_path)  # a stale state would resume another run

        save_preset_directory(preset_dir, write)

    # ------------------------------------------------------------------- config
    def save_own_variables(self, store):
        super().save_own_variables(store)
        # Keras does not save SeedGenerator states; the masks of a resumed run must
        # continue the same random stream.
        store[_SEED_STATE_KEY] = self.seed_generator.state

    def load_own_variables(self, store):
        self.seed_generator.state.assign(store[_SEED_STATE_KEY])
        super().load_own_variables({k: store[k] for k in store.keys() if k != _SEED_STATE_KEY})

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            projection_head=keras.saving.serialize_keras_object(self.projection_head),
            prototypes=keras.saving.serialize_keras_object(self.prototypes),
        )
        config.update({key: getattr(self, key) for key in _SETTINGS})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "projection_head", "prototypes"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


# -------------------------------------- default optimizer, from-scratch start
# MSN's optimizer recipe: ScheduledAdamW (torch.optim.AdamW as a Keras optimizer) with the
# authors' warm-up + cosine learning rate, cosine weight decay and clipping at 3.
def msn_optimizer(
    total_steps,
    warmup_steps=None,
    start_lr=None,
    ref_lr=1e-3,
    final_lr=None,
    start_weight_decay=0.04,
    final_weight_decay=0.4,
    global_clipnorm=3.0,
    ipe_scale=1.0,
):
    """The MSN recipe: AdamW, warm-up + cosine learning rate, cosine weight decay, clipping.

    Which variables decay and which are clipped is decided by
    :meth:`MSNPretrainer.compile` (no decay for biases, norm parameters, prototypes;
    no clipping for the prototypes).

    Args:
        total_steps: int, optimizer steps of the whole run (``epochs * steps_per_epoch``).
        warmup_steps: learning-rate warm-up steps (None: the vits16 recipe's share,
            15 / 800 of the run).
        start_lr, ref_lr, final_lr: see :func:`msn_learning_rate`. The paper warms up
            from ``ref_lr / 5`` and decays to ``ref_lr / 1000`` (2e-4 and 1e-6 at its
            1e-3); ``None`` keeps those ratios for any ``ref_lr``.
        start_weight_decay, final_weight_decay: the cosine weight-decay schedule.
        global_clipnorm: clip the global gradient norm (3.0 as the paper); None = off.
        ipe_scale: schedule stretch (the original: 1.25; see
            :mod:`keras_vitmsn.msn.schedules`).

    Example:
    >>> opt = msn_optimizer(total_steps=1000)
    >>> type(opt).__name__, opt.global_clipnorm
    ('ScheduledAdamW', 3.0)
    """
    start_lr = ref_lr / 5 if start_lr is None else start_lr
    final_lr = ref_lr / 1000 if final_lr is None else final_lr
    return ScheduledAdamW(
        learning_rate=msn_learning_rate(
            total_steps, warmup_steps, start_lr, ref_lr, final_lr, ipe_scale=ipe_scale
        ),
        weight_decay=msn_weight_decay(
            total_steps, start_weight_decay, final_weight_decay, ipe_scale=ipe_scale
        ),
        global_clipnorm=global_clipnorm,
    )


def init_embeddings_like_msn(backbone, seed=None):
    """Draw ``backbone``'s CLS token and position embeddings as the original MSN does.

    A fresh ViTMSNBackbone starts them at zero, as transformers' ``ViTMSNModel``; the
    authors' ``src/deit.py`` draws both from a normal of std 0.02 (truncated at +-2,
    i.e. practically untruncated). Pretraining from scratch (:meth:`MSNPretrainer.from_recipe`
    without a backbone, ``from_preset(..., load_weights=False)``, ``keras-vitmsn pretrain
    --from-scratch``) starts this way; every other fresh model keeps the zeros.

    Args:
        backbone: a :class:`keras_vitmsn.ViTMSNBackbone` (changed in place).
        seed: int for a reproducible draw; None follows Keras' global seed
            (``keras.utils.set_random_seed``).

    Returns:
        ``backbone``.

    Example:
    >>> import numpy as np
    >>> import keras_vitmsn as kv
    >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8, hidden_dim=64,
    ...                              num_layers=1, num_heads=4, intermediate_dim=128)
    >>> float(np.abs(keras.ops.convert_to_numpy(backbone.embeddings.cls_token)).max())
    0.0
    >>> std = keras.ops.convert_to_numpy(
    ...     init_embeddings_like_msn(backbone, seed=0).embeddings.position_embeddings).std()
    >>> 0.015 < float(std) < 0.025
    True
    """
    generator = keras.random.SeedGenerator(seed)
    embeddings = backbone.embeddings
    for variable in (embeddings.cls_token, embeddings.position_embeddings):
        value = keras.random.normal(
            variable.shape, stddev=MSN_EMBEDDING_STD, dtype="float32", seed=generator
        )
        value = keras.ops.clip(value, -MSN_TRUNCATION, MSN_TRUNCATION)
        variable.assign(keras.ops.cast(value, variable.dtype))
    return backbone
