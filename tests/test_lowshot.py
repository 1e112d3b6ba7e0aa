"""keras_vitmsn.lowshot: the NumPy logistic regression, sampling, features, end to end.

scikit-learn is the reference for the solver and is a test-only dependency; the module
itself must not import it (checked below).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_vitmsn as kv
from keras_vitmsn import lowshot
from keras_vitmsn.lowshot.sampling import split_indices

sklearn_linear = pytest.importorskip("sklearn.linear_model")
tf = pytest.importorskip("tensorflow")

TINY_BACKBONE = dict(
    image_shape=(32, 32, 3),
    patch_size=8,
    hidden_dim=32,
    num_layers=2,
    num_heads=4,
    intermediate_dim=64,
)


def make_problem(seed, n, dim, num_classes, spread=0.5):
    """Overlapping Gaussian classes, pre-processed like the protocol does."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    y[:num_classes] = np.arange(num_classes)  # every class present
    centers = rng.normal(size=(num_classes, dim))
    x = rng.normal(size=(n, dim)) + spread * centers[y]
    return lowshot.preprocess_features(x), y


def sklearn_fit(x, y, l2_penalty):
    # Same objective: C = 1 / lambd (see the LogisticRegression docstring).
    return sklearn_linear.LogisticRegression(
        C=1.0 / l2_penalty, fit_intercept=False, tol=1e-12, max_iter=20000
    ).fit(x, y)


def reference_gradient(coef, x, y, l2_penalty):
    """Gradient of mean CE + (l2 / n) / 2 ||W||^2, written independently of the module."""
    n = len(x)
    logits = x @ coef.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(coef.shape[0])[y]
    return (p - onehot).T @ x / n + (l2_penalty / n) * coef


# ------------------------------------------------------------------------------------
# Solver
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,dim,num_classes,l2_penalty",
    [
        (60, 10, 3, lowshot.DEFAULT_L2_PENALTY),
        (200, 32, 5, 1.0),  # strongly regularised
        (50, 100, 10, 0.00025),  # more dims than samples, separable, weak penalty
        (300, 64, 10, lowshot.DEFAULT_L2_PENALTY),
    ],
)
def test_solver_matches_sklearn(n, dim, num_classes, l2_penalty):
    x, y = make_problem(n + dim, n, dim, num_classes)
    ours = lowshot.LogisticRegression(l2_penalty=l2_penalty, tol=1e-10, max_iter=5000).fit(x, y)
    ref = sklearn_fit(x, y, l2_penalty)
    assert ours.converged_
    scale = np.abs(ref.coef_).max()
    coef_diff = np.abs(ours.coef_ - ref.coef_).max()
    proba_diff = np.abs(ours.predict_proba(x) - ref.predict_proba(x)).max()
    print(
        f"\n[lowshot solver n={n} d={dim} K={num_classes} lambd={l2_penalty}] "
        f"coef diff {coef_diff:.1e} (max |coef| {scale:.2f}), proba diff {proba_diff:.1e}, "
        f"{ours.n_iter_} iterations"
    )
    assert coef_diff <= 1e-4 * max(scale, 1.0)
    assert proba_diff <= 1e-6
    np.testing.assert_array_equal(ours.predict(x), ref.predict(x))


@pytest.mark.parametrize("quantum, converged", [(1e-20, True), (1e-6, False)])
def test_solver_stalled_at_precision_is_converged_and_not_before(quantum, converged):
    # An objective that only moves in steps of `quantum` (rounding, made deterministic):
    # at 1e-20 it stalls with the gradient at ~1e-10, rounding level; at 1e-6 it
    # stalls far from the optimum (gradient ~5e-4), which is no convergence.
    from keras_vitmsn.lowshot.solver import _lbfgs

    scale = np.arange(1.0, 6.0)

    def fun(w):
        return np.round(0.5 * np.dot(w * scale, w) / quantum) * quantum, w * scale

    *_, ok = _lbfgs(fun, np.ones(5), max_iter=1000, tol=1e-30)
    assert bool(ok) is converged


def test_default_tolerance_is_close_to_the_optimum():
    x, y = make_problem(1, 300, 64, 10)
    ours = lowshot.LogisticRegression().fit(x, y)
    ref = sklearn_fit(x, y, lowshot.DEFAULT_L2_PENALTY)
    assert np.abs(ours.predict_proba(x) - ref.predict_proba(x)).max() <= 1e-4


