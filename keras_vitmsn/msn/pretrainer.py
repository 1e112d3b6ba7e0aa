"""``MSNPretrainer``: Masked Siamese Networks pretraining as a Keras model.

One training step, as the authors' ``msn_train.py`` (see
``shared/reference/msn_method.md``):

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

Step 4 runs inside the compiled train step (:mod:`keras_vitmsn.msn.train_step`). The
README's "MSN pretraining" section lists what still differs from the original.
"""

import keras
from keras import ops

from keras_vitmsn.layers.layout import spatial_shape
from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.msn.head import MSNProjectionHead
from keras_vitmsn.msn.head import MSNPrototypes
from keras_vitmsn.msn.loss import msn_loss
from keras_vitmsn.msn.masking import random_patch_keep_indices
from keras_vitmsn.msn.pretrainer_presets import PretrainerPresetsMixin
from keras_vitmsn.msn.schedules import scaled_steps
from keras_vitmsn.msn.train_step import MSNTrainStepMixin

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
# The constructor's settings (besides layers and name) and their types; None stays None.
_SETTINGS = dict(
    mask_ratio=float, temperature=float, sharpen_temperature=float,
    final_sharpen_temperature=float, me_max_weight=float, use_sinkhorn=bool,
    sinkhorn_iters=int, entropy_weight=float, ema_momentum=float, final_ema_momentum=float,
    total_steps=int, ipe_scale=float, learning_rate=float, start_learning_rate=float,
    final_learning_rate=float, warmup_steps=int, weight_decay=float,
    final_weight_decay=float, gradient_clip_norm=float, head_hidden_dim=int,
    head_output_dim=int, head_batch_norm=bool, num_prototypes=int, seed=lambda s: s,
)


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class MSNPretrainer(PretrainerPresetsMixin, MSNTrainStepMixin, keras.Model):
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
        for arg, value in (("temperature", temperature), ("sharpen_temperature", sharpen_temperature),
                           ("final_sharpen_temperature", final_sharpen_temperature)):
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
        )

    def _anchor_keep_indices(self, anchor, layout):
        return random_patch_keep_indices(
            ops.shape(anchor)[0],
            self._num_patches(anchor.shape, layout),
            self.mask_ratio,
            seed=self.seed_generator,
        )

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
        resized = spatial_shape(images.shape, encoder.data_format) != encoder.image_shape[:2]
        outputs = encoder(
            images,
            interpolate_pos_encoding=resized,
            patch_keep_indices=patch_keep_indices,
            training=training,
        )
        return outputs["last_hidden_state"][:, 0]

    # ---------------------------------------------------------- presets, config
    def save_own_variables(self, store):
        super().save_own_variables(store)
        # Keras does not save SeedGenerator states; the masks of a resumed run must
        # continue the same random stream.
        store[_SEED_STATE_KEY] = self.seed_generator.state

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _SEED_STATE_KEY in keys:  # absent from files written before it was saved
            self.seed_generator.state.assign(store[_SEED_STATE_KEY])
            store = {k: store[k] for k in keys if k != _SEED_STATE_KEY}
        super().load_own_variables(store)

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
