"""The ``keras-vitmsn`` command line (also ``python -m keras_vitmsn``)."""

import argparse
import sys


def _demo(args):
    from keras_vitmsn.demo import run_demo

    run_demo(epochs=args.epochs, output=args.output)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-vitmsn",
        description="ViT-MSN vision transformers for Keras 3. "
        "Select the backend with KERAS_BACKEND=jax|torch|tensorflow.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="Offline example: fit and evaluate a small ViT-MSN.")
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--output", default="vit_msn_demo.keras", help="Where to save the model ('' to skip).")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
