"""``MSNPretrainer``: Masked Siamese Networks pretraining as a Keras model.

One training step, as the authors' ``msn_train.py`` (see
``shared/reference/msn_method.md``):

1. the ``"target"`` view goes unmasked through the EMA target encoder and target head
   (no gradient) -> ``h``;
2. the ``"anchor"`` view goes through the encoder with a fraction ``mask_ratio`` of its
   patch tokens dropped; the ``"focal"`` views go through it unmasked at their own
   resolution (interpolated position embeddings), as the original masks only the global
   anchor view; their CLS tokens (after the final LayerNorm) go through the projection
   head together -> ``z`` (view-major: the global anchor view first);
3. ``loss = msn_loss(z, h, prototypes)``; the optimizer updates encoder, head and
   prototypes;
4. target <- m * target + (1 - m) * anchor for every encoder and head weight, ``m``
   rising linearly from ``ema_momentum`` to ``final_ema_momentum`` over
   ``total_steps``.

Step 4 runs inside the compiled train step right after the optimizer update, on every
backend: ``train_step`` is wrapped (JAX's stateless step threads the new target values
through the state it returns), so plain ``compile()`` + ``fit()`` is all it takes.
"""

import os

import keras
from keras import ops

from keras_vitmsn.conversion.msn_checkpoint import is_msn_checkpoint_path
from keras_vitmsn.image_converter import ViTMSNImageConverter
from keras_vitmsn.layers.layout import spatial_shape
from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.msn.head_state import save_msn_pretraining_state
from keras_vitmsn.presets import file_format
from keras_vitmsn.presets.file_format import MSN_HEAD_FILE
from keras_vitmsn.presets.mixin import save_preset_directory
from keras_vitmsn.presets.sources import constructor_argument_names
from keras_vitmsn.msn.head import MSNProjectionHead
from keras_vitmsn.msn.head import MSNPrototypes
from keras_vitmsn.msn.head import head_and_prototypes_from_state
from keras_vitmsn.msn.loss import msn_loss
from keras_vitmsn.msn.masking import random_patch_keep_indices
from keras_vitmsn.msn.optimizer import msn_optimizer
from keras_vitmsn.msn.schedules import LinearSchedule

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


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class MSNPretrainer(keras.Model):
    """Masked Siamese Networks pretraining of a :class:`ViTMSNBackbone`.

    Train it with ``compile()`` and ``fit()`` on batches of views
    ``{"target": (B, H, W, C), "anchor": (B, H, W, C), "focal": (B, M, h, w, C)}``
    (``"focal"`` optional; :func:`keras_vitmsn.msn.msn_multiview_dataset` makes them),
    then export the target encoder with :meth:`save_to_preset`.

    Args:
        encoder: the :class:`ViTMSNBackbone` to pretrain (the anchor encoder).
        projection_head: an :class:`MSNProjectionHead`, or None for a new one
            (``head_hidden_dim``, ``head_output_dim``).
        prototypes: an :class:`MSNPrototypes`, or None for ``num_prototypes`` new ones.
        target_encoder: optional backbone for the EMA target (same architecture);
            None = a copy of ``encoder`` (the original starts the target as a copy).
        mask_ratio: fraction of the anchor view's patches dropped (paper: 0.15 for
            S/16, 0.3 for B/16, 0.7 for B/4 and L/7).
        temperature, sharpen_temperature, me_max_weight, use_sinkhorn,
        sinkhorn_iters, entropy_weight: the loss's arguments (:func:`msn_loss`).
        ema_momentum, final_ema_momentum: the target's momentum, linear from the first
            to the second over ``total_steps`` (constant ``ema_momentum`` when
            ``total_steps`` is None).
        total_steps: optimizer steps of the run; sets the momentum schedule and lets
            ``compile()`` build the default optimizer (:func:`msn_optimizer`).
        head_hidden_dim, head_output_dim, num_prototypes: sizes of new heads and
            prototypes (2048, 256, 1024 as the paper).
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
        me_max_weight=1.0,
        use_sinkhorn=False,
        sinkhorn_iters=3,
        entropy_weight=0.0,
        ema_momentum=0.996,
        final_ema_momentum=1.0,
        total_steps=None,
        head_hidden_dim=2048,
        head_output_dim=256,
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
        for arg, value in (("temperature", temperature), ("sharpen_temperature", sharpen_temperature)):
            if not value > 0:
                raise ValueError(f"`{arg}` must be > 0; got {value!r}.")
        if not 0.0 <= ema_momentum <= final_ema_momentum <= 1.0:
            raise ValueError(
                "Need 0 <= ema_momentum <= final_ema_momentum <= 1; got "
                f"{ema_momentum!r} and {final_ema_momentum!r}."
            )
        if total_steps is not None and (int(total_steps) != total_steps or total_steps < 1):
            raise ValueError(f"`total_steps` must be a positive int or None; got {total_steps!r}.")
        self.mask_ratio = float(mask_ratio)
        self.temperature = float(temperature)
        self.sharpen_temperature = float(sharpen_temperature)
        self.me_max_weight = float(me_max_weight)
        self.use_sinkhorn = bool(use_sinkhorn)
        self.sinkhorn_iters = int(sinkhorn_iters)
        self.entropy_weight = float(entropy_weight)
        self.ema_momentum = float(ema_momentum)
        self.final_ema_momentum = float(final_ema_momentum)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.head_hidden_dim = int(head_hidden_dim)
        self.head_output_dim = int(head_output_dim)
        self.num_prototypes = int(num_prototypes)
        self.seed = seed

        self.encoder = encoder
        if projection_head is None:
            projection_head = MSNProjectionHead(
                hidden_dim=self.head_hidden_dim,
                output_dim=self.head_output_dim,
                input_dim=encoder.hidden_dim,
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
        for source, target in self._ema_pairs(include_encoder=copy_encoder):
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

        # Anchor branch: the masked global view, then the unmasked focal views.
        keep = None
        if self.mask_ratio > 0:
            keep = random_patch_keep_indices(
                ops.shape(anchor)[0],
                self._num_patches(anchor.shape, layout),
                self.mask_ratio,
                seed=self.seed_generator,
            )
        features = [self._cls(self.encoder, anchor, training, patch_keep_indices=keep)]
        num_views = 1
        if focal is not None:
            num_views += focal.shape[1]
            # (B, M, ...) -> (M * B, ...): view-major, as msn_loss expects.
            flat = ops.reshape(ops.swapaxes(focal, 0, 1), (-1,) + tuple(focal.shape[2:]))
            features.append(self._cls(self.encoder, flat, training))
        # One head call over all anchor views: BatchNorm sees them together, as the
        # original's concatenated forward.
        anchors = self.projection_head(ops.concatenate(features, axis=0), training=training)

        # Target branch: EMA encoder, unmasked, batch-statistics BatchNorm, no gradient.
        targets = self.target_projection_head(
            self._cls(self.target_encoder, target, False), use_batch_statistics=True
        )
        return msn_loss(
            anchors,
            ops.stop_gradient(targets),
            self.prototypes.prototypes,
            temperature=self.temperature,
            sharpen_temperature=self.sharpen_temperature,
            me_max_weight=self.me_max_weight,
            use_sinkhorn=self.use_sinkhorn,
            sinkhorn_iters=self.sinkhorn_iters,
            entropy_weight=self.entropy_weight,
            num_anchor_views_per_target=num_views,
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

    # --------------------------------------------------------------- training
    def compile(self, optimizer=None, exclude_from_weight_decay=True, **kwargs):
        """Compile with MSN's optimizer recipe unless another optimizer is given.

        Args:
            optimizer: None for :func:`msn_optimizer` over ``total_steps`` (AdamW,
                warm-up + cosine lr, cosine weight decay 0.04 -> 0.4, global clipnorm
                3), or any Keras optimizer / identifier.
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
            optimizer = msn_optimizer(self.total_steps)
        optimizer = keras.optimizers.get(optimizer)
        if exclude_from_weight_decay and getattr(optimizer, "weight_decay", None) is not None:
            optimizer.exclude_from_weight_decay(var_list=self.no_weight_decay_variables())
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
            loss = loss + ops.sum(ops.stack([ops.cast(l, "float32") for l in self.losses]))
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for tracker in self.part_trackers:
            tracker.update_state(y_pred[tracker.name])
        return self.get_metrics_result()

    def train_step(self, *args, **kwargs):
        if keras.backend.backend() == "jax":
            return self._stateless_train_step(*args, **kwargs)
        logs = super().train_step(*args, **kwargs)
        self.update_target()
        return logs

    def _stateless_train_step(self, state, data):
        # JAX: the parent step returns new variable values instead of assigning them;
        # run the EMA on those values and hand back the target's new values.
        logs, state = super().train_step(state, data)
        trainable, non_trainable, *rest = state
        mapping = list(zip(self.trainable_variables, trainable))
        mapping += list(zip(self.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self.update_target()
        updated = [scope.get_current_value(v) for v in self.non_trainable_variables]
        non_trainable = [
            value if new is None else new for new, value in zip(updated, non_trainable)
        ]
        return logs, (trainable, non_trainable, *rest)

    def current_ema_momentum(self):
        """The momentum the next target update uses (a scalar tensor)."""
        if self.total_steps is None:
            return ops.convert_to_tensor(self.ema_momentum, "float32")
        schedule = LinearSchedule(self.ema_momentum, self.final_ema_momentum, self.total_steps)
        return schedule(self.ema_steps)

    def update_target(self):
        """target <- m * target + (1 - m) * anchor for every encoder and head weight.

        Called by ``train_step`` after each optimizer update (BatchNorm moving
        statistics are averaged too, so the exported head is usable); advances the
        momentum schedule by one step.
        """
        momentum = self.current_ema_momentum()
        for source, target in self._ema_pairs():
            m = ops.cast(momentum, target.dtype)
            target.assign(m * target + (1 - m) * ops.cast(source, target.dtype))
        self.ema_steps.assign(self.ema_steps + 1)

    def _ema_pairs(self, include_encoder=True):
        pairs = []
        groups = [(self.projection_head, self.target_projection_head)]
        if include_encoder:
            groups.insert(0, (self.encoder, self.target_encoder))
        for source_layer, target_layer in groups:
            source = _weights_by_relative_path(source_layer)
            target = _weights_by_relative_path(target_layer)
            if set(source) != set(target):
                raise ValueError(
                    f"{source_layer.name} and {target_layer.name} do not have the same "
                    f"weights: {sorted(set(source) ^ set(target))}."
                )
            pairs += [(source[k], target[k]) for k in sorted(source)]
        return pairs

    # ---------------------------------------------------------- presets, config
    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """A pretrainer that continues from released or saved weights.

        The encoder (and its EMA copy) come from ``ViTMSNBackbone.from_preset(preset)``.
        When ``preset`` is an original MSN ``.pth.tar`` or a preset directory holding
        ``msn_head.weights.h5`` (converted from one, or written by
        :meth:`save_to_preset`), the projection head and prototypes are restored too;
        otherwise (e.g. the Hugging Face presets, which ship the encoder only) they
        start fresh.

        Args:
            preset: a preset name, ``hf://`` handle, directory or checkpoint file.
            load_weights: False builds the architecture with random weights.
            **kwargs: ``ViTMSNBackbone.from_preset`` overrides (e.g. ``num_heads``,
                ``image_shape``, ``dtype``) and other ``MSNPretrainer`` arguments.

        Example (not run: needs a checkpoint):
            pretrainer = MSNPretrainer.from_preset("vits16_800ep.pth.tar", total_steps=1000)
        """
        accepted = constructor_argument_names(ViTMSNBackbone)
        backbone_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in accepted and k != "name"}
        encoder = ViTMSNBackbone.from_preset(preset, load_weights=load_weights, **backbone_kwargs)
        if load_weights and _has_msn_head(preset):
            head, prototypes = head_and_prototypes_from_state(
                os.fspath(preset), dtype=encoder.dtype_policy
            )
            kwargs.setdefault("projection_head", head)
            kwargs.setdefault("prototypes", prototypes)
        return cls(encoder, **kwargs)

    def save_to_preset(self, preset_dir):
        """Export the target encoder as a normal backbone preset.

        Writes ``config.json`` + ``model.weights.h5`` (loadable with
        ``ViTMSNBackbone.from_preset`` / ``ViTMSNClassifier.from_preset``, usable by
        ``keras-vitmsn finetune`` and ``lowshot``), ``image_converter.json`` (resize to
        the encoder's size, ImageNet normalisation) and ``msn_head.weights.h5`` (target
        head + prototypes, so :meth:`from_preset` continues pretraining from it).
        """
        save_preset_directory(preset_dir, self._write_preset)

    def _write_preset(self, preset_dir):
        file_format.write_backbone(
            self.target_encoder,
            preset_dir,
            metadata={"msn_pretraining_steps": int(ops.convert_to_numpy(self.ema_steps))},
            # The EMA copy is frozen here; the exported backbone is a normal, trainable one.
            config_overrides={"name": self.encoder.name, "trainable": True},
        )
        converter = ViTMSNImageConverter(
            image_size=self.encoder.image_shape[:2], data_format=self.encoder.data_format
        )
        file_format.write_image_converter(converter, preset_dir)
        head = _weights_by_relative_path(self.target_projection_head)
        save_msn_pretraining_state(
            {
                "head": {k: ops.convert_to_numpy(v) for k, v in head.items()},
                "prototypes": ops.convert_to_numpy(self.prototypes.prototypes),
                "encoder": "target_encoder",
            },
            os.path.join(preset_dir, MSN_HEAD_FILE),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            projection_head=keras.saving.serialize_keras_object(self.projection_head),
            prototypes=keras.saving.serialize_keras_object(self.prototypes),
            mask_ratio=self.mask_ratio,
            temperature=self.temperature,
            sharpen_temperature=self.sharpen_temperature,
            me_max_weight=self.me_max_weight,
            use_sinkhorn=self.use_sinkhorn,
            sinkhorn_iters=self.sinkhorn_iters,
            entropy_weight=self.entropy_weight,
            ema_momentum=self.ema_momentum,
            final_ema_momentum=self.final_ema_momentum,
            total_steps=self.total_steps,
            head_hidden_dim=self.head_hidden_dim,
            head_output_dim=self.head_output_dim,
            num_prototypes=self.num_prototypes,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "projection_head", "prototypes"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _weights_by_relative_path(layer):
    # Paths start with the layer's own (unique) name; what follows is the same in a
    # layer and its copy, whatever the weights' trainable flags.
    prefix = f"{layer.name}/"
    out = {}
    for variable in layer.weights:
        path = variable.path
        out[path[path.index(prefix) + len(prefix):] if prefix in path else path] = variable
    return out


def _has_msn_head(preset):
    if not isinstance(preset, (str, os.PathLike)):
        return False
    path = os.fspath(preset)
    if is_msn_checkpoint_path(path):
        return True
    return os.path.isdir(path) and os.path.exists(os.path.join(path, MSN_HEAD_FILE))
