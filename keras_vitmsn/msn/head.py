"""MSN projection head and prototypes as Keras layers, loadable from released checkpoints.

The head maps the encoder's CLS feature (after the final LayerNorm) to the space the
prototypes live in: ``fc1 -> bn1 -> GELU -> fc2 -> bn2 -> GELU -> fc3`` (exact GELU,
torch BatchNorm1d statistics), 2048 hidden and 256 output units in every released
model. The prototypes are ``K = 1024`` learnable 256-vectors.

Both load from :func:`keras_vitmsn.load_msn_pretraining_state` (an original
``.pth.tar``, a preset converted from one, or its ``msn_head.weights.h5``); see
``docs/presets.md`` for that layout.
"""

import math

import keras
from keras import ops

from keras_vitmsn.backend.replicas import current as current_replicas
from keras_vitmsn.backend.replicas import global_rows
from keras_vitmsn.layers.core import ViTMSNDense
from keras_vitmsn.layers.core import exact_gelu
from keras_vitmsn.layers.core import kernel_initializer
from keras_vitmsn.msn.head_state import BATCHNORM_EPSILON
from keras_vitmsn.msn.head_state import BATCHNORM_MOMENTUM
from keras_vitmsn.msn.head_state import load_msn_pretraining_state
from keras_vitmsn.msn.loss import l2_normalize

_BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class TorchBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` over the last axis of ``(batch, features)``
    inputs with torch ``BatchNorm1d``'s training-mode statistics.

    Weights, config and inference are those of the Keras layer (so saved heads load
    unchanged); only training differs, as reproducing an MSN step needs: the batch is
    normalised with its biased variance (two passes, ``mean((x - mean)^2)``, as torch)
    and the moving variance is updated with the unbiased one. The original's EMA target
    head runs in training mode under ``no_grad`` (batch statistics and a moving-statistics
    update although nothing in it is trainable): ``use_batch_statistics`` does that.
    The batch statistics are those of the global batch where a ``tf.distribute``
    strategy splits it over replicas (all-reduced, as the authors' ``SyncBatchNorm``).

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
        # Over the global batch where it is split over tf.distribute replicas, as the
        # authors' SyncBatchNorm; all-reduced sums, which gradients flow through.
        replicas = current_replicas()
        count = ops.cast(global_rows(ops.shape(x)[0], replicas), "float32")
        # Two passes, as torch: ops.moments' E[x^2] - E[x]^2 loses ~1e-5 to cancellation.
        mean = replicas.sum(ops.sum(x, axis=0)) / count
        variance = replicas.sum(ops.sum(ops.square(x - mean), axis=0)) / count
        if update:
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


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class MSNProjectionHead(keras.layers.Layer):
    """MSN's projection head: Linear-BN-GELU-Linear-BN-GELU-Linear.

    Initialised as the original (Dense kernels truncated normal with std 0.02, biases
    0; BatchNorm as torch's: epsilon 1e-5, momentum 0.1, i.e. Keras ``momentum=0.9``,
    see :class:`TorchBatchNormalization`).

    Args:
        hidden_dim: int, width of the two hidden layers (2048).
        output_dim: int, output width = prototype size (256).
        input_dim: optional int, the encoder width; when given the head is built at
            once (so weights can be assigned before any call), else on first call.
        use_batch_norm: bool, the BatchNorms after fc1 and fc2 (MSN's ``use_bn``,
            True for every released model).
        batchnorm_epsilon: float, BatchNorm epsilon.
        batchnorm_momentum: float, BatchNorm moving-average momentum (Keras
            convention: ``new = momentum * old + (1 - momentum) * batch``).

    Call arguments:
        features: ``(batch, input_dim)``, e.g. the CLS token of ``last_hidden_state``.
        training: bool; BatchNorm uses batch statistics and updates its moving
            averages (torch's training mode: unbiased variance for the update)
            when True, the moving averages otherwise.
        use_batch_statistics: bool; normalise with the batch's statistics even
            when the head is frozen, updating the moving averages only if
            ``training`` is True too. MSN's EMA target head runs with both (the
            original runs it in training mode under ``torch.no_grad``), while a
            frozen Keras BatchNormalization would use its moving averages.

    Example:
    >>> import numpy as np
    >>> head = MSNProjectionHead(hidden_dim=64, output_dim=16, input_dim=32)
    >>> tuple(head(np.zeros((4, 32), "float32")).shape)
    (4, 16)
    """

    def __init__(
        self,
        hidden_dim=2048,
        output_dim=256,
        input_dim=None,
        use_batch_norm=True,
        batchnorm_epsilon=BATCHNORM_EPSILON,
        batchnorm_momentum=BATCHNORM_MOMENTUM,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("hidden_dim", hidden_dim), ("output_dim", output_dim)):
            if int(value) != value or value < 1:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
        if input_dim is not None and (int(input_dim) != input_dim or input_dim < 1):
            raise ValueError(f"`input_dim` must be a positive int or None; got {input_dim!r}.")
        self.hidden_dim = int(hidden_dim)
        self.output_dim = int(output_dim)
        self.input_dim = None if input_dim is None else int(input_dim)
        self.use_batch_norm = bool(use_batch_norm)
        self.batchnorm_epsilon = float(batchnorm_epsilon)
        self.batchnorm_momentum = float(batchnorm_momentum)

        def dense(units, name):
            return ViTMSNDense(
                units,
                kernel_initializer=kernel_initializer(),
                bias_initializer="zeros",
                dtype=self.dtype_policy,
                name=name,
            )

        def batch_norm(name):
            if not self.use_batch_norm:
                return None
            return TorchBatchNormalization(
                epsilon=self.batchnorm_epsilon,
                momentum=self.batchnorm_momentum,
                dtype=self.dtype_policy,
                name=name,
            )

        # Names match the checkpoint layout (fc1, bn1, ...), so errors name both alike.
        self.fc1 = dense(self.hidden_dim, "fc1")
        self.bn1 = batch_norm("bn1")
        self.fc2 = dense(self.hidden_dim, "fc2")
        self.bn2 = batch_norm("bn2")
        self.fc3 = dense(self.output_dim, "fc3")
        if self.input_dim is not None:
            self.build((None, self.input_dim))

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError("The feature size (last axis) must be known to build the head.")
        if self.input_dim is not None and input_dim != self.input_dim:
            raise ValueError(
                f"This head takes {self.input_dim}-dimensional features; got shape "
                f"{tuple(input_shape)}."
            )
        self.input_dim = int(input_dim)
        self.fc1.build((None, self.input_dim))
        self.fc2.build((None, self.hidden_dim))
        self.fc3.build((None, self.hidden_dim))
        for bn in (self.bn1, self.bn2):
            if bn is not None:
                bn.build((None, self.hidden_dim))
        self.built = True

    def call(self, features, training=None, use_batch_statistics=False):
        if features.shape[-1] not in (None, self.input_dim):
            raise ValueError(
                f"This head takes {self.input_dim}-dimensional features; got shape "
                f"{tuple(features.shape)}."
            )
        x = self.fc1(features)
        x = self._normalize(self.bn1, x, training, use_batch_statistics)
        # Exact (erf) GELU, as torch.nn.GELU() in the original head.
        x = exact_gelu(x)
        x = self.fc2(x)
        x = self._normalize(self.bn2, x, training, use_batch_statistics)
        x = exact_gelu(x)
        return self.fc3(x)

    @staticmethod
    def _normalize(bn, x, training, use_batch_statistics):
        if bn is None:
            return x
        return bn(x, training=training, use_batch_statistics=use_batch_statistics)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def set_msn_weights(self, head_state):
        """Assign the ``{"fc1/kernel": ..., "bn1/gamma": ..., ...}`` arrays of
        ``load_msn_pretraining_state(path)["head"]`` (builds the head if needed).

        Raises:
            ValueError: missing or unexpected entries, or a shape that does not match
                this head, listed by name.
        """
        if not head_state:
            raise ValueError(
                "The pretraining state has no projection head (state['head'] is empty)."
            )
        if not self.built:
            self.build((None, _shape(head_state, "fc1/kernel")[0]))
        expected = self._expected_shapes()
        missing = sorted(set(expected) - set(head_state))
        unexpected = sorted(set(head_state) - set(expected))
        wrong = [
            f"{k}: state {tuple(head_state[k].shape)}, head {expected[k]}"
            for k in sorted(set(expected) & set(head_state))
            if tuple(head_state[k].shape) != expected[k]
        ]
        if missing or unexpected or wrong:
            hint = ""
            if not self.use_batch_norm and any(k.startswith("bn") for k in unexpected):
                hint = " (the state has BatchNorm entries: build with use_batch_norm=True)"
            elif (
                self.use_batch_norm
                and any(k.startswith("bn") for k in missing)
                and not any(k.startswith("bn") for k in head_state)
            ):
                hint = " (the state has no BatchNorm: build with use_batch_norm=False)"
            raise ValueError(
                "The MSN head state does not fit this MSNProjectionHead"
                f"{hint}: missing {missing or 'nothing'}, unexpected "
                f"{unexpected or 'nothing'}, shape mismatches {wrong or 'none'}."
            )
        for name in ("fc1", "fc2", "fc3"):
            layer = getattr(self, name)
            layer.kernel.assign(head_state[f"{name}/kernel"])
            layer.bias.assign(head_state[f"{name}/bias"])
        for name in ("bn1", "bn2"):
            layer = getattr(self, name)
            if layer is not None:
                for param in _BN_PARAMS:
                    getattr(layer, param).assign(head_state[f"{name}/{param}"])

    def _expected_shapes(self):
        shapes = {
            "fc1/kernel": (self.input_dim, self.hidden_dim),
            "fc1/bias": (self.hidden_dim,),
            "fc2/kernel": (self.hidden_dim, self.hidden_dim),
            "fc2/bias": (self.hidden_dim,),
            "fc3/kernel": (self.hidden_dim, self.output_dim),
            "fc3/bias": (self.output_dim,),
        }
        if self.use_batch_norm:
            for name in ("bn1", "bn2"):
                shapes.update({f"{name}/{p}": (self.hidden_dim,) for p in _BN_PARAMS})
        return shapes

    @classmethod
    def from_pretraining_state(cls, state, **kwargs):
        """A head shaped and initialised from an MSN pretraining state.

        Args:
            state: the dict of ``load_msn_pretraining_state``, or a path for it (an
                original ``.pth.tar``, a converted preset directory, an ``.h5``).
            **kwargs: other layer arguments (``name``, ``dtype``, ...).

        Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> head_state = {f"fc{i}/{p}": rng.standard_normal(s).astype("float32")
        ...               for i, (din, dout) in {1: (8, 16), 2: (16, 16), 3: (16, 4)}.items()
        ...               for p, s in (("kernel", (din, dout)), ("bias", (dout,)))}
        >>> head = MSNProjectionHead.from_pretraining_state({"head": head_state})
        >>> (head.input_dim, head.hidden_dim, head.output_dim, head.use_batch_norm)
        (8, 16, 4, False)
        """
        state = _as_state(state)
        head_state = state.get("head")
        if not head_state:
            raise ValueError(
                "The pretraining state has no projection head (state['head'] is empty)."
            )
        fc1, fc3 = _shape(head_state, "fc1/kernel"), _shape(head_state, "fc3/kernel")
        config = dict(
            hidden_dim=fc1[1],
            output_dim=fc3[1],
            input_dim=fc1[0],
            use_batch_norm=any(k.startswith("bn") for k in head_state),
            batchnorm_epsilon=state.get("batchnorm_epsilon", BATCHNORM_EPSILON),
            batchnorm_momentum=state.get("batchnorm_momentum", BATCHNORM_MOMENTUM),
        )
        activation = state.get("activation", "gelu")
        if activation != "gelu":
            raise ValueError(
                f"Only exact-GELU MSN heads are supported; the state says {activation!r}."
            )
        config.update(kwargs)
        head = cls(**config)
        head.set_msn_weights(head_state)
        return head

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            output_dim=self.output_dim,
            input_dim=self.input_dim,
            use_batch_norm=self.use_batch_norm,
            batchnorm_epsilon=self.batchnorm_epsilon,
            batchnorm_momentum=self.batchnorm_momentum,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_vitmsn")
class MSNPrototypes(keras.layers.Layer):
    """``K`` learnable prototypes ``(K, dim)``, initialised uniform(+-1/sqrt(dim)).

    The loss takes the variable itself (``layer.prototypes``) and L2-normalises it;
    calling the layer gives the cosine similarities of embeddings with the prototypes,
    ``normalize(x) normalize(q)^T`` ``(batch, K)`` (e.g. for prototype assignments).

    Args:
        num_prototypes: int, ``K`` (1024).
        dim: int, prototype size = the head's ``output_dim`` (256).

    Example:
    >>> import numpy as np
    >>> protos = MSNPrototypes(num_prototypes=10, dim=4)
    >>> tuple(protos.prototypes.shape), tuple(protos(np.ones((3, 4), "float32")).shape)
    ((10, 4), (3, 10))
    """

    def __init__(self, num_prototypes=1024, dim=256, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("num_prototypes", num_prototypes), ("dim", dim)):
            if int(value) != value or value < 1:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
        self.num_prototypes = int(num_prototypes)
        self.dim = int(dim)
        # The variable exists from construction: the pretrainer and the loaders use it
        # before any call.
        self.build(None)

    def build(self, input_shape=None):
        limit = 1.0 / math.sqrt(self.dim)
        self.prototypes = self.add_weight(
            shape=(self.num_prototypes, self.dim),
            initializer=keras.initializers.RandomUniform(-limit, limit),
            name="prototypes",
        )
        self.built = True

    def call(self, embeddings):
        if embeddings.shape[-1] not in (None, self.dim):
            raise ValueError(
                f"Embeddings must have {self.dim} features to compare with the "
                f"prototypes; got shape {tuple(embeddings.shape)}."
            )
        return ops.matmul(l2_normalize(embeddings), ops.transpose(l2_normalize(self.prototypes)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_prototypes,)

    def set_msn_weights(self, prototypes):
        """Assign a ``(K, dim)`` array (``load_msn_pretraining_state(path)["prototypes"]``)."""
        if prototypes is None:
            raise ValueError("The pretraining state has no prototypes.")
        shape = tuple(prototypes.shape)
        if shape != (self.num_prototypes, self.dim):
            raise ValueError(
                f"Prototypes of shape {shape} do not fit this layer "
                f"({self.num_prototypes}, {self.dim})."
            )
        self.prototypes.assign(prototypes)

    @classmethod
    def from_pretraining_state(cls, state, **kwargs):
        """Prototypes shaped and initialised from ``load_msn_pretraining_state``'s dict
        (or a path for it)."""
        state = _as_state(state)
        prototypes = state.get("prototypes")
        if prototypes is None:
            raise ValueError("The pretraining state has no prototypes.")
        if len(prototypes.shape) != 2:
            raise ValueError(f"Prototypes must be (K, dim); got shape {tuple(prototypes.shape)}.")
        layer = cls(num_prototypes=prototypes.shape[0], dim=prototypes.shape[1], **kwargs)
        layer.set_msn_weights(prototypes)
        return layer

    def get_config(self):
        config = super().get_config()
        config.update(num_prototypes=self.num_prototypes, dim=self.dim)
        return config


def head_and_prototypes_from_state(state, dtype=None):
    """``(MSNProjectionHead, MSNPrototypes)`` initialised from an MSN pretraining state.

    Args:
        state: a path (original ``.pth.tar``, converted preset directory or its
            ``msn_head.weights.h5``) or the dict of
            :func:`keras_vitmsn.load_msn_pretraining_state`.
        dtype: optional dtype policy for both layers.

    Example (not run: needs a checkpoint):
        head, prototypes = head_and_prototypes_from_state("vits16_800ep.pth.tar")
    """
    state = _as_state(state)
    kwargs = {} if dtype is None else {"dtype": dtype}
    head = MSNProjectionHead.from_pretraining_state(state, name="msn_projection_head", **kwargs)
    prototypes = MSNPrototypes.from_pretraining_state(state, name="msn_prototypes", **kwargs)
    if head.output_dim != prototypes.dim:
        raise ValueError(
            f"The head outputs {head.output_dim} features but the prototypes have {prototypes.dim}."
        )
    return head, prototypes


def _as_state(state):
    if isinstance(state, dict):
        return state
    return load_msn_pretraining_state(state)


def _shape(head_state, key):
    if key not in head_state:
        raise ValueError(f"The MSN head state has no {key!r} (keys: {sorted(head_state)}).")
    shape = tuple(head_state[key].shape)
    if len(shape) != 2:
        raise ValueError(f"{key!r} must be a 2D (in, out) kernel; got shape {shape}.")
    return shape
