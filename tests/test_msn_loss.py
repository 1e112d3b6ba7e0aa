"""MSN loss: against a direct NumPy transcription of the equations, and its identities."""

import math

import keras
import numpy as np
import pytest
from helpers import BACKEND
from helpers import to_numpy

from keras_vitmsn import msn

# -- the reference: the paper's equations / the authors' code, literally, in float64 ----


def np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_sharpen(p, T):
    """The original: p ** (1/T), renormalised."""
    sharp = p ** (1.0 / T)
    return sharp / sharp.sum(axis=1, keepdims=True)


def np_sinkhorn(Q, num_itr=3):
    """The original distributed_sinkhorn on one device, transcribed."""
    Q = Q.T.copy()
    B, K = Q.shape[1], Q.shape[0]
    Q /= Q.sum()
    for _ in range(num_itr):
        Q /= Q.sum(axis=1, keepdims=True)
        Q /= K
        Q /= Q.sum(axis=0, keepdims=True)
        Q /= B
    Q *= B
    return Q.T


def np_msn(z, h, q, tau=0.1, T=0.25, lam=1.0, use_sinkhorn=False):
    z, h, q = (np_normalize(np.asarray(a, np.float64)) for a in (z, h, q))
    p = np_softmax(z @ q.T / tau)
    targets = np_sharpen(np_softmax(h @ q.T / tau), T)
    if use_sinkhorn:
        targets = np_sinkhorn(targets)
    num_views = z.shape[0] // h.shape[0]
    tiled = np.concatenate([targets] * num_views, axis=0)
    ce = np.mean(np.sum(-tiled * np.log(p), axis=1))
    p_bar = p.mean(axis=0)
    me_max = np.sum(p_bar * np.log(p_bar)) + math.log(len(p_bar))
    return {
        "loss": ce + lam * me_max,
        "ce": ce,
        "me_max": me_max,
        "anchor_entropy": np.mean(np.sum(-p * np.log(p), axis=1)),
        "prototype_entropy": -np.sum(p_bar * np.log(p_bar)),
        "prototype_perplexity": np.exp(-np.sum(p_bar * np.log(p_bar))),
        "target_max": targets.max(axis=1).mean(),
        "num_target_prototypes": len(set(targets.argmax(axis=1).tolist())),
    }


def inputs(rng, batch=4, views=3, dim=16, num_prototypes=10, spread=1.0):
    z = spread * rng.standard_normal((views * batch, dim)).astype("float32")
    h = spread * rng.standard_normal((batch, dim)).astype("float32")
    q = rng.standard_normal((num_prototypes, dim)).astype("float32")
    return z, h, q


@pytest.mark.parametrize(
    "size, use_sinkhorn, lam",
    [
        ((4, 3, 16, 10), False, 1.0),
        ((4, 3, 16, 10), True, 1.0),
        ((4, 1, 16, 10), False, 5.0),
        ((8, 11, 256, 1024), False, 1.0),  # 1 masked global + 10 focal views, K=1024, D=256
        ((8, 11, 256, 1024), True, 5.0),
    ],
)
def test_loss_matches_numpy_transcription(rng, size, use_sinkhorn, lam):
    batch, views, dim, k = size
    z, h, q = inputs(rng, batch, views, dim, k)
    got = msn.msn_loss(z, h, q, me_max_weight=lam, use_sinkhorn=use_sinkhorn)
    want = np_msn(z, h, q, lam=lam, use_sinkhorn=use_sinkhorn)
    assert set(got) == set(want)
    # Relative to max(1, |value|): the perplexity is up to K (~1000 here).
    diffs = {
        name: abs(float(to_numpy(got[name])) - want[name]) / max(1.0, abs(want[name]))
        for name in want
    }
    print(
        f"\n[msn loss {BACKEND} {size} sinkhorn={use_sinkhorn}] max diff {max(diffs.values()):.2e} "
        f"(loss {abs(float(to_numpy(got['loss'])) - want['loss']):.2e})"
    )
    for name, diff in diffs.items():
        assert diff <= 1e-5, f"{name}: {diff:.3e}"