def test_solution_is_stationary():
    """First-order optimality, checked without the module's own gradient code.

    For the smooth strictly convex objective the optimum is the unique zero of the
    gradient, which gives the closed-form fixed point W = X^T (Y - P) / lambd.
    """
    l2 = 0.01
    x, y = make_problem(2, 120, 16, 4)
    clf = lowshot.LogisticRegression(l2_penalty=l2, tol=1e-12, max_iter=5000).fit(x, y)
    grad = reference_gradient(clf.coef_, x, y, l2)
    assert np.abs(grad).max() < 1e-9
    onehot = np.eye(4)[y]
    fixed_point = (onehot - clf.predict_proba(x)).T @ x / l2
    np.testing.assert_allclose(clf.coef_, fixed_point, atol=1e-6)
    # Softmax is invariant to adding one vector to every class; the penalty picks the
    # representative whose class weights sum to zero.
    assert np.abs(clf.coef_.sum(axis=0)).max() < 1e-8


def test_solver_labels_probabilities_and_score():
    x, y = make_problem(3, 90, 8, 3, spread=3.0)
    names = np.array(["cat", "dog", "emu"])[y]
    clf = lowshot.LogisticRegression().fit(x, names)
    assert clf.classes_.tolist() == ["cat", "dog", "emu"]
    assert clf.coef_.shape == (3, 8)
    proba = clf.predict_proba(x)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(clf.predict(x), clf.classes_[proba.argmax(1)])
    assert clf.score(x, names) == np.mean(clf.predict(x) == names)
    assert clf.score(x, names) > 0.9


def test_solver_warns_when_not_converged():
    x, y = make_problem(4, 100, 20, 5)
    with pytest.warns(lowshot.LowShotConvergenceWarning, match="max_iter"):
        clf = lowshot.LogisticRegression(max_iter=2).fit(x, y)
    assert not clf.converged_
    assert clf.n_iter_ == 2


@pytest.mark.parametrize(
    "kwargs,x,y,match",
    [
        ({}, np.ones((3, 2)), [0, 0, 0], "at least 2 classes"),
        ({}, np.ones((3, 2)), [0, 1], "one label per row"),
        ({}, np.ones(3), [0, 1, 0], "2-D"),
        ({}, np.array([[0.0, np.nan], [1.0, 0.0]]), [0, 1], "NaN"),
        ({"l2_penalty": 0}, np.ones((2, 2)), [0, 1], "positive"),
        ({"l2_penalty": -1.0}, np.ones((2, 2)), [0, 1], "positive"),
        ({"max_iter": 0}, np.ones((2, 2)), [0, 1], "max_iter"),
    ],
)
def test_solver_errors(kwargs, x, y, match):
    with pytest.raises(ValueError, match=match):
        lowshot.LogisticRegression(**kwargs).fit(x, y)


def test_predict_before_fit_and_wrong_width():
    clf = lowshot.LogisticRegression()
    with pytest.raises(ValueError, match="not fitted"):
        clf.predict(np.ones((2, 3)))
    clf.fit(np.eye(3), [0, 1, 2])
    with pytest.raises(ValueError, match=r"\(num_samples, 3\)"):
        clf.predict(np.ones((2, 4)))


def test_module_needs_neither_sklearn_nor_scipy():
    # keras imports sklearn when it is installed, and JAX needs SciPy, so look at what
    # the package's modules themselves import, then run it with sklearn made
    # unimportable.
    import ast
    import glob

    files = glob.glob(os.path.join(os.path.dirname(lowshot.__file__), "*.py"))
    assert len(files) > 1, files  # the package's modules, not just its __init__
    imported = set()
    for path in files:
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add((node.module or "").split(".")[0])
    allowed = {
        "dataclasses",
        "math",
        "numbers",
        "sys",
        "warnings",
        "keras",
        "numpy",
        "keras_vitmsn",
    }
    assert imported <= allowed, imported
    code = (
        "import sys; sys.modules['sklearn'] = None;"
        "import numpy as np, keras_vitmsn.lowshot as l;"
        "print(l.LogisticRegression().fit(np.eye(3), [0, 1, 2]).predict(np.eye(3)))"
    )
    # The numpy backend imports fastest; the solver does not touch the backend.
    env = dict(os.environ, KERAS_BACKEND="numpy")
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    )
    assert out.stdout.strip() == "[0 1 2]"


