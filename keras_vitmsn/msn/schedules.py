"""Step schedules of MSN pretraining: learning rate, weight decay and EMA momentum.

The authors' recipe (``msn_train.py``), expressed per optimizer step ``t`` of ``S``:

- learning rate: linear warm-up ``start_lr -> ref_lr`` over ``W`` steps, then cosine
  ``ref_lr -> final_lr`` over the remaining ``S - W`` (``keras.optimizers.schedules
  .CosineDecay`` with ``warmup_target`` is exactly that form);
- weight decay: cosine ``0.04 -> 0.4`` over ``S`` (:class:`CosineSchedule`);
- EMA momentum of the target encoder: linear ``0.996 -> 1.0`` over ``S``
  (:class:`LinearSchedule`).

The original stretches every schedule by ``ipe_scale = 1.25`` and stops at 80% of it;
here the schedules span exactly the steps given (pass ``1.25 * steps`` to reproduce
the quirk).
"""

import math

import keras
from keras import ops


def _check_steps(steps, name="steps"):
    if int(steps) != steps or steps < 1:
        raise ValueError(f"`{name}` must be a positive int; got {steps!r}.")
    return int(steps)


def _progress(step, steps):
    step = ops.cast(step, "float32")
    return ops.clip(step / float(steps), 0.0, 1.0)


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class LinearSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``start + (end - start) * min(step / steps, 1)``: MSN's EMA momentum schedule.

    Example:
    >>> schedule = LinearSchedule(0.996, 1.0, steps=100)
    >>> [round(float(schedule(s)), 4) for s in (0, 50, 100, 200)]
    [0.996, 0.998, 1.0, 1.0]
    """

    def __init__(self, start, end, steps):
        self.start = float(start)
        self.end = float(end)
        self.steps = _check_steps(steps)

    def __call__(self, step):
        return self.start + (self.end - self.start) * _progress(step, self.steps)

    def get_config(self):
        return {"start": self.start, "end": self.end, "steps": self.steps}


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class CosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``steps`` and after).

    ``end + (start - end) * (1 + cos(pi * min(step / steps, 1))) / 2``: MSN's weight-decay
    schedule (``start=0.04``, ``end=0.4``: it rises).

    Example:
    >>> schedule = CosineSchedule(0.04, 0.4, steps=100)
    >>> [round(float(schedule(s)), 4) for s in (0, 50, 100)]
    [0.04, 0.22, 0.4]
    """

    def __init__(self, start, end, steps):
        self.start = float(start)
        self.end = float(end)
        self.steps = _check_steps(steps)

    def __call__(self, step):
        cosine = 0.5 * (1.0 + ops.cos(math.pi * _progress(step, self.steps)))
        return self.end + (self.start - self.end) * cosine

    def get_config(self):
        return {"start": self.start, "end": self.end, "steps": self.steps}


def msn_learning_rate(total_steps, warmup_steps=None, start_lr=2e-4, ref_lr=1e-3, final_lr=1e-6):
    """MSN's learning rate: linear warm-up ``start_lr -> ref_lr``, then cosine to ``final_lr``.

    Args:
        total_steps: int, optimizer steps of the whole run.
        warmup_steps: int, warm-up steps; None = 5% of ``total_steps`` (the paper warms
            up for 15 of 300-800 epochs), at least 1 unless the run is one step.
        start_lr, ref_lr, final_lr: the three rates (paper: 2e-4, 1e-3, 1e-6 at batch
            1024; scale ``ref_lr`` with the batch size for smaller runs).

    Example:
    >>> lr = msn_learning_rate(total_steps=100, warmup_steps=10)
    >>> [f"{float(lr(s)):.1e}" for s in (0, 10, 100)]
    ['2.0e-04', '1.0e-03', '1.0e-06']
    """
    total_steps = _check_steps(total_steps, "total_steps")
    if warmup_steps is None:
        warmup_steps = min(max(1, round(0.05 * total_steps)), total_steps - 1)
    if int(warmup_steps) != warmup_steps or not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"`warmup_steps` must be an int in [0, total_steps={total_steps}); "
            f"got {warmup_steps!r}."
        )
    if not 0 <= final_lr <= ref_lr:
        raise ValueError(
            f"Need 0 <= final_lr <= ref_lr; got final_lr={final_lr}, ref_lr={ref_lr}."
        )
    # CosineDecay decays from warmup_target to alpha * warmup_target.
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=float(start_lr),
        decay_steps=int(total_steps - warmup_steps),
        alpha=float(final_lr) / float(ref_lr) if ref_lr else 0.0,
        warmup_target=float(ref_lr),
        warmup_steps=int(warmup_steps),
    )
