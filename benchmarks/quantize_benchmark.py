"""Benchmark (not a test): size on disk and CPU inference time, float32 vs quantised.

    KERAS_BACKEND=torch python benchmarks/quantize_benchmark.py [--modes int8 float8]
        [--model vit_msn_small] [--batch 8] [--repeats 5]

Builds a ViTMSNClassifier (1000 classes) with the built-in preset's architecture and
random weights (nothing downloaded), quantises it (or not), saves it as ``.keras``
and times ``predict_on_batch`` on the CPU. Each variant runs in its own Python
process, so one's memory, caches and thread pools never affect the other; the
parent prints the table with ratios to float32. Times are medians over --repeats
calls after two warm-up calls; the numbers move with the machine's load, the ratios
much less.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def worker(args):
    import keras_vitmsn as kv

    kv.setup_tensorflow()  # oneDNN on, as the CLI has it
    import keras
    import numpy as np

    from keras_vitmsn import presets

    keras.utils.set_random_seed(0)
    architecture = presets.get_preset(args.model)["architecture"]
    backbone = kv.ViTMSNBackbone(**architecture)
    model = kv.ViTMSNClassifier(backbone, num_classes=1000)
    start = time.perf_counter()
    if args.worker != "float32":
        model.quantize(args.worker)
    quantize_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        size = os.path.getsize(path)
    height, width, channels = architecture["image_shape"]
    images = np.random.default_rng(0).standard_normal((args.batch, height, width, channels))
    images = images.astype("float32")
    for _ in range(2):
        model.predict_on_batch(images)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.predict_on_batch(images)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "variant": args.worker,
                "size_mb": size / 2**20,
                "quantize_s": quantize_s,
                "median_s": statistics.median(times),
                "min_s": min(times),
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_msn_small")
    parser.add_argument("--modes", nargs="+", default=["int8"], choices=["int8", "int4", "float8"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import keras_vitmsn

    keras_vitmsn.setup_tensorflow()  # oneDNN on, as the CLI has it
    import keras

    rows = []
    for variant in ["float32"] + args.modes:
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            variant,
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--repeats",
            str(args.repeats),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"the {variant} worker failed (exit {done.returncode})")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    base = rows[0]
    print(
        f"{args.model}, batch {args.batch}, backend {keras.backend.backend()}, "
        f"keras {keras.__version__}, {os.cpu_count()} CPUs, median of {args.repeats}"
    )
    print(
        f"{'variant':<8} {'.keras MB':>10} {'size ratio':>10} {'ms/batch':>10} "
        f"{'speed-up':>9} {'quantize s':>11}"
    )
    for row in rows:
        print(
            f"{row['variant']:<8} {row['size_mb']:>10.1f} "
            f"{row['size_mb'] / base['size_mb']:>10.2f} "
            f"{1000 * row['median_s']:>10.0f} {base['median_s'] / row['median_s']:>9.2f} "
            f"{row['quantize_s']:>11.1f}"
        )


if __name__ == "__main__":
    main()
