"""Fine-tuning throughput of ``ViTMSNClassifier.fit`` per Keras backend, vs plain PyTorch.

What is timed: training steps (forward, backward, AdamW update) of a vit-msn-small
sized network (patch 16, width 384, 12 blocks, 6 heads, MLP 1536) at 224x224, batch
32, 1000 classes, random weights and random data (same seed, so the same data, in every
process):

- ``keras-jax``, ``keras-torch``, ``keras-tensorflow``: ``ViTMSNClassifier.fit`` with
  its default compile (AdamW 5e-5, weight decay 0.01, sparse categorical
  cross-entropy + accuracy), numpy arrays in, ``epochs=1``, ``shuffle=False``.
- ``torch-reference``: a plain PyTorch loop training transformers'
  ``ViTMSNForImageClassification`` (default attention implementation, i.e. SDPA)
  with ``torch.optim.AdamW(lr=5e-5, weight_decay=0.01)`` on the same data, NCHW.

Each implementation runs in its own subprocess (Keras fixes its backend per process),
one after another, so they do not compete for the cores. The first ``--warmup`` steps
(compilation, allocator warm-up) are excluded; images/s is measured over the next
``--steps`` steps, synchronised on the loss at both ends.

    python benchmarks/finetune_benchmark.py                   # short default run
    python benchmarks/finetune_benchmark.py --steps 10 --warmup 2
    python benchmarks/finetune_benchmark.py --impls keras-jax,torch-reference
    python benchmarks/finetune_benchmark.py --tiny            # smoke test, seconds

On a 2-core CPU one vit-msn-small training step at batch 32 takes several seconds
(and XLA compiles the JAX/TensorFlow step for a minute or more), hence the short
default. Not a test: nothing is asserted.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

IMPLS = ("keras-jax", "keras-torch", "keras-tensorflow", "torch-reference")
REFERENCE = "torch-reference"
MARK = "@@FINETUNE "

SMALL = dict(patch_size=16, hidden_dim=384, num_layers=12, num_heads=6, intermediate_dim=1536)
TINY = dict(patch_size=16, hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64)


def make_data(num_images, image_size, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((num_images, image_size, image_size, 3), dtype=np.float32)
    labels = rng.integers(0, num_classes, num_images).astype(np.int64)
    return images, labels


# --- workers (run in their own process) ------------------------------------------------


def run_keras(args, arch):
    import keras_vitmsn as kv

    kv.setup_tensorflow()  # oneDNN on, as the CLI has it
    import keras

    keras.utils.set_random_seed(0)
    images, labels = make_data(
        (args.warmup + args.steps) * args.batch_size, args.image_size, args.num_classes
    )
    backbone = kv.ViTMSNBackbone(image_shape=(args.image_size, args.image_size, 3), **arch)
    model = kv.ViTMSNClassifier(backbone, num_classes=args.num_classes)

    class Timer(keras.callbacks.Callback):
        """Wall time from the end of the last warm-up step to the end of fit."""

        def __init__(self):
            super().__init__()
            self.start = None
            self.first_step_end = None
            self.fit_start = None

        def on_train_begin(self, logs=None):
            self.fit_start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            # float() waits for the step's result: JAX dispatches asynchronously.
            float(logs["loss"])
            if batch == 0:
                self.first_step_end = time.perf_counter()
            if batch == args.warmup - 1:
                self.start = time.perf_counter()

    timer = Timer()
    model.fit(
        images,
        labels,
        batch_size=args.batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[timer],
    )
    end = time.perf_counter()  # fit has written the weights back: all work is done
    return dict(seconds=end - timer.start, first_step_s=timer.first_step_end - timer.fit_start)


def run_torch_reference(args, arch):
    import torch
    import transformers

    torch.manual_seed(0)
    images, labels = make_data(
        (args.warmup + args.steps) * args.batch_size, args.image_size, args.num_classes
    )
    config = transformers.ViTMSNConfig(
        image_size=args.image_size,
        patch_size=arch["patch_size"],
        hidden_size=arch["hidden_dim"],
        num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"],
        intermediate_size=arch["intermediate_dim"],
        num_labels=args.num_classes,
    )
    model = transformers.ViTMSNForImageClassification(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    targets = torch.from_numpy(labels)

    def step(i):
        batch = slice(i * args.batch_size, (i + 1) * args.batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = model(pixel_values=pixels[batch], labels=targets[batch]).loss
        loss.backward()
        optimizer.step()
        return float(loss)

    t0 = time.perf_counter()
    step(0)
    first = time.perf_counter() - t0
    for i in range(1, args.warmup):
        step(i)
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    return dict(
        seconds=time.perf_counter() - start,
        first_step_s=first,
        attn_implementation=getattr(config, "_attn_implementation", None),
    )


def worker(args):
    arch = TINY if args.tiny else SMALL
    try:
        if args.worker == REFERENCE:
            result = run_torch_reference(args, arch)
        else:
            result = run_keras(args, arch)
        result["images_per_s"] = args.steps * args.batch_size / result["seconds"]
    except Exception as e:  # report, don't crash the driver
        result = dict(error=f"{type(e).__name__}: {e}")
    print(MARK + json.dumps(result), flush=True)


# --- driver ---------------------------------------------------------------------------


def run_impl(impl, args):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if impl.startswith("keras-"):
        env["KERAS_BACKEND"] = impl.split("-", 1)[1]
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        impl,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
        "--image-size",
        str(args.image_size),
        "--num-classes",
        str(args.num_classes),
    ] + (["--tiny"] if args.tiny else [])
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return dict(error=f"exit code {proc.returncode}: " + " | ".join(tail))
    result = json.loads(lines[-1][len(MARK) :])
    result["process_s"] = time.perf_counter() - t0
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--impls", default=",".join(IMPLS), help=f"comma-separated subset of {', '.join(IMPLS)}"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps (default 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a 2-block width-32 model instead of vit-msn-small (smoke test)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1 (the first step compiles)")
    if args.worker:
        return worker(args)

    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        parser.error(f"unknown --impls {unknown}; choose from {', '.join(IMPLS)}")
    model = "tiny" if args.tiny else "vit-msn-small"
    print(
        f"fit throughput, {model} at {args.image_size}px, batch {args.batch_size}, "
        f"{args.warmup} warm-up + {args.steps} timed steps, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    results = {}
    for impl in impls:
        print(f"  running {impl} ...", flush=True)
        results[impl] = run_impl(impl, args)

    ref = results.get(REFERENCE, {}).get("images_per_s")
    print(
        f"\n{'implementation':18} {'images/s':>9} {'s/step':>7} {'1st step s':>10} {'vs torch':>8}"
    )
    for impl, r in results.items():
        if "error" in r:
            print(f"{impl:18} failed: {r['error']}")
            continue
        ratio = f"{r['images_per_s'] / ref:.2f}x" if ref else "-"
        print(
            f"{impl:18} {r['images_per_s']:9.2f} {r['seconds'] / args.steps:7.2f} "
            f"{r['first_step_s']:10.1f} {ratio:>8}"
        )
    print("(ratio = images/s over the plain PyTorch transformers loop; > 1 is faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), results=results), f, indent=2)


if __name__ == "__main__":
    main()
