"""The MSN objective (Assran et al., 2022) in ``keras.ops``, for every backend.

Notation (shapes in brackets):

- ``A`` anchor embeddings ``z`` ``(M * B, D)``: the M anchor views of a batch of B
  images, stacked view-major like the original code (``torch.cat`` of the views), so
  anchor row ``a`` belongs to image ``a % B``;
- ``B`` target embeddings ``h`` ``(B, D)``: the unmasked first global view through the
  EMA target encoder;
- ``K`` prototypes ``q`` ``(K, D)``.

With every vector L2-normalised, ``tau`` the temperature and ``T`` the sharpening
temperature::

    p     = softmax(z q^T / tau)                       anchor predictions   (M*B, K)
    p+    = softmax(h q^T / (tau T))                   sharpened targets    (B, K), no gradient
    p+    = sinkhorn(p+)                               optional balancing over the batch
    L_ce  = mean_a sum_k -p+[a % B, k] log p[a, k]
    p_bar = mean_a p[a]                                mean prediction      (K,)
    L_me  = sum_k p_bar_k log p_bar_k + log K          = log K - H(p_bar) >= 0
    loss  = L_ce + me_max_weight * L_me (+ entropy_weight * mean_a H(p[a]))

Numerical choices (all mathematically identical to the formulas above):

- ``log p`` comes from a log-softmax, never ``log(softmax(.))`` nor the original's
  ``log(p ** -p+)``, so it is finite even where ``p`` underflows to 0.
- ``p+`` is a softmax at ``tau * T``: the original sharpens ``softmax(s / tau) ** (1/T)``
  and renormalises, which is the same distribution but overflows/underflows sooner.
- ``log p_bar`` is a log-mean-exp of ``log p``, so ``p_bar log p_bar`` is ``0 * finite``
  (not ``0 * -inf``) for an unused prototype.
- Sinkhorn runs in the log domain (logsumexp normalisations), so a prototype that no
  sample picks does not divide by zero.
- Everything is computed in float32 whatever the inputs' dtype (mixed precision).

Global batch: every batch statistic (``p_bar``, the Sinkhorn sums, the means of
``L_ce`` and the entropies) is over the GLOBAL batch, as the paper's all-reduce. Under
``keras.distribution.DataParallel`` on JAX the arrays are global (sharded) arrays, so
plain ``ops.mean`` / ``ops.logsumexp`` over axis 0 already are. Under a ``tf.distribute``
strategy each replica holds a slice of the batch: given its ``replicas``
(:mod:`keras_vitmsn.backend.replicas`), :func:`msn_loss` sums the statistics over them,
Sinkhorn balances the gathered targets of the whole batch, and every replica gets the
global values, with gradients that add up over the replicas to the single-device ones.
"""

import math

import keras  # noqa: F401 (the doctests use it)
from keras import ops

from keras_vitmsn.backend.replicas import SINGLE
from keras_vitmsn.backend.replicas import global_rows
from keras_vitmsn.backend.replicas import local_rows

_EPSILON = 1e-12  # L2-normalisation floor, as torch.nn.functional.normalize.


def l2_normalize(x, axis=-1, epsilon=_EPSILON):
    """``x / max(||x||, epsilon)`` along ``axis`` (torch's ``F.normalize``).

    Example:
    >>> import numpy as np
    >>> y = l2_normalize(np.array([[3.0, 4.0]], "float32"))
    >>> [round(float(v), 3) for v in keras.ops.convert_to_numpy(y)[0]]
    [0.6, 0.8]
    """
    x = ops.convert_to_tensor(x)
    norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
    return x / ops.maximum(norm, epsilon)


