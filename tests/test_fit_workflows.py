"""Training ViTMSNClassifier with model.fit, under whichever backend KERAS_BACKEND selects.

A tiny backbone (16x16 images, one block of width 16) learns a toy problem whose
classes differ by mean colour; every fit workflow is exercised: tf.data (from an
image folder and from tensors), numpy arrays, Python generators, mixed precision, linear
probing, dropout, training at another resolution and checkpointing / saving.

Compiling a train step dominates the run time on JAX and TensorFlow, so the tests that
only change the data source share one compiled classifier, reset to the same initial
weights and optimizer state before each test.
"""

import math

import keras
import numpy as np
import pytest

import keras_vitmsn as kv

tf = pytest.importorskip("tensorflow")
PIL_Image = pytest.importorskip("PIL.Image")

SIZE = 16
NUM_CLASSES = 3
# Red-, green- and blue-dominant images.
COLOURS = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1]], "float32")
CHANCE_LOSS = math.log(NUM_CLASSES)  # a fresh head's logits are ~0 (init std 0.02)


@pytest.fixture(autouse=True)
def seeded_float32():
    """Every test starts from the same seed and the float32 policy, and restores it."""
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy(policy)


def tiny_backbone(**overrides):
    config = dict(
        image_shape=(SIZE, SIZE, 3),
        patch_size=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
    )
    config.update(overrides)
    return kv.ViTMSNBackbone(**config)


def classifier(backbone=None, learning_rate=3e-3, **kwargs):
    clf = kv.ViTMSNClassifier(backbone or tiny_backbone(), NUM_CLASSES, **kwargs)
    # The default AdamW(5e-5) suits pretrained weights; a from-scratch toy needs more.
    clf.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return clf


def colour_images(n_per_class=8, size=SIZE, seed=0):
    """float32 images in about [-1.5, 1.5] and int labels, classes interleaved."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(NUM_CLASSES), n_per_class)
    noise = 0.3 * rng.normal(size=(len(labels), size, size, 3))
    return (COLOURS[labels][:, None, None, :] + noise).astype("float32"), labels


def weights_of(layer):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in layer.weights]


def assert_learns(history, factor=0.8):
    losses = history.history["loss"]
    assert all(np.isfinite(losses)), losses
    assert all(b < a for a, b in zip(losses, losses[1:])), f"loss not decreasing: {losses}"
    assert losses[-1] < factor * CHANCE_LOSS, f"loss barely moved from chance: {losses}"


@pytest.fixture(scope="module")
def shared():
    """One compiled float32 classifier and a function restoring its initial state."""
    keras.utils.set_random_seed(0)
    clf = classifier(tiny_backbone(dtype="float32"))
    clf.optimizer.build(clf.trainable_variables)
    weights = clf.get_weights()
    optimizer_state = [np.array(keras.ops.convert_to_numpy(v)) for v in clf.optimizer.variables]

    def reset():
        clf.set_weights(weights)
        for variable, value in zip(clf.optimizer.variables, optimizer_state):
            variable.assign(value)
        return clf

    return reset


# ------------------------------------------------------------------------------------
# Data sources
# ------------------------------------------------------------------------------------


def write_image_folder(root, n_per_class=8, size=20, seed=0):
    """PNGs in one sub-folder per class, at another size than the model's 16x16."""
    images, labels = colour_images(n_per_class, size=size, seed=seed)
    pixels = np.clip((images + 1.5) / 3.0 * 255.0, 0, 255).astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, labels)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        PIL_Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def folder_dataset(root):
    ds = keras.utils.image_dataset_from_directory(
        root, image_size=(20, 20), batch_size=8, seed=0, verbose=False
    )
    assert ds.class_names == ["class_0", "class_1", "class_2"]
    return ds


def test_fit_on_image_folder_with_converter_in_pipeline(tmp_path, shared):
    ds = folder_dataset(write_image_folder(tmp_path / "train"))
    # Resize to 16x16, rescale and ImageNet-normalise in tf.data, under any backend.
    converter = kv.ViTMSNImageConverter(image_size=(SIZE, SIZE))
    # (The int64 cast only lets the shared model reuse its compiled step.)
    ds = ds.map(lambda x, y: (converter(x), tf.cast(y, "int64"))).prefetch(2)
    assert_learns(shared().fit(ds, epochs=4, verbose=0))


