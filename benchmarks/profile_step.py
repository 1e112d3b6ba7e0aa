"""Where one step's time goes: a per-operation profile of the Keras model or a reference.

    KERAS_BACKEND=jax python benchmarks/profile_step.py keras --task train
    python benchmarks/profile_step.py hf-sdpa --task train
    KERAS_BACKEND=torch python benchmarks/profile_step.py keras --task infer --dtype bfloat16

Builds the implementation exactly as ``run.py`` does (``workers.py``), warms it up,
times a few steps without the profiler, then profiles two steps and prints the
heaviest operations in milliseconds per step, summed over threads:
- torch (Keras on torch and the PyTorch references): ``torch.profiler`` ATen ops;
- JAX and TensorFlow: the XLA thunks / TF kernels from the backend's own trace
  (``.xplane.pb``), read with ``jax.profiler.ProfileData`` (so JAX must be installed).
Fusion names lose their numeric suffix so that, e.g., all ``copy_bitcast_fusion.N``
add up into one row; ``--top-individual`` also lists the heaviest single ones.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import workers  # noqa: E402


def build(args):
    ns = types.SimpleNamespace(task=args.task, batch=args.batch, dtype=args.dtype, model=args.model)
    ns.impl = (
        "keras-" + os.environ.get("KERAS_BACKEND", "tensorflow")
        if args.impl == "keras"
        else args.impl
    )
    step, sync, *_ = workers.setup(ns, workers.architecture(args.model))
    return step, sync


def xplane_table(trace_dir, steps, thread_prefixes):
    import jax

    path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    grouped, single = collections.defaultdict(float), collections.defaultdict(float)
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith(thread_prefixes):
                continue
            for event in line.events:
                # Executor bookkeeping spans whole steps or marks instants; skip it.
                if event.name.startswith(
                    ("ThunkExecutor", "Slinky", "ThreadpoolListener", "end: ")
                ):
                    continue
                name = event.name.split(":")[-1]  # TF names events "op_name:OpType"
                if name == "Process":
                    continue
                ms = event.duration_ns / 1e6 / steps
                grouped[re.sub(r"\.\d+$", "", name)] += ms
                single[name] += ms
    return grouped, single


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "impl", help="keras (backend from KERAS_BACKEND), hf-sdpa, hf-eager or timm"
    )
    parser.add_argument("--task", default="train", choices=["infer", "train"])
    parser.add_argument("--model", default="vit_msn_small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="as run.py: the compute dtype for inference, mixed_* for training",
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--top-individual", type=int, default=0)
    args = parser.parse_args(argv)

    step, sync = build(args)
    for _ in range(2):
        sync(step())
    start = time.perf_counter()
    for _ in range(3):
        sync(step())
    print(
        f"{args.impl} {args.task}: {(time.perf_counter() - start) / 3 * 1e3:.0f} ms/step unprofiled"
    )

    backend = os.environ.get("KERAS_BACKEND", "tensorflow") if args.impl == "keras" else "torch"
    steps = 2
    if backend == "torch":
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                sync(step())
        rows = [
            (e.key, e.self_cpu_time_total / 1e3 / steps, e.count // steps)
            for e in prof.key_averages()
        ]
        single = {}
    else:
        trace_dir = tempfile.mkdtemp(prefix="profile_step_")
        if backend == "jax":
            import jax

            with jax.profiler.trace(trace_dir):
                for _ in range(steps):
                    sync(step())
            prefixes = ("tf_XLAEigen",)
        else:
            import tensorflow as tf

            tf.profiler.experimental.start(trace_dir)
            for _ in range(steps):
                sync(step())
            tf.profiler.experimental.stop()
            prefixes = ("tf_Compute",)
        grouped, single = xplane_table(trace_dir, steps, prefixes)
        rows = [(name, ms, None) for name, ms in grouped.items()]
    rows.sort(key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    print(f"busy time summed over threads: {total:.0f} ms/step")
    for name, ms, count in rows[: args.top]:
        calls = "" if count is None else f"{count:6d} calls"
        print(f"{ms:9.1f} ms/step {100 * ms / total:5.1f}%  {calls}  {name[:90]}")
    for name, ms in sorted(single.items(), key=lambda kv: -kv[1])[: args.top_individual]:
        print(f"{ms:9.1f} ms/step  {name}")


if __name__ == "__main__":
    sys.exit(main())
