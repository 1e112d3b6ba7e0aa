"""Builders for the checkpoint files the preset/conversion tests load (all offline).

- a huggingface_hub cache populated in its real on-disk layout, so ``hf://`` presets
  go through ``hf_hub_download`` exactly as online, only without a network;
- original facebookresearch/msn ``.pth.tar`` files re-keyed from transformers weights.
"""

import hashlib
import os
import shutil

import numpy as np

FAKE_REVISION = "0123456789abcdef0123456789abcdef01234567"


def populate_hf_cache(cache_dir, repo_id, files, revision=FAKE_REVISION):
    """Put ``{filename: source_path}`` into a huggingface_hub cache as ``repo_id``@main.

    Layout (as huggingface_hub writes it): ``models--org--repo/blobs/<hash>``, the
    snapshot ``snapshots/<revision>/<filename>`` linking to the blob, and
    ``refs/main`` holding the revision.
    """
    repo_dir = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    blobs = os.path.join(repo_dir, "blobs")
    snapshot = os.path.join(repo_dir, "snapshots", revision)
    os.makedirs(blobs, exist_ok=True)
    os.makedirs(snapshot, exist_ok=True)
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    for filename, source in files.items():
        with open(source, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        blob = os.path.join(blobs, digest)
        shutil.copyfile(source, blob)
        link = os.path.join(snapshot, filename)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
        f.write(revision)
    return repo_dir


def hub_state_to_msn_encoder(state, num_layers, rng, hidden=64, out=32):
    """Re-key a transformers hub state dict to an MSN ``target_encoder`` dict.

    Adds the ``module.`` prefix, fuses query/key/value into ``attn.qkv`` and appends a
    random projection head ``fc.{fc1,bn1,fc2,bn2,fc3}`` (BatchNorm with running
    statistics), as facebookresearch/msn saves it.
    """
    s = {k[len("vit.") :] if k.startswith("vit.") else k: np.asarray(v) for k, v in state.items()}
    enc = {
        "cls_token": s["embeddings.cls_token"],
        "pos_embed": s["embeddings.position_embeddings"],
        "patch_embed.proj.weight": s["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": s["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": s["layernorm.weight"],
        "norm.bias": s["layernorm.bias"],
    }
    for i in range(num_layers):
        hub = f"encoder.layer.{i}"
        blk = f"blocks.{i}"
        for kind in ("weight", "bias"):
            enc[f"{blk}.attn.qkv.{kind}"] = np.concatenate(
                [s[f"{hub}.attention.attention.{n}.{kind}"] for n in ("query", "key", "value")]
            )
            enc[f"{blk}.norm1.{kind}"] = s[f"{hub}.layernorm_before.{kind}"]
            enc[f"{blk}.norm2.{kind}"] = s[f"{hub}.layernorm_after.{kind}"]
            enc[f"{blk}.attn.proj.{kind}"] = s[f"{hub}.attention.output.dense.{kind}"]
            enc[f"{blk}.mlp.fc1.{kind}"] = s[f"{hub}.intermediate.dense.{kind}"]
            enc[f"{blk}.mlp.fc2.{kind}"] = s[f"{hub}.output.dense.{kind}"]
    dim = enc["cls_token"].shape[-1]

    def rand(*shape):
        return (0.1 * rng.standard_normal(shape)).astype("float32")

    for name, (fan_in, fan_out) in {
        "fc1": (dim, hidden),
        "fc2": (hidden, hidden),
        "fc3": (hidden, out),
    }.items():
        enc[f"fc.{name}.weight"] = rand(fan_out, fan_in)
        enc[f"fc.{name}.bias"] = rand(fan_out)
    for name in ("bn1", "bn2"):
        enc[f"fc.{name}.weight"] = 1.0 + rand(hidden)
        enc[f"fc.{name}.bias"] = rand(hidden)
        enc[f"fc.{name}.running_mean"] = rand(hidden)
        enc[f"fc.{name}.running_var"] = 1.0 + np.abs(rand(hidden))
        enc[f"fc.{name}.num_batches_tracked"] = np.array(1000, dtype=np.int64)
    return {f"module.{k}": v for k, v in enc.items()}


def write_msn_checkpoint(path, target_encoder, rng, num_prototypes=16, prototype_dim=32):
    """``torch.save`` an MSN checkpoint: encoders, prototypes, optimiser state, epoch."""
    import torch

    def to_torch(d):
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d.items()}

    anchor = {k: v + 0.01 for k, v in target_encoder.items() if v.dtype.kind == "f"}
    prototypes = rng.uniform(-0.06, 0.06, (num_prototypes, prototype_dim)).astype("float32")
    checkpoint = {
        "encoder": to_torch(anchor),
        "target_encoder": to_torch(target_encoder),
        "prototypes": torch.from_numpy(prototypes),
        "opt": {
            "state": {0: {"step": torch.tensor(5.0)}},
            "param_groups": [{"lr": 1e-3, "params": [0]}],
        },
        "epoch": 800,
        "loss": 2.5,
        "batch_size": 1024,
        "world_size": 32,
        "lr": 0.001,
        "temperature": 0.1,
    }
    torch.save(checkpoint, path)
    return prototypes


def save_torch_file(obj, path):
    """Write ``{key: np.ndarray}`` (possibly nested) with ``torch.save``."""
    import torch

    def to_torch(value):
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, dict):
            return {k: to_torch(v) for k, v in value.items()}
        return value

    torch.save(to_torch(obj), os.fspath(path))
