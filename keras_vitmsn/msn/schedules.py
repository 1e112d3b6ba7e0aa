"""Step schedules of MSN pretraining: learning rate, weight decay, EMA momentum, sharpening.

The authors' recipe (``msn_train.py``), expressed per optimizer step ``t = 0, 1, ...``
of a run of ``S`` steps:

- learning rate: linear warm-up ``start_lr -> ref_lr`` over ``W`` steps, then cosine
  ``ref_lr -> final_lr`` (:class:`WarmupCosineSchedule`);
- weight decay: cosine ``0.04 -> 0.4`` (:class:`CosineSchedule`);
- EMA momentum of the target encoder: linear ``0.996 -> 1.0``, and the sharpening
  temperature: linear ``start -> final`` (:class:`LinearSchedule`).

Step convention, as the original: its learning-rate and weight-decay schedulers are
advanced BEFORE each update, so update ``t`` uses their value at ``t + 1`` (the
``offset=1`` of :func:`msn_learning_rate` and :func:`msn_weight_decay`); the momentum
and sharpening generators yield their value at ``t``.

Schedule stretch: the original builds every schedule over ``ipe_scale = 1.25`` times
the run (``int(1.25 * epochs * iterations_per_epoch)`` steps) and stops at 80% of it,
so the learning rate never reaches ``final_lr`` nor the momentum 1. Here
``ipe_scale`` defaults to 1.0 (the schedules span the run); pass
``ipe_scale=ORIGINAL_IPE_SCALE`` to reproduce the original exactly.
"""

import math

import keras
from keras import ops

ORIGINAL_IPE_SCALE = 1.25


def _check_steps(steps, name="steps", integer=True):
    if (
        isinstance(steps, bool)
        or not isinstance(steps, (int, float))
        or not steps > 0
        or (integer and int(steps) != steps)
        or not math.isfinite(steps)
    ):
        kind = "a positive int" if integer else "a positive number"
        raise ValueError(f"`{name}` must be {kind}; got {steps!r}.")
    return int(steps) if integer else float(steps)


def _check_offset(offset):
    if isinstance(offset, bool) or int(offset) != offset or offset < 0:
        raise ValueError(f"`offset` must be an int >= 0; got {offset!r}.")
    return int(offset)


def _position(step, offset):
    return ops.cast(step, "float32") + float(offset)


