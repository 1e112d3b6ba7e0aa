"""The ``keras-vitmsn`` command line (also ``python -m keras_vitmsn``): the parser and
the entry point; the commands are :mod:`keras_vitmsn.cli.commands`.

Bad input (a bad option value, a missing folder, an unreadable image, an unknown preset,
an output that cannot be written) ends with a one-line ``error:`` message and exit
status 2, never a traceback; outputs are checked before any work.
``keras-vitmsn --version`` prints the version.
"""

import argparse
import functools
import signal
import sys
import threading

from keras_vitmsn.cli.args import ArgumentParser
from keras_vitmsn.cli.args import LazyChoices
from keras_vitmsn.cli.args import at_least_one
from keras_vitmsn.cli.args import fraction_below_one
from keras_vitmsn.cli.args import non_negative_float
from keras_vitmsn.cli.args import non_negative_int
from keras_vitmsn.cli.args import positive_float
from keras_vitmsn.cli.args import positive_int
from keras_vitmsn.cli.args import seed
from keras_vitmsn.cli.commands import SKIP_BAD_IMAGES_HELP
from keras_vitmsn.cli.commands import USER_ERROR_EXIT
from keras_vitmsn.cli.commands import _convert
from keras_vitmsn.cli.commands import _demo
from keras_vitmsn.cli.commands import _finetune
from keras_vitmsn.cli.commands import _lowshot
from keras_vitmsn.cli.commands import _predict
from keras_vitmsn.cli.commands import _presets
from keras_vitmsn.cli.commands import _pretrain
from keras_vitmsn.cli.commands import _supervised_demo
from keras_vitmsn.cli.commands import _user_errors
from keras_vitmsn.environment import setup_tensorflow
from keras_vitmsn.version import __version__

# Nothing imported above imports keras: main() sets the process up before anything does
# (_setup_process), and `--version` stays fast.


def _recipe_names(before_import):
    before_import()
    from keras_vitmsn.msn.recipes import recipe_names  # imports keras (via keras_vitmsn.msn)

    return recipe_names()


MIXED_PRECISION_HELP = (
    "Train with this mixed-precision policy (default: off, float32; the flag alone "
    "means mixed_bfloat16)."
)
OVERWRITE_HELP = (
    "Replace an existing --output preset that holds MSN training state "
    "(msn_training_state.h5; for pretrain: any existing preset). Without it such an "
    "output is refused. A --output in use by another run is always refused (a lock file "
    "beside it, OUTPUT.lock)."
)


