"""Benchmark (not a test): does MSN's multi-view input pipeline starve the model?

    KERAS_BACKEND=jax python benchmarks/msn_pipeline_benchmark.py [--config demo vits16]
        [--steps 20] [--images 64]

For each config, two processes run the same ``MSNPretrainer.fit`` steps:

- ``pipeline``: on ``build_msn_training``'s dataset (``msn_multiview_dataset``: decode,
  random resized crops, colour jitter, blur, ... in tf.data, as ``keras-vitmsn pretrain``
  and the demo train);
- ``prebuilt``: on view batches taken from that pipeline beforehand and served from
  memory (no augmentation work during ``fit``).

Both time ``--steps`` steps after one warm-up epoch of compile; the ratio
pipeline / prebuilt seconds per step is the pipeline's overhead (aim: <= 1.10).
Configs: ``demo`` (the digits demo's recipe and images) and ``vits16`` (the
msn_vits16 recipe, ViT-S/16 at batch 8, on ``--images`` random 256x256 JPEGs).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MARK = "@@RESULT "


def setup(config, images_dir, num_images):
    from keras_vitmsn.msn.training import build_msn_training

    if config == "demo":
        from keras_vitmsn.demos.msn_digits import demo_backbone
        from keras_vitmsn.demos.msn_digits import demo_config
        from keras_vitmsn.demos.msn_digits import load_digits_images

        recipe = demo_config()
        images, _ = load_digits_images(recipe["global_size"])
        return build_msn_training(images, recipe=recipe, backbone_or_preset=demo_backbone(recipe))
    return build_msn_training(images_dir, recipe="msn_vits16", batch_size=8, epochs=100)


def worker(args):
    import tensorflow as tf

    run = setup(args.config, args.images_dir, args.images)
    dataset = run.dataset
    if args.worker == "prebuilt":
        # Materialise enough batches for warm-up + timed steps, then serve from memory.
        batches = list(dataset.take(args.steps + run.steps_per_epoch).as_numpy_iterator())
        dataset = tf.data.Dataset.from_generator(
            lambda: iter(batches), output_signature=run.dataset.element_spec
        ).repeat()
    pretrainer = run.pretrainer
    pretrainer.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # compile, warm up
    start = time.perf_counter()
    pretrainer.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
    seconds = (time.perf_counter() - start) / args.steps
    print(MARK + json.dumps({"s_per_step": seconds}), flush=True)


def write_images(folder, count):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i}.jpg"), quality=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", nargs="+", default=["demo", "vits16"], choices=["demo", "vits16"]
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.config = args.config[0]
        return worker(args)

    import keras_vitmsn

    keras_vitmsn.setup_tensorflow()  # oneDNN on, as the CLI has it
    import keras

    with tempfile.TemporaryDirectory() as folder:
        write_images(folder, args.images)
        print(
            f"MSN input pipeline vs pre-built views, backend {keras.backend.backend()}, "
            f"{os.cpu_count()} CPUs, {args.steps} timed steps after warm-up"
        )
        print(f"{'config':<8}{'pipeline s/step':>17}{'prebuilt s/step':>17}{'ratio':>8}")
        for config in args.config:
            result = {}
            for side in ("prebuilt", "pipeline"):
                command = [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--worker",
                    side,
                    "--config",
                    config,
                    "--steps",
                    str(args.steps),
                    "--images",
                    str(args.images),
                    "--images-dir",
                    folder,
                ]
                out = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                )
                lines = [line for line in out.stdout.splitlines() if line.startswith(MARK)]
                if out.returncode or not lines:
                    raise RuntimeError(f"{config}/{side} failed:\n{out.stderr[-3000:]}")
                result[side] = json.loads(lines[-1][len(MARK) :])["s_per_step"]
            print(
                f"{config:<8}{result['pipeline']:>17.3f}{result['prebuilt']:>17.3f}"
                f"{result['pipeline'] / result['prebuilt']:>8.2f}"
            )


if __name__ == "__main__":
    main()
