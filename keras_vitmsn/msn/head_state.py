"""MSN pretraining state on disk: the projection head and prototypes.

Read from an original ``*.pth.tar`` (through :mod:`keras_vitmsn.conversion.msn_checkpoint`)
or from ``msn_head.weights.h5``, the file presets of ours carry next to the backbone
(written by ``MSNPretrainer.save_to_preset`` and ``keras_vitmsn.convert_to_preset``).

Layout, all float arrays, Dense kernels as ``(in, out)``:

- ``fc1/kernel`` ``(hidden_dim, 2048)``, ``fc1/bias``
- ``bn1/gamma``, ``bn1/beta``, ``bn1/moving_mean``, ``bn1/moving_variance`` ``(2048,)``
- ``fc2/kernel`` ``(2048, 2048)``, ``fc2/bias``, ``bn2/*`` as ``bn1``
- ``fc3/kernel`` ``(2048, 256)``, ``fc3/bias``
- ``prototypes`` ``(1024, 256)``

Head: ``fc1 -> bn1 -> GELU (exact) -> fc2 -> bn2 -> GELU -> fc3``; the BatchNorms are
torch's (epsilon 1e-5, momentum 0.1, i.e. Keras ``momentum=0.9``). ``bn*`` entries are
absent for heads trained without BatchNorm (``use_bn=False``).
"""

import os

import h5py
import numpy as np

from keras_vitmsn.conversion.msn_checkpoint import read_msn_checkpoint
from keras_vitmsn.errors import CheckpointError
from keras_vitmsn.presets.file_format import MSN_HEAD_FILE

BATCHNORM_EPSILON = 1e-5
BATCHNORM_MOMENTUM = 0.9  # Keras convention; torch's momentum=0.1.
HEAD_ACTIVATION = "gelu"


def save_msn_pretraining_state(state, path):
    """Write ``{"head": {...} or None, "prototypes": array or None, ...}`` to an h5 file."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "keras_vitmsn.msn_head/1"
        f.attrs["batchnorm_epsilon"] = BATCHNORM_EPSILON
        f.attrs["batchnorm_momentum"] = BATCHNORM_MOMENTUM
        f.attrs["activation"] = HEAD_ACTIVATION
        f.attrs["encoder"] = state.get("encoder", "target_encoder")
        if state.get("epoch") is not None:
            f.attrs["epoch"] = int(state["epoch"])
        for key, value in (state.get("head") or {}).items():
            f.create_dataset(f"head/{key}", data=np.asarray(value))
        if state.get("prototypes") is not None:
            f.create_dataset("prototypes", data=np.asarray(state["prototypes"]))


def load_msn_pretraining_state(path):
    """The MSN projection head and prototypes, for continuing MSN pretraining.

    Args:
        path: an original ``*.pth.tar`` checkpoint (needs torch), a Keras preset
            directory converted from one (holding ``msn_head.weights.h5``), or that
            ``.h5`` file itself.

    Returns:
        ``{"head": {"fc1/kernel": ..., "bn1/gamma": ..., ...} or None,
        "prototypes": (K, D) array or None, "batchnorm_epsilon": 1e-5,
        "batchnorm_momentum": 0.9, "activation": "gelu", "encoder":
        "target_encoder", "epoch": int or None}`` (layout in the module docstring).

    Raises:
        FileNotFoundError: nothing MSN-like at ``path``.
        CheckpointError: the file is truncated or corrupted.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        h5_path = os.path.join(path, MSN_HEAD_FILE)
        if not os.path.exists(h5_path):
            raise FileNotFoundError(
                f"{path} has no {MSN_HEAD_FILE}: only presets converted from an original "
                "MSN .pth.tar checkpoint carry the projection head and prototypes."
            )
        path = h5_path
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file or directory: {path}")
    if path.endswith(".h5"):
        try:
            with h5py.File(path, "r") as f:
                head = {}
                if "head" in f:
                    f["head"].visititems(
                        lambda name, obj: (
                            head.__setitem__(name, obj[()])
                            if isinstance(obj, h5py.Dataset)
                            else None
                        )
                    )
                return {
                    "head": head or None,
                    "prototypes": f["prototypes"][()] if "prototypes" in f else None,
                    "batchnorm_epsilon": float(f.attrs["batchnorm_epsilon"]),
                    "batchnorm_momentum": float(f.attrs["batchnorm_momentum"]),
                    "activation": str(f.attrs["activation"]),
                    "encoder": str(f.attrs["encoder"]),
                    "epoch": int(f.attrs["epoch"]) if "epoch" in f.attrs else None,
                }
        except (OSError, KeyError) as e:
            raise CheckpointError(f"{path} is truncated or corrupted: {e}.") from e
    raw = read_msn_checkpoint(path)
    return {
        "head": raw["head"],
        "prototypes": raw["prototypes"],
        "batchnorm_epsilon": BATCHNORM_EPSILON,
        "batchnorm_momentum": BATCHNORM_MOMENTUM,
        "activation": HEAD_ACTIVATION,
        "encoder": raw["encoder"],
        "epoch": raw["epoch"],
    }
