"""Side-by-side speed of keras-vitmsn and its references, in one run.

Each implementation runs in its own process (Keras fixes its backend per process);
the processes stay alive and the main process asks each in turn for one timed round,
so all of them see the same machine conditions ("interleaved rounds"). Reported:
images/s (median over rounds), the ratio to transformers-sdpa (median of the
per-round ratios), first-call (compile) time, peak memory, and on GPU the model FLOP
utilisation.

    python benchmarks/run.py --model vit_msn_small --task infer --batch 8 --dtype float32

Random weights, no download. Training is forward + backward + AdamW step (lr 1e-4,
weight decay 0.01): Keras models through ``train_on_batch`` (the ``fit`` machinery)
with the classifier's default optimizer, ``keras_vitmsn.models.optimizer.ScheduledAdamW``
(``torch.optim.AdamW``'s update; until 2026-12-04 ``keras.optimizers.AdamW``), the
references through a plain PyTorch loop with ``torch.optim.AdamW``.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import workers  # noqa: E402

REFERENCE = "hf-sdpa"
# keras-tensorflow-xla: the same model with jit_compile=True. Keras leaves XLA off
# for TensorFlow on CPU-only machines, and XLA can't compile every model (an
# antialiased resize inside the model has no XLA kernel), so it stays opt-in.
# keras-jax-cpumem: JAX after keras_vitmsn.backend.jax_cpu_memory.enable() (opt-in, for the
# library and the CLI alike), next to plain keras-jax (what everyone gets by default).
# keras-torch-addmm: torch with its own float32 GEMM (MKL on x86 wheels), where
# keras-torch takes oneDNN's where it measured faster (keras_vitmsn/backend/torch_gemm.py).
# keras-torch-compile: torch with Keras' jit_compile=True (torch.compile): no per-layer
# Python overhead in the step, at the price of a long first call (opt-in, as in Keras).
KERAS_IMPLS = (
    "keras-jax",
    "keras-jax-cpumem",
    "keras-torch",
    "keras-torch-addmm",
    "keras-torch-compile",
    "keras-tensorflow",
    "keras-tensorflow-xla",
)
TORCH_IMPLS = ("hf-sdpa", "hf-eager", "timm", "timm-compile")
MARK = workers.MARK


class Worker:
    def __init__(self, impl, args):
        env = workers.worker_env(impl)
        command = [
            sys.executable,
            os.path.join(HERE, "workers.py"),
            impl,
            "--model",
            args.model,
            "--task",
            args.task,
            "--batch",
            str(args.batch),
            "--dtype",
            args.dtype,
            "--round-seconds",
            str(args.round_seconds),
        ]
        self.impl = impl
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1
        )
        self.info = self._read()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        raise RuntimeError(f"{self.impl}: worker exited (code {self.proc.wait()}) without a result")

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        try:
            final = self.ask("quit")
        finally:
            self.proc.wait(timeout=60)
        return final


def summarise(args, results, order):
    ref = results.get(REFERENCE)
    rows = []
    for impl in order:
        res = results[impl]
        if "error" in res:
            rows.append({"impl": impl, "error": res["error"]})
            continue
        ips = [r["images_per_s"] for r in res["rounds"]]
        row = {
            "impl": impl,
            "images_per_s": statistics.median(ips),
            "first_call_s": res["info"]["first_call_s"],
            "peak_memory_mb": res["final"]["peak_memory_mb"],
            "memory_kind": res["final"]["memory_kind"],
        }
        if ref and "rounds" in ref:
            ratios = [
                a["images_per_s"] / b["images_per_s"] for a, b in zip(res["rounds"], ref["rounds"])
            ]
            row["ratio_vs_" + REFERENCE] = statistics.median(ratios)
        flops = res["info"].get("flops_per_image")
        peak = res["info"].get("device_peak_flops")
        if flops and peak:
            row["mfu"] = row["images_per_s"] * flops / peak
        rows.append(row)
    return rows


def markdown(args, rows, meta):
    lines = [
        f"### {args.model}, {args.task}, batch {args.batch}, {args.dtype} — {meta['device']}",
        "",
        f"{meta['date']}; {meta['versions']}; "
        f"{args.rounds} interleaved rounds of ~{args.round_seconds}s.",
        "",
        f"| implementation | images/s | ratio vs {REFERENCE} | first call (s) "
        "| peak memory (MB) | MFU |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['impl']} | unavailable: {row['error']} | | | | |")
            continue
        ratio = row.get("ratio_vs_" + REFERENCE)
        mfu = row.get("mfu")
        lines.append(
            f"| {row['impl']} | {row['images_per_s']:.2f} | "
            f"{'%.3f' % ratio if ratio is not None else '-'} | {row['first_call_s']:.1f} | "
            f"{row['peak_memory_mb']:.0f} ({row['memory_kind']}) | "
            f"{'%.1f%%' % (100 * mfu) if mfu else '-'} |"
        )
    return "\n".join(lines) + "\n"


def versions():
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("keras", "jax", "torch", "tensorflow", "transformers", "timm"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "n/a"
    return ", ".join(f"{k} {v}" for k, v in out.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="vit_msn_small",
        choices=[
            "vit_msn_small",
            "vit_msn_base",
            "vit_msn_large",
            "vit_msn_base_4",
            "vit_msn_large_7",
        ],
    )
    parser.add_argument("--task", default="infer", choices=["infer", "train"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--backends",
        default="jax,torch,tensorflow,tensorflow-xla",
        help="Keras backends, comma separated (tensorflow-xla: TF with jit_compile=True; "
        "jax-cpumem: JAX with keras_vitmsn.backend.jax_cpu_memory.enable(); torch-addmm: torch "
        "with KERAS_VITMSN_TORCH_CPU_GEMM=addmm; torch-compile: torch with "
        "jit_compile=True).",
    )
    parser.add_argument(
        "--references",
        default=",".join(TORCH_IMPLS),
        help=f"Reference implementations, comma separated, from {TORCH_IMPLS}.",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-seconds", type=float, default=3.0)
    parser.add_argument("--output-dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)

    order = [f"keras-{b}" for b in args.backends.split(",") if b] + [
        r for r in args.references.split(",") if r
    ]
    for impl in order:
        if impl not in KERAS_IMPLS + TORCH_IMPLS:
            parser.error(
                f"unknown implementation {impl!r}; choose from {KERAS_IMPLS + TORCH_IMPLS}"
            )

    results = {}
    live = {}
    for impl in order:  # start one at a time so compile times are not contended
        print(f"starting {impl} ...", flush=True)
        try:
            worker = Worker(impl, args)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            results[impl] = {"error": str(exc)}
            continue
        if "error" in worker.info:
            results[impl] = {"error": worker.info["error"]}
            worker.proc.kill()
            continue
        live[impl] = worker
        results[impl] = {"info": worker.info, "rounds": []}
        print(f"  {impl}: first call {worker.info['first_call_s']:.1f}s", flush=True)

    for r in range(args.rounds):
        for impl, worker in live.items():
            res = worker.ask("round")
            results[impl]["rounds"].append(res)
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{i} {results[i]['rounds'][-1]['images_per_s']:.1f}" for i in live),
            flush=True,
        )
    for impl, worker in live.items():
        results[impl]["final"] = worker.close()

    device = next((w.info.get("device") for w in live.values()), platform.processor() or "cpu")
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": device,
        "versions": versions(),
        "args": vars(args),
    }
    rows = summarise(args, results, order)
    table = markdown(args, rows, meta)
    print()
    print(table)
    os.makedirs(args.output_dir, exist_ok=True)
    stem = f"{args.model}_{args.task}_b{args.batch}_{args.dtype}"
    with open(os.path.join(args.output_dir, stem + ".json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "raw": results}, f, indent=2)
    with open(os.path.join(args.output_dir, stem + ".md"), "w") as f:
        f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
