"""One benchmark process: builds one implementation, then serves timed rounds.

Protocol (driven by run.py): the worker prints one ``MARK``-prefixed JSON line when
ready ({first_call_s, device, flops_per_image, ...} or {error}), then answers each
``round`` line on stdin with {images_per_s, steps, seconds} and ``quit`` with its
peak memory. Anything else a library prints is ignored by the driver.
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

MARK = "@@BENCH "
IMAGE_SIZE = 224
NUM_CLASSES = 1000
# Dense bf16 tensor-core peaks (FLOP/s) used for MFU, by substring of the device name.
GPU_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def worker_env(impl):
    """The environment of the process that runs ``impl``: its Keras backend, and what
    a suffix names (``-addmm``: torch's own float32 GEMM instead of oneDNN's, see
    keras_vitmsn/backend/torch_gemm.py)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if impl.startswith("keras-"):
        env["KERAS_BACKEND"] = impl.split("-")[1]
    if impl.endswith("-addmm"):
        env["KERAS_VITMSN_TORCH_CPU_GEMM"] = "addmm"
    return env


def emit(payload):
    sys.stdout.write(MARK + json.dumps(payload) + "\n")
    sys.stdout.flush()


def architecture(model):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from keras_vitmsn.presets import get_preset

    arch = get_preset(model)["architecture"]
    arch.pop("dropout_rate", None)  # benchmarks run without dropout
    return arch


