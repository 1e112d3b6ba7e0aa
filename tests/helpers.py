"""Backend-neutral test helpers: array conversion, comparisons, gradients.

Nothing here needs torch or transformers; the transformers reference models live in
``hf_reference.py``.
"""

import keras
import numpy as np

BACKEND = keras.backend.backend()


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


def max_abs_diff(a, b):
    return float(np.max(np.abs(to_numpy(a) - np.asarray(b, dtype=np.float32))))


def nchw_to_nhwc(x):
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def keras_gradients(model, inputs, loss_fn):
    """``{variable.path: gradient}`` of ``loss_fn(model(inputs))`` for every trainable variable.

    Uses each backend's own autodiff (jax.grad over ``stateless_call``, torch autograd,
    ``tf.GradientTape``): the same machinery ``fit`` differentiates with.
    """
    variables = model.trainable_variables
    if BACKEND == "jax":
        import jax

        frozen = [v.value for v in model.non_trainable_variables]

        def loss(values):
            outputs, _ = model.stateless_call(values, frozen, inputs, training=True)
            return loss_fn(outputs)

        grads = jax.grad(loss)([v.value for v in variables])
    elif BACKEND == "torch":
        for v in variables:
            v.value.grad = None
        loss_fn(model(inputs, training=True)).backward()
        grads = [v.value.grad for v in variables]
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(model(inputs, training=True))
        grads = tape.gradient(loss, variables)
    return {v.path: to_numpy(g) for v, g in zip(variables, grads)}


def tiny_backbone(**kwargs):
    """A 2-block, 32-wide ViTMSNBackbone on 32x32 images (overrides in ``kwargs``)."""
    import keras_vitmsn as kv

    config = dict(
        image_shape=(32, 32, 3),
        patch_size=8,
        hidden_dim=32,
        num_layers=2,
        num_heads=4,
        intermediate_dim=64,
    )
    if kwargs.get("data_format") == "channels_first":
        config["image_shape"] = (3, 32, 32)  # image_shape follows data_format
    config.update(kwargs)
    return kv.ViTMSNBackbone(**config)


def randomize(model, seed=0, scale=0.2):
    """Normal(0, scale) values for every trainable float32 weight: the zero-initialised
    CLS token and position table would hide layout and pooling bugs."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.dtype == "float32" and v.trainable:
            v.assign(rng.normal(0.0, scale, v.shape).astype("float32"))