def log_sinkhorn(log_probs, num_iters=3):
    """Sinkhorn-Knopp balancing of ``exp(log_probs)`` ``(B, K)``, in the log domain.

    The same iteration as the authors' ``distributed_sinkhorn``, written with
    logsumexp: scale the matrix to total mass 1, then ``num_iters`` times make every
    prototype (column) carry mass ``1 / K`` and then every sample (row) mass ``1 / B``;
    finally multiply by ``B``. Returns the LOG of the balanced assignment: each row
    sums to exactly 1 (the last step is the row normalisation) and each column sums
    to approximately ``B / K``, more exactly the more iterations.

    Args:
        log_probs: ``(B, K)`` log-probabilities (any row normalisation; only the
            relative values matter).
        num_iters: int >= 0, Sinkhorn iterations (3 in MSN).

    Returns:
        ``(B, K)`` float32 log-assignments.
    """
    num_iters = _check_num_iters(num_iters)
    log_q = ops.cast(ops.convert_to_tensor(log_probs), "float32")
    _check_rank(log_q, 2, "log_probs")
    log_b = ops.log(ops.cast(ops.shape(log_q)[0], "float32"))
    log_k = ops.log(ops.cast(ops.shape(log_q)[1], "float32"))
    # Step 1: make the whole matrix sum to 1.
    log_q = log_q - ops.logsumexp(log_q)
    for _ in range(num_iters):
        # Step 2: every prototype (column) receives total mass 1/K over the batch.
        log_q = log_q - ops.logsumexp(log_q, axis=0, keepdims=True) - log_k
        # Step 3: every sample (row) carries total mass 1/B.
        log_q = log_q - ops.logsumexp(log_q, axis=1, keepdims=True) - log_b
    # Step 4: rescale so that each sample's assignment is a distribution (rows sum to 1).
    return log_q + log_b


def sinkhorn(probs, num_iters=3):
    """Balance soft assignments ``probs`` ``(B, K)`` over the batch (Sinkhorn-Knopp).

    Rows of the result sum to 1 and the prototype (column) sums approach ``B / K``:
    every prototype gets the same share of the batch. Computed in the log domain (see
    :func:`log_sinkhorn`); isolated zero entries stay zero, but a prototype with zero
    probability for the whole batch has nothing to rescale (NaN, as in the original).
    :func:`msn_loss` never meets that case: it balances log-softmax values, all finite.

    Example:
    >>> import numpy as np
    >>> q = sinkhorn(np.array([[0.9, 0.1], [0.8, 0.2]], "float32"), num_iters=50)
    >>> np.round(keras.ops.convert_to_numpy(q).sum(axis=0), 3).tolist()
    [1.0, 1.0]
    """
    probs = ops.cast(ops.convert_to_tensor(probs), "float32")
    # An isolated log(0) = -inf is fine: logsumexp ignores it and exp(-inf) gives 0 back.
    return ops.exp(log_sinkhorn(ops.log(probs), num_iters=num_iters))


def sharpened_targets(target_embeddings, prototypes, temperature=0.1, sharpen_temperature=0.25):
    """``p+ = softmax(h q^T / (tau * T))`` with ``h`` and ``q`` L2-normalised.

    Equal to the original ``sharpen(softmax(h q^T / tau), T)`` (``p ** (1/T)``
    renormalised), computed without powers. No ``stop_gradient`` here: see
    :func:`msn_loss`.
    """
    logits = _cosine_logits(target_embeddings, prototypes) / (temperature * sharpen_temperature)
    return ops.softmax(logits, axis=-1)


