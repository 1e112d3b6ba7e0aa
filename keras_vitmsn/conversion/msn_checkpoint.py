"""Original facebookresearch/msn checkpoints (``vits16_800ep.pth.tar`` ...) in NumPy.

A checkpoint is a torch pickle ``{"encoder", "target_encoder", "prototypes", "opt",
"epoch", ...}``. Each encoder dict carries the DistributedDataParallel ``module.``
prefix, timm-style ViT names with a fused ``attn.qkv`` projection, and the MSN
projection head ``fc.{fc1,bn1,fc2,bn2,fc3}``. Like transformers' converter we use the
``target_encoder`` (the EMA encoder used for evaluation): its backbone is re-keyed to
the hub names (so the transformers mapping applies unchanged) and its projection head
(in the Keras layout documented in :mod:`keras_vitmsn.msn.head_state`) and the
prototypes are kept for continued MSN training.
"""

import os
import re

import numpy as np

from keras_vitmsn.conversion.msn_optimizer_state import read_msn_optimizer_state
from keras_vitmsn.errors import CheckpointError

MSN_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar")

_BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
_TOP_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_HEAD = re.compile(r"^fc\.(fc[123]|bn[12])\.(.+)$")
_BN_NAMES = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}


def split_msn_encoder(encoder_state):
    """Re-key an MSN encoder state dict (``module.`` prefix allowed) to hub names.

    Returns:
        ``(backbone_state, head_state, key_names)``: the backbone with transformers'
        hub keys (fused qkv split into query/key/value), the raw projection-head
        tensors ``{"fc1.weight": ..., "bn1.running_mean": ...}``, and
        ``{new_key: original_key}`` for error messages. Unknown keys are kept under
        their original name so strict assignment reports them.
    """
    backbone, head, key_names = {}, {}, {}

    def put(key, value, original):
        if key in backbone:
            raise ValueError(
                f"The MSN checkpoint holds two copies of {key!r}: "
                f"{key_names.get(key, key)!r} and {original!r}."
            )
        backbone[key] = value
        key_names[key] = original

    for original, value in encoder_state.items():
        key = original[len("module.") :] if original.startswith("module.") else original
        head_match = _HEAD.match(key)
        block = _BLOCK.match(key)
        if head_match:
            head[f"{head_match.group(1)}.{head_match.group(2)}"] = value
        elif key in _TOP_RENAMES:
            put(_TOP_RENAMES[key], value, original)
        elif block and block.group(2) == "attn.qkv":
            i, kind = block.group(1), block.group(3)
            value = np.asarray(value)
            if value.shape[0] % 3:
                raise ValueError(
                    f"{original}: a fused qkv {kind} needs a first dimension divisible "
                    f"by 3, got shape {value.shape}."
                )
            # Rows are stacked q, k, v (timm's Attention reshapes (B, N, 3, H, d)).
            for name, part in zip(("query", "key", "value"), np.split(value, 3, axis=0)):
                put(f"encoder.layer.{i}.attention.attention.{name}.{kind}", part, original)
        elif block and block.group(2) in _BLOCK_RENAMES:
            i = block.group(1)
            name = f"encoder.layer.{i}.{_BLOCK_RENAMES[block.group(2)]}.{block.group(3)}"
            put(name, value, original)
        else:
            put(key, value, original)
    return backbone, head, {k: v for k, v in key_names.items() if k != v}


def msn_head_to_keras(head_state):
    """The raw ``fc.*`` tensors in the documented Keras layout (see module docstring)."""
    if not head_state:
        return None
    out = {}
    unexpected = []
    for key, value in head_state.items():
        layer, _, param = key.partition(".")
        value = np.asarray(value)
        if layer.startswith("fc") and param in ("weight", "bias"):
            out[f"{layer}/{'kernel' if param == 'weight' else 'bias'}"] = (
                np.transpose(value) if param == "weight" else value
            )
        elif layer.startswith("bn") and param in _BN_NAMES:
            out[f"{layer}/{_BN_NAMES[param]}"] = value
        elif layer.startswith("bn") and param == "num_batches_tracked":
            continue  # torch bookkeeping only; Keras BatchNorm has no counterpart.
        else:
            unexpected.append(f"fc.{key}")
    required = [f"fc{i}/{p}" for i in (1, 2, 3) for p in ("kernel", "bias")]
    missing = [k for k in required if k not in out]
    for bn in ("bn1", "bn2"):
        present = [k for k in out if k.startswith(bn + "/")]
        if present:
            missing += [f"{bn}/{p}" for p in _BN_NAMES.values() if f"{bn}/{p}" not in out]
    if missing or unexpected:
        raise ValueError(
            "The MSN projection head does not have the fc1-bn1-fc2-bn2-fc3 layout: "
            f"missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}."
        )
    return out


