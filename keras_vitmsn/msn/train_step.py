"""MSN's train step: the default optimizer recipe, the loss, and the EMA target.

``compile()`` builds the authors' AdamW recipe (no weight decay for biases, norms and
prototypes; prototypes left out of the gradient clipping).

``target <- m * target + (1 - m) * anchor`` for every parameter of the encoder and the
projection head, right after each optimizer update and on every backend: the train
step is wrapped (JAX's stateless step threads the new target values through the state
it returns), so plain ``compile()`` + ``fit()`` is all it takes. BatchNorm moving
statistics are left out: the target head updates its own in its training-mode
forward, as the original, whose EMA runs over ``parameters()`` (not buffers).
"""

import keras
from keras import ops

from keras_vitmsn.backend.fast_updates import ema_update
from keras_vitmsn.models.optimizer import ScheduledAdamW
from keras_vitmsn.msn.optimizer import msn_optimizer
from keras_vitmsn.msn.resume import weights_by_relative_path
from keras_vitmsn.msn.schedules import LinearSchedule

_MOVING_STATISTICS = ("moving_mean", "moving_variance")


class MSNTrainStepMixin:
    """Compile, loss, train step, target update and schedules of :class:`MSNPretrainer`
    (a ``keras.Model`` with ``encoder``, ``projection_head``, ``prototypes``, the
    ``target_*`` copies, ``ema_steps`` and the recipe's settings)."""

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
        ema_update([t for _, t in pairs], [s for s, _ in pairs], self.current_ema_momentum())
        self.ema_steps.assign(self.ema_steps + 1)

    def _ema_pairs(self, include_encoder=True, include_statistics=False):
        pairs = []
        groups = [(self.projection_head, self.target_projection_head)]
        if include_encoder:
            groups.insert(0, (self.encoder, self.target_encoder))
        for source_layer, target_layer in groups:
            source = weights_by_relative_path(source_layer)
            target = weights_by_relative_path(target_layer)
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