def test_fit_on_image_folder_with_converter_in_model(tmp_path):
    ds = folder_dataset(write_image_folder(tmp_path / "train"))  # raw 0-255 pixels
    clf = classifier(preprocessor=kv.ViTMSNImageConverter(image_size=(SIZE, SIZE)))
    assert_learns(clf.fit(ds, epochs=4, verbose=0))


def test_fit_on_tensor_slices_pipeline(shared):
    images, labels = colour_images()
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(24, seed=0).batch(8)
    history = shared().fit(ds, epochs=4, verbose=0)
    assert_learns(history)
    assert history.history["sparse_categorical_accuracy"][-1] > 0.5


def test_fit_on_numpy_arrays_changes_every_weight(shared):
    images, labels = colour_images()
    clf = shared()
    before = weights_of(clf.backbone)
    history = clf.fit(images, labels, batch_size=8, epochs=4, verbose=0)
    assert_learns(history)
    # Full fine-tuning: every backbone variable moved (position table and CLS included).
    after = weights_of(clf.backbone)
    for variable, old, new in zip(clf.backbone.weights, before, after):
        assert not np.array_equal(old, new), f"{variable.path} did not train"


def test_fit_on_python_generator(shared):
    images, labels = colour_images()

    def batches():
        rng = np.random.default_rng(0)
        while True:
            order = rng.permutation(len(labels))
            for i in range(0, len(order), 8):
                yield images[order[i : i + 8]], labels[order[i : i + 8]]

    assert_learns(shared().fit(batches(), steps_per_epoch=3, epochs=4, verbose=0))


# ------------------------------------------------------------------------------------
# Mixed precision
# ------------------------------------------------------------------------------------


def check_mixed_precision_fit(clf):
    assert clf.backbone.compute_dtype == "bfloat16"
    assert clf.backbone.variable_dtype == "float32"
    assert clf.compute_dtype == "bfloat16"  # the head follows the backbone's policy
    images, labels = colour_images()
    history = clf.fit(images, labels, batch_size=8, epochs=4, verbose=0)
    assert_learns(history, factor=0.85)
    logits = clf(images)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))
    for w in clf.weights:
        value = keras.ops.convert_to_numpy(w)
        assert value.dtype == np.float32 and np.all(np.isfinite(value)), w.path


def test_mixed_bfloat16_global_policy():
    keras.config.set_dtype_policy("mixed_bfloat16")  # the fixture restores float32
    check_mixed_precision_fit(classifier())


def test_mixed_bfloat16_dtype_argument():
    # Global policy stays float32; only this model computes in bfloat16.
    clf = classifier(tiny_backbone(dtype="mixed_bfloat16"))
    check_mixed_precision_fit(clf)
    assert keras.config.dtype_policy().name == "float32"


# ------------------------------------------------------------------------------------
# Linear probe
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["before_building_classifier", "after_then_recompile"])
def test_linear_probe_trains_only_the_head(when):
    images, labels = colour_images()
    backbone = tiny_backbone()
    if when == "before_building_classifier":
        backbone.trainable = False
        clf = classifier(backbone, learning_rate=3e-2)
    else:
        clf = classifier(backbone, learning_rate=3e-2)
        backbone.trainable = False
        clf.compile(optimizer=keras.optimizers.Adam(3e-2))  # Keras needs a recompile
    assert [w.path for w in clf.trainable_weights] == [
        w.path for w in clf.classifier.trainable_weights
    ]
    backbone_before = weights_of(backbone)
    head_before = weights_of(clf.classifier)
    history = clf.fit(images, labels, batch_size=8, epochs=4, verbose=0)
    assert_learns(history, factor=0.95)
    for old, new in zip(backbone_before, weights_of(backbone)):
        np.testing.assert_array_equal(old, new)
    for old, new in zip(head_before, weights_of(clf.classifier)):
        assert not np.array_equal(old, new)