# ------------------------------------------------------------------------------------
# Pre-processing
# ------------------------------------------------------------------------------------


def test_preprocess_per_sample_matches_cyanure_rowwise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7)) + 3.0
    out = lowshot.preprocess_features(x)
    expected = x - x.mean(1, keepdims=True)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(out.mean(1), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-12)
    # Row-wise means each image on its own: the others do not matter.
    np.testing.assert_allclose(lowshot.preprocess_features(x[:2]), out[:2], atol=1e-12)


def test_preprocess_train_mean_and_none():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(6, 4)) + 1.0, rng.normal(size=(3, 4))
    mean = train.mean(0)
    out = lowshot.preprocess_features(test, "train_mean", mean)
    expected = (test - mean) / np.linalg.norm(test - mean, axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    plain = lowshot.preprocess_features(test, None)
    np.testing.assert_allclose(plain, test / np.linalg.norm(test, axis=1, keepdims=True))
    with pytest.raises(ValueError, match="needs `mean`"):
        lowshot.preprocess_features(test, "train_mean")
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        lowshot.preprocess_features(test, "train_mean", mean[:3])
    with pytest.raises(ValueError, match="`centering` must be one of"):
        lowshot.preprocess_features(test, "global")


def test_preprocess_constant_row_gives_zeros_not_nan():
    out = lowshot.preprocess_features(np.array([[2.0, 2.0, 2.0], [1.0, 0.0, 0.0]]))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], 0.0)


# ------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------


def test_sample_k_per_class_is_exact_and_seeded():
    labels = np.repeat(np.arange(5), [3, 4, 5, 6, 7])
    for k in (1, 2, 3):
        idx = lowshot.sample_per_class(labels, k, seed=0)
        assert len(np.unique(idx)) == len(idx)
        np.testing.assert_array_equal(np.bincount(labels[idx]), [k] * 5)
    np.testing.assert_array_equal(
        lowshot.sample_per_class(labels, 2, seed=7), lowshot.sample_per_class(labels, 2, seed=7)
    )
    draws = {tuple(lowshot.sample_per_class(labels, 2, seed=s)) for s in range(10)}
    assert len(draws) > 1, "the seed has no effect"


def test_sample_fraction_rounds_and_keeps_one_per_class():
    labels = np.repeat(["a", "b", "c"], [200, 50, 10])
    idx = lowshot.sample_per_class(labels, 0.01, seed=0)
    counts = {c: int(np.sum(labels[idx] == c)) for c in "abc"}
    assert counts == {"a": 2, "b": 1, "c": 1}  # 2.0, 0.5 -> 1 (round half up), 0.1 -> 1
    assert len(lowshot.sample_per_class(labels, 1.0, seed=0)) == len(labels)
    half = lowshot.sample_per_class(labels, 0.5, seed=0)
    assert [int(np.sum(labels[half] == c)) for c in "abc"] == [100, 25, 5]


def test_sample_accepts_one_hot_labels():
    labels = np.repeat(np.arange(3), 4)
    onehot = np.eye(3)[labels]
    np.testing.assert_array_equal(
        lowshot.sample_per_class(onehot, 2, seed=3), lowshot.sample_per_class(labels, 2, seed=3)
    )


def test_sample_too_many_shots_names_the_class_and_count():
    labels = np.array(["cat"] * 5 + ["dog"] * 2 + ["emu"] * 3)
    with pytest.raises(ValueError) as err:
        lowshot.sample_per_class(labels, 4, seed=0)
    message = str(err.value)
    assert "shots=4" in message and "'dog' has only 2" in message
    assert "1 other class too" in message and "at most shots=2" in message


@pytest.mark.parametrize(
    "shots,match",
    [
        (0, ">= 1"),
        (-2, ">= 1"),
        (1.5, r"\(0, 1\]"),
        (5.0, "pass the int 5"),
        (0.0, r"\(0, 1\]"),
        (True, "int >= 1"),
        ("1", "int >= 1"),
    ],
)
def test_sample_rejects_bad_shots(shots, match):
    with pytest.raises(ValueError, match=match):
        lowshot.sample_per_class([0, 0, 1, 1], shots, seed=0)