def forward_flops_per_image(arch):
    """Matmul FLOPs of one forward pass (2 per multiply-add).

    With D = hidden, I = MLP width, L = layers, p = patch, N = (224/p)^2 patches and
    T = N + 1 tokens: L * (8*T*D^2 + 4*T*D*I + 4*T^2*D) + 2*N*(3*p^2)*D.
    (q, k, v, output projections: 8TD^2; MLP: 4TDI; scores and weighted sum: 4T^2D;
    patch embedding: 2N*3p^2*D.) Training counts 3x the forward pass.
    """
    d, i, layers, p = (
        arch["hidden_dim"],
        arch["intermediate_dim"],
        arch["num_layers"],
        arch["patch_size"],
    )
    n = (IMAGE_SIZE // p) ** 2
    t = n + 1
    return layers * (8 * t * d * d + 4 * t * d * i + 4 * t * t * d) + 2 * n * 3 * p * p * d


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- Keras ------------------------------------------------------------------------------


def keras_setup(args, arch):
    import keras

    import keras_vitmsn as kv
    from keras_vitmsn.models.optimizer import ScheduledAdamW

    if args.impl.endswith("-cpumem"):
        from keras_vitmsn.backend import jax_cpu_memory

        applied = jax_cpu_memory.enable()
        if not applied:  # refuse to report a row that is not what it says
            raise RuntimeError(f"jax_cpu_memory.enable() did not apply: {applied.reason}")
    backend = keras.backend.backend()
    if args.task == "infer":
        policy = args.dtype
    else:
        policy = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[
            args.dtype
        ]
    rng = np.random.default_rng(0)
    images = keras.ops.convert_to_tensor(
        rng.standard_normal((args.batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    )
    backbone = kv.ViTMSNBackbone(**arch, dtype=policy)
    jit_compile = True if args.impl.endswith(("-xla", "-compile")) else "auto"
    if args.task == "infer":
        model = backbone
        if jit_compile is True:
            model.jit_compile = True

        def step():
            return model.predict_on_batch(images)
    else:
        model = kv.ViTMSNClassifier(backbone, num_classes=NUM_CLASSES)
        # The classifier's default optimizer (torch.optim.AdamW's update, as the
        # references run it), at the references' learning rate and weight decay.
        model.compile(
            optimizer=ScheduledAdamW(1e-4, weight_decay=0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        labels = keras.ops.convert_to_tensor(rng.integers(0, NUM_CLASSES, args.batch))

        def step():
            return model.train_on_batch(images, labels)

    device, sync, gpu_peak = "cpu", lambda out: None, None
    if backend == "jax":
        import jax

        dev = jax.devices()[0]
        if dev.platform == "gpu":
            device = dev.device_kind

            def gpu_peak():
                return dev.memory_stats()["peak_bytes_in_use"] / 2**20
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name()

            def sync(out):
                torch.cuda.synchronize()

            def gpu_peak():
                return torch.cuda.max_memory_allocated() / 2**20
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            device = tf.config.experimental.get_device_details(
                tf.config.list_physical_devices("GPU")[0]
            ).get("device_name", "GPU")

            def gpu_peak():
                return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20

    # predict_on_batch / train_on_batch return host values, which synchronises.
    return step, sync, device, gpu_peak


# --- PyTorch references -----------------------------------------------------------------


def torch_setup(args, arch, impl):
    import torch

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype
    ]
    torch.manual_seed(0)
    heads = NUM_CLASSES if args.task == "train" else 0
    if impl.startswith("hf-"):
        import transformers

        config = transformers.ViTMSNConfig(
            hidden_size=arch["hidden_dim"],
            num_hidden_layers=arch["num_layers"],
            num_attention_heads=arch["num_heads"],
            intermediate_size=arch["intermediate_dim"],
            image_size=IMAGE_SIZE,
            patch_size=arch["patch_size"],
            layer_norm_eps=arch["layer_norm_epsilon"],
            qkv_bias=arch["qkv_bias"],
            hidden_act=arch["hidden_act"],
            num_labels=max(heads, 1),
        )
        config._attn_implementation = impl.split("-", 1)[1]
        if args.task == "train":
            net = transformers.ViTMSNForImageClassification(config)
            forward = lambda x: net(x).logits  # noqa: E731
        else:
            net = transformers.ViTMSNModel(config)
            forward = lambda x: net(x).last_hidden_state  # noqa: E731
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from torchvision_stub import import_timm

        import_timm()
        from timm.models.vision_transformer import VisionTransformer

        net = VisionTransformer(
            img_size=IMAGE_SIZE,
            patch_size=arch["patch_size"],
            embed_dim=arch["hidden_dim"],
            depth=arch["num_layers"],
            num_heads=arch["num_heads"],
            mlp_ratio=arch["intermediate_dim"] / arch["hidden_dim"],
            qkv_bias=arch["qkv_bias"],
            num_classes=heads,
            global_pool="token",
        )
        # timm's forward with num_classes=0 returns the pooled CLS feature; use
        # forward_features for inference so both references return all tokens.
        forward = net if args.task == "train" else net.forward_features
    net = net.to(dev)
    if impl.endswith("-compile"):
        forward = torch.compile(forward)
    images = torch.randn(args.batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=dev)
    if args.task == "infer":
        net.eval()
        if dtype != torch.float32:
            net = net.to(dtype)
            images = images.to(dtype)

        @torch.inference_mode()
        def step():
            return forward(images)
    else:
        net.train()
        labels = torch.randint(0, NUM_CLASSES, (args.batch,), device=dev)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        autocast = dtype != torch.float32

        def step():
            with torch.autocast(dev.type, dtype=dtype, enabled=autocast):
                loss = torch.nn.functional.cross_entropy(forward(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

    def sync(out):
        if cuda:
            torch.cuda.synchronize()
        else:
            out.detach().float().sum().item()

    device = torch.cuda.get_device_name() if cuda else "cpu"
    gpu_peak = (lambda: torch.cuda.max_memory_allocated() / 2**20) if cuda else None
    return step, sync, device, gpu_peak


def setup(args, arch):
    """``(step, sync, device, gpu_peak)`` for ``args.impl``
    (keras-<backend>[-xla|-cpumem|-addmm|-compile] or a reference)."""
    if args.impl.startswith("keras-"):
        return keras_setup(args, arch)
    return torch_setup(args, arch, args.impl)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("impl")
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--dtype", required=True)
    parser.add_argument("--round-seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.impl.startswith("keras-"):
        import keras_vitmsn

        # Before anything imports keras: oneDNN on for TensorFlow, as the CLI has it.
        keras_vitmsn.setup_tensorflow()
    arch = architecture(args.model)
    try:
        step, sync, device, gpu_peak = setup(args, arch)
        start = time.perf_counter()
        sync(step())
        first_call = time.perf_counter() - start
        sync(step())  # second call: some backends specialise once more
    except Exception as exc:  # noqa: BLE001 - reported by the driver as "unavailable"
        emit({"error": f"{type(exc).__name__}: {exc}"[:300]})
        return 1
    flops = forward_flops_per_image(arch) * (3 if args.task == "train" else 1)
    peak = (
        next((v for k, v in GPU_BF16_PEAK.items() if k in device), None)
        if device != "cpu"
        else None
    )
    emit(
        {
            "first_call_s": first_call,
            "device": device,
            "flops_per_image": flops,
            "device_peak_flops": peak,
        }
    )
    for line in sys.stdin:
        command = line.strip()
        if command == "round":
            steps, start = 0, time.perf_counter()
            while True:
                out = step()
                steps += 1
                if time.perf_counter() - start >= args.round_seconds:
                    break
            sync(out)
            seconds = time.perf_counter() - start
            emit({"images_per_s": steps * args.batch / seconds, "steps": steps, "seconds": seconds})
        elif command == "quit":
            if gpu_peak is not None:
                emit({"peak_memory_mb": gpu_peak(), "memory_kind": "device"})
            else:
                emit({"peak_memory_mb": peak_rss_mb(), "memory_kind": "RSS"})
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
