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
import shutil
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
    from keras_vitmsn.cli.files import check_preset_output
    from keras_vitmsn.cli.files import output_lock
    from keras_vitmsn.demos.msn_digits import run_msn_demo

    # The demo's preset holds its training state: replacing it needs --overwrite.
    check_preset_output(os.path.join(args.output, "preset"), "demo", args.overwrite)
    with output_lock(args.output, "demo"):
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
    "patch_size": "patch_size",
    "hidden_dim": "hidden_dim",
    "num_layers": "num_layers",
    "num_heads": "num_heads",
    "intermediate_dim": "intermediate_dim",
    "head_hidden_dim": "head_hidden_dim",
    "head_output_dim": "head_output_dim",
}
# The encoder's architecture: set by these flags, the recipe or a built-in preset's
# table entry for a run from scratch; a --preset to continue from brings its own.
_ARCHITECTURE_KEYS = ("patch_size", "hidden_dim", "num_layers", "num_heads", "intermediate_dim")
# A new MSN head: a --preset that holds one (or an original checkpoint) brings its own.
_HEAD_KEYS = ("head_hidden_dim", "head_output_dim", "num_prototypes")


def _flag(key):
    """The `pretrain` flag of a recipe key (``global_size`` -> ``--image-size``)."""
    for flag, recipe_key in _RECIPE_FLAGS.items():
        if recipe_key == key:
            return "--" + flag.replace("_", "-")
    return key


def _pretrain_setup(args):
    """The recipe overrides and the preset (None: from scratch) of a `pretrain` run,
    checked against each other before anything is built; errors name the flags."""
    from keras_vitmsn.conversion.msn_checkpoint import is_msn_checkpoint_path
    from keras_vitmsn.msn import recipes
    from keras_vitmsn.presets import get_preset
    from keras_vitmsn.presets import is_preset_name
    from keras_vitmsn.presets.file_format import MSN_HEAD_FILE

    if args.from_scratch and not args.preset:
        raise UsageError("--from-scratch takes the architecture of --preset; give one.")
    if args.restore_optimizer and not args.preset:
        raise UsageError("--restore-optimizer continues the run saved in --preset; give one.")
    if args.restore_optimizer and args.from_scratch:
        raise UsageError("--restore-optimizer continues a run; --from-scratch starts a new one.")
    # Only the flags given on the command line override the recipe.
    overrides = {
        key: getattr(args, flag)
        for flag, key in _RECIPE_FLAGS.items()
        if getattr(args, flag) is not None
    }
    preset = args.preset
    if preset and args.from_scratch and is_preset_name(preset) and not os.path.exists(preset):
        # A built-in preset's architecture is in the table: nothing to download.
        architecture = get_preset(preset)["architecture"]
        for key in _ARCHITECTURE_KEYS:
            overrides.setdefault(key, architecture[key])
        overrides.setdefault("global_size", architecture["image_shape"][0])
        preset = None
    if preset:
        given = [_flag(key) for key in _ARCHITECTURE_KEYS if key in overrides]
        if given:
            raise UsageError(
                f"{', '.join(given)} set the architecture of a run from scratch (no "
                "--preset, or a built-in preset name with --from-scratch); --preset "
                f"{preset} brings its own."
            )
        has_head = not args.from_scratch and (
            is_msn_checkpoint_path(preset) or os.path.isfile(os.path.join(preset, MSN_HEAD_FILE))
        )
        given = [_flag(key) for key in _HEAD_KEYS if key in overrides]
        if has_head and given:
            raise UsageError(
                f"{', '.join(given)} size a new MSN head; --preset {preset} holds one, "
                "which the run continues (add --from-scratch for a new one)."
            )
    if args.learning_rate is not None:
        # The recipe's warm-up start and final rate keep their ratios to the peak.
        overrides["start_learning_rate"] = args.learning_rate / 5
        overrides["final_learning_rate"] = args.learning_rate / 1000
    recipe = recipes.get_recipe(args.recipe)
    epochs = overrides.get("epochs", recipe["epochs"])
    if args.warmup_epochs is not None and args.warmup_epochs >= epochs:
        raise UsageError(
            f"--warmup-epochs {args.warmup_epochs:g} must be below the run's {epochs} "
            "epochs (--epochs)."
        )
    note = None
    if recipe["warmup_epochs"] >= epochs and "warmup_epochs" not in overrides:
        # A short run keeps the recipe's share of warm-up (15 of 800 epochs for msn_vits16).
        overrides["warmup_epochs"] = recipe["warmup_epochs"] * epochs / recipe["epochs"]
        note = (
            f"note: the {args.recipe} recipe warms up for {recipe['warmup_epochs']:g} of its "
            f"{recipe['epochs']} epochs, longer than this {epochs}-epoch run: warming up for "
            f"the same share, {overrides['warmup_epochs']:.3g} epochs (--warmup-epochs "
            "sets it)"
        )
    config = recipes.get_recipe(args.recipe, **overrides)
    _check_views(config, from_scratch=preset is None, given=overrides)
    if note:
        print(note, file=sys.stderr)
    return overrides, preset


