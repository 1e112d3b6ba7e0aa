"""Benchmark (not a test): converting vit-msn-base vs transformers' from_pretrained.

    KERAS_BACKEND=jax python benchmarks/conversion_benchmark.py [--repeats 3]

Writes a vit-msn-base-sized transformers checkpoint (random weights, save_pretrained),
then times, on the same files in the same process:

- ``transformers.ViTMSNModel.from_pretrained(dir)``: the reference;
- ``ViTMSNBackbone.from_preset(dir)``: read the safetensors file with NumPy, build the
  Keras model, assign (conversion in memory, nothing cached);
- ``ViTMSNBackbone.from_preset("hf://...")`` on a cache miss: huggingface_hub resolves
  the files (an offline Hugging Face cache holding the same checkpoint), converts,
  writes the Keras preset cache entry and returns the model;
- the same call again: a cache hit, loading the Keras preset only;
- for scale, ``from_preset(dir, load_weights=False)``: building the Keras model with
  its random initialisers, the cost the loads above avoid.

Two settings, both printed with ratios to from_pretrained:

- warm: in this process, after loading a tiny model with both libraries (imports and
  one-off start-up done); medians over --repeats runs;
- cold: each load as the first call in a fresh Python process, after importing the
  library (the import itself is not timed), as a user's script experiences it.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

BASE = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    image_size=224,
    patch_size=16,
)
TINY = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)


def write_checkpoint(directory, config_kwargs):
    import transformers

    model = transformers.ViTMSNModel(transformers.ViTMSNConfig(**config_kwargs))
    model.save_pretrained(directory)
    transformers.ViTImageProcessor(
        size={"height": config_kwargs["image_size"], "width": config_kwargs["image_size"]},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(directory)


def publish(hf_cache, repo_id, directory):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
    from checkpoint_helpers import populate_hf_cache

    populate_hf_cache(
        hf_cache, repo_id, {f: os.path.join(directory, f) for f in os.listdir(directory)}
    )


COLD_SCRIPT = """
import os, sys, time, warnings
warnings.filterwarnings("ignore")
import huggingface_hub.constants as hub_constants
hub_constants.HF_HUB_CACHE = sys.argv[2]
hub_constants.HF_HUB_OFFLINE = True
kind, target = sys.argv[1], sys.argv[3]
if kind == "transformers":
    import torch, transformers
    start = time.perf_counter()
    transformers.ViTMSNModel.from_pretrained(target)
else:
    import keras, keras_vitmsn as kv
    start = time.perf_counter()
    kv.ViTMSNBackbone.from_preset(target)
print("SECONDS", time.perf_counter() - start)
"""


def cold(kind, hf_cache, target, keras_home):
    import subprocess

    env = dict(os.environ, KERAS_HOME=keras_home)
    out = subprocess.run(
        [sys.executable, "-c", COLD_SCRIPT, kind, hf_cache, target],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.split("SECONDS")[1])


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    import huggingface_hub.constants

    import keras_vitmsn as kv

    kv.setup_tensorflow()  # oneDNN on, as the CLI has it
    import keras
    import transformers

    work = tempfile.mkdtemp(prefix="vitmsn-bench-")
    try:
        hf_cache = os.path.join(work, "hf_cache")
        huggingface_hub.constants.HF_HUB_CACHE = hf_cache
        huggingface_hub.constants.HF_HUB_OFFLINE = True
        for name, config in (("tiny", TINY), ("base", BASE)):
            write_checkpoint(os.path.join(work, name), config)
            publish(hf_cache, f"bench/{name}", os.path.join(work, name))

        # Warm-up: imports, JIT of initialisers, huggingface_hub, h5py on both sides.
        os.environ["KERAS_HOME"] = os.path.join(work, "keras_home_warmup")
        transformers.ViTMSNModel.from_pretrained(os.path.join(work, "tiny"))
        kv.ViTMSNBackbone.from_preset(os.path.join(work, "tiny"))
        kv.ViTMSNBackbone.from_preset("hf://bench/tiny")
        kv.ViTMSNBackbone.from_preset("hf://bench/tiny")

        base_dir = os.path.join(work, "base")
        times = {
            "from_pretrained": [],
            "from_preset(dir)": [],
            "hf:// convert+cache": [],
            "hf:// cached": [],
            "load_weights=False": [],
        }
        for i in range(args.repeats):
            t, _ = timed(lambda: transformers.ViTMSNModel.from_pretrained(base_dir))
            times["from_pretrained"].append(t)
            t, _ = timed(lambda: kv.ViTMSNBackbone.from_preset(base_dir))
            times["from_preset(dir)"].append(t)
            os.environ["KERAS_HOME"] = os.path.join(work, f"keras_home_{i}")
            t, _ = timed(lambda: kv.ViTMSNBackbone.from_preset("hf://bench/base"))
            times["hf:// convert+cache"].append(t)
            t, backbone = timed(lambda: kv.ViTMSNBackbone.from_preset("hf://bench/base"))
            times["hf:// cached"].append(t)
            # For scale: building the Keras model with its random initialisers, which
            # the loads above skip.
            t, _ = timed(lambda: kv.ViTMSNBackbone.from_preset(base_dir, load_weights=False))
            times["load_weights=False"].append(t)
            shutil.rmtree(os.environ["KERAS_HOME"])
        params = backbone.count_params()

        cold_home = os.path.join(work, "keras_home_cold")
        cold_times = {
            "from_pretrained": cold("transformers", hf_cache, base_dir, cold_home),
            "from_preset(dir)": cold("keras", hf_cache, base_dir, cold_home),
            "hf:// convert+cache": cold("keras", hf_cache, "hf://bench/base", cold_home),
            "hf:// cached": cold("keras", hf_cache, "hf://bench/base", cold_home),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"vit-msn-base ({params:,} parameters), KERAS_BACKEND={keras.backend.backend()}, "
        f"keras {keras.__version__}, transformers {transformers.__version__}, "
        f"{os.cpu_count()} CPUs"
    )
    medians = {k: statistics.median(v) for k, v in times.items()}
    report(f"warm (median of {args.repeats})", medians, times)
    report("cold (first call in a fresh process)", cold_times, None)


def report(title, values, runs):
    reference = values["from_pretrained"]
    print(title)
    for name, value in values.items():
        extra = "  runs: " + ", ".join(f"{t:.2f}" for t in runs[name]) if runs else ""
        print(f"  {name:<22} {value:6.2f} s  ({value / reference:5.2f}x from_pretrained){extra}")
    convert_ratio = values["hf:// convert+cache"] / reference
    cached_ratio = values["hf:// cached"] / reference
    print(
        f"  targets: conversion within 2x of from_pretrained: {convert_ratio:.2f}x "
        f"({'met' if convert_ratio <= 2 else 'NOT met'}); cached load faster: "
        f"{cached_ratio:.2f}x ({'met' if cached_ratio < 1 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
