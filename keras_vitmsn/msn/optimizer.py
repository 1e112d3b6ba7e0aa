"""MSN's optimizer recipe: :class:`ScheduledAdamW` (``torch.optim.AdamW`` as a Keras
optimizer, :mod:`keras_vitmsn.models.optimizer`) with the authors' warm-up + cosine learning
rate, cosine weight decay and gradient clipping at 3."""

from keras_vitmsn.models.optimizer import ScheduledAdamW
from keras_vitmsn.msn.schedules import msn_learning_rate
from keras_vitmsn.msn.schedules import msn_weight_decay


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
