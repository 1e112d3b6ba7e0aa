"""An identity whose gradient XLA cannot fuse across: it keeps JAX's backward linear.

Each pre-norm block adds to the residual stream, so the gradient reaching block
``l`` is the sum of the gradients of every block above it, each term a cheap
elementwise function of values already in memory (the LayerNorm backward). XLA's
CPU fusion pass may duplicate cheap elementwise producers into every consumer, and
it does here: each block's consumers (the transposed copy feeding a weight-gradient
GEMM, the bias-gradient reduction, ...) recompute the whole sum from the top block
down instead of reading it, so the backward pass does O(depth**2) elementwise work.
On vit_msn_small at batch 8 (CPU, JAX 0.10) those fusions took 0.83 of a 3.0 s
training step, and their inputs grow with depth (up to 180 operands).

A scatter is one of the few operations XLA's CPU fusion never fuses a producer
into, so routing the residual gradient through a scatter at each block boundary
makes XLA write it to memory once. The forward pass is untouched and the gradient
passes through unchanged (the scatter writes every element of ``g`` as it is).
The other backends do not fuse like this, so there it is a plain identity (and no
custom-gradient overhead).

Being a custom VJP, it makes the JAX model reverse-mode only: ``jax.jvp`` /
``jax.jacfwd`` through it raise JAX's "can't apply forward-mode autodiff" error.
"""

import keras
from keras import ops


@keras.ops.custom_gradient
def _scatter_gradient(x):
    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        # Scatter along the feature axis, not the batch axis: under data
        # parallelism the batch axis is sharded and the features are not, so the
        # scatter needs no communication.
        features = ops.moveaxis(upstream, -1, 0)
        indices = ops.expand_dims(ops.arange(ops.shape(features)[0]), -1)
        written = ops.scatter_update(ops.zeros_like(features), indices, features)
        return ops.moveaxis(written, 0, -1)

    return x, grad


def gradient_fusion_barrier(x):
    """Return ``x``; on JAX, its gradient is materialised instead of fused onward.

    Example:
    >>> y = gradient_fusion_barrier(keras.ops.ones((2, 3, 4)))
    >>> tuple(y.shape)
    (2, 3, 4)
    """
    if keras.backend.backend() != "jax":
        return x
    return _scatter_gradient(x)
