"""The replicas a training step runs on, for statistics over the GLOBAL batch.

MSN's me-max regulariser, its Sinkhorn balancing and the projection head's BatchNorm
are statistics of the whole batch: the authors' code all-reduces them over every GPU
(``torch.distributed`` and ``SyncBatchNorm``). How a Keras step sees the batch depends on
the backend's distribution:

- one device, or ``keras.distribution.DataParallel`` on JAX: the step holds the whole
  batch (JAX's arrays are global, sharded arrays), so a plain ``ops.mean`` over axis 0
  is already the global statistic: :data:`SINGLE`;
- ``tf.distribute`` strategies (``MirroredStrategy``, ...) on TensorFlow: each replica
  runs the step on its own consecutive slice of the global batch, and every statistic
  must be summed over the replicas: :class:`TensorFlowReplicas`.

:func:`current` says which of the two a step is in. The interface is small on purpose:
``count`` (an int, known when the step is traced), ``index`` (this replica's position,
a scalar tensor), ``sum`` (an all-reduce that gradients flow through: the gradient of an
all-reduced sum is the all-reduced sum of the gradients) and ``gather`` (the replicas'
tensors concatenated along axis 0, in replica order; no gradient; the replicas may hold
different numbers of rows, as the two parts of an odd last batch) and ``offset`` (the
rows the replicas before this one hold).
"""

import keras


class SingleDevice:
    """The step sees the whole batch: every reduction is the identity.

    Example:
    >>> SINGLE.count, SINGLE.sum(3.0), SINGLE.gather([1, 2])
    (1, 3.0, [1, 2])
    """

    count = 1
    index = 0

    @staticmethod
    def sum(x):
        return x

    @staticmethod
    def gather(x):
        return x

    @staticmethod
    def offset(local_rows):
        return 0


SINGLE = SingleDevice()


class TensorFlowReplicas:
    """The replicas of a ``tf.distribute`` strategy, seen from inside one of them
    (``ReplicaContext.all_reduce`` and ``all_gather``)."""

    def __init__(self, context):
        self._context = context
        self.count = int(context.num_replicas_in_sync)

    @property
    def index(self):
        return self._context.replica_id_in_sync_group

    def sum(self, x):
        import tensorflow as tf

        return self._context.all_reduce(tf.distribute.ReduceOp.SUM, x)

    def gather(self, x):
        return self._context.all_gather(keras.ops.stop_gradient(x), axis=0)

    def offset(self, local_rows):
        """How many rows of the global batch the replicas before this one hold."""
        import tensorflow as tf

        sizes = self.gather(tf.reshape(tf.cast(local_rows, "int32"), (1,)))
        before = tf.range(self.count) < tf.cast(self.index, "int32")
        return tf.reduce_sum(tf.where(before, sizes, 0))


def current():
    """The replicas of the step being traced: :data:`SINGLE`, or a
    :class:`TensorFlowReplicas` inside a ``tf.distribute`` replica context with more
    than one replica in sync.

    Example:
    >>> current().count    # no strategy: one device
    1
    """
    if keras.backend.backend() != "tensorflow":
        return SINGLE
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return SINGLE
    context = tf.distribute.get_replica_context()
    # None in a cross-replica context (e.g. Keras building the model under the
    # strategy's scope): that code runs once for all replicas, on no batch slice.
    if context is None or context.num_replicas_in_sync == 1:
        return SINGLE
    return TensorFlowReplicas(context)


def global_rows(local_rows, replicas):
    """The number of rows all replicas hold together (an int32 scalar tensor, or
    ``local_rows`` itself on one device).

    Example:
    >>> global_rows(8, SINGLE)
    8
    """
    if replicas.count == 1:
        return local_rows
    return replicas.sum(keras.ops.cast(local_rows, "int32"))


def local_rows(x, replicas, local_batch):
    """This replica's ``local_batch`` consecutive rows of ``x``, a tensor over the
    global batch (every replica's rows, in replica order).

    Example:
    >>> import numpy as np
    >>> keras.ops.convert_to_numpy(local_rows(np.arange(4), SINGLE, 4)).tolist()
    [0, 1, 2, 3]
    """
    if replicas.count == 1:
        return x
    start = replicas.offset(local_batch)
    return keras.ops.take(x, keras.ops.arange(local_batch) + start, axis=0)
