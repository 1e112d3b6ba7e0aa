"""Backend tensors and array-likes to NumPy, for the low-shot modules."""

import numpy as np


def to_numpy(x):
    """``x`` (a NumPy array, a backend tensor, a list) as a NumPy array, on the CPU.

    Example:
    >>> to_numpy([[1, 2], [3, 4]]).shape
    (2, 2)
    """
    if hasattr(x, "detach"):  # torch tensors, possibly on an accelerator
        x = x.detach().cpu()
    return np.asarray(x)
