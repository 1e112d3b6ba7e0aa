"""The MSN demo: pretrain a tiny ViT-MSN on unlabelled digits, then evaluate it low-shot.

Offline and CPU-sized: scikit-learn's bundled 8x8 handwritten digits (1,797 images,
installed with the ``demo`` extra) are upsampled and split into a pool (pretraining
images, and the labelled low-shot samples) and a test set. The encoder is pretrained
with MSN on the pool's images WITHOUT their labels, then the paper's low-shot protocol
(1, 2 and 5 labelled images per class, 3 splits, logistic regression on frozen,
per-sample-centred, L2-normalised CLS features of the last block before the final
LayerNorm) compares it with the very same encoder before pretraining (random init)
and with the raw pixels (the same protocol on the encoder's input), the baseline a
sceptic tries first.
"""

import json
import os
import time

import keras
import numpy as np

from keras_vitmsn import lowshot
from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.msn.recipes import backbone_kwargs
from keras_vitmsn.msn.recipes import get_recipe
from keras_vitmsn.msn.training import build_msn_training

# The label of the raw-pixel row, in the table and in lowshot.json.
RAW_PIXELS = "raw pixels"

# The demo's own recipe (the keys of keras_vitmsn.msn.recipes, all given explicitly):
# a ViT small enough for two CPU cores, views sized for 8x8 digits.
DEMO_CONFIG = dict(
    preset=None,
    patch_size=4,
    hidden_dim=64,
    num_layers=4,
    num_heads=4,
    intermediate_dim=256,
    # Small batches, many steps: at 32 x 150 epochs (~5,000 steps, ~2.5 min on two
    # cores) MSN beats the raw pixels at every shot count; 128 x 70 epochs (~600
    # steps, as long) stayed 17-23 points below them.
    epochs=150,
    batch_size=32,
    warmup_epochs=7.5,  # 5% of the run (demo_config keeps that share for other lengths)
    learning_rate=2e-3,
    start_learning_rate=4e-4,
    final_learning_rate=2e-6,
    weight_decay=0.04,
    final_weight_decay=0.4,
    gradient_clip_norm=3.0,
    ipe_scale=1.0,
    ema_momentum=0.99,
    final_ema_momentum=1.0,
    mask_ratio=0.3,
    temperature=0.1,
    sharpen_temperature=0.25,
    final_sharpen_temperature=0.25,
    me_max_weight=2.0,
    use_sinkhorn=True,
    sinkhorn_iters=3,
    # The original's optional per-anchor entropy term (use_ent): without it the
    # Sinkhorn-balanced targets of this short run stay nearly flat and little is learnt;
    # at 2 it collapses, so me-max is doubled to keep a margin.
    entropy_weight=1.0,
    num_prototypes=64,
    head_hidden_dim=256,
    head_output_dim=128,
    head_batch_norm=True,
    global_size=16,
    focal_size=8,
    num_focal_views=2,
    global_scale=(0.5, 1.0),
    focal_scale=(0.3, 0.6),
    color_jitter_strength=0.0,
    # Digits are grey, thin and small: keep jitter to brightness/contrast, blur lightly,
    # never flip (a mirrored 2, 3, 7 ... is not a digit).
    augmentation=dict(
        flip_probability=0.0,
        color_jitter=(0.4, 0.4, 0.0, 0.0),
        grayscale_probability=0.0,
        blur_probability=0.2,
        blur_sigma=(0.1, 0.5),
    ),
)


def demo_config(overrides=None):
    """:data:`DEMO_CONFIG` with ``overrides``; a changed ``epochs`` keeps 5% warm-up
    unless ``warmup_epochs`` is given too."""
    overrides = dict(overrides or {})
    if "epochs" in overrides and "warmup_epochs" not in overrides:
        overrides["warmup_epochs"] = 0.05 * overrides["epochs"]
    return get_recipe(DEMO_CONFIG, **overrides)