def msn_loss(
    anchor_views,
    target_views,
    prototypes,
    temperature=0.1,
    sharpen_temperature=0.25,
    me_max_weight=1.0,
    use_sinkhorn=False,
    num_anchor_views_per_target=None,
    sinkhorn_iters=3,
    entropy_weight=0.0,
    replicas=None,
):
    """The MSN loss and its parts.

    Args:
        anchor_views: ``(M * B, D)`` anchor embeddings (after the projection head),
            view-major: rows ``[v * B, (v + 1) * B)`` are view ``v`` of the B images,
            so anchor ``a`` is matched with target ``a % B``.
        target_views: ``(B, D)`` target embeddings (no gradient flows into them).
        prototypes: ``(K, D)`` prototypes (trainable; gradient flows through ``p``).
        temperature: ``tau``, softmax temperature of the anchor predictions (0.1).
        sharpen_temperature: ``T``, the targets use ``tau * T`` (0.25). May be a
            scalar tensor, e.g. the original's linear schedule of T.
        me_max_weight: ``lambda``, weight of the mean-entropy-maximisation term (the
            paper: 1; its best S/16 low-shot run: 5). 0 disables it (still logged).
        use_sinkhorn: balance the targets with Sinkhorn over the batch.
        num_anchor_views_per_target: ``M``; inferred as ``(M * B) // B`` when None,
            checked when given.
        sinkhorn_iters: Sinkhorn iterations (3).
        entropy_weight: weight of the mean per-anchor entropy (the original's optional
            ``use_ent`` term; 0 = off, the default of every released model).
        replicas: where the batch is split over replicas (a ``tf.distribute``
            replica context: :func:`keras_vitmsn.backend.replicas.current`), this
            replica's view of them; the inputs are then this replica's slice of the
            global batch (anchors view-major within the slice) and every returned
            value is the global one. None: the inputs are the whole batch.

    Returns:
        dict of float32 scalars:
        ``loss`` (the total to minimise), ``ce`` (``L_ce``), ``me_max`` (``L_me``),
        ``anchor_entropy`` (mean per-anchor entropy, nats),
        ``prototype_entropy`` (``H(p_bar)`` = ``log K - L_me``, nats),
        ``prototype_perplexity`` (``exp H(p_bar)``: the effective number of prototypes
        the anchors use, between 1 and K),
        ``target_max`` (mean of the largest target probability, the original's
        ``max_t``) and ``num_target_prototypes`` (how many distinct prototypes are a
        target's argmax, the original's ``np``).

    Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> z = rng.standard_normal((6, 8)).astype("float32")    # M=3 views of B=2 images
    >>> h = rng.standard_normal((2, 8)).astype("float32")
    >>> q = rng.standard_normal((5, 8)).astype("float32")    # K=5 prototypes
    >>> parts = msn_loss(z, h, q)
    >>> sorted(parts)[:4]
    ['anchor_entropy', 'ce', 'loss', 'me_max']
    >>> bool(keras.ops.convert_to_numpy(parts["me_max"]) >= 0)
    True
    """
    anchors = ops.cast(ops.convert_to_tensor(anchor_views), "float32")
    targets_in = ops.cast(ops.convert_to_tensor(target_views), "float32")
    protos = ops.cast(ops.convert_to_tensor(prototypes), "float32")
    num_views = _check_loss_shapes(anchors, targets_in, protos, num_anchor_views_per_target)
    # Checked when given as numbers; a tensor (e.g. a scheduled T) is trusted as is.
    numbers_given = [t for t in (temperature, sharpen_temperature) if isinstance(t, (int, float))]
    if any(not t > 0 for t in numbers_given):
        raise ValueError(
            f"`temperature` and `sharpen_temperature` must be > 0; got {temperature} "
            f"and {sharpen_temperature}."
        )
    num_prototypes = protos.shape[0]
    log_k = math.log(num_prototypes)

    replicas = SINGLE if replicas is None else replicas
    local_batch = ops.shape(targets_in)[0]
    # Global counts (the replicas of an odd last batch hold different numbers of rows).
    num_targets = ops.cast(global_rows(local_batch, replicas), "float32")
    num_anchors = num_targets * num_views

    # Step 1: anchor predictions, as log-probabilities (log-softmax: no log(0)).
    log_p = ops.log_softmax(_cosine_logits(anchors, protos) / temperature, axis=-1)
    p = ops.exp(log_p)

    # Step 2: sharpened targets softmax(h q^T / (tau T)), in log space so Sinkhorn can
    # balance them stably; then cut the gradient (the target branch is the EMA teacher;
    # prototypes get their gradient through the anchors only, as in the original).
    log_targets = ops.log_softmax(
        _cosine_logits(targets_in, protos) / (temperature * sharpen_temperature), axis=-1
    )
    if use_sinkhorn:
        # Balanced over the global batch: the gathered targets of every replica, then
        # this replica's rows of the result.
        balanced = log_sinkhorn(replicas.gather(log_targets), num_iters=sinkhorn_iters)
        log_targets = local_rows(balanced, replicas, local_batch)
    targets = ops.stop_gradient(ops.exp(log_targets))
    # Each of the M views of image i is matched with target i (anchors are view-major).
    targets = ops.tile(targets, (num_views, 1))

    # Step 3: cross-entropy H(p+, p), averaged over all M*B anchors.
    ce = replicas.sum(ops.sum(-ops.sum(targets * log_p, axis=-1))) / num_anchors

    # Step 4: me-max. log p_bar = log mean_a p[a] as a log-mean-exp (finite), then
    # sum p_bar log p_bar + log K = log K - H(p_bar) >= 0 (0 iff p_bar is uniform).
    log_p_bar = _global_logsumexp(log_p, replicas) - ops.log(num_anchors)
    me_max = ops.sum(ops.exp(log_p_bar) * log_p_bar) + log_k
    prototype_entropy = log_k - me_max

    # Optional: mean entropy of each anchor prediction (the original's `use_ent`).
    anchor_entropy = replicas.sum(ops.sum(-ops.sum(p * log_p, axis=-1))) / num_anchors

    loss = ce + me_max_weight * me_max
    if entropy_weight:
        loss = loss + entropy_weight * anchor_entropy

    # Logging only (no gradient): how peaked the targets are, how many prototypes win.
    target_probs = ops.stop_gradient(ops.exp(log_targets))
    winners = ops.one_hot(ops.argmax(target_probs, axis=-1), num_prototypes)
    target_max = replicas.sum(ops.sum(ops.max(target_probs, axis=-1))) / num_targets
    won = replicas.sum(ops.max(winners, axis=0))
    return {
        "loss": loss,
        "ce": ce,
        "me_max": me_max,
        "anchor_entropy": anchor_entropy,
        "prototype_entropy": prototype_entropy,
        "prototype_perplexity": ops.exp(prototype_entropy),
        "target_max": target_max,
        "num_target_prototypes": ops.sum(ops.cast(won > 0, "float32")),
    }


