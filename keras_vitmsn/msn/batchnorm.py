"""BatchNormalization with ``torch.nn.BatchNorm1d``'s training-mode arithmetic.

MSN's projection head is torch's ``BatchNorm1d``; two details differ from Keras'
``BatchNormalization`` and matter for reproducing a training step:

- torch updates ``running_var`` with the UNBIASED batch variance (``n / (n - 1)``
  times the biased one it normalises with); Keras uses the biased one for both.
- the EMA target head of the original runs in training mode under ``no_grad``: batch
  statistics AND a running-statistics update, although none of its weights is
  trainable; a frozen Keras BatchNormalization falls back to its moving averages.

The batch variance is computed in two passes (``mean((x - mean)^2)``), as torch;
``keras.ops.moments`` uses ``E[x^2] - E[x]^2``, whose cancellation costs ~1e-5 on
the head's outputs.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class TorchBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` over the last axis of ``(batch, features)``
    inputs with torch's training-mode statistics.

    Weights, config and inference are those of the Keras layer (so saved heads load
    unchanged); only training differs: the batch is normalised with its biased
    variance, the moving variance is updated with the unbiased one, as torch.

    Call arguments:
        inputs: ``(batch, features)``.
        training: bool; with a trainable layer, torch's training mode (batch
            statistics, moving statistics updated), else the moving averages.
        use_batch_statistics: bool; normalise with the batch's statistics whatever
            ``trainable`` is, updating the moving statistics only when ``training``
            is also True (MSN's target head: ``training=True`` updates them as the
            original's ``no_grad`` training-mode forward does).

    Example:
    >>> import numpy as np
    >>> bn = TorchBatchNormalization(momentum=0.9, epsilon=1e-5)
    >>> x = np.array([[0.0], [2.0]], "float32")
    >>> y = bn(x, training=True)
    >>> [round(float(v), 3) for v in keras.ops.convert_to_numpy(bn.moving_variance)]
    [1.1]
    """

    def call(self, inputs, training=None, use_batch_statistics=False):
        if len(inputs.shape) != 2 or self.axis not in (-1, 1):
            raise ValueError(
                "TorchBatchNormalization normalises (batch, features) inputs over the "
                f"batch axis; got shape {tuple(inputs.shape)} with axis={self.axis}."
            )
        batch_statistics = use_batch_statistics or bool(training and self.trainable)
        update = batch_statistics and bool(training)
        if not batch_statistics:
            return super().call(inputs, training=False)
        x = ops.cast(inputs, "float32")
        # Two passes, as torch: ops.moments' E[x^2] - E[x]^2 loses ~1e-5 to cancellation.
        mean = ops.mean(x, axis=0)
        variance = ops.mean(ops.square(x - mean), axis=0)
        if update:
            count = ops.cast(ops.shape(x)[0], "float32")
            # torch: running_var from the unbiased variance (a batch of one would
            # divide by zero; torch refuses it, here it contributes the biased value).
            unbiased = variance * count / ops.maximum(count - 1.0, 1.0)
            m = self.momentum
            self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * mean)
            self.moving_variance.assign(m * self.moving_variance + (1.0 - m) * unbiased)
        y = (x - mean) * ops.rsqrt(variance + self.epsilon)
        if self.scale:
            y = y * ops.cast(self.gamma, "float32")
        if self.center:
            y = y + ops.cast(self.beta, "float32")
        return ops.cast(y, self.compute_dtype)
