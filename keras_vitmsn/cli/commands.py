"""What each ``keras-vitmsn`` command does (the parser and entry point are
:mod:`keras_vitmsn.cli`).

Commands: ``demo`` (MSN pretraining + low-shot on digits), ``supervised-demo``,
``presets``, ``convert``, ``pretrain``, ``finetune``, ``lowshot``, ``predict``.
Bad input (a bad option value, a missing folder, too few classes, an unreadable image,
an unknown preset, more shots than the smallest class has images, an output that
cannot be written) ends with a one-line ``error:`` message and exit status 2, never a
traceback. Outputs are checked before any work.
"""

import os
import sys

from keras_vitmsn.cli.args import UsageError

USER_ERROR_EXIT = 2
SKIP_BAD_IMAGES_HELP = (
    "Leave out, with a warning naming them, image files Pillow cannot decode "
    "(default: stop with an error listing them)."
)


def _user_errors():
    # Raised by our own validation (ValueError), by preset resolution, by the
    # checkpoint readers and by the output checks (an existing file where a folder
    # goes, an unwritable folder); anything else is a bug and keeps its traceback.
    from keras_vitmsn.errors import CheckpointError
    from keras_vitmsn.errors import PresetDownloadError

    return (
        UsageError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        CheckpointError,
        PresetDownloadError,
    )


def _progress():
    """Keras' progress bars redraw with ANSI codes: in a terminal only. Redirected to a
    log, fit prints one line per epoch (verbose=2) and feature extraction none."""
    return 1 if sys.stdout.isatty() else 2


def _backend_banner():
    import keras

    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}", file=sys.stderr)


def _demo(args):
    from keras_vitmsn.demos.msn_digits import run_msn_demo

    _backend_banner()
    config = {} if args.epochs is None else {"epochs": args.epochs}
    run_msn_demo(args.output, config=config, seed=args.seed)
    return 0


def _supervised_demo(args):
    from keras_vitmsn.demos.supervised import run_demo

    run_demo(epochs=args.epochs, output=args.output)
    return 0


# `pretrain` flags that override a recipe key of the same meaning (flag -> recipe key).
_RECIPE_FLAGS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "warmup_epochs": "warmup_epochs",
    "image_size": "global_size",
    "focal_size": "focal_size",
    "num_focal_views": "num_focal_views",
    "mask_ratio": "mask_ratio",
    "num_prototypes": "num_prototypes",
    "me_max_weight": "me_max_weight",
    "sinkhorn": "use_sinkhorn",
    "learning_rate": "learning_rate",
    "ipe_scale": "ipe_scale",
}


def _pretrain(args):
    import keras

    from keras_vitmsn.msn.training import build_msn_training

    if args.from_scratch and not args.preset:
        raise UsageError("--from-scratch takes the architecture of --preset; give one.")
    if args.restore_optimizer and not args.preset:
        raise UsageError("--restore-optimizer continues the run saved in --preset; give one.")
    from keras_vitmsn.cli.files import check_preset_output

    check_preset_output(args.output, "pretrain")
    # Only the flags given on the command line override the recipe.
    overrides = {
        key: getattr(args, flag)
        for flag, key in _RECIPE_FLAGS.items()
        if getattr(args, flag) is not None
    }
    if args.learning_rate is not None:
        # The recipe's warm-up start and final rate keep their ratios to the peak.
        overrides["start_learning_rate"] = args.learning_rate / 5
        overrides["final_learning_rate"] = args.learning_rate / 1000
    _backend_banner()
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(args.mixed_precision)
    keras.utils.set_random_seed(args.seed)
    run = build_msn_training(
        args.data,
        recipe=args.recipe,
        backbone_or_preset=args.preset,
        load_weights=not args.from_scratch,
        restore_optimizer=args.restore_optimizer,
        seed=args.seed,
        skip_bad_images=args.skip_bad_images,
        **overrides,
    )
    print(
        f"pretrain: recipe {args.recipe}, {run.num_images} images from {args.data}, "
        f"{run.steps_per_epoch} steps of {run.batch_size} per epoch, "
        f"{run.config['epochs']} epochs",
        file=sys.stderr,
    )
    run.fit(verbose=2)
    run.pretrainer.save_to_preset(args.output)
    print(f"Wrote the pretrained target encoder as a preset to {args.output}")
    return 0