def _global_logsumexp(log_p, replicas):
    """``logsumexp`` over axis 0 of the rows of every replica, ``(K,)``."""
    local = ops.logsumexp(log_p, axis=0)
    if replicas.count == 1:
        return local
    # log sum_r exp(local_r) = c + log sum_r exp(local_r - c), with c the largest
    # local_r (a constant: no gradient), so that each exp is <= 1 and one is exactly 1.
    shift = ops.stop_gradient(ops.max(replicas.gather(local[None]), axis=0))
    return shift + ops.log(replicas.sum(ops.exp(local - shift)))


def _cosine_logits(x, prototypes):
    """Cosine similarities ``normalize(x) normalize(q)^T`` ``(N, K)``."""
    x = l2_normalize(ops.cast(x, "float32"))
    q = l2_normalize(ops.cast(prototypes, "float32"))
    return ops.matmul(x, ops.transpose(q))


def _check_rank(x, rank, name):
    if len(x.shape) != rank:
        raise ValueError(f"`{name}` must be a rank-{rank} tensor; got shape {tuple(x.shape)}.")


def _check_num_iters(num_iters):
    if int(num_iters) != num_iters or num_iters < 0:
        raise ValueError(f"`num_iters` must be an int >= 0; got {num_iters!r}.")
    return int(num_iters)


def _check_loss_shapes(anchors, targets, prototypes, num_views):
    _check_rank(anchors, 2, "anchor_views")
    _check_rank(targets, 2, "target_views")
    _check_rank(prototypes, 2, "prototypes")
    dims = {anchors.shape[1], targets.shape[1], prototypes.shape[1]} - {None}
    if len(dims) > 1:
        raise ValueError(
            "Anchors, targets and prototypes must share the embedding size; got "
            f"anchor_views {tuple(anchors.shape)}, target_views {tuple(targets.shape)}, "
            f"prototypes {tuple(prototypes.shape)}."
        )
    if prototypes.shape[0] is None:
        raise ValueError("The number of prototypes (prototypes.shape[0]) must be known.")
    num_anchors, batch = anchors.shape[0], targets.shape[0]
    if num_anchors is None or batch is None:
        # Traced with an unknown batch: trust the caller's M (tile needs a number).
        if num_views is None:
            raise ValueError("With an unknown batch size pass `num_anchor_views_per_target` (M).")
        return int(num_views)
    if batch == 0 or num_anchors % batch:
        raise ValueError(
            f"anchor_views must hold M whole views of the {batch} targets (M * {batch} "
            f"rows); got {num_anchors} rows."
        )
    inferred = num_anchors // batch
    if num_views is not None and int(num_views) != inferred:
        raise ValueError(
            f"num_anchor_views_per_target={num_views} but anchor_views has "
            f"{num_anchors} rows for {batch} targets ({inferred} views each)."
        )
    return inferred