def build_parser(before_import=None):
    """The parser; ``before_import()`` runs before it first imports keras (to list the
    recipes for ``--recipe``): building it and ``--version`` import nothing heavy."""
    recipes = LazyChoices(functools.partial(_recipe_names, before_import or _nothing))
    parser = ArgumentParser(
        prog="keras-vitmsn",
        description="ViT-MSN vision transformers for Keras 3. "
        "Select the backend with KERAS_BACKEND=jax|torch|tensorflow. On JAX on a Linux "
        "CPU, KERAS_VITMSN_JAX_CPU_MEMORY=1 makes full-size training steps faster "
        "(keras_vitmsn.backend.jax_cpu_memory). On torch, "
        "KERAS_VITMSN_TORCH_CPU_GEMM=auto|onednn|addmm picks the float32 CPU GEMM (auto: "
        "the faster on this machine, measured once; keras_vitmsn.backend.torch_gemm).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="Offline: MSN-pretrain a tiny ViT on unlabelled digits, then compare it with "
        "random init in the low-shot protocol (needs the 'demo' extra: scikit-learn).",
    )
    demo.add_argument(
        "--output",
        default="vit_msn_demo",
        help="Directory for the preset, lowshot.json and lowshot.png.",
    )
    demo.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="Pretraining epochs (default: the demo recipe).",
    )
    demo.add_argument("--seed", type=seed, default=0)
    demo.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    demo.set_defaults(handler=_demo)

    supervised = commands.add_parser(
        "supervised-demo", help="Offline example: fit and evaluate a small ViT-MSN classifier."
    )
    supervised.add_argument("--epochs", type=positive_int, default=10)
    supervised.add_argument(
        "--output", default="vit_msn_demo.keras", help="Where to save the model ('' to skip)."
    )
    supervised.set_defaults(handler=_supervised_demo)

    pretrain = commands.add_parser(
        "pretrain",
        help="MSN self-supervised pretraining on a folder of unlabelled images, with a "
        "released recipe (flags given override it).",
    )
    pretrain.add_argument(
        "--data", required=True, help="Folder of images (searched recursively; labels unused)."
    )
    # A metavar, so that argparse does not list the choices (importing keras) while the
    # parser is built; the help lists them when shown.
    pretrain.add_argument(
        "--recipe",
        default="msn_vits16",
        choices=recipes,
        metavar="RECIPE",
        help="The authors' recipe to follow: %(choices)s (default msn_vits16, "
        "their released config).",
    )
    pretrain.add_argument(
        "--preset",
        help="Continue from this preset, hf://org/repo, directory or original "
        ".pth.tar "
        "(default: from scratch with the recipe's architecture).",
    )
    pretrain.add_argument(
        "--from-scratch",
        action="store_true",
        help="Use the preset's architecture with random weights (a built-in preset name "
        "needs no download).",
    )
    pretrain.add_argument(
        "--restore-optimizer",
        action="store_true",
        help="Continue the optimizer and schedules saved in --preset (a previous "
        "pretrain output or an original .pth.tar).",
    )
    pretrain.add_argument(
        "--output", required=True, help="Directory to write the pretrained preset to."
    )
    pretrain.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    pretrain.add_argument(
        "--checkpoint-every-epoch",
        action="store_true",
        help="Write a checkpoint at every epoch end, however short the epochs (default: "
        "epoch ends that would make writing checkpoints more than 5%% of the run's time "
        "are skipped). The same command run again continues from the newest checkpoint "
        "in --output; --overwrite starts over.",
    )
    pretrain.add_argument(
        "--checkpoint-every-minutes",
        type=positive_float,
        help="Also write a checkpoint every this many minutes within an epoch.",
    )
    pretrain.add_argument(
        "--epochs", type=positive_int, help="Default: the recipe's (800 for msn_vits16)."
    )
    pretrain.add_argument(
        "--warmup-epochs",
        type=non_negative_float,
        help="Learning-rate warm-up (default: the recipe's 15; must be below --epochs; a "
        "run shorter than the recipe's warm-up keeps its share, 15/800 for msn_vits16).",
    )
    pretrain.add_argument(
        "--batch-size",
        type=positive_int,
        help="Global batch (default: the recipe's 1024, capped at the number of images).",
    )
    pretrain.add_argument(
        "--image-size",
        type=positive_int,
        help="Global view size (default: the preset's, or the recipe's 224).",
    )
    pretrain.add_argument(
        "--focal-size",
        type=positive_int,
        help="Focal view size, below --image-size and a multiple of the patch size "
        "(default: the recipe's 96/224 of the global size).",
    )
    pretrain.add_argument(
        "--num-focal-views", type=non_negative_int, help="Default: the recipe's 10 (0: none)."
    )
    pretrain.add_argument(
        "--mask-ratio",
        type=fraction_below_one,
        help="Patches dropped from the anchor view, in [0, 1) (default: the recipe's).",
    )
    for flag, key, default in (
        ("--patch-size", "patch size", 16),
        ("--hidden-dim", "width", 384),
        ("--num-layers", "depth", 12),
        ("--num-heads", "attention heads, dividing --hidden-dim", 6),
        ("--intermediate-dim", "MLP width", 1536),
    ):
        pretrain.add_argument(
            flag,
            type=positive_int,
            help=f"Encoder {key} of a run from scratch: without --preset, or with a "
            f"built-in preset name and --from-scratch (default: the recipe's or that "
            f"preset's; {default} for msn_vits16).",
        )
    pretrain.add_argument(
        "--head-hidden-dim",
        type=positive_int,
        help="Projection head hidden width of a new head (default: the recipe's 2048).",
    )
    pretrain.add_argument(
        "--head-output-dim",
        type=positive_int,
        help="Projection head output width of a new head (default: the recipe's 256).",
    )
    pretrain.add_argument("--num-prototypes", type=positive_int, help="Default: the recipe's 1024.")
    pretrain.add_argument(
        "--me-max-weight", type=non_negative_float, help="Default: the recipe's 1."
    )
    pretrain.add_argument(
        "--sinkhorn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Balance the targets with Sinkhorn (default: the recipe's, on).",
    )
    pretrain.add_argument(
        "--learning-rate",
        type=positive_float,
        help="Peak learning rate after warm-up (default: the recipe's 1e-3).",
    )
    pretrain.add_argument(
        "--ipe-scale",
        type=at_least_one,
        help="Stretch the schedules by this factor, >= 1 (the original: 1.25; default 1).",
    )
    pretrain.add_argument(
        "--mixed-precision",
        nargs="?",
        const="mixed_bfloat16",
        default=None,
        choices=["mixed_bfloat16", "mixed_float16"],
        help=MIXED_PRECISION_HELP,
    )
    pretrain.add_argument("--seed", type=seed, default=0)
    pretrain.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_IMAGES_HELP)
    pretrain.set_defaults(handler=_pretrain)

    presets = commands.add_parser("presets", help="List the built-in presets.")
    presets.set_defaults(handler=_presets)

    convert = commands.add_parser(
        "convert", help="Convert a transformers or original MSN checkpoint to a Keras preset."
    )
    convert.add_argument(
        "--source", required=True, help="hf://org/repo, a directory, or a .pth.tar file."
    )
    convert.add_argument("--output", required=True, help="Directory to write the preset to.")
    convert.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    convert.set_defaults(handler=_convert)

    finetune = commands.add_parser("finetune", help="Fine-tune a classifier on an image folder.")
    finetune.add_argument(
        "--preset", required=True, help="Preset name, hf://org/repo or directory."
    )
    finetune.add_argument("--train", required=True, help="Folder with one sub-folder per class.")
    finetune.add_argument("--val", help="Validation folder with the same classes.")
    finetune.add_argument("--epochs", type=positive_int, default=3)
    finetune.add_argument("--batch-size", type=positive_int, default=32)
    finetune.add_argument(
        "--image-size",
        type=positive_int,
        help="Train at this size (position embeddings resampled).",
    )
    finetune.add_argument(
        "--linear-probe", action="store_true", help="Freeze the backbone; train the head only."
    )
    finetune.add_argument(
        "--mixed-precision",
        nargs="?",
        const="mixed_bfloat16",
        default=None,
        choices=["mixed_bfloat16", "mixed_float16"],
        help=MIXED_PRECISION_HELP,
    )
    finetune.add_argument(
        "--learning-rate", type=positive_float, help="Default 1e-3 (linear probe) or 5e-5."
    )
    finetune.add_argument("--weight-decay", type=non_negative_float, default=0.01)
    finetune.add_argument("--seed", type=seed, default=0)
    finetune.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_IMAGES_HELP)
    finetune.add_argument(
        "--output",
        required=True,
        help="FILE.keras to save the fine-tuned model to (replaced if it exists; "
        "the class names are stored inside it).",
    )
    finetune.set_defaults(handler=_finetune)

    lowshot = commands.add_parser(
        "lowshot", help="MSN low-shot evaluation (logistic regression on frozen features)."
    )
    lowshot.add_argument("--preset", required=True)
    lowshot.add_argument("--train", required=True, help="Labelled pool: one sub-folder per class.")
    lowshot.add_argument("--test", required=True, help="Test folder with the same classes.")
    lowshot.add_argument(
        "--shots", default="1,2,5", help="Images per class (ints) or label fractions."
    )
    lowshot.add_argument("--splits", type=positive_int, default=3)
    lowshot.add_argument("--seed", type=seed, default=0)
    lowshot.add_argument(
        "--feature",
        choices=["cls_pre_norm", "cls"],
        default=None,
        help="CLS before (paper, default) or after the final LayerNorm.",
    )
    lowshot.add_argument("--batch-size", type=positive_int, default=32)
    lowshot.add_argument(
        "--preprocess",
        choices=["hub", "paper"],
        default="hub",
        help="hub: resize to the model size (the hub processor's way); paper: "
        "the paper's evaluation transform (resize to cover 256/224 of the "
        "model size, centre crop).",
    )
    lowshot.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_IMAGES_HELP)
    lowshot.set_defaults(handler=_lowshot)

    predict = commands.add_parser("predict", help="Classify images with a fine-tuned model.")
    predict.add_argument(
        "--model", required=True, help="A FILE.keras from finetune, or a classifier preset."
    )
    predict.add_argument("images", nargs="+")
    predict.add_argument(
        "--top-k",
        type=positive_int,
        default=5,
        help="Classes shown per image (all of them if the model has fewer).",
    )
    predict.set_defaults(handler=_predict)
    return parser