def _presets(args):
    from keras_vitmsn.presets import list_presets

    rows = [("name", "params", "patch", "hub repository", "original checkpoint")]
    for name, entry in list_presets().items():
        meta = entry["metadata"]
        rows.append(
            (
                name,
                f"{meta['params'] / 1e6:.1f}M",
                str(meta["patch_size"]),
                entry["hf_handle"],
                meta["original_checkpoint"],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _convert(args):
    from keras_vitmsn.presets.convert import convert_to_preset

    convert_to_preset(args.source, args.output)
    print(f"Wrote a Keras preset to {args.output}")
    return 0


def _load_folder(path, what, skip_bad_images):
    from keras_vitmsn.images.folders import ImageFolder

    folder = ImageFolder(path, skip_bad_images=skip_bad_images)
    print(
        f"{what}: {len(folder)} images in {len(folder.class_names)} classes from {path}",
        file=sys.stderr,
    )
    return folder


def _finetune(args):
    import keras

    import keras_vitmsn as kv
    from keras_vitmsn.cli.files import check_model_output
    from keras_vitmsn.cli.files import save_model
    from keras_vitmsn.models.optimizer import ScheduledAdamW

    if check_model_output(args.output):
        print(f"finetune: {args.output} exists; it is replaced when training ends", file=sys.stderr)
    train = _load_folder(args.train, "train", args.skip_bad_images)
    val = _load_folder(args.val, "val", args.skip_bad_images) if args.val else None
    if val is not None and val.class_names != train.class_names:
        raise UsageError(
            f"--val classes {val.class_names} differ from --train classes {train.class_names}."
        )
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(args.mixed_precision)
    _backend_banner()
    overrides = {}
    if args.image_size:
        overrides["image_shape"] = (args.image_size, args.image_size, 3)
    model = kv.ViTMSNClassifier.from_preset(
        args.preset,
        num_classes=len(train.class_names),
        class_names=train.class_names,
        **overrides,
    )
    learning_rate = args.learning_rate or (1e-3 if args.linear_probe else 5e-5)
    if args.linear_probe:
        model.backbone.trainable = False
    model.compile(
        optimizer=ScheduledAdamW(learning_rate, weight_decay=args.weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    size = model.backbone.image_shape[:2]
    train_data = train.as_dataset(size, args.batch_size, shuffle=True, seed=args.seed)
    val_data = val.as_dataset(size, args.batch_size) if val is not None else None
    model.fit(train_data, validation_data=val_data, epochs=args.epochs, verbose=_progress())
    save_model(model, args.output)
    print(f"Saved {args.output} (classes {', '.join(train.class_names)})")
    return 0


def _parse_shots(text):
    shots = []
    for part in text.split(","):
        part = part.strip()
        try:
            shots.append(float(part) if "." in part else int(part))
        except ValueError:
            raise UsageError(
                f"--shots takes comma-separated images per class (e.g. 1,2,5) or label "
                f"fractions (e.g. 0.01); got {text!r}."
            ) from None
    return tuple(shots)


def _lowshot(args):
    import keras_vitmsn as kv
    from keras_vitmsn import lowshot

    shots = _parse_shots(args.shots)
    train = _load_folder(args.train, "train", args.skip_bad_images)
    test = _load_folder(args.test, "test", args.skip_bad_images)
    missing = sorted(set(test.class_names) - set(train.class_names))
    if missing:
        raise UsageError(f"--test has classes {missing} that --train lacks.")
    counts = train.class_counts()
    smallest = min(counts, key=counts.get)
    largest_shot = max((s for s in shots if isinstance(s, int)), default=0)
    if largest_shot > counts[smallest]:
        raise UsageError(
            f"--shots asks for {largest_shot} images per class but class {smallest!r} "
            f"in {args.train} has only {counts[smallest]}."
        )
    _backend_banner()
    backbone = kv.ViTMSNBackbone.from_preset(args.preset)
    converter = kv.ViTMSNImageConverter.from_preset(args.preset)
    size = backbone.image_shape[:2]
    # Test labels must index the same class list as the training labels.
    remap = [train.class_names.index(name) for name in test.class_names]
    results = lowshot.lowshot_eval(
        backbone,
        # The preset's converter then only normalises: the images already have its size.
        train.load(size, resize_mode=args.preprocess),
        test.load(size, resize_mode=args.preprocess),
        train_labels=train.labels,
        test_labels=[remap[i] for i in test.labels],
        shots=shots,
        num_splits=args.splits,
        seed=args.seed,
        feature=args.feature,
        batch_size=args.batch_size,
        preprocessing=converter,
        verbose=_progress() == 1,
    )
    print(lowshot.format_table(results, title=f"Low-shot top-1, {args.preset}"))
    return 0


def _predict(args):
    import keras
    import numpy as np

    import keras_vitmsn as kv
    from keras_vitmsn.cli.files import legacy_class_names_note
    from keras_vitmsn.cli.files import load_classifier
    from keras_vitmsn.images.folders import load_image

    for path in args.images:
        if os.path.isdir(path):
            raise UsageError(
                f"{path!r} is a folder; predict takes image files (e.g. {path}/*.png)."
            )
        if not os.path.isfile(path):
            raise UsageError(f"Image {path!r} does not exist.")
    model = load_classifier(args.model)
    note = legacy_class_names_note(args.model, model)
    if note:
        print(note, file=sys.stderr)
    size = model.backbone.image_shape[:2]
    images = np.stack([load_image(p, size) for p in args.images])
    if model.preprocessor is None:
        images = kv.ViTMSNImageConverter(image_size=size)(images)
    outputs = model.predict(images, verbose=0)
    # Logits unless the head applies an activation (then its outputs are the scores).
    from_logits = model.activation is keras.activations.linear
    decoded = kv.decode_predictions(outputs, model.class_names, args.top_k, from_logits=from_logits)
    for path, top in zip(args.images, decoded):
        labels = ", ".join(f"{index if name is None else name}: {p:.3f}" for index, name, p in top)
        print(f"{path}\t{labels}")
    return 0