# ------------------------------------------------------------------------------------
# Dropout
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rates",
    [
        dict(dropout_rate=0.3),
        dict(attention_dropout=0.3),  # the explicit (non-fused) attention path
        dict(head_dropout=0.3),
    ],
    ids=["hidden", "attention", "head"],
)
def test_dropout_active_only_in_training(rates):
    rates = dict(rates)
    head_dropout = rates.pop("head_dropout", 0.0)
    clf = classifier(tiny_backbone(**rates), dropout=head_dropout)
    twin = classifier(tiny_backbone(), dropout=0.0)  # same architecture, no dropout
    twin.set_weights(clf.get_weights())
    images, _ = colour_images(2)
    train_a = keras.ops.convert_to_numpy(clf(images, training=True))
    train_b = keras.ops.convert_to_numpy(clf(images, training=True))
    assert np.abs(train_a - train_b).max() > 1e-4, "dropout is inactive at training time"
    infer = keras.ops.convert_to_numpy(clf(images, training=False))
    np.testing.assert_array_equal(infer, keras.ops.convert_to_numpy(clf(images)))
    np.testing.assert_allclose(infer, keras.ops.convert_to_numpy(twin(images)), atol=1e-6)


def test_fit_with_dropout_everywhere():
    images, labels = colour_images()
    backbone = tiny_backbone(dropout_rate=0.1, attention_dropout=0.1)
    clf = classifier(backbone, dropout=0.1)
    history = clf.fit(images, labels, batch_size=8, epochs=4, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]


# ------------------------------------------------------------------------------------
# Another resolution at train time
# ------------------------------------------------------------------------------------


def test_fit_at_another_resolution_with_interpolated_positions(shared):
    images, labels = colour_images(size=24)  # the backbone is built for 16x16
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        shared().fit(images, labels, batch_size=8, epochs=1, verbose=0)
    clf = classifier(interpolate_pos_encoding=True)
    table = clf.backbone.embeddings.position_embeddings
    before = np.array(keras.ops.convert_to_numpy(table))
    history = clf.fit(images, labels, batch_size=8, epochs=4, verbose=0)
    assert_learns(history)
    after = np.array(keras.ops.convert_to_numpy(table))
    assert after.shape == before.shape == (1, 1 + 4, 16)  # stored at the 2x2 grid
    # Gradients reach the stored table through the bicubic resampling.
    assert np.abs(after - before)[:, 1:].max() > 1e-4
    # Still usable at the size the table is stored for.
    assert tuple(clf(colour_images(1)[0]).shape) == (NUM_CLASSES, NUM_CLASSES)


# ------------------------------------------------------------------------------------
# Checkpoints and saving
# ------------------------------------------------------------------------------------


def test_checkpoint_save_and_load_after_fit(tmp_path, shared):
    images, labels = colour_images()
    clf = shared()
    callbacks = [
        keras.callbacks.ModelCheckpoint(tmp_path / "epoch_{epoch}.keras"),
        keras.callbacks.ModelCheckpoint(tmp_path / "last.weights.h5", save_weights_only=True),
        keras.callbacks.ModelCheckpoint(
            tmp_path / "best.keras", monitor="loss", save_best_only=True
        ),
    ]
    history = clf.fit(images, labels, batch_size=8, epochs=3, verbose=0, callbacks=callbacks)
    assert_learns(history, factor=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.keras",
        "epoch_1.keras",
        "epoch_2.keras",
        "epoch_3.keras",
        "last.weights.h5",
    ]
    expected = clf.predict(images, verbose=0)
    final_weights = clf.get_weights()
    final_optimizer = [keras.ops.convert_to_numpy(v) for v in clf.optimizer.variables]

    clf.save(tmp_path / "final.keras")
    loaded = keras.saving.load_model(tmp_path / "final.keras")
    assert isinstance(loaded, kv.ViTMSNClassifier)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-6)
    # The compiled optimizer and its state come back too, so training can resume.
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    assert int(loaded.optimizer.iterations) == 9
    for saved, restored in zip(final_optimizer, loaded.optimizer.variables):
        np.testing.assert_array_equal(saved, keras.ops.convert_to_numpy(restored))

    # The last epoch's checkpoint is the model as it ended; so is the best-loss one,
    # since the loss kept falling; the first epoch's is not.
    def assert_same_weights(model, same=True):
        pairs = list(zip(final_weights, model.get_weights()))
        assert len(pairs) == len(final_weights)
        assert all(np.array_equal(a, b) for a, b in pairs) is same

    for name in ("epoch_3.keras", "best.keras"):
        assert_same_weights(keras.saving.load_model(tmp_path / name))
    assert_same_weights(keras.saving.load_model(tmp_path / "epoch_1.keras"), same=False)

    clf = shared()  # back to the initial weights, then restore the weights file
    assert_same_weights(clf, same=False)
    clf.load_weights(tmp_path / "last.weights.h5")
    assert_same_weights(clf)
