"""AdamW with a scheduled weight decay, and MSN's optimizer recipe.

Keras' AdamW takes a float ``weight_decay``; MSN raises it along a cosine schedule
(0.04 -> 0.4). Every backend's optimizer reads ``self.weight_decay`` once per step when
it applies the decoupled decay (``v -= lr * wd * v``, before the Adam update, as
``torch.optim.AdamW``), so a property that evaluates the schedule at
``self.iterations`` gives a scheduled decay on JAX, TensorFlow and torch alike,
without touching the backends' private update code. That reliance is checked once
(:func:`keras_vitmsn.keras_internals.optimizer_reads_weight_decay_property`).
"""

import keras

from keras_vitmsn.keras_internals import optimizer_reads_weight_decay_property

from keras_vitmsn.msn.schedules import CosineSchedule
from keras_vitmsn.msn.schedules import msn_learning_rate


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ScheduledAdamW(keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` whose ``weight_decay`` may be a schedule of the step.

    Args:
        weight_decay: a float, or a ``LearningRateSchedule``-like callable of the
            optimizer step (e.g. :class:`keras_vitmsn.msn.CosineSchedule`).
        **kwargs: every other ``keras.optimizers.AdamW`` argument.

    Example:
    >>> from keras_vitmsn.msn import CosineSchedule
    >>> opt = ScheduledAdamW(learning_rate=1e-3,
    ...                      weight_decay=CosineSchedule(0.04, 0.4, steps=100))
    >>> round(float(opt.weight_decay), 4)   # at step 0
    0.04
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, **kwargs):
        schedule = None
        if isinstance(weight_decay, dict):
            weight_decay = keras.saving.deserialize_keras_object(weight_decay)
        if callable(weight_decay):
            if not optimizer_reads_weight_decay_property():
                raise RuntimeError(
                    f"Keras {keras.__version__} does not apply a scheduled weight decay "
                    "through ScheduledAdamW (its optimizers no longer read "
                    "`weight_decay` at each step); pass a float weight_decay instead."
                )
            schedule, weight_decay = weight_decay, 0.0
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        # Set after the base constructor: the property below reads it.
        self._weight_decay_schedule = schedule

    @property
    def weight_decay(self):
        schedule = getattr(self, "_weight_decay_schedule", None)
        if schedule is None:
            return self._weight_decay_value
        return schedule(self.iterations)

    @weight_decay.setter
    def weight_decay(self, value):
        self._weight_decay_value = value

    def get_config(self):
        config = super().get_config()
        if self._weight_decay_schedule is not None:
            config["weight_decay"] = keras.saving.serialize_keras_object(
                self._weight_decay_schedule
            )
        return config


def msn_optimizer(
    total_steps,
    warmup_steps=None,
    start_lr=None,
    ref_lr=1e-3,
    final_lr=None,
    start_weight_decay=0.04,
    final_weight_decay=0.4,
    global_clipnorm=3.0,
):
    """The MSN recipe: AdamW, warm-up + cosine learning rate, cosine weight decay, clipping.

    Which variables decay is decided by :class:`MSNPretrainer.compile` (not biases,
    norm parameters, or prototypes).

    Args:
        total_steps: int, optimizer steps of the whole run (``epochs * steps_per_epoch``).
        warmup_steps: learning-rate warm-up steps (None: 5% of ``total_steps``).
        start_lr, ref_lr, final_lr: see :func:`msn_learning_rate`. The paper warms up
            from ``ref_lr / 5`` and decays to ``ref_lr / 1000`` (2e-4 and 1e-6 at its
            1e-3); ``None`` keeps those ratios for any ``ref_lr``.
        start_weight_decay, final_weight_decay: the cosine weight-decay schedule.
        global_clipnorm: clip the global gradient norm (3.0 as the paper); None = off.

    Example:
    >>> opt = msn_optimizer(total_steps=1000)
    >>> type(opt).__name__, opt.global_clipnorm
    ('ScheduledAdamW', 3.0)
    """
    start_lr = ref_lr / 5 if start_lr is None else start_lr
    final_lr = ref_lr / 1000 if final_lr is None else final_lr
    return ScheduledAdamW(
        learning_rate=msn_learning_rate(total_steps, warmup_steps, start_lr, ref_lr, final_lr),
        weight_decay=CosineSchedule(start_weight_decay, final_weight_decay, total_steps),
        global_clipnorm=global_clipnorm,
    )