def _check_views(config, from_scratch, given):
    """View sizes against each other and the patch grid, where known before building:
    from scratch the recipe (or flags) set them all."""
    focal, size = config["focal_size"], config["global_size"]

    def named(key):
        where = "" if key in given else " (the recipe's)"
        return f"{_flag(key)} {config[key]}{where}"

    if from_scratch:
        patch = config["patch_size"]
        if size % patch:
            raise UsageError(f"{named('global_size')} must be a multiple of {named('patch_size')}.")
        if config["hidden_dim"] % config["num_heads"]:
            raise UsageError(f"{named('hidden_dim')} must be a multiple of {named('num_heads')}.")
        if config["num_focal_views"] and focal % patch:
            raise UsageError(f"{named('focal_size')} must be a multiple of {named('patch_size')}.")
    if config["num_focal_views"] and "focal_size" in given and "global_size" in given:
        if focal >= size:
            raise UsageError(
                f"{named('focal_size')} must be below {named('global_size')}: focal views "
                "are small crops of the image."
            )


def _check_run_views(run, given):
    """The views as run (a preset sets the global size): focal below global."""
    focal, size = run.config["focal_size"], run.config["global_size"]
    if run.config["num_focal_views"] and "focal_size" in given and focal >= size:
        raise UsageError(
            f"--focal-size {focal} must be below the global view size {size} (the "
            "preset's, or --image-size): focal views are small crops of the image."
        )


def _check_image_size(preset, size):
    """After a preset failed to load at ``--image-size``: say so if the size is off the
    preset's patch grid (else the caller re-raises the library's error)."""
    import keras_vitmsn as kv

    try:
        patch = kv.ViTMSNBackbone.from_preset(preset, load_weights=False).patch_size
    except Exception:  # the preset itself fails: its own error is the one to show
        return
    if size % patch:
        raise UsageError(
            f"--image-size {size} must be a multiple of the patch size {patch} of {preset}."
        )


def _with_flag_names(message, given):
    """A library error about recipe keys, reworded with `pretrain`'s flag names (the
    keys of ``given``; another key is a value of the preset's)."""
    import re

    for flag, key in _RECIPE_FLAGS.items():
        name = "--" + flag.replace("_", "-")
        if key not in given:
            name = "the " + key.replace("_", " ")
        pattern = rf"`{key}`" if "_" not in key else rf"`?\b{key}\b`?"
        message = re.sub(pattern, name, message)
    image_size = "--image-size" if "global_size" in given else "the image size"
    return re.sub(r"`?\bimage_shape\b`?", image_size, message)


