"""Internal: the state reading and writing behind :meth:`MSNPretrainer.from_preset` and
:meth:`MSNPretrainer.save_to_preset`, to continue MSN pretraining exactly.

- Original checkpoints (``save_checkpoint`` of the authors' ``src/msn_train.py``:
  ``encoder``, ``target_encoder``, ``prototypes``, ``opt``, ``epoch``, ...): the online
  encoder and head come from ``encoder``, the EMA target from ``target_encoder`` (they
  differ mid-training), the prototypes from ``prototypes``; with ``restore_optimizer``
  the AdamW moments and step come from ``opt``, and the schedules continue from that step.
- Our presets: the target encoder is the backbone preset, the target head and
  prototypes are ``msn_head.weights.h5``, and ``msn_training_state.h5`` holds the rest
  of the run (online encoder and head, schedule position, mask seed, the pretrainer's
  settings, optimizer variables).
"""

import json
import os
import tempfile

import h5py
import keras
import numpy as np

from keras_vitmsn.conversion.checkpoints import ConvertedCheckpoint
from keras_vitmsn.conversion.msn_checkpoint import msn_backbone_kwargs
from keras_vitmsn.conversion.msn_checkpoint import read_msn_checkpoint
from keras_vitmsn.conversion.msn_checkpoint import split_msn_encoder
from keras_vitmsn.conversion.msn_optimizer_state import msn_head_moments_to_keras
from keras_vitmsn.errors import CheckpointError
from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.models.optimizer import ScheduledAdamW
from keras_vitmsn.msn.head import MSNProjectionHead
from keras_vitmsn.msn.head import MSNPrototypes
from keras_vitmsn.msn.head_state import save_msn_pretraining_state
from keras_vitmsn.presets.sources import ConvertedSource
from keras_vitmsn.presets.sources import constructor_argument_names

_FORMAT = "keras_vitmsn.msn_training_state/1"
# Sub-layers and Keras bookkeeping: what a training state does not restore as settings.
_NOT_SETTINGS = ("encoder", "projection_head", "prototypes", "name", "trainable", "dtype")


def weights_by_relative_path(layer):
    """``{path below the layer: variable}``; the same keys in a layer and its copy."""
    prefix = f"{layer.name}/"
    out = {}
    for variable in layer.weights:
        path = variable.path
        out[path[path.index(prefix) + len(prefix) :] if prefix in path else path] = variable
    return out


def split_backbone_kwargs(kwargs):
    """Pop the ``ViTMSNBackbone`` constructor arguments out of ``kwargs``."""
    names = set(constructor_argument_names(ViTMSNBackbone)) - {"name"}
    return {k: kwargs.pop(k) for k in list(kwargs) if k in names}


# -- original checkpoints -------------------------------------------------------------


def _converted_source(part, origin, state=None):
    return ConvertedSource(
        ConvertedCheckpoint(
            msn_backbone_kwargs(part["backbone_state"]),
            part["backbone_state"] if state is None else state,
            {},
            key_names=part["key_names"],
            origin=origin,
        )
    )


def read_original_checkpoint(path, backbone_kwargs, restore_optimizer):
    """An original ``.pth.tar``'s online and target encoders, online head, prototypes
    (None where absent), target head weights (``target_head``) and, with
    ``restore_optimizer``, what :func:`restore_original_optimizer` needs."""
    raw = read_msn_checkpoint(path, online=True, optimizer=restore_optimizer)
    origin = os.path.abspath(path)
    if raw["online"] is None:
        # A file with the EMA encoder only (no `encoder`): both branches start from it.
        raw["online"] = {k: raw[k] for k in ("backbone_state", "key_names", "head")}
    target = _converted_source(raw, origin).load_backbone(ViTMSNBackbone, **backbone_kwargs)
    online = _converted_source(raw["online"], origin).load_backbone(
        ViTMSNBackbone, **backbone_kwargs
    )
    dtype = {"dtype": online.dtype_policy}
    head = prototypes = None
    if raw["online"]["head"]:
        head = MSNProjectionHead.from_pretraining_state(
            {"head": raw["online"]["head"]}, name="projection_head", **dtype
        )
    if raw["prototypes"] is not None:
        prototypes = MSNPrototypes.from_pretraining_state(
            {"prototypes": raw["prototypes"]}, name="prototypes", **dtype
        )
    return {
        "online": online,
        "target": target,
        "projection_head": head,
        "prototypes": prototypes,
        "target_head": raw["head"],
        "raw": raw,
        "origin": origin,
    }


