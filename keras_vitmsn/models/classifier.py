"""ViTMSNClassifier: a Dense head on the CLS token (transformers' ViTMSNForImageClassification)."""

import keras
from keras import ops

from keras_vitmsn.errors import MissingHeadError
from keras_vitmsn.layers.core import ViTMSNDense
from keras_vitmsn.layers.core import kernel_initializer
from keras_vitmsn.models.class_names import check_class_names
from keras_vitmsn.models.optimizer import ScheduledAdamW
from keras_vitmsn.models.quantization import resolved_policy_map
from keras_vitmsn.models.task import ViTMSNTask
from keras_vitmsn.presets.mixin import register_preset_class
from keras_vitmsn.utils import default_name
from keras_vitmsn.utils import positive_int


@register_preset_class("classifier")
@keras.saving.register_keras_serializable(package="keras_vitmsn")
class ViTMSNClassifier(ViTMSNTask):
    """Image classifier: ``Dense(num_classes)`` on the final CLS token of a backbone.

    The model is compiled on construction (unless ``compile=False``) so ``fit``
    works at once: torch's AdamW
    (:class:`keras_vitmsn.models.optimizer.ScheduledAdamW`, the update transformers fine-tunes
    with, on every backend; learning rate 5e-5, weight decay 0.01), sparse
    categorical cross-entropy (``from_logits`` when ``activation`` is None) and
    accuracy; with ``num_classes=1`` it is a regressor trained with mean squared
    error. Call ``compile`` again for other choices. Logits are returned in float32
    under every dtype policy, so losses stay stable under mixed precision.

    Args:
        backbone: a :class:`ViTMSNBackbone`.
        num_classes: positive int, outputs of the head (1 means regression).
        activation: None (logits), "softmax", or any Keras activation.
        dropout: float, dropout on the CLS feature before the head.
        interpolate_pos_encoding: bool, accept images of another size than the
            backbone's ``image_shape`` (e.g. fine-tune at 384 px from a 224 px model).
        preprocessor: None (the model takes images already resized and normalised) or
            a :class:`keras_vitmsn.models.preprocessor.ViTMSNImageClassifierPreprocessor`
            (or a :class:`keras_vitmsn.ViTMSNImageConverter`, wrapped in one) applied
            at the start of ``call``, so raw uint8 images can be passed. It takes
            ``(x, y=None, sample_weight=None)``, so ``ds.map(clf.preprocessor)``
            feeds a classifier built with ``preprocessor=None``. Its
            ``data_format`` must be the backbone's. ``from_preset`` attaches the
            preset's converter; pass ``preprocessor=None`` there to leave
            preprocessing to your input pipeline (e.g.
            ``tf.data.Dataset.map(preprocessor)``).
        compile: bool, compile with the defaults above (keras-hub's ``Task``
            argument); with False, ``fit`` asks for ``compile()`` first.
        class_names: None (unknown) or one string per output, e.g. the folder names
            of the training set. Stored in the config, so they travel inside
            ``.keras`` files and presets (``task.json``); ``from_preset`` reads them
            from a transformers checkpoint's ``id2label``. See
            :func:`keras_vitmsn.decode_predictions`.
        dtype: dtype policy of the head; defaults to the backbone's.

    Example:
    >>> import numpy as np
    >>> import keras_vitmsn as kv
    >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8, hidden_dim=64,
    ...                              num_layers=2, num_heads=4, intermediate_dim=128)
    >>> clf = ViTMSNClassifier(backbone=backbone, num_classes=10)
    >>> tuple(clf(np.zeros((2, 32, 32, 3), "float32")).shape)
    (2, 10)
    >>> history = clf.fit(np.zeros((4, 32, 32, 3), "float32"), np.arange(4), verbose=0)
    >>> named = ViTMSNClassifier(backbone, num_classes=2, class_names=["cat", "dog"])
    >>> named.class_names
    ['cat', 'dog']
    """

    #: ``from_preset`` arguments of the classifier; the others go to the backbone.
    preset_arguments = (
        "num_classes",
        "activation",
        "dropout",
        "interpolate_pos_encoding",
        "class_names",
        "compile",
    )

    def __init__(
        self,
        backbone,
        num_classes,
        activation=None,
        dropout=0.0,
        interpolate_pos_encoding=False,
        preprocessor=None,
        class_names=None,
        dtype=None,
        name=None,
        compile=True,
        **kwargs,
    ):
        super().__init__(
            backbone,
            preprocessor=preprocessor,
            interpolate_pos_encoding=interpolate_pos_encoding,
            dtype=dtype,
            name=default_name(name, "vit_msn_classifier"),
            **kwargs,
        )
        self.num_classes = positive_int(num_classes, "num_classes")
        self.class_names = class_names
        self.activation = keras.activations.get(activation)
        self.dropout = float(dropout)
        self.head_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="head_dropout"
        )
        self.classifier = ViTMSNDense(
            self.num_classes,
            kernel_initializer=kernel_initializer(),
            dtype=self.dtype_policy,
            name="classifier",
        )
        # The input shape is recorded (Keras' `_build_shapes_dict`) for TensorFlow's
        # SavedModel tracing of this model; the variables do not depend on it.
        self.build(self.export_input_signature()[0].shape)
        self._apply_trainable()
        if compile:
            self._compile_defaults()

    def build(self, input_shape=None):
        # Every sublayer is built with a shape (not None), so that summary() can show
        # each one's output shape.
        with resolved_policy_map(self):  # a quantised model's config: see quantization.py
            if self.preprocessor is not None:
                self.preprocessor.build(self.export_input_signature()[0].shape)
            feature_shape = (None, self.backbone.hidden_dim)
            self.head_dropout.build(feature_shape)
            self.classifier.build(feature_shape)
        self.built = True

    @property
    def class_names(self):
        """The names of the outputs (a new list each time), or None when unknown."""
        return None if self._class_names is None else list(self._class_names)

    @class_names.setter
    def class_names(self, names):
        # A tuple: Keras would track a list attribute as a layer container.
        self._class_names = check_class_names(names, self.num_classes)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def compute_output_spec(self, images, training=None):
        return keras.KerasTensor(self.compute_output_shape(images.shape), dtype="float32")

    def call(self, images, training=None):
        if self.preprocessor is not None:
            images = self.preprocessor(images)
        outputs = self.backbone(
            images,
            interpolate_pos_encoding=self.interpolate_pos_encoding,
            training=training,
        )
        cls = outputs["last_hidden_state"][:, 0, :]
        logits = self.classifier(self.head_dropout(cls, training=training))
        return ops.cast(self.activation(logits), "float32")

    def fit(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.fit``, after checking that class labels lie in
        ``[0, num_classes)``: NumPy and tensor labels at once, a ``tf.data``
        dataset's labels as its batches are read. (Out of range, torch and
        TensorFlow fail inside the loss, but a compiled JAX step cannot raise and
        would train on them.) Regressors (``num_classes=1``) are not checked."""
        if self.num_classes > 1:
            if y is not None:
                _check_labels(y, self.num_classes)
            elif _is_tf_dataset(x):
                x = _checked_dataset(x, self.num_classes)
        try:
            return super().fit(x, y, *args, **kwargs)
        except Exception as e:
            label = _bad_label_in(e)
            if label is None:
                raise
            raise ValueError(_label_message(label, self.num_classes)) from None

    def _compile_defaults(self):
        # Not an override of `compile`: Keras only restores the compile state of a
        # loaded model whose class keeps Model.compile.
        if self.num_classes == 1:
            loss, metrics = keras.losses.MeanSquaredError(), []
        else:
            from_logits = self.activation is keras.activations.linear
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
            metrics = [keras.metrics.SparseCategoricalAccuracy()]
        self.compile(
            optimizer=ScheduledAdamW(learning_rate=5e-5, weight_decay=0.01),
            loss=loss,
            metrics=metrics,
        )

    def compile_from_config(self, config):
        # A saved jit_compile is the saving backend's resolution of "auto" (True on
        # JAX): under TensorFlow it would XLA-compile the converter's antialiased
        # resize, which has no XLA kernel, and under torch it turns on torch.compile.
        # Whether to compile is the loading backend's choice.
        config = dict(config)
        config.pop("jit_compile", None)
        return super().compile_from_config(config)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            activation=keras.activations.serialize(self.activation),
            dropout=self.dropout,
            class_names=self.class_names,
        )
        return config

    @classmethod
    def _preset_task_kwargs(cls, source, overrides, backbone_kwargs):
        """The preset's head (and class names) when it has one and ``num_classes`` is
        not given, otherwise a new ``num_classes`` head, whose class names are
        ``class_names`` or unknown (a new head's outputs are not the old classes).
        ``class_names`` alone on a preset without a head sets ``num_classes`` to their
        count."""
        num_classes = overrides.pop("num_classes", None)
        fresh_head = num_classes is not None or not source.has_task
        class_names = overrides.get("class_names")
        named = class_names is not None
        if named:
            class_names = overrides["class_names"] = check_class_names(class_names, None)
        if num_classes is None and not source.has_task and named:
            num_classes = len(class_names)
        if num_classes is None:
            num_classes = source.num_classes
        if num_classes is None:
            raise MissingHeadError(
                f"The preset {source.origin} has no classification head: pass "
                "`num_classes` (or `class_names`) to build a new one, e.g. "
                "ViTMSNClassifier.from_preset(preset, num_classes=10)."
            )
        if named and not fresh_head and len(class_names) != num_classes:
            raise ValueError(
                f"`class_names` has {len(class_names)} names but the head of {source.origin} "
                f"has {num_classes} classes; to train a new head for these classes pass "
                f"num_classes={len(class_names)} as well."
            )
        task_kwargs = {} if fresh_head else dict(source.task_kwargs)
        task_kwargs.pop("name", None)
        # Present only for a quantised head: which of its layers are quantised.
        head_dtype = task_kwargs.pop("dtype", None)
        task_kwargs.update(overrides)
        task_kwargs["num_classes"] = num_classes
        task_kwargs["dtype"] = backbone_kwargs.get("dtype") or head_dtype
        return task_kwargs, not fresh_head


# The tag a label check in a tf.data pipeline puts in its error, so that `fit` can
# raise a ValueError (tf.data wraps every error of a pipeline in its own type).
_LABEL_TAG = "keras_vitmsn-bad-label:"


def _label_message(label, num_classes):
    return (
        f"Found label {label} outside the accepted range [0, {num_classes}) of this "
        f"classifier's {num_classes} classes. Labels are class indices; to train on "
        "more classes, build the classifier with a larger `num_classes`."
    )


def _check_labels(y, num_classes):
    if not hasattr(y, "shape") or not hasattr(y, "dtype"):
        return
    labels = ops.convert_to_numpy(y)
    if labels.dtype.kind not in "iuf" or labels.size == 0:
        return
    if labels.ndim == 2 and labels.shape[-1] == num_classes and labels.dtype.kind == "f":
        return  # one-hot targets (categorical cross-entropy)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(_label_message(bad.flat[0].item(), num_classes))


def _is_tf_dataset(x):
    return type(x).__module__.startswith("tensorflow") and hasattr(x, "element_spec")


def _checked_dataset(ds, num_classes):
    import tensorflow as tf

    spec = ds.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2 or not spec[1].dtype.is_integer:
        return ds

    def check(*batch):
        labels = tf.cast(batch[1], "int64")
        bad = tf.boolean_mask(labels, (labels < 0) | (labels >= num_classes))
        first = tf.concat([tf.reshape(bad, [-1]), tf.zeros([1], "int64")], 0)[0]
        assertion = tf.debugging.Assert(tf.size(bad) == 0, [_LABEL_TAG, first, ":end"], summarize=1)
        with tf.control_dependencies([assertion]):
            return (batch[0], tf.identity(batch[1])) + tuple(batch[2:])

    return ds.map(check)


def _bad_label_in(error):
    """The label a dataset's check reported in ``error``, or None."""
    text = str(error)
    if _LABEL_TAG not in text:
        return None
    tail = text.split(_LABEL_TAG, 1)[1]
    value = tail.split(":end", 1)[0].strip(" ]\n[")
    try:
        return int(value)
    except ValueError:
        return value