def _pretrain(args):
    import keras

    from keras_vitmsn.cli.files import check_preset_output
    from keras_vitmsn.cli.files import output_lock
    from keras_vitmsn.msn import checkpoints
    from keras_vitmsn.msn.training import build_msn_training

    # An --output with checkpoints is a run to continue (with --overwrite: to start over).
    if not checkpoints.RunCheckpoints(args.output).exists():
        check_preset_output(args.output, "pretrain", args.overwrite, refuse_any_preset=True)
    overrides, preset = _pretrain_setup(args)
    with output_lock(args.output, "pretrain"):
        _backend_banner()
        if args.mixed_precision:
            keras.mixed_precision.set_global_policy(args.mixed_precision)
        keras.utils.set_random_seed(args.seed)
        try:
            run = build_msn_training(
                args.data,
                recipe=args.recipe,
                backbone_or_preset=preset,
                load_weights=not args.from_scratch,
                restore_optimizer=args.restore_optimizer,
                seed=args.seed,
                skip_bad_images=args.skip_bad_images,
                checkpoint_dir=args.output,
                restart=args.overwrite,
                checkpoint_every_minutes=args.checkpoint_every_minutes,
                max_checkpoint_overhead=None if args.checkpoint_every_epoch else 0.05,
                **overrides,
            )
        except ValueError as e:
            if preset and "global_size" in overrides:
                _check_image_size(preset, overrides["global_size"])
            raise UsageError(_with_flag_names(str(e), overrides)) from None
        _check_run_views(run, overrides)
        head = run.pretrainer.projection_head
        print(
            f"pretrain: recipe {args.recipe}, {run.num_images} images from {args.data}, "
            f"{run.steps_per_epoch} steps of {run.batch_size} per epoch, "
            f"{run.config['epochs']} epochs; encoder {run.pretrainer.encoder.count_params():,} "
            f"parameters, head {head.count_params():,} (--head-hidden-dim, "
            "--head-output-dim)",
            file=sys.stderr,
        )
        if run.resumed_from is not None:
            resumed = run.resumed_from
            print(
                f"pretrain: resuming from epoch {resumed['epoch'] + 1}, step "
                f"{resumed['step']} ({resumed['path']})",
                file=sys.stderr,
            )
        try:
            run.fit(verbose=0, handle_signals=True)
        except checkpoints.TrainingInterrupted as stop:
            print(
                f"pretrain: stopped at epoch {stop.epoch + 1}, step {stop.step}; checkpoint "
                f"{stop.checkpoint}: run the same command again to continue",
                file=sys.stderr,
            )
            return stop.exit_status
        # Beside the checkpoints and logs: the folder is the run's, not a bare preset.
        checkpoints.write_preset_in_place(run.pretrainer, args.output)
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
    from keras_vitmsn.cli.files import check_preset_output
    from keras_vitmsn.cli.files import output_lock
    from keras_vitmsn.presets.convert import convert_to_preset

    check_preset_output(args.output, "convert", args.overwrite)
    with output_lock(args.output, "convert"):
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
    from keras_vitmsn.cli.files import check_model_output
    from keras_vitmsn.cli.files import output_lock

    if check_model_output(args.output):
        print(f"finetune: {args.output} exists; it is replaced when training ends", file=sys.stderr)
    with output_lock(args.output, "finetune"):
        return _finetune_locked(args)


def _finetune_locked(args):
    import keras

    import keras_vitmsn as kv
    from keras_vitmsn.cli.files import save_model
    from keras_vitmsn.models.optimizer import ScheduledAdamW
    from keras_vitmsn.msn import checkpoints

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
        from keras_vitmsn.models.backbone import image_shape_for

        overrides["image_shape"] = image_shape_for(args.image_size, args.image_size)
    try:
        model = kv.ViTMSNClassifier.from_preset(
            args.preset,
            num_classes=len(train.class_names),
            class_names=train.class_names,
            **overrides,
        )
    except ValueError:
        if args.image_size:
            _check_image_size(args.preset, args.image_size)
        raise
    learning_rate = args.learning_rate or (1e-3 if args.linear_probe else 5e-5)
    if args.linear_probe:
        model.backbone.trainable = False
    model.compile(
        optimizer=ScheduledAdamW(learning_rate, weight_decay=args.weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    size = model.backbone.image_size
    train_data = train.as_dataset(size, args.batch_size, shuffle=True, seed=args.seed)
    val_data = val.as_dataset(size, args.batch_size) if val is not None else None
    # Model and optimizer kept at every epoch end beside the output: the same command
    # run again continues from there.
    backup = args.output + ".checkpoint"
    record = {
        "preset": args.preset,
        "train": os.path.abspath(args.train),
        "images": len(train),
        "classes": train.class_names,
        "val": os.path.abspath(args.val) if args.val else None,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "linear_probe": args.linear_probe,
        "learning_rate": learning_rate,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
    }
    done = checkpoints.backup_epoch(backup)
    if done:
        print(f"finetune: resuming after epoch {done} (backup in {backup})", file=sys.stderr)
    try:
        checkpoints.resumable_fit(
            model,
            train_data,
            backup,
            record,
            epochs=args.epochs,
            validation_data=val_data,
            verbose=_progress(),
            handle_signals=True,
        )
    except checkpoints.TrainingInterrupted as stop:
        print(
            f"finetune: stopped in epoch {stop.epoch + 1}; the epochs done are kept in "
            f"{backup}: run the same command again to continue",
            file=sys.stderr,
        )
        return stop.exit_status
    save_model(model, args.output)
    shutil.rmtree(backup, ignore_errors=True)
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
        shot = shots[-1]
        if isinstance(shot, int) and shot < 1 or isinstance(shot, float) and not 0 < shot <= 1:
            raise UsageError(
                f"--shots takes images per class >= 1 or label fractions in (0, 1]; got "
                f"{part} in {text!r}."
            )
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
    size = backbone.image_size
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
    size = model.backbone.image_size
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
