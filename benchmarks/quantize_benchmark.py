"""Benchmark (not a test): size on disk and CPU inference time, float32 vs quantised.

    KERAS_BACKEND=torch python benchmarks/quantize_benchmark.py [--modes int8 float8]
        [--model vit_msn_small] [--batch 8] [--repeats 5] [--rounds 3] [--threads 2]
        [--onnx]

Builds a ViTMSNClassifier (1000 classes) with the built-in preset's architecture and
random weights (nothing downloaded), quantises it (or not), saves it as ``.keras``
and times ``predict_on_batch`` on the CPU. Each variant runs in its own Python
process, so one's memory, caches and thread pools never affect the other; the
parent prints the table with ratios to float32. Times are medians over --repeats
calls after two warm-up calls; the numbers move with the machine's load, the ratios
much less. --rounds runs every variant's process that many times, interleaved
(float32, int8, float32, int8, ...), and keeps each variant's fastest round, so a
burst of load elsewhere lands on one round rather than on one variant.

--onnx (torch backend) adds rows ``ort-f32`` and ``ort-<mode>`` for each mode ONNX
takes: the same models exported with ``model.export(format="onnx")`` and run by
onnxruntime on the CPU (its version in the header). Their size (the ``.onnx`` file)
and speed-up are relative to ``ort-f32``; quantize s is quantising plus exporting.
--threads sets torch's and onnxruntime's CPU threads (default: theirs).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ONNX_MODES = ("int8",)  # float8 and int4 layers do not export to an ONNX runtime runs


def worker(args):
    import keras_vitmsn as kv

    kv.setup_tensorflow()  # oneDNN on, as the CLI has it
    import keras
    import numpy as np

    from keras_vitmsn import presets

    if args.threads and keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(args.threads)
    onnx = args.worker.startswith("ort-")
    mode = args.worker[len("ort-") :] if onnx else args.worker
    keras.utils.set_random_seed(0)
    architecture = presets.get_preset(args.model)["architecture"]
    backbone = kv.ViTMSNBackbone(**architecture)
    model = kv.ViTMSNClassifier(backbone, num_classes=1000)
    start = time.perf_counter()
    if mode not in ("float32", "f32"):
        model.quantize(mode)
    height, width, channels = architecture["image_shape"]
    images = np.random.default_rng(0).standard_normal((args.batch, height, width, channels))
    images = images.astype("float32")
    with tempfile.TemporaryDirectory() as folder:
        if onnx:
            import onnxruntime

            path = os.path.join(folder, "model.onnx")
            model.export(path, format="onnx", verbose=False)
            quantize_s = time.perf_counter() - start
            size = os.path.getsize(path)
            options = onnxruntime.SessionOptions()
            if args.threads:
                options.intra_op_num_threads = args.threads
            session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )
            feed = {session.get_inputs()[0].name: images}

            def predict():
                session.run(None, feed)
        else:
            quantize_s = time.perf_counter() - start
            path = os.path.join(folder, "model.keras")
            model.save(path)
            size = os.path.getsize(path)

            def predict():
                model.predict_on_batch(images)

        for _ in range(2):
            predict()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            predict()
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
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--onnx", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import keras_vitmsn

    keras_vitmsn.setup_tensorflow()  # oneDNN on, as the CLI has it
    import keras

    variants = ["float32"] + args.modes
    if args.onnx:
        if keras.backend.backend() != "torch":
            raise SystemExit("--onnx: quantised models export to ONNX on the torch backend")
        variants += ["ort-f32"] + [f"ort-{mode}" for mode in args.modes if mode in ONNX_MODES]
    best = {}
    for _ in range(args.rounds):
        for variant in variants:
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
            if args.threads:
                command += ["--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.stderr.write(done.stderr)
                raise SystemExit(f"the {variant} worker failed (exit {done.returncode})")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            if variant not in best or row["median_s"] < best[variant]["median_s"]:
                best[variant] = row
    rows = [best[variant] for variant in variants]

    header = (
        f"{args.model}, batch {args.batch}, backend {keras.backend.backend()}, "
        f"keras {keras.__version__}, {os.cpu_count()} CPUs, median of {args.repeats}"
    )
    if args.rounds > 1:
        header += f", best of {args.rounds} interleaved rounds"
    if args.threads:
        header += f", {args.threads} threads"
    if args.onnx:
        import onnxruntime

        header += f", onnxruntime {onnxruntime.__version__}"
    print(header)
    print(
        f"{'variant':<8} {'.keras MB':>10} {'size ratio':>10} {'ms/batch':>10} "
        f"{'speed-up':>9} {'quantize s':>11}"
    )
    for row in rows:
        base = best["ort-f32" if row["variant"].startswith("ort-") else "float32"]
        print(
            f"{row['variant']:<8} {row['size_mb']:>10.1f} "
            f"{row['size_mb'] / base['size_mb']:>10.2f} "
            f"{1000 * row['median_s']:>10.0f} {base['median_s'] / row['median_s']:>9.2f} "
            f"{row['quantize_s']:>11.1f}"
        )


if __name__ == "__main__":
    main()