# ------------------------------------------------------------------------------------
# Feature extraction
# ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone():
    keras.utils.set_random_seed(0)
    model = kv.ViTMSNBackbone(**TINY_BACKBONE)
    # Non-zero CLS token and position table, so every part of the token path matters.
    rng = np.random.default_rng(0)
    for var in (model.embeddings.cls_token, model.embeddings.position_embeddings):
        var.assign(0.1 * rng.normal(size=var.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def colour_images():
    """4 classes told apart by mean colour, plus noise: separable after any encoder."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 12)
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], "float32") * 2 - 1
    images = colours[labels][:, None, None, :] + 0.3 * rng.normal(size=(48, 32, 32, 3))
    return images.astype("float32"), labels


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


def test_feature_choice_pre_and_post_norm(backbone, colour_images):
    images = colour_images[0][:5]
    out = backbone(images, output_hidden_states=True)
    pre = to_numpy(out["hidden_states"][-1][:, 0])
    post = to_numpy(out["last_hidden_state"][:, 0])
    # batch_size=2: the last batch (1 image) is padded internally; check it too.
    got_pre = lowshot.extract_features(backbone, images, batch_size=2, verbose=0)
    got_post = lowshot.extract_features(backbone, images, batch_size=2, feature="cls", verbose=0)
    assert got_pre.dtype == np.float32 and got_pre.shape == (5, 32)
    np.testing.assert_allclose(got_pre, pre, atol=1e-5)
    np.testing.assert_allclose(got_post, post, atol=1e-5)
    assert np.abs(pre - post).max() > 1e-2, "pre- and post-LayerNorm features coincide"
    # The post-norm CLS is LayerNorm(pre-norm CLS): a direct check of which is which.
    ln = backbone.layernorm
    np.testing.assert_allclose(to_numpy(ln(pre)), post, atol=1e-5)


@pytest.fixture(scope="module")
def extractor(backbone):
    # One extractor for the input-format tests: JAX and TensorFlow compile its predict
    # function once (per input shape and dtype) instead of once per call.
    return kv.ViTMSNFeatureExtractor(backbone)


def test_extract_from_datasets_generators_and_uint8(extractor, colour_images, capsys):
    images, labels = colour_images
    reference = lowshot.extract_features(extractor, images, batch_size=16, verbose=0)

    unbatched = tf.data.Dataset.from_tensor_slices((images, labels))
    feats, got_labels = lowshot.extract_features(extractor, unbatched, batch_size=16, verbose=1)
    np.testing.assert_allclose(feats, reference, atol=1e-5)
    np.testing.assert_array_equal(got_labels, labels)
    assert "3/3" in capsys.readouterr().out  # the progress bar knew the number of batches

    # A shuffled, batched dataset: labels must stay with their images.
    shuffled = unbatched.shuffle(48, seed=1).batch(16)
    feats, got_labels = lowshot.extract_features(extractor, shuffled, verbose=0)
    assert not np.array_equal(got_labels, labels)
    for row, label in zip(feats, got_labels):
        match = np.flatnonzero(np.abs(reference - row).max(1) < 1e-5)
        assert len(match) == 1 and labels[match[0]] == label

    images_only = tf.data.Dataset.from_tensor_slices(images).batch(16)
    np.testing.assert_allclose(
        lowshot.extract_features(extractor, images_only, verbose=0), reference, atol=1e-5
    )

    def generator():
        for i in range(0, 48, 16):
            yield images[i : i + 16], labels[i : i + 16]

    feats, got_labels = lowshot.extract_features(extractor, generator(), verbose=1)
    np.testing.assert_allclose(feats, reference, atol=1e-5)
    np.testing.assert_array_equal(got_labels, labels)

    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    as_float = lowshot.extract_features(
        extractor, pixels.astype("float32"), batch_size=16, verbose=0
    )
    # Raw integer pixels need a preprocessing choice (tests/test_lowshot_input.py).
    with pytest.raises(ValueError, match="preprocessing=None"):
        lowshot.extract_features(extractor, pixels, batch_size=16, verbose=0)
    scaled = lowshot.extract_features(
        extractor, pixels, batch_size=16, preprocessing=lambda x: x / 127.5 - 1.0, verbose=0
    )
    np.testing.assert_allclose(
        scaled,
        lowshot.extract_features(extractor, pixels / 127.5 - 1.0, batch_size=16, verbose=0),
        atol=1e-5,
    )
    assert np.abs(scaled - as_float).max() > 1e-3  # the preprocessing did something


def test_extractor_settings_conflict(backbone, extractor):
    with pytest.raises(ValueError, match="conflicts with the FeatureExtractor's feature"):
        lowshot.extract_features(extractor, np.zeros((1, 32, 32, 3)), feature="cls")


def test_extract_other_image_size(backbone):
    images = np.random.default_rng(0).normal(size=(2, 48, 40, 3)).astype("float32")
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        lowshot.extract_features(backbone, images, verbose=0)
    feats = lowshot.extract_features(backbone, images, interpolate_pos_encoding=True, verbose=0)
    expected = backbone(images, interpolate_pos_encoding=True, output_hidden_states=True)
    np.testing.assert_allclose(feats, to_numpy(expected["hidden_states"][-1][:, 0]), atol=1e-5)


def test_extract_with_named_preprocessing(extractor):
    # Raw uint8 images of another size and aspect: "hub" and "paper" are the image
    # converter at the backbone's size in that resize mode.
    raw = np.random.default_rng(1).integers(0, 256, (3, 40, 52, 3), dtype=np.uint8)
    for mode in ("hub", "paper"):
        converter = kv.ViTMSNImageConverter(image_size=(32, 32), resize_mode=mode)
        got = lowshot.extract_features(extractor, raw, preprocessing=mode, verbose=0)
        expected = lowshot.extract_features(extractor, to_numpy(converter(raw)), verbose=0)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    paper = lowshot.extract_features(extractor, raw, preprocessing="paper", verbose=0)
    hub = lowshot.extract_features(extractor, raw, preprocessing="hub", verbose=0)
    assert np.abs(paper - hub).max() > 1e-3
    with pytest.raises(
        ValueError, match="`preprocessing` must be None, a callable, or one of 'hub', 'paper'"
    ):
        lowshot.extract_features(extractor, raw, preprocessing="crop", verbose=0)


@pytest.mark.parametrize(
    "data,kwargs,match",
    [
        (np.zeros((32, 32, 3)), {}, "4-D batch"),
        (np.zeros((2, 32, 32, 3)), {"feature": "pooled"}, "`feature` must be one of"),
        (np.zeros((2, 32, 32, 3)), {"batch_size": 0}, "positive int"),
        (np.zeros((0, 32, 32, 3)), {}, "empty"),
        (42, {}, "Expected images"),
    ],
)
def test_extract_errors(backbone, data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lowshot.extract_features(backbone, data, verbose=0, **kwargs)


# ------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------


def test_evaluate_separable_clusters_reach_100_percent():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 64))
    train_y = np.repeat(np.arange(10), 20)
    test_y = np.repeat(np.arange(10), 10)
    train_x = centers[train_y] + 0.2 * rng.normal(size=(200, 64))
    test_x = centers[test_y] + 0.2 * rng.normal(size=(100, 64))
    results = lowshot.evaluate(train_x, train_y, test_x, test_y, shots=(1, 2, 5, 0.1))
    assert list(results) == [1, 2, 5, 0.1]
    for shots, r in results.items():
        assert r.accuracies == (1.0, 1.0, 1.0), shots
        assert r.std == 0.0
    assert results[5].num_train == (50, 50, 50)
    assert results[0.1].num_train == (20, 20, 20)


@pytest.mark.parametrize("centering", ["per_sample", "train_mean", None])
def test_evaluate_matches_sklearn_pipeline(centering):
    """Same splits, same pre-processing, sklearn's solver: same accuracies."""
    x, y = make_problem(5, 400, 24, 8, spread=0.8)
    train_x, train_y, test_x, test_y = x[:300], y[:300], x[300:], y[300:]
    results = lowshot.evaluate(
        train_x,
        train_y,
        test_x,
        test_y,
        shots=(2, 5),
        num_splits=2,
        seed=3,
        centering=centering,
        tol=1e-10,
    )
    for shots, result in results.items():
        expected = []
        for idx in split_indices(train_y, shots, 2, 3):
            mean = train_x[idx].mean(0) if centering == "train_mean" else None
            tr = lowshot.preprocess_features(train_x[idx], centering, mean)
            te = lowshot.preprocess_features(test_x, centering, mean)
            reference = sklearn_fit(tr, train_y[idx], lowshot.DEFAULT_L2_PENALTY)
            expected.append(reference.score(te, test_y))
        np.testing.assert_allclose(result.accuracies, expected)
        assert 0.2 < result.mean < 1.0  # a non-trivial problem: neither chance nor perfect


def test_evaluate_statistics_and_reproducibility():
    x, y = make_problem(6, 200, 16, 5, spread=0.7)
    a = lowshot.evaluate(x[:150], y[:150], x[150:], y[150:], shots=2, num_splits=4, seed=1)
    b = lowshot.evaluate(x[:150], y[:150], x[150:], y[150:], shots=(2, 1), num_splits=4, seed=1)
    assert a[2].accuracies == b[2].accuracies  # adding a setting changes nothing else
    accs = np.array(a[2].accuracies)
    assert a[2].mean == pytest.approx(accs.mean())
    assert a[2].std == pytest.approx(accs.std(ddof=1))
    c = lowshot.evaluate(x[:150], y[:150], x[150:], y[150:], shots=2, num_splits=4, seed=2)
    assert c[2].accuracies != a[2].accuracies


def test_evaluate_errors():
    x, y = make_problem(7, 40, 8, 4)
    with pytest.raises(ValueError, match=r"Test labels \[9\] never occur"):
        lowshot.evaluate(x, y, x[:2], [0, 9])
    with pytest.raises(ValueError, match="differ in width"):
        lowshot.evaluate(x, y, x[:, :4], y)
    with pytest.raises(ValueError, match="one label per image"):
        lowshot.evaluate(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="has only"):
        lowshot.evaluate(x, y, x, y, shots=(1, 100))
    with pytest.raises(ValueError, match="num_splits"):
        lowshot.evaluate(x, y, x, y, num_splits=0)
    with pytest.raises(ValueError, match="1 \\(one image per class\\) and 1.0"):
        lowshot.evaluate(x, y, x, y, shots=(1, 2, 1.0))


def test_lowshot_eval_end_to_end(backbone, colour_images):
    images, labels = colour_images
    train_idx = np.concatenate([np.flatnonzero(labels == c)[:8] for c in range(4)])
    test_idx = np.setdiff1d(np.arange(len(labels)), train_idx)
    kwargs = dict(shots=(1, 2, 5), num_splits=3, seed=0, verbose=0)
    from_arrays = lowshot.lowshot_eval(
        backbone,
        images[train_idx],
        images[test_idx],
        train_labels=labels[train_idx],
        test_labels=labels[test_idx],
        **kwargs,
    )
    for r in from_arrays.values():
        assert r.accuracies == (1.0, 1.0, 1.0)
    # The array path extracts only the sampled images; a dataset goes through whole.
    # Both must give the same numbers.
    train_ds = tf.data.Dataset.from_tensor_slices((images[train_idx], labels[train_idx])).batch(5)
    test_ds = tf.data.Dataset.from_tensor_slices((images[test_idx], labels[test_idx])).batch(5)
    from_datasets = lowshot.lowshot_eval(backbone, train_ds, test_ds, **kwargs)
    assert {k: r.accuracies for k, r in from_datasets.items()} == {
        k: r.accuracies for k, r in from_arrays.items()
    }
    table = lowshot.format_table(from_arrays, title="tiny")
    assert table.splitlines()[0] == "tiny"
    assert "5/class  3       20            100.00 +- 0.00" in table


def test_lowshot_eval_label_errors(backbone, colour_images):
    images, labels = colour_images
    with pytest.raises(ValueError, match="yields no labels"):
        lowshot.lowshot_eval(backbone, images, images, test_labels=labels, verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    with pytest.raises(ValueError, match="was given too"):
        lowshot.lowshot_eval(backbone, ds, ds, test_labels=labels, verbose=0)
    with pytest.raises(ValueError, match="48 images but `train_labels` has 4"):
        lowshot.lowshot_eval(
            backbone, images, images, train_labels=labels[:4], test_labels=labels, verbose=0
        )


def test_format_table_layout():
    results = {
        1: lowshot.ShotResult(1, (0.5, 0.7), (10, 10)),
        0.01: lowshot.ShotResult(0.01, (0.8,), (13,)),
    }
    assert lowshot.format_table(results).splitlines() == [
        "shots    splits  train images  top-1 (%)",
        "1/class  2       10            60.00 +- 14.14",
        "1%       1       13            80.00 +- 0.00",
    ]
