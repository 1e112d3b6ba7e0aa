"""AdamW as ``torch.optim.AdamW``, as a Keras optimizer: the package's default for
training on every backend (the classifier's ``compile`` defaults, ``keras-vitmsn
finetune``, MSN pretraining).

The MSN authors train with ``torch.optim.AdamW``, and transformers fine-tunes with it;
three details differ from Keras' ``AdamW`` and are reproduced by :class:`ScheduledAdamW`:

- epsilon is added to the bias-corrected ``sqrt(v_hat)`` (torch), not to ``sqrt(v)``
  before the bias correction (Keras; equivalent to a step-dependent epsilon), and it
  is 1e-8 (Keras: 1e-7);
- the weight decay may follow a schedule (MSN: cosine 0.04 -> 0.4). Every backend's
  optimizer reads ``self.weight_decay`` once per step when it applies the decoupled
  decay (``v -= lr * wd * v``, before the Adam update, as torch), so a property
  evaluating the schedule at ``self.iterations`` schedules it on JAX, TensorFlow and
  torch alike (a reliance on Keras internals, checked once by
  :func:`keras_vitmsn.backend.keras_internals.optimizer_reads_weight_decay_property`);
- gradient clipping covers what the original clips, ``clip_grad_norm_`` over the
  encoder and head only: variables marked with :meth:`ScheduledAdamW.exclude_from_clipping`
  (the prototypes) are neither clipped nor counted in the norm, and the scale is
  torch's ``max_norm / (norm + 1e-6)``.

On torch it is also the faster optimizer: its update is ``torch.optim.AdamW``'s
in-place kernel sequence (:func:`keras_vitmsn.backend.adam_update`), where Keras'
``AdamW`` on torch writes fresh out-of-place copies of every variable for its
temporaries. vit_msn_small training at batch 8 on 2 CPUs (same-process A/B against
``keras.optimizers.AdamW``): 1.08x on torch, 1.02x on TensorFlow, 1.00x on JAX.
"""

import math
import threading

import keras
from keras import ops

from keras_vitmsn import backend
from keras_vitmsn.backend.keras_internals import VariableIndex
from keras_vitmsn.backend.keras_internals import optimizer_reads_weight_decay_property
from keras_vitmsn.backend.keras_internals import route_batched_update
from keras_vitmsn.backend.replicas import current as current_replicas

TORCH_CLIP_EPSILON = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by norm + 1e-6.