def scaled_steps(total_steps, ipe_scale=1.0):
    """Steps a schedule spans: ``int(ipe_scale * total_steps)`` as the original.

    Example:
    >>> scaled_steps(1000), scaled_steps(1000, ORIGINAL_IPE_SCALE)
    (1000, 1250)
    """
    total_steps = _check_steps(total_steps, "total_steps")
    if not isinstance(ipe_scale, (int, float)) or isinstance(ipe_scale, bool) or ipe_scale < 1:
        raise ValueError(
            f"`ipe_scale` must be a number >= 1 (the original used {ORIGINAL_IPE_SCALE}); "
            f"got {ipe_scale!r}."
        )
    return int(ipe_scale * total_steps)


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class LinearSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``start + (end - start) * min(step / steps, 1)``: MSN's EMA momentum schedule.

    ``steps`` may be fractional: the original's momentum increment is
    ``(end - start) / (1.25 * steps_of_the_run)``.

    Example:
    >>> schedule = LinearSchedule(0.996, 1.0, steps=100)
    >>> [round(float(schedule(s)), 4) for s in (0, 50, 100, 200)]
    [0.996, 0.998, 1.0, 1.0]
    """

    def __init__(self, start, end, steps):
        self.start = float(start)
        self.end = float(end)
        self.steps = _check_steps(steps, integer=False)

    def __call__(self, step):
        progress = ops.clip(ops.cast(step, "float32") / self.steps, 0.0, 1.0)
        return self.start + (self.end - self.start) * progress

    def get_config(self):
        return {"start": self.start, "end": self.end, "steps": self.steps}


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class CosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Half-cosine from ``start`` (position 0) to ``end`` (position ``steps`` and after).

    ``end + (start - end) * (1 + cos(pi * min(p / steps, 1))) / 2`` at position
    ``p = step + offset``: MSN's weight-decay schedule (``start=0.04``, ``end=0.4``: it
    rises; ``offset=1`` as the original, see the module docstring).

    Example:
    >>> schedule = CosineSchedule(0.04, 0.4, steps=100)
    >>> [round(float(schedule(s)), 4) for s in (0, 50, 100)]
    [0.04, 0.22, 0.4]
    """

    def __init__(self, start, end, steps, offset=0):
        self.start = float(start)
        self.end = float(end)
        self.steps = _check_steps(steps)
        self.offset = _check_offset(offset)

    def __call__(self, step):
        progress = ops.clip(_position(step, self.offset) / self.steps, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        return self.end + (self.start - self.end) * cosine

    def get_config(self):
        return {"start": self.start, "end": self.end, "steps": self.steps, "offset": self.offset}


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class WarmupCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up ``start_lr -> ref_lr`` over ``warmup_steps``, then cosine to ``final_lr``.

    At position ``p = step + offset``: ``start_lr + (ref_lr - start_lr) * p / W`` while
    ``p < W``, then ``final_lr + (ref_lr - final_lr) * (1 + cos(pi * q)) / 2`` with
    ``q = min((p - W) / (steps - W), 1)``: the original's ``WarmupCosineSchedule``
    (which is not clamped past ``steps``; runs never get there).

    Example:
    >>> lr = WarmupCosineSchedule(2e-4, 1e-3, 1e-6, warmup_steps=10, steps=100)
    >>> [f"{float(lr(s)):.1e}" for s in (0, 10, 100)]
    ['2.0e-04', '1.0e-03', '1.0e-06']
    """

    def __init__(self, start_lr, ref_lr, final_lr, warmup_steps, steps, offset=0):
        self.steps = _check_steps(steps)
        if (
            isinstance(warmup_steps, bool)
            or int(warmup_steps) != warmup_steps
            or not 0 <= warmup_steps < self.steps
        ):
            raise ValueError(
                f"`warmup_steps` must be an int in [0, steps={self.steps}); got {warmup_steps!r}."
            )
        if not 0 <= final_lr <= ref_lr:
            raise ValueError(
                f"Need 0 <= final_lr <= ref_lr; got final_lr={final_lr}, ref_lr={ref_lr}."
            )
        self.start_lr = float(start_lr)
        self.ref_lr = float(ref_lr)
        self.final_lr = float(final_lr)
        self.warmup_steps = int(warmup_steps)
        self.offset = _check_offset(offset)

    def __call__(self, step):
        position = _position(step, self.offset)
        warmup = float(max(1, self.warmup_steps))
        warming = self.start_lr + (self.ref_lr - self.start_lr) * position / warmup
        progress = ops.clip(
            (position - self.warmup_steps) / float(self.steps - self.warmup_steps), 0.0, 1.0
        )
        cosine = self.final_lr + (self.ref_lr - self.final_lr) * 0.5 * (
            1.0 + ops.cos(math.pi * progress)
        )
        return ops.where(position < self.warmup_steps, warming, cosine)

    def get_config(self):
        return {
            "start_lr": self.start_lr,
            "ref_lr": self.ref_lr,
            "final_lr": self.final_lr,
            "warmup_steps": self.warmup_steps,
            "steps": self.steps,
            "offset": self.offset,
        }


def default_warmup_steps(total_steps):
    """The msn_vits16 recipe's share of warm-up (15 of 800 epochs), at least one step
    unless the run is a single step.

    Example:
    >>> default_warmup_steps(8000), default_warmup_steps(10)
    (150, 1)
    """
    total_steps = _check_steps(total_steps, "total_steps")
    return min(max(1, round(total_steps * 15 / 800)), total_steps - 1)


def msn_learning_rate(
    total_steps,
    warmup_steps=None,
    start_lr=2e-4,
    ref_lr=1e-3,
    final_lr=1e-6,
    ipe_scale=1.0,
):
    """MSN's learning rate: linear warm-up ``start_lr -> ref_lr``, then cosine to ``final_lr``.

    Update ``t`` (0-based) uses the value at ``t + 1``, as the original.

    Args:
        total_steps: int, optimizer steps of the whole run.
        warmup_steps: int, warm-up steps; None = :func:`default_warmup_steps`.
        start_lr, ref_lr, final_lr: the three rates (paper: 2e-4, 1e-3, 1e-6 at batch
            1024).
        ipe_scale: the schedule spans ``int(ipe_scale * total_steps)`` steps (the
            original: 1.25, see the module docstring).

    Example:
    >>> lr = msn_learning_rate(total_steps=100, warmup_steps=10)
    >>> [f"{float(lr(t)):.2e}" for t in (0, 9, 99)]   # updates 1, 10 and 100
    ['2.80e-04', '1.00e-03', '1.00e-06']
    """
    steps = scaled_steps(total_steps, ipe_scale)
    if warmup_steps is None:
        warmup_steps = default_warmup_steps(total_steps)
    if (
        isinstance(warmup_steps, bool)
        or int(warmup_steps) != warmup_steps
        or not 0 <= warmup_steps < total_steps
    ):
        raise ValueError(
            f"`warmup_steps` must be an int in [0, total_steps={total_steps}); "
            f"got {warmup_steps!r}."
        )
    return WarmupCosineSchedule(start_lr, ref_lr, final_lr, warmup_steps, steps, offset=1)


def msn_weight_decay(total_steps, start=0.04, final=0.4, ipe_scale=1.0):
    """MSN's weight decay: cosine ``start -> final`` over the run; update ``t`` uses the
    value at ``t + 1``, as the original.

    Example:
    >>> wd = msn_weight_decay(total_steps=100)
    >>> round(float(wd(99)), 4)   # the 100th update
    0.4
    """
    return CosineSchedule(start, final, scaled_steps(total_steps, ipe_scale), offset=1)