def load_digits_images(image_size=16):
    """scikit-learn's 8x8 digits as ``uint8`` RGB images ``(1797, S, S, 3)`` and labels.

    Needs scikit-learn (``pip install "keras-vitmsn[demo]"``); the data ships inside it.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "The MSN demo uses scikit-learn's bundled digits: pip install "
            '"keras-vitmsn[demo]" (or scikit-learn).'
        ) from e
    import tensorflow as tf

    digits = load_digits()
    images = digits.images.astype("float32")[..., None] * (255.0 / 16.0)
    images = tf.image.resize(images, (image_size, image_size), method="bilinear").numpy()
    images = np.repeat(np.clip(np.round(images), 0, 255).astype("uint8"), 3, axis=-1)
    return images, digits.target.astype("int64")


def split_pool_test(labels, test_fraction=0.4, seed=0):
    """Stratified indices ``(pool, test)``: the same fraction of every class in test."""
    rng = np.random.default_rng(seed)
    pool, test = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(len(idx) * test_fraction))
        test.extend(idx[:cut])
        pool.extend(idx[cut:])
    return np.sort(pool), np.sort(test)


def demo_backbone(config=None, seed=0):
    config = demo_config(config)
    keras.utils.set_random_seed(seed)
    # from_config: the recipe gives image_shape as (height, width, channels).
    return ViTMSNBackbone.from_config(backbone_kwargs(config))


def pretrain(images, config=None, seed=0, verbose=1, callbacks=None):
    """MSN-pretrain :func:`demo_backbone` on ``images``; returns ``(pretrainer, history)``."""
    config = demo_config(config)
    run = build_msn_training(
        images, recipe=config, backbone_or_preset=demo_backbone(config, seed), seed=seed
    )
    history = run.fit(verbose=verbose, callbacks=callbacks)
    return run.pretrainer, history


def run_msn_demo(
    output_dir="vit_msn_demo",
    config=None,
    shots=(1, 2, 5),
    num_splits=3,
    seed=0,
    verbose=1,
):
    """Pretrain with MSN on unlabelled digits, evaluate low-shot against random init
    and raw pixels.

    Writes to ``output_dir``: ``preset/`` (the pretrained target encoder, loadable with
    ``ViTMSNBackbone.from_preset``), ``lowshot.json`` (every split's top-1),
    ``lowshot.png`` (bar plot, when matplotlib is installed) and returns a dict with
    the per-shot means, the table and the timings.

    Args:
        output_dir: where to write the results.
        config: overrides of :data:`DEMO_CONFIG` (recipe keys, e.g. ``{"epochs": 2}``
            for a smoke run).
        shots, num_splits, seed: the low-shot protocol (paper: 1, 2, 5 and 3 splits).
        verbose: 0 silent, 1 progress and the table.
    """
    config = demo_config(config)
    start = time.perf_counter()
    images, labels = load_digits_images(config["global_size"])
    pool, test = split_pool_test(labels, seed=seed)

    # Random init = the encoder MSN starts from (same seed, same architecture).
    random_init = demo_backbone(config, seed)
    t0 = time.perf_counter()
    # One line per epoch: progress bars flood a terminal over 150 epochs.
    pretrainer, history = pretrain(images[pool], config, seed=seed, verbose=2 if verbose else 0)
    pretrain_seconds = time.perf_counter() - t0

    converter = _converter(config)
    pool_x, test_x = converter(images[pool]), converter(images[test])
    t0 = time.perf_counter()
    protocol = dict(shots=shots, num_splits=num_splits, seed=seed)
    results = {
        "random init": lowshot.lowshot_eval(
            random_init, pool_x, test_x, labels[pool], labels[test], verbose=0, **protocol
        ),
        # A sceptic's first baseline: the very same protocol (splits, per-sample
        # centring, L2 normalisation, logistic regression) on the encoder's input.
        RAW_PIXELS: lowshot.evaluate(
            raw_pixel_features(pool_x),
            labels[pool],
            raw_pixel_features(test_x),
            labels[test],
            **protocol,
        ),
        "MSN": lowshot.lowshot_eval(
            pretrainer.target_encoder,
            pool_x,
            test_x,
            labels[pool],
            labels[test],
            verbose=0,
            **protocol,
        ),
    }
    eval_seconds = time.perf_counter() - t0

    table = format_comparison(results)
    os.makedirs(output_dir, exist_ok=True)
    pretrainer.save_to_preset(os.path.join(output_dir, "preset"))
    summary = {
        "config": config,
        "pool_images": int(len(pool)),
        "test_images": int(len(test)),
        "pretrain_seconds": round(pretrain_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "backend": keras.backend.backend(),
        "final_loss": {k: float(v[-1]) for k, v in history.history.items()},
        "top1": {
            name: {
                r.label: {
                    "mean": 100 * r.mean,
                    "std": 100 * r.std,
                    "splits": [100 * a for a in r.accuracies],
                }
                for r in res.values()
            }
            for name, res in results.items()
        },
    }
    with open(os.path.join(output_dir, "lowshot.json"), "w") as f:
        json.dump(summary, f, indent=2, default=list)
    plot = _plot(results, os.path.join(output_dir, "lowshot.png"))
    summary["table"] = table
    summary["plot"] = plot
    if verbose:
        print(table)
        print(
            f"pretraining {pretrain_seconds:.0f} s, low-shot evaluation {eval_seconds:.0f} s "
            f"({keras.backend.backend()} backend); wrote {output_dir}/"
        )
    return summary


def _converter(config):
    from keras_vitmsn.images.converter import ViTMSNImageConverter

    return ViTMSNImageConverter(image_size=(config["global_size"],) * 2)


def raw_pixel_features(images):
    """The raw-pixel baseline's features: the encoder's (converted) input, flattened.

    Example:
    >>> raw_pixel_features(np.zeros((2, 16, 16, 3))).shape
    (2, 768)
    """
    images = np.asarray(keras.ops.convert_to_numpy(images), dtype="float32")
    return images.reshape(len(images), -1)


def format_comparison(results):
    """Markdown table: one row per method, top-1 (mean +- std over splits) per setting.

    A last line gives MSN's margin over the raw pixels when both are in ``results``.

    Example:
    >>> from keras_vitmsn.lowshot import ShotResult
    >>> print(format_comparison({"MSN": {1: ShotResult(1, (0.5, 0.7), (10, 10))}}))
    | top-1 (%), mean +- std over splits | 1/class |
    |---|---|
    | MSN | 60.0 +- 14.1 |
    """
    names = list(results)
    keys = list(results[names[0]])
    lines = [
        "| top-1 (%), mean +- std over splits | "
        + " | ".join(results[names[0]][k].label for k in keys)
        + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name in names:
        cells = [results[name][k] for k in keys]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{100 * c.mean:.1f} +- {100 * c.std:.1f}" for c in cells)
            + " |"
        )
    if "MSN" in results and RAW_PIXELS in results:
        margins = [100 * (results["MSN"][k].mean - results[RAW_PIXELS][k].mean) for k in keys]
        lines.append(
            "MSN minus raw pixels (points): "
            + ", ".join(f"{m:+.1f} at {results['MSN'][k].label}" for m, k in zip(margins, keys))
        )
    return "\n".join(lines)


def _plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(results)
    keys = list(results[names[0]])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        res = [results[name][k] for k in keys]
        ax.bar(
            np.arange(len(keys)) + i * width,
            [100 * r.mean for r in res],
            width,
            yerr=[100 * r.std for r in res],
            label=name,
            capsize=3,
        )
    ax.set_xticks(np.arange(len(keys)) + width * (len(names) - 1) / 2)
    ax.set_xticklabels([results[names[0]][k].label for k in keys])
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Low-shot digits: random init, raw pixels, MSN")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