def restore_original_optimizer(pretrainer, checkpoint, optimizer):
    """Compile ``pretrainer`` and set its AdamW moments and step (``ema_steps`` too) from
    the original checkpoint read by :func:`read_original_checkpoint`."""
    raw = checkpoint["raw"]
    state = raw["optimizer"]
    pretrainer.compile(optimizer=optimizer)
    opt = pretrainer.optimizer
    if not isinstance(opt, ScheduledAdamW) or opt.amsgrad:
        raise ValueError(
            "Restoring the original's AdamW moments needs a ScheduledAdamW without amsgrad "
            "(the default optimizer), which updates as torch's AdamW; got "
            f"{type(opt).__name__}."
        )
    settings = (float(opt.beta_1), float(opt.beta_2), float(opt.epsilon))
    if settings != (*state["betas"], state["eps"]):
        raise ValueError(
            f"The checkpoint's AdamW used betas={state['betas']}, eps={state['eps']}; the "
            f"optimizer has betas=({settings[0]}, {settings[1]}), epsilon={settings[2]}."
        )
    opt.build(pretrainer.trainable_variables)
    slots = {}
    for moment in ("exp_avg", "exp_avg_sq"):
        moments = {k: v for k, v in state[moment].items() if k != "prototypes"}
        backbone, head, _ = split_msn_encoder(moments)
        source = _converted_source(raw["online"], checkpoint["origin"], backbone)
        pairs = list(source.convert_backbone(pretrainer.encoder).values())
        head_layer = pretrainer.projection_head
        for key, value in msn_head_moments_to_keras(head).items():
            layer, param = key.split("/")
            pairs.append((getattr(getattr(head_layer, layer), param), value))
        pairs.append((pretrainer.prototypes.prototypes, state[moment]["prototypes"]))
        for variable, value in pairs:
            slots.setdefault(id(variable), {})[moment] = (variable, value)
    trainable = pretrainer.trainable_variables
    missing = [v.path for v in trainable if len(slots.get(id(v), {})) != 2]
    if missing:
        raise ValueError(f"The checkpoint's optimizer state has no moments for {missing}.")
    for variable in trainable:
        for moment, slot in zip(("exp_avg", "exp_avg_sq"), opt.moments(variable)):
            _, value = slots[id(variable)][moment]
            slot.assign(np.asarray(value, dtype="float32").reshape(variable.shape))
    opt.iterations.assign(state["step"])
    pretrainer.ema_steps.assign(state["step"])


# -- our presets ------------------------------------------------------------------------


def write_msn_head(pretrainer, path):
    """Write the target head and the prototypes to ``path`` (``msn_head.weights.h5``)."""
    ops = keras.ops
    head = weights_by_relative_path(pretrainer.target_projection_head)
    _atomic_write(
        path,
        lambda tmp: save_msn_pretraining_state(
            {
                "head": {k: ops.convert_to_numpy(v) for k, v in head.items()},
                "prototypes": ops.convert_to_numpy(pretrainer.prototypes.prototypes),
                "encoder": "target_encoder",
            },
            tmp,
        ),
    )


def write_training_state(pretrainer, path):
    """Write what continues the run (online branch, schedule position, mask seed,
    settings, optimizer variables) to ``path`` (``msn_training_state.h5``)."""
    _atomic_write(path, lambda tmp: _write_training_state(pretrainer, tmp))


def _training_variables(pretrainer):
    out = {f"encoder/{k}": v for k, v in weights_by_relative_path(pretrainer.encoder).items()}
    out.update(
        {
            f"projection_head/{k}": v
            for k, v in weights_by_relative_path(pretrainer.projection_head).items()
        }
    )
    out["ema_steps"] = pretrainer.ema_steps
    out["mask_seed_state"] = pretrainer.seed_generator.state
    return out


