"""Read PyTorch checkpoint files (``pytorch_model.bin``, MSN ``*.pth.tar``) into NumPy.

These files are pickles. They are only ever opened with
``torch.load(..., weights_only=True)``, which restricts unpickling to tensors and plain
containers: a file that needs anything else is refused, never executed. torch is
imported here, lazily, so the rest of the package works without it.
"""

import os
import pickle
import zipfile

import ml_dtypes

from keras_vitmsn.errors import CheckpointError


def _import_torch(path):
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading {os.path.basename(os.fspath(path))} needs PyTorch: it is a torch "
            "pickle. Install it with `pip install torch` (the CPU wheel is enough), or "
            "load a checkpoint in the safetensors format, which needs no torch."
        ) from e
    return torch


def _to_numpy(torch, value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            # NumPy has no bfloat16: reinterpret the bits as ml_dtypes' bfloat16.
            return value.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    if isinstance(value, dict):
        return {k: _to_numpy(torch, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_numpy(torch, v) for v in value)
    return value


def load_torch_file(path):
    """Load a torch checkpoint safely and turn every tensor into a NumPy array.

    Args:
        path: a ``.bin`` / ``.pt`` / ``.pth`` / ``.pth.tar`` file written by
            ``torch.save``.

    Returns:
        The unpickled structure (usually a dict) with tensors replaced by arrays.

    Raises:
        ImportError: torch is not installed.
        CheckpointError: the file is truncated or corrupted, or holds objects that
            ``weights_only=True`` refuses to unpickle.
    """
    path = os.fspath(path)
    torch = _import_torch(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not _looks_like_torch_file(path) or not _refused_a_global(e):
            raise CheckpointError(
                f"{path} is not a readable torch checkpoint: it is neither a torch.save "
                "zip archive nor a pickle of tensors (another kind of file, or a "
                "truncated or corrupted download)."
            ) from e
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain containers; it "
            "is only read with torch.load(weights_only=True), which refuses them, so "
            "arbitrary code in the pickle is never run. Re-save just the state dicts "
            f"(torch.save({{'target_encoder': ...}}, ...)) to convert it. Detail: {e}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} could not be read as a torch checkpoint: the file is truncated or "
            f"corrupted (re-download it). Detail: {e}"
        ) from e
    return _to_numpy(torch, obj)


def _looks_like_torch_file(path):
    """A torch.save zip archive, or a legacy one: a pickle, which opens with PROTO."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _refused_a_global(error):
    # weights_only refusals name the class they would not import ("Unsupported
    # global", "was not an allowed global"); garbage fails on an opcode instead.
    return "global" in str(error).lower()