@keras.saving.register_keras_serializable(package="keras_vitmsn")
@route_batched_update
class ScheduledAdamW(keras.optimizers.Optimizer):
    """``torch.optim.AdamW``'s update as a Keras optimizer; ``weight_decay`` may be a
    schedule of the step.

    Built on Keras' public ``Optimizer`` base (which applies the decoupled weight
    decay and ``exclude_from_weight_decay``), with its own moment slots, named and
    ordered as Keras' ``AdamW`` names its own (``..._momentum``, ``..._velocity``).

    Args:
        learning_rate: float or schedule.
        weight_decay: a float, or a ``LearningRateSchedule``-like callable of the
            optimizer step (e.g. :class:`keras_vitmsn.msn.CosineSchedule`).
        beta_1, beta_2: the moments' decay rates (torch's ``betas``).
        epsilon: added to the bias-corrected ``sqrt(v_hat)`` (1e-8, torch's default).
        amsgrad: bool, torch's ``amsgrad``.
        global_clipnorm: clip the global norm of the gradients of every variable not
            excluded with :meth:`exclude_from_clipping` (torch's scale, see the module
            docstring); None = no clipping.
        **kwargs: every other ``keras.optimizers.Optimizer`` argument (``clipnorm`` and
            ``clipvalue`` keep Keras' semantics).

    Example:
    >>> from keras_vitmsn.msn import CosineSchedule
    >>> opt = ScheduledAdamW(learning_rate=1e-3,
    ...                      weight_decay=CosineSchedule(0.04, 0.4, steps=100))
    >>> round(float(opt.weight_decay), 4), opt.epsilon   # at step 0
    (0.04, 1e-08)
    """

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.004,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        amsgrad=False,
        name="scheduled_adamw",
        **kwargs,
    ):
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
        super().__init__(
            learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs
        )
        self._clipping_done = threading.local()
        if self.global_clipnorm and (self.gradient_accumulation_steps or self.loss_scale_factor):
            raise ValueError(
                "ScheduledAdamW clips the gradients it is given in apply(); it cannot "
                "be combined with `gradient_accumulation_steps` or `loss_scale_factor` "
                "(wrap it in keras.optimizers.LossScaleOptimizer for float16 instead)."
            )
        for arg, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
            if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < 1:
                raise ValueError(f"`{arg}` must be a float in (0, 1); got {beta!r}.")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or epsilon < 0:
            raise ValueError(f"`epsilon` must be a float >= 0; got {epsilon!r}.")
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.amsgrad = bool(amsgrad)
        # Set after the base constructor: the property below reads it.
        self._weight_decay_schedule = schedule
        self._clip_exclusions = set()

    @property
    def weight_decay(self):
        schedule = getattr(self, "_weight_decay_schedule", None)
        if schedule is None:
            return self._weight_decay_value
        return schedule(self.iterations)

    @weight_decay.setter
    def weight_decay(self, value):
        self._weight_decay_value = value

    @property
    def global_clipnorm(self):
        # None to Keras' own clipping while apply() hands it gradients this optimizer
        # already clipped. Per thread: tf.distribute traces the replicas' steps in
        # concurrent threads, and one replica's apply() must not switch another's off.
        if getattr(getattr(self, "_clipping_done", None), "value", False):
            return None
        return self._global_clipnorm_value

    @global_clipnorm.setter
    def global_clipnorm(self, value):
        self._global_clipnorm_value = value

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # The model's variables live in the index, not in a list attribute: Keras
        # would track those as this optimizer's own (on JAX, donated twice per step).
        self._variable_index = VariableIndex(
            self, var_list, native_variables=backend.native_variables
        )
        self._exp_avgs, self._exp_avg_sqs = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )
        if self.amsgrad:
            self._max_exp_avg_sqs = self.add_optimizer_variables(var_list, "velocity_hat")

    def moments(self, variable):
        """``(exp_avg, exp_avg_sq)``: the optimizer variables holding ``variable``'s
        first and second moments (torch's names), after the optimizer is built.

        Example:
        >>> opt = ScheduledAdamW(learning_rate=0.1, weight_decay=0.0)
        >>> w = keras.Variable([1.0, 2.0])
        >>> opt.apply([keras.ops.ones((2,))], [w])
        >>> [[round(float(x), 4) for x in keras.ops.convert_to_numpy(m)] for m in opt.moments(w)]
        [[0.1, 0.1], [0.001, 0.001]]
        """
        if not self.built:
            raise ValueError("The optimizer is not built yet: it has no moments.")
        index = self._variable_index(variable)
        return self._exp_avgs[index], self._exp_avg_sqs[index]

    def exclude_from_clipping(self, var_list):
        """Leave these variables' gradients out of the global-norm clipping (neither
        scaled nor counted), as the original leaves out its prototypes."""
        self._clip_exclusions = {id(v) for v in var_list}

    def is_clipped(self, variable):
        """Whether ``variable``'s gradient is counted in, and scaled by, the
        global-norm clipping (a Keras variable, as given to ``apply``)."""
        return bool(self.global_clipnorm) and id(variable) not in self._clip_exclusions

    def apply(self, grads, trainable_variables=None):
        if self.global_clipnorm and len(grads):
            if trainable_variables is None:
                if not self.built:
                    raise ValueError(
                        "Pass `trainable_variables` to the first apply() (the optimizer "
                        "is not built yet)."
                    )
                variables = self._variable_index.variables
            else:
                variables = list(trainable_variables)
            grads = self._clip_global_norm(list(grads), variables)
            # Already clipped: the base class would clip every gradient again, the
            # prototypes' too. Its public attribute is what it reads to decide.
            self._clipping_done.value = True
            try:
                return super().apply(grads, trainable_variables)
            finally:
                self._clipping_done.value = False
        return super().apply(grads, trainable_variables)

    def _clip_global_norm(self, grads, variables):
        # apply() receives Keras variables on every backend: identity matches them.
        clipped = [g is not None and self.is_clipped(v) for g, v in zip(grads, variables)]
        if not any(clipped):
            return grads
        selected = [g for g, c in zip(grads, clipped) if c]
        replicas = current_replicas()
        if replicas.count > 1:
            # Under tf.distribute Keras sums the replicas' gradients after this clipping;
            # the norm to clip is that of the sum. So: sum here, clip, and hand each
            # replica 1 / count of the clipped sum, which Keras' sum restores.
            summed = replicas.sum(selected)
            scaled = backend.clip_by_global_norm(summed, self.global_clipnorm, TORCH_CLIP_EPSILON)
            scaled = iter([g / replicas.count for g in scaled])
        else:
            # Autograd's own buffers (what the torch trainer passes) are scaled in place.
            scaled = iter(
                backend.clip_by_global_norm(
                    selected,
                    self.global_clipnorm,
                    TORCH_CLIP_EPSILON,
                    in_place=backend.autograd_gradients(grads, variables),
                )
            )
        return [next(scaled) if c else g for g, c in zip(grads, clipped)]

    def batched_update(self, grads, variables, learning_rate):
        """The whole step's update at once where the backend has multi-tensor kernels
        (torch: :func:`keras_vitmsn.backend.adam_update`, the arithmetic of
        :meth:`update_step`); returns False to run ``update_step`` per variable."""
        if not backend.batched_updates_available():
            return False
        indices = [self._variable_index(v) for v in variables]
        return backend.adam_update(
            list(variables),
            list(grads),
            [self._exp_avgs[i] for i in indices],
            [self._exp_avg_sqs[i] for i in indices],
            [self._max_exp_avg_sqs[i] for i in indices] if self.amsgrad else None,
            learning_rate,
            self.iterations + 1,
            self.beta_1,
            self.beta_2,
            self.epsilon,
        )

    def update_step(self, gradient, variable, learning_rate):
        # torch.optim.AdamW after the decoupled decay (applied by the base class).
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        # 1 - beta ** step without float32 cancellation (torch computes it in float64).
        bias_correction1 = -ops.expm1(step * math.log(self.beta_1))
        bias_correction2 = -ops.expm1(step * math.log(self.beta_2))
        index = self._variable_index(variable)
        m, v = self._exp_avgs[index], self._exp_avg_sqs[index]
        self.assign_add(m, (gradient - m) * (1 - self.beta_1))
        self.assign_add(v, (ops.square(gradient) - v) * (1 - self.beta_2))
        if self.amsgrad:
            v_hat = self._max_exp_avg_sqs[index]
            self.assign(v_hat, ops.maximum(v_hat, v))
            v = v_hat
        denominator = ops.sqrt(v) / ops.sqrt(bias_correction2) + self.epsilon
        self.assign_sub(variable, (lr / bias_correction1) * m / denominator)

    def get_config(self):
        config = super().get_config()
        config.update(
            beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon, amsgrad=self.amsgrad
        )
        if self._weight_decay_schedule is not None:
            config["weight_decay"] = keras.saving.serialize_keras_object(
                self._weight_decay_schedule
            )
        return config