def test_loss_is_finite_where_the_naive_formula_is_not(rng):
    # Embeddings aligned with the prototypes and a tiny temperature: softmax underflows
    # to exact zeros, where log(p) and p ** -t give inf/nan; the log-softmax path doesn't.
    q = np.eye(8, dtype="float32")
    z = np.tile(q, (2, 1))
    h = q[::-1].copy()
    parts = msn.msn_loss(z, h, q, temperature=0.001, use_sinkhorn=True)
    values = {k: float(to_numpy(v)) for k, v in parts.items()}
    assert all(np.isfinite(v) for v in values.values()), values
    # p is one-hot at the anchor's own prototype (cosine 1, others 0) and the target
    # picks another: every anchor pays -log p = (1 - 0) / tau.
    assert values["ce"] == pytest.approx(1.0 / 0.001, rel=1e-5)
    # Every prototype is used equally by the anchors: me-max = 0.
    assert abs(values["me_max"]) < 1e-5


def test_sharpened_target_is_softmax_at_tau_times_T(rng):
    _, h, q = inputs(rng)
    tau, T = 0.1, 0.25
    got = to_numpy(msn.sharpened_targets(h, q, tau, T))
    logits = np_normalize(h.astype(np.float64)) @ np_normalize(q.astype(np.float64)).T
    np.testing.assert_allclose(got, np_sharpen(np_softmax(logits / tau), T), atol=1e-6)
    np.testing.assert_allclose(got, np_softmax(logits / (tau * T)), atol=1e-6)
    # The original's formula in keras.ops gives the same.
    p = keras.ops.softmax(keras.ops.convert_to_tensor(logits.astype("float32")) / tau)
    sharp = p ** (1.0 / T)
    np.testing.assert_allclose(
        got, to_numpy(sharp / keras.ops.sum(sharp, axis=1, keepdims=True)), atol=1e-6
    )


def test_me_max_is_nonnegative(rng):
    for seed in range(5):
        z, h, q = inputs(np.random.default_rng(seed), spread=0.1 + seed)
        for tau in (0.02, 0.1, 1.0):
            assert float(to_numpy(msn.msn_loss(z, h, q, temperature=tau)["me_max"])) >= -1e-6


def test_me_max_is_zero_iff_mean_prediction_is_uniform():
    k = 6
    q = np.eye(k, dtype="float32")
    # Anchors = every prototype once: p_bar is uniform by symmetry.
    uniform = msn.msn_loss(q, q, q)
    assert abs(float(to_numpy(uniform["me_max"]))) < 1e-6
    assert float(to_numpy(uniform["prototype_perplexity"])) == pytest.approx(k, rel=1e-5)
    # One prototype left out: p_bar is not uniform, me-max > 0, and equals log K - H(p_bar).
    partial = msn.msn_loss(q[:-1], q[:-1], q)
    me_max = float(to_numpy(partial["me_max"]))
    assert me_max > 1e-3
    assert me_max == pytest.approx(
        math.log(k) - float(to_numpy(partial["prototype_entropy"])), abs=1e-6
    )


def test_sinkhorn_rows_and_columns(rng):
    batch, k = 12, 4
    probs = np_softmax(3.0 * rng.standard_normal((batch, k))).astype("float32")
    probs[:, 0] *= 5.0  # make prototype 0 popular
    probs /= probs.sum(axis=1, keepdims=True)
    before = np.abs(probs.sum(axis=0) - batch / k).max()
    three = to_numpy(msn.sinkhorn(probs, num_iters=3))
    # Rows: every sample's assignment is a distribution (exact: the last step).
    np.testing.assert_allclose(three.sum(axis=1), 1.0, atol=1e-5)
    # Columns: each prototype moves towards B/K of the batch ...
    assert np.abs(three.sum(axis=0) - batch / k).max() < 0.5 * before
    # ... and gets there as the iterations go on.
    many = to_numpy(msn.sinkhorn(probs, num_iters=200))
    np.testing.assert_allclose(many.sum(axis=0), batch / k, atol=1e-4)
    np.testing.assert_allclose(many.sum(axis=1), 1.0, atol=1e-5)
    # Same as the authors' iteration.
    np.testing.assert_allclose(three, np_sinkhorn(probs.astype(np.float64)), atol=1e-5)
    # Zero iterations: only the global rescaling, i.e. the input itself.
    np.testing.assert_allclose(to_numpy(msn.sinkhorn(probs, num_iters=0)), probs, atol=1e-6)


def test_sinkhorn_with_fewer_samples_than_prototypes(rng):
    probs = np_softmax(rng.standard_normal((3, 16))).astype("float32")
    out = to_numpy(msn.sinkhorn(probs, num_iters=100))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out.sum(axis=0), 3 / 16, atol=1e-4)