# The number of attention heads is not stored in the weights; these are the released
# models' (ViT-S: 6, ViT-B: 12, ViT-L: 16, all 64-wide).
RELEASED_NUM_HEADS = {384: 6, 768: 12, 1024: 16}


def msn_backbone_kwargs(backbone_state):
    """ViTMSNBackbone kwargs implied by the shapes of a re-keyed MSN encoder.

    The number of heads is not stored in the weights: it is known for the released
    widths only (:data:`RELEASED_NUM_HEADS`); for any other width ``num_heads`` is None
    and ``from_preset`` asks for it (``num_heads=...``) instead of guessing.
    """
    try:
        patch = backbone_state["embeddings.patch_embeddings.projection.weight"]
        table = backbone_state["embeddings.position_embeddings"]
    except KeyError as e:
        raise ValueError(
            f"Not a ViT encoder: {e.args[0]!r} (from module.patch_embed.proj.weight / "
            "module.pos_embed) is missing."
        ) from None
    hidden_dim, channels, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
    grid = int(round(np.sqrt(table.shape[1] - 1)))
    if grid * grid != table.shape[1] - 1:
        raise ValueError(f"pos_embed has {table.shape[1] - 1} patch rows, not a square grid.")
    layers = sorted(
        {int(k.split(".")[2]) for k in backbone_state if k.startswith("encoder.layer.")}
    )
    if layers != list(range(len(layers))) or not layers:
        raise ValueError(f"Transformer blocks are not numbered 0..N-1: {layers}.")
    intermediate = backbone_state.get("encoder.layer.0.intermediate.dense.weight")
    return {
        "image_shape": (grid * patch_size, grid * patch_size, channels),
        "patch_size": patch_size,
        "hidden_dim": hidden_dim,
        "num_layers": len(layers),
        # None for a width no released model has: from_preset then asks for num_heads.
        "num_heads": RELEASED_NUM_HEADS.get(hidden_dim),
        "intermediate_dim": (
            int(intermediate.shape[0]) if intermediate is not None else 4 * hidden_dim
        ),
        "layer_norm_epsilon": 1e-6,
        "qkv_bias": "encoder.layer.0.attention.attention.query.bias" in backbone_state,
        "hidden_act": "gelu",
    }


def read_msn_checkpoint(path, encoder="target_encoder", online=False, optimizer=False):
    """Open an original MSN checkpoint (torch, ``weights_only=True``) and split it.

    Args:
        path: the ``.pth.tar`` file.
        encoder: which encoder is THE model: ``"target_encoder"`` (the EMA encoder
            every evaluation uses) or ``"encoder"``.
        online: also return the online (anchor) encoder, ``checkpoint["encoder"]``,
            under ``"online"`` (None when the file has none): a continued run starts
            from it, the target from ``target_encoder`` (they differ mid-training).
        optimizer: also return the AdamW state under ``"optimizer"`` (see
            :func:`read_msn_optimizer_state`).

    Returns:
        dict with ``backbone_state`` (hub keys), ``key_names``, ``head`` (Keras
        layout or None), ``prototypes`` (array or None), ``epoch``, ``encoder`` and,
        when asked, ``online`` (``{"backbone_state", "key_names", "head"}``) and
        ``optimizer``.
    """
    from keras_vitmsn.conversion.torch_io import load_torch_file

    checkpoint = load_torch_file(path)
    wanted = [encoder] + (["opt", "encoder"] if optimizer else [])
    missing = [key for key in wanted if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is not an MSN checkpoint: no {missing[0]!r} entry (found {found}). "
            "Expected the facebookresearch/msn layout {'encoder', 'target_encoder', "
            "'prototypes', 'opt', ...}."
        )
    backbone_state, head_state, key_names = split_msn_encoder(checkpoint[encoder])
    prototypes = checkpoint.get("prototypes")
    out = {
        "backbone_state": backbone_state,
        "key_names": key_names,
        "head": msn_head_to_keras(head_state),
        "prototypes": None if prototypes is None else np.asarray(prototypes),
        "epoch": checkpoint.get("epoch"),
        "encoder": encoder,
    }
    if online and "encoder" not in checkpoint:
        out["online"] = None
    elif online:
        online_backbone, online_head, online_names = split_msn_encoder(checkpoint["encoder"])
        out["online"] = {
            "backbone_state": online_backbone,
            "key_names": online_names,
            "head": msn_head_to_keras(online_head),
        }
    if optimizer:
        try:
            out["optimizer"] = read_msn_optimizer_state(checkpoint["opt"], checkpoint["encoder"])
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
    return out


def is_msn_checkpoint_path(path):
    return os.fspath(path).endswith(MSN_SUFFIXES)