def _setup_process():
    """What the command line sets for its own process, before anything imports keras:
    TensorFlow quiet and with oneDNN (it reads both at its first import, which keras
    may make), and glibc's allocator for JAX when asked."""
    setup_tensorflow()
    from keras_vitmsn import backend  # imports keras

    result = backend.enable_jax_cpu_memory_for_command_line()
    if result is not None and not result:  # asked for and not applied: say so
        print(f"note: KERAS_VITMSN_JAX_CPU_MEMORY=1 not applied: {result.reason}", file=sys.stderr)


def _nothing():
    pass


class _Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so the same cleanup runs."""


def _raise_terminated(signum, frame):
    raise _Terminated


def main(argv=None):
    # Run as a program (argv None), the process is ours to configure, once: after parsing,
    # so that --version and usage errors import nothing heavy, or when --recipe's names
    # are first needed, if that comes first (loading them imports keras).
    setup = functools.cache(_setup_process) if argv is None else _nothing
    previous_sigterm = None
    if argv is None and threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C: the commands' cleanup of half-written output
        # runs, and it ends in one line. Training installs its own (stop after the step).
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        args = build_parser(before_import=setup).parse_args(argv)
        setup()
        from keras_vitmsn.backend import torch_gemm

        # A bad KERAS_VITMSN_TORCH_CPU_GEMM stops here, before any work.
        torch_gemm.requested()
        return args.handler(args)
    except _user_errors() as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        # Anywhere (loading, building, writing): the output is cleaned up by the
        # commands' own handlers; a traceback would only say where it was.
        print("interrupted (SIGINT): stopped", file=sys.stderr)
        return 128 + signal.SIGINT
    except _Terminated:
        print("terminated (SIGTERM): stopped", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":
    sys.exit(main())