def test_num_views_and_shape_errors(rng):
    z, h, q = inputs(rng, batch=4, views=3)
    msn.msn_loss(z, h, q, num_anchor_views_per_target=3)
    with pytest.raises(
        ValueError, match="num_anchor_views_per_target=2 but anchor_views has 12 rows"
    ):
        msn.msn_loss(z, h, q, num_anchor_views_per_target=2)
    with pytest.raises(ValueError, match="M whole views of the 4 targets"):
        msn.msn_loss(z[:10], h, q)
    with pytest.raises(ValueError, match="share the embedding size"):
        msn.msn_loss(z, h, q[:, :8])
    with pytest.raises(ValueError, match="rank-2"):
        msn.msn_loss(z[None], h, q)
    with pytest.raises(ValueError, match="must be > 0"):
        msn.msn_loss(z, h, q, temperature=0.0)
    with pytest.raises(ValueError, match="num_iters"):
        msn.sinkhorn(np.ones((2, 2), "float32"), num_iters=-1)


def test_anchor_views_are_matched_view_major(rng):
    # Anchor a belongs to image a % B: swapping two views (blocks of B rows) changes
    # nothing, swapping two images inside one view does.
    z, h, q = inputs(rng, batch=4, views=2)
    base = float(to_numpy(msn.msn_loss(z, h, q)["ce"]))
    swapped_views = np.concatenate([z[4:], z[:4]])
    assert float(to_numpy(msn.msn_loss(swapped_views, h, q)["ce"])) == pytest.approx(base, abs=1e-6)
    swapped_images = z[[1, 0, 2, 3, 4, 5, 6, 7]]
    assert abs(float(to_numpy(msn.msn_loss(swapped_images, h, q)["ce"])) - base) > 1e-4


# -- gradients, through each backend's own autodiff: one SGD step of a tiny model --------


class ToyMSN(keras.Model):
    """Anchors and targets from two separate linear maps of the same inputs."""

    def __init__(self, dim=8, num_prototypes=5, views=2, detach_targets=True, **kwargs):
        super().__init__(**kwargs)
        self.views = views
        self.detach_targets = detach_targets
        self.anchor_map = keras.layers.Dense(dim, use_bias=False, name="anchor_map")
        self.target_map = keras.layers.Dense(dim, use_bias=False, name="target_map")
        self.protos = msn.MSNPrototypes(num_prototypes, dim, name="protos")

    def call(self, x):
        z = self.anchor_map(keras.ops.tile(x, (self.views, 1)))
        h = self.target_map(x)
        if self.detach_targets:
            loss = msn.msn_loss(
                z, h, self.protos.prototypes, num_anchor_views_per_target=self.views
            )["loss"]
        else:
            # Control: the same cross-entropy with targets that are NOT cut from the graph.
            targets = keras.ops.tile(
                msn.sharpened_targets(h, self.protos.prototypes), (self.views, 1)
            )
            log_p = keras.ops.log_softmax(self.protos(z) / 0.1, axis=-1)
            loss = keras.ops.mean(-keras.ops.sum(targets * log_p, axis=-1))
        self.add_loss(loss)
        return z


@pytest.mark.parametrize("detach", [True, False])
def test_gradient_does_not_reach_the_target(rng, detach):
    keras.utils.set_random_seed(0)
    model = ToyMSN(detach_targets=detach)
    x = rng.standard_normal((4, 6)).astype("float32")
    model(x)
    before = {v.path: to_numpy(v).copy() for v in model.trainable_variables}
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    model.fit(x, batch_size=4, epochs=1, verbose=0, shuffle=False)
    moved = {
        v.path: float(np.abs(to_numpy(v) - before[v.path]).max()) for v in model.trainable_variables
    }
    anchor = next(d for p, d in moved.items() if "anchor_map" in p)
    target = next(d for p, d in moved.items() if "target_map" in p)
    protos = next(d for p, d in moved.items() if "protos" in p)
    print(
        f"\n[msn grad {BACKEND} detach={detach}] anchor {anchor:.2e} target {target:.2e} "
        f"protos {protos:.2e}"
    )
    assert anchor > 1e-6 and protos > 1e-6
    if detach:
        assert target == 0.0
    else:  # the check can see a gradient into the target branch when there is one
        assert target > 1e-6


def test_scheduled_sharpen_temperature_as_a_tensor(rng):
    # The original schedules T linearly: a traced scalar must be accepted.
    z, h, q = inputs(rng)
    t = keras.ops.convert_to_tensor(0.25)
    got = float(to_numpy(msn.msn_loss(z, h, q, sharpen_temperature=t)["loss"]))
    assert got == pytest.approx(np_msn(z, h, q)["loss"], abs=1e-5)
