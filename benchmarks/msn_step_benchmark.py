"""Benchmark (not a test): one MSN pretraining step, Keras backends vs plain PyTorch.

    python benchmarks/msn_step_benchmark.py [--model vit_msn_small] [--batch 8]
        [--image 224] [--focal 96] [--num-focal 10] [--rounds 5] [--round-seconds 20]
        [--impls keras-jax keras-jax-cpumem keras-torch keras-torch-addmm keras-tensorflow \
         torch-msn]

One step = the MSN recipe's step at vits16 settings: the unmasked target view through
the EMA target encoder and head (no gradient), one masked anchor view at ``--image``
(15% of its patches dropped) and ``--num-focal`` focal views at ``--focal`` through the
online encoder and head (one head call per resolution), the loss with sharpening,
Sinkhorn and me-max, AdamW with gradient clipping at 3, then the EMA update.

- ``keras-<backend>``: ``MSNPretrainer.train_on_batch`` (the ``fit`` machinery),
  random weights of the preset's architecture. ``keras-jax-cpumem``: the same on JAX
  after ``keras_vitmsn.backend.jax_cpu_memory.enable()`` (opt-in; ``keras-vitmsn pretrain``
  with ``KERAS_VITMSN_JAX_CPU_MEMORY=1``). ``keras-torch-addmm``: torch with its own
  float32 GEMM where ``keras-torch`` may take oneDNN's (measured per machine,
  ``keras_vitmsn/backend/torch_gemm.py``).
- ``torch-msn``: the same step written here in plain PyTorch around transformers'
  ``ViTMSNModel`` (sdpa attention; patches dropped after the position embeddings, as
  MSN does), the same head (Linear-BN-GELU x2, Linear), loss, ``torch.optim.AdamW``,
  ``clip_grad_norm_`` and EMA.

Each implementation runs in its own process and the parent asks each in turn for one
timed round (interleaved), so all see the same machine; the table gives steps/s
(median over rounds), the median of per-round ratios to torch-msn and their range.
Run it on a quiet machine.
"""

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import workers  # beside this script (benchmarks/)

MARK = "@@RESULT "
REFERENCE = "torch-msn"


def emit(payload):
    print(MARK + json.dumps(payload), flush=True)


def architecture(model):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from keras_vitmsn.presets.table import get_preset

    return get_preset(model)["architecture"]


