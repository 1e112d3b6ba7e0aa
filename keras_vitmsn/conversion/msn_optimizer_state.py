"""The AdamW state of an original facebookresearch/msn checkpoint, in NumPy.

``checkpoint["opt"]`` is a ``torch.optim.AdamW`` state dict: per-parameter ``step``,
``exp_avg`` and ``exp_avg_sq`` keyed by the parameter's index in the optimizer's
parameter groups. Those indices are only meaningful with the groups ``init_opt``
(``msn_train.py``) built, which this module reconstructs from the encoder state dict,
so that a continued run can restore the moments exactly.
"""

import re

import numpy as np

_HEAD_PARAM = re.compile(r"^(?:fc\.)?(fc[123]|bn[12])\.(weight|bias)$")


_BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked")


def msn_parameter_groups(encoder_state):
    """The original's AdamW parameter groups, in its parameter order.

    ``init_opt`` of ``msn_train.py`` groups ``encoder.named_parameters()`` (buffers
    excluded, before the DistributedDataParallel wrap: no ``module.``): group 0 the
    decayed ones (no ``bias`` or ``bn`` in the name, not 1-D), group 1 the others, and
    group 2 the prototypes. A state dict lists parameters in that same (module) order.

    Returns:
        ``[[names of group 0], [names of group 1], ["prototypes"]]``.
    """
    decayed, other = [], []
    for key, value in encoder_state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name.endswith(_BUFFERS):
            continue
        if "bias" not in name and "bn" not in name and np.ndim(value) != 1:
            decayed.append(name)
        else:
            other.append(name)
    return [decayed, other, ["prototypes"]]


def read_msn_optimizer_state(opt_state, encoder_state):
    """AdamW's moments and step from an original checkpoint's ``opt`` and ``encoder``.

    Args:
        opt_state: ``checkpoint["opt"]``, a ``torch.optim.AdamW`` state dict
            (``{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups"}``).
        encoder_state: ``checkpoint["encoder"]`` (its key order gives the parameter
            order, see :func:`msn_parameter_groups`).

    Returns:
        ``{"step": int, "exp_avg": {name: array}, "exp_avg_sq": {name: array},
        "betas": (b1, b2), "eps": float}`` with the encoder's parameter names
        (``module.`` stripped, ``fc.*`` for the head) and ``"prototypes"``.

    Raises:
        ValueError: the state does not have the original's three parameter groups,
            a moment's shape differs from its parameter, or the steps differ.
    """
    if not isinstance(opt_state, dict) or not {"state", "param_groups"} <= set(opt_state):
        raise ValueError("the 'opt' entry is not a torch optimizer state dict.")
    groups = msn_parameter_groups(encoder_state)
    torch_groups = opt_state["param_groups"]
    sizes = [len(g.get("params", ())) for g in torch_groups]
    if sizes != [len(g) for g in groups]:
        raise ValueError(
            "the optimizer state does not match the original's parameter groups "
            f"(decayed, not decayed, prototypes): it has groups of {sizes} parameters, "
            f"the encoder implies {[len(g) for g in groups]}."
        )
    shapes = {
        (k[len("module.") :] if k.startswith("module.") else k): np.shape(v)
        for k, v in encoder_state.items()
    }
    out = {"exp_avg": {}, "exp_avg_sq": {}, "step": None}
    for names, group in zip(groups, torch_groups):
        for name, index in zip(names, group["params"]):
            state = opt_state["state"].get(index)
            if not state:
                raise ValueError(f"the optimizer has no state for {name!r} (parameter {index}).")
            step = int(np.asarray(state["step"]).item())
            if out["step"] not in (None, step):
                raise ValueError(
                    f"parameters were updated a different number of times ({out['step']} "
                    f"and {step} for {name!r}); the original updates all of them every step."
                )
            out["step"] = step
            for moment in ("exp_avg", "exp_avg_sq"):
                value = np.asarray(state[moment])
                expected = shapes.get(name, value.shape)
                if tuple(value.shape) != tuple(expected):
                    raise ValueError(
                        f"{moment} of {name!r} has shape {value.shape}, the parameter {expected}."
                    )
                out[moment][name] = value
    first = torch_groups[0]
    out["betas"] = tuple(float(b) for b in first.get("betas", (0.9, 0.999)))
    out["eps"] = float(first.get("eps", 1e-8))
    return out


def msn_head_moments_to_keras(moments):
    """Moments of the head's parameters, ``{"fc.fc1.weight": ..., "fc.bn1.bias": ...}``
    (``fc.`` optional), in the head's Keras layout (``fc1/kernel`` transposed,
    ``bn1/gamma``, ...); other keys are ignored."""
    out = {}
    for key, value in moments.items():
        match = _HEAD_PARAM.match(key)
        if not match:
            continue
        layer, param = match.group(1), match.group(2)
        if layer.startswith("fc"):
            out[f"{layer}/{'kernel' if param == 'weight' else 'bias'}"] = (
                np.transpose(value) if param == "weight" else value
            )
        else:
            out[f"{layer}/{'gamma' if param == 'weight' else 'beta'}"] = value
    return out