def _write_training_state(pretrainer, path):
    ops = keras.ops
    config = {k: v for k, v in pretrainer.get_config().items() if k not in _NOT_SETTINGS}
    with h5py.File(path, "w") as f:
        f.attrs["format"] = _FORMAT
        f.attrs["settings"] = json.dumps(config)
        for key, variable in _training_variables(pretrainer).items():
            f.create_dataset(f"weights/{key}", data=ops.convert_to_numpy(variable))
        if pretrainer.compiled and pretrainer.optimizer.built:
            optimizer = pretrainer.optimizer
            f.attrs["optimizer"] = json.dumps(keras.saving.serialize_keras_object(optimizer))
            for i, variable in enumerate(optimizer.variables):
                dataset = f.create_dataset(
                    f"optimizer/{i:06d}", data=ops.convert_to_numpy(variable)
                )
                dataset.attrs["path"] = variable.path


def read_training_state(path):
    """``{"settings", "weights", "optimizer"}`` of a file :func:`write_training_state`
    wrote."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != _FORMAT:
                raise ValueError(
                    f"{path} is not an MSN training state ({_FORMAT}); found format "
                    f"{f.attrs.get('format')!r}."
                )
            weights = {}
            f["weights"].visititems(
                lambda name, obj: (
                    weights.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
                )
            )
            optimizer = None
            if "optimizer" in f:
                names = sorted(f["optimizer"])
                optimizer = {
                    "config": json.loads(f.attrs["optimizer"]),
                    "values": [f["optimizer"][n][()] for n in names],
                    "paths": [str(f["optimizer"][n].attrs["path"]) for n in names],
                }
            return {
                "settings": json.loads(f.attrs["settings"]),
                "weights": weights,
                "optimizer": optimizer,
            }
    except (OSError, KeyError) as e:
        raise CheckpointError(f"{path} is truncated or corrupted: {e}.") from e


def restore_training_state(pretrainer, state, head, path, restore_optimizer, optimizer):
    """Set the target head to ``head`` and everything else of a saved run from ``state``
    (:func:`read_training_state` of ``path``); with ``restore_optimizer`` compile
    ``pretrainer`` and restore its optimizer's variables."""
    # The target head: the saved one (the constructor copied the online head).
    target_head = weights_by_relative_path(pretrainer.target_projection_head)
    for key, variable in weights_by_relative_path(head).items():
        target_head[key].assign(variable)
    _assign_all(_training_variables(pretrainer), state["weights"], path)
    if restore_optimizer:
        if state["optimizer"] is None:
            raise ValueError(
                f"{path} was saved before the pretrainer was compiled: no optimizer state."
            )
        # The optimizer follows the pretrainer's settings (a longer run stretches its
        # schedules); only its state (step, moments) comes from the file.
        pretrainer.compile(optimizer=optimizer)
        saved_class = state["optimizer"]["config"].get("class_name")
        if saved_class != type(pretrainer.optimizer).__name__:
            raise ValueError(
                f"{path} holds the state of a {saved_class} optimizer but the pretrainer "
                f"compiles a {type(pretrainer.optimizer).__name__}: pass the run's "
                "optimizer (optimizer=...), or restore_optimizer=False."
            )
        pretrainer.optimizer.build(pretrainer.trainable_variables)
        variables = pretrainer.optimizer.variables
        saved = state["optimizer"]["values"]
        if len(variables) != len(saved) or any(
            tuple(v.shape) != tuple(np.shape(s)) for v, s in zip(variables, saved)
        ):
            raise ValueError(
                f"{path}: the saved optimizer state ({len(saved)} variables) does not fit "
                f"this optimizer ({len(variables)} variables): pass the optimizer the run "
                "used, or restore_optimizer=False."
            )
        for variable, value in zip(variables, saved):
            variable.assign(value)


def _assign_all(variables, values, path):
    missing = sorted(set(variables) - set(values))
    wrong = [
        f"{k}: saved {tuple(np.shape(values[k]))}, model {tuple(v.shape)}"
        for k, v in variables.items()
        if k in values and tuple(np.shape(values[k])) != tuple(v.shape)
    ]
    if missing or wrong:
        raise ValueError(
            f"{path} does not fit this pretrainer (was the architecture overridden?): "
            f"missing {missing or 'nothing'}, shape mismatches {wrong or 'none'}."
        )
    for key, variable in variables.items():
        variable.assign(values[key])


def _atomic_write(path, write):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp.h5")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