def views_numpy(args, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    b, s, f = args.batch, args.image, args.focal
    return {
        "target": rng.normal(size=(b, s, s, 3)).astype("float32"),
        "anchor": rng.normal(size=(b, s, s, 3)).astype("float32"),
        "focal": rng.normal(size=(b, args.num_focal, f, f, 3)).astype("float32"),
    }


def keras_setup(args):
    import keras_vitmsn as kv

    kv.setup_tensorflow()  # oneDNN on, as the CLI has it
    import keras

    from keras_vitmsn import msn

    if args.worker.endswith("-cpumem"):
        from keras_vitmsn.backend import jax_cpu_memory

        applied = jax_cpu_memory.enable()
        if not applied:
            raise RuntimeError(f"jax_cpu_memory.enable() did not apply: {applied.reason}")
    keras.utils.set_random_seed(0)
    arch = dict(architecture(args.model), image_shape=(args.image, args.image, 3))
    encoder = kv.ViTMSNBackbone(**arch)
    pretrainer = msn.MSNPretrainer(encoder, total_steps=10_000, seed=0)
    pretrainer.compile()
    views = views_numpy(args)

    def step():
        logs = pretrainer.train_on_batch(views, return_dict=True)
        float(logs["loss"])  # wait for the step

    return step


def torch_setup(args):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import ViTMSNConfig
    from transformers import ViTMSNModel

    torch.manual_seed(0)
    arch = architecture(args.model)
    config = ViTMSNConfig(
        image_size=args.image,
        patch_size=arch["patch_size"],
        hidden_size=arch["hidden_dim"],
        num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"],
        intermediate_size=arch["intermediate_dim"],
        attn_implementation="sdpa",
    )
    encoder = ViTMSNModel(config)
    head = nn.Sequential(
        nn.Linear(arch["hidden_dim"], 2048),
        nn.BatchNorm1d(2048),
        nn.GELU(),
        nn.Linear(2048, 2048),
        nn.BatchNorm1d(2048),
        nn.GELU(),
        nn.Linear(2048, 256),
    )
    prototypes = nn.Parameter(torch.randn(1024, 256) * 0.02)
    target_encoder, target_head = copy.deepcopy(encoder), copy.deepcopy(head)
    for p in list(target_encoder.parameters()) + list(target_head.parameters()):
        p.requires_grad_(False)
    online = list(encoder.parameters()) + list(head.parameters())
    decay = [p for p in online if p.ndim > 1]
    no_decay = [p for p in online if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.04},
            {"params": no_decay, "weight_decay": 0.0},
            {"params": [prototypes], "weight_decay": 0.0},
        ],
        lr=1e-3,
    )
    num_patches = (args.image // arch["patch_size"]) ** 2
    keep = int(num_patches * (1 - 0.15))

    def cls_token(model, pixels, drop):
        emb = model.embeddings(pixels, interpolate_pos_encoding=True)
        if drop:
            # MSN drops patches (after the position embeddings), per example.
            order = torch.argsort(torch.rand(emb.shape[0], num_patches), dim=1)[:, :keep] + 1
            order = torch.cat([torch.zeros(emb.shape[0], 1, dtype=torch.long), order], dim=1)
            emb = torch.gather(emb, 1, order[..., None].expand(-1, -1, emb.shape[-1]))
        # transformers 5 lays the blocks out as model.layers (4.x: model.encoder.layer).
        blocks = model.layers if hasattr(model, "layers") else model.encoder.layer
        hidden = emb
        for block in blocks:
            out = block(hidden)
            hidden = out[0] if isinstance(out, tuple) else out
        return model.layernorm(hidden)[:, 0]

    def loss_fn(anchors, targets, num_views):
        q = F.normalize(prototypes)
        probs = torch.softmax(F.normalize(anchors) @ q.T / 0.1, dim=1)
        with torch.no_grad():
            p = torch.softmax(F.normalize(targets) @ q.T / 0.1, dim=1) ** 4.0  # T = 0.25
            p = p / p.sum(dim=1, keepdim=True)
            batch, k = p.shape
            p = p / p.sum()
            for _ in range(3):
                p = p / p.sum(dim=0, keepdim=True) / k
                p = p / p.sum(dim=1, keepdim=True) / batch
            p = (p * batch).repeat(num_views, 1)
        ce = torch.mean(torch.sum(-p * torch.log(probs), dim=1))
        mean_probs = probs.mean(dim=0)
        return ce + torch.sum(mean_probs * torch.log(mean_probs)) + math.log(len(mean_probs))

    views = views_numpy(args)
    target = torch.from_numpy(views["target"].transpose(0, 3, 1, 2).copy())
    anchor = torch.from_numpy(views["anchor"].transpose(0, 3, 1, 2).copy())
    focal = views["focal"].transpose(1, 0, 4, 2, 3).reshape(-1, 3, args.focal, args.focal)
    focal = torch.from_numpy(np.ascontiguousarray(focal))
    encoder.train(), head.train(), target_encoder.train(), target_head.train()

    def step():
        with torch.no_grad():
            targets = target_head(cls_token(target_encoder, target, drop=False))
        # One head call per resolution: BatchNorm statistics per group, as the original.
        anchors = torch.cat(
            [
                head(cls_token(encoder, anchor, drop=True)),
                head(cls_token(encoder, focal, drop=False)),
            ]
        )
        loss = loss_fn(anchors, targets, 1 + args.num_focal)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(online, 3.0)
        optimizer.step()
        with torch.no_grad():
            for t, o in zip(
                list(target_encoder.parameters()) + list(target_head.parameters()), online
            ):
                t.mul_(0.996).add_(o.detach(), alpha=0.004)
        loss.item()

    return step


def worker(args):
    start = time.perf_counter()
    step = torch_setup(args) if args.worker == REFERENCE else keras_setup(args)
    step()
    emit({"first_step_s": time.perf_counter() - start})
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        steps, begin = 0, time.perf_counter()
        while time.perf_counter() - begin < args.round_seconds or steps < 2:
            step()
            steps += 1
        emit({"steps_per_s": steps / (time.perf_counter() - begin)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_msn_small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--focal", type=int, default=96)
    parser.add_argument("--num-focal", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-seconds", type=float, default=20.0)
    parser.add_argument(
        "--impls", nargs="+", default=["keras-jax", "keras-torch", "keras-tensorflow", REFERENCE]
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    procs = {}
    for impl in args.impls:
        env = workers.worker_env(impl)
        command = [sys.executable, os.path.abspath(__file__), "--worker", impl] + [
            f"--{k.replace('_', '-')}={getattr(args, k)}"
            for k in ("model", "batch", "image", "focal", "num_focal", "round_seconds")
        ]
        procs[impl] = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env
        )

    def read(impl):
        for line in procs[impl].stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        raise RuntimeError(f"{impl} exited with {procs[impl].wait()}")

    # One at a time: every worker builds and compiles while the others wait.
    first = {impl: read(impl)["first_step_s"] for impl in args.impls}
    rates = {impl: [] for impl in args.impls}
    for _ in range(args.rounds):
        for impl in args.impls:
            procs[impl].stdin.write("round\n")
            procs[impl].stdin.flush()
            rates[impl].append(read(impl)["steps_per_s"])
    for impl in args.impls:
        procs[impl].stdin.write("quit\n")
        procs[impl].stdin.flush()
        procs[impl].wait(timeout=120)

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"MSN step, {args.model}, batch {args.batch}: target + masked anchor at "
        f"{args.image}, {args.num_focal} focal at {args.focal}, float32; {os.cpu_count()} "
        f"CPUs ({cpu}); {args.rounds} interleaved rounds of {args.round_seconds:.0f} s"
    )
    print(
        f"{'implementation':<18}{'steps/s':>9}{'s/step':>9}{'vs ' + REFERENCE:>14}"
        f"{'rounds min-max':>16}{'first step s':>14}"
    )
    for impl in args.impls:
        median = statistics.median(rates[impl])
        ratio = spread = ""
        if REFERENCE in rates:
            # The per-round ratios' range shows how far one round can stray on this machine.
            ratios = [a / b for a, b in zip(rates[impl], rates[REFERENCE])]
            ratio = f"{statistics.median(ratios):.3f}"
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(
            f"{impl:<18}{median:>9.3f}{1 / median:>9.2f}{ratio:>14}{spread:>16}{first[impl]:>14.1f}"
        )


if __name__ == "__main__":
    main()
