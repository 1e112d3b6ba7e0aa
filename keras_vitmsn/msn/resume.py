"""Continue MSN pretraining exactly: from an original ``.pth.tar`` or from our own presets.

- Original checkpoints (``save_checkpoint`` of ``msn_train.py``: ``encoder``,
  ``target_encoder``, ``prototypes``, ``opt``, ``epoch``, ...): the online encoder and
  head come from ``encoder``, the EMA target from ``target_encoder`` (they differ
  mid-training), the prototypes from ``prototypes``; with ``restore_optimizer`` the
  AdamW moments and step come from ``opt``, and the schedules continue from that step.
- Our presets (:meth:`MSNPretrainer.save_to_preset`): the target encoder is the
  backbone preset, the target head and prototypes are ``msn_head.weights.h5``, and
  :data:`TRAINING_STATE_FILE` holds the rest of the run (online encoder and head,
  schedule position, mask seed, the pretrainer's settings, optimizer variables).
"""

import json
import os
import tempfile

import h5py
import keras
import numpy as np

from keras_vitmsn.conversion.checkpoints import ConvertedCheckpoint
from keras_vitmsn.conversion.msn_checkpoint import is_msn_checkpoint_path
from keras_vitmsn.conversion.msn_checkpoint import msn_backbone_kwargs
from keras_vitmsn.conversion.msn_checkpoint import read_msn_checkpoint
from keras_vitmsn.conversion.msn_checkpoint import split_msn_encoder
from keras_vitmsn.conversion.msn_optimizer_state import msn_head_moments_to_keras
from keras_vitmsn.errors import CheckpointError
from keras_vitmsn.images.converter import ViTMSNImageConverter
from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.msn.scratch import init_embeddings_like_msn
from keras_vitmsn.msn.head import MSNProjectionHead
from keras_vitmsn.msn.head import MSNPrototypes
from keras_vitmsn.msn.head import head_and_prototypes_from_state
from keras_vitmsn.msn.head_state import save_msn_pretraining_state
from keras_vitmsn.models.optimizer import ScheduledAdamW
from keras_vitmsn.presets import file_format
from keras_vitmsn.presets.file_format import MSN_HEAD_FILE
from keras_vitmsn.presets.file_format import MSN_TRAINING_STATE_FILE as TRAINING_STATE_FILE
from keras_vitmsn.presets.mixin import save_preset_directory
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
        out[path[path.index(prefix) + len(prefix):] if prefix in path else path] = variable
    return out


def _split_backbone_kwargs(kwargs):
    names = set(constructor_argument_names(ViTMSNBackbone)) - {"name"}
    return {k: kwargs.pop(k) for k in list(kwargs) if k in names}


def from_preset(cls, preset, load_weights=True, restore_optimizer=False, optimizer=None, **kwargs):
    """See :meth:`MSNPretrainer.from_preset`."""
    backbone_kwargs = _split_backbone_kwargs(kwargs)
    path = os.fspath(preset) if isinstance(preset, (str, os.PathLike)) else None
    if restore_optimizer and not load_weights:
        raise ValueError("`restore_optimizer=True` needs `load_weights=True`.")
    if load_weights and path is not None and is_msn_checkpoint_path(path):
        return _from_original(cls, path, backbone_kwargs, restore_optimizer, optimizer, kwargs)
    encoder = ViTMSNBackbone.from_preset(preset, load_weights=load_weights, **backbone_kwargs)
    if not load_weights:  # from scratch, as the original MSN starts
        init_embeddings_like_msn(encoder, kwargs.get("seed"))
    has_head = path is not None and os.path.isdir(path) and os.path.exists(
        os.path.join(path, MSN_HEAD_FILE)
    )
    state_path = None if path is None else os.path.join(path, TRAINING_STATE_FILE)
    if not load_weights or not has_head:
        if restore_optimizer:
            raise ValueError(f"{preset!r} holds no MSN training state to restore an optimizer from.")
        return cls(encoder, **kwargs)
    head, prototypes = head_and_prototypes_from_state(path, dtype=encoder.dtype_policy)
    if not os.path.exists(state_path):
        if restore_optimizer:
            raise ValueError(
                f"{path} has no {TRAINING_STATE_FILE} (written by MSNPretrainer.save_to_preset "
                "with training_state=True): there is no optimizer state to restore."
            )
        kwargs.setdefault("projection_head", head)
        kwargs.setdefault("prototypes", prototypes)
        return cls(encoder, **kwargs)
    return _from_training_state(
        cls, state_path, encoder, head, prototypes, restore_optimizer, optimizer, kwargs
    )


# -- original checkpoints -------------------------------------------------------------

def _from_original(cls, path, backbone_kwargs, restore_optimizer, optimizer, kwargs):
    raw = read_msn_checkpoint(path, online=True, optimizer=restore_optimizer)
    origin = os.path.abspath(path)

    def source(part, state=None):
        return ConvertedSource(ConvertedCheckpoint(
            msn_backbone_kwargs(part["backbone_state"]),
            part["backbone_state"] if state is None else state,
            {},
            key_names=part["key_names"],
            origin=origin,
        ))

    if raw["online"] is None:
        # A file with the EMA encoder only (no `encoder`): both branches start from it.
        raw["online"] = {k: raw[k] for k in ("backbone_state", "key_names", "head")}
    target = source(raw).load_backbone(ViTMSNBackbone, **backbone_kwargs)
    online = source(raw["online"]).load_backbone(ViTMSNBackbone, **backbone_kwargs)
    dtype = {"dtype": online.dtype_policy}
    if raw["online"]["head"]:
        kwargs.setdefault(
            "projection_head",
            MSNProjectionHead.from_pretraining_state(
                {"head": raw["online"]["head"]}, name="projection_head", **dtype
            ),
        )
    if raw["prototypes"] is not None:
        kwargs.setdefault(
            "prototypes",
            MSNPrototypes.from_pretraining_state(
                {"prototypes": raw["prototypes"]}, name="prototypes", **dtype
            ),
        )
    pretrainer = cls(online, target_encoder=target, **kwargs)
    if raw["head"]:
        pretrainer.target_projection_head.set_msn_weights(raw["head"])
    if restore_optimizer:
        _restore_original_optimizer(pretrainer, raw, source, optimizer)
    return pretrainer


def _restore_original_optimizer(pretrainer, raw, source, optimizer):
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
        pairs = [
            (variable, value)
            for variable, value in source(raw["online"], backbone)
            .convert_backbone(pretrainer.encoder)
            .values()
        ]
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

def save_to_preset(pretrainer, preset_dir, training_state=True):
    """See :meth:`MSNPretrainer.save_to_preset`."""
    save_preset_directory(preset_dir, lambda d: _write_preset(pretrainer, d, training_state))


def _write_preset(pretrainer, preset_dir, training_state):
    ops = keras.ops
    file_format.write_backbone(
        pretrainer.target_encoder,
        preset_dir,
        metadata={"msn_pretraining_steps": int(ops.convert_to_numpy(pretrainer.ema_steps))},
        # The EMA copy is frozen here; the exported backbone is a normal, trainable one.
        config_overrides={"name": pretrainer.encoder.name, "trainable": True},
    )
    converter = ViTMSNImageConverter(
        image_size=pretrainer.encoder.image_shape[:2], data_format=pretrainer.encoder.data_format
    )
    file_format.write_image_converter(converter, preset_dir)
    head = weights_by_relative_path(pretrainer.target_projection_head)
    _atomic_write(
        os.path.join(preset_dir, MSN_HEAD_FILE),
        lambda tmp: save_msn_pretraining_state(
            {
                "head": {k: ops.convert_to_numpy(v) for k, v in head.items()},
                "prototypes": ops.convert_to_numpy(pretrainer.prototypes.prototypes),
                "encoder": "target_encoder",
            },
            tmp,
        ),
    )
    state_path = os.path.join(preset_dir, TRAINING_STATE_FILE)
    if training_state:
        _atomic_write(state_path, lambda tmp: _write_training_state(pretrainer, tmp))
    elif os.path.exists(state_path):
        os.remove(state_path)  # a stale state would resume another run


def _training_variables(pretrainer):
    out = {f"encoder/{k}": v for k, v in weights_by_relative_path(pretrainer.encoder).items()}
    out.update(
        {f"projection_head/{k}": v
         for k, v in weights_by_relative_path(pretrainer.projection_head).items()}
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


def _read_training_state(path):
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != _FORMAT:
                raise ValueError(
                    f"{path} is not an MSN training state ({_FORMAT}); found format "
                    f"{f.attrs.get('format')!r}."
                )
            weights = {}
            f["weights"].visititems(
                lambda name, obj: weights.__setitem__(name, obj[()])
                if isinstance(obj, h5py.Dataset) else None
            )
            optimizer = None
            if "optimizer" in f:
                names = sorted(f["optimizer"])
                optimizer = {
                    "config": json.loads(f.attrs["optimizer"]),
                    "values": [f["optimizer"][n][()] for n in names],
                    "paths": [str(f["optimizer"][n].attrs["path"]) for n in names],
                }
            return {"settings": json.loads(f.attrs["settings"]), "weights": weights,
                    "optimizer": optimizer}
    except (OSError, KeyError) as e:
        raise CheckpointError(f"{path} is truncated or corrupted: {e}.") from e


def _from_training_state(cls, path, encoder, head, prototypes, restore_optimizer, optimizer, kwargs):
    state = _read_training_state(path)
    kwargs = {**state["settings"], **kwargs}
    # The preset's backbone is the target; the online encoder takes its name back.
    config = encoder.get_config()
    online = ViTMSNBackbone.from_config(config)
    target = ViTMSNBackbone.from_config({**config, "name": f"target_{config['name']}"})
    target.set_weights(encoder.get_weights())
    kwargs["projection_head"] = MSNProjectionHead.from_config(
        {**head.get_config(), "name": "projection_head"}
    )
    if "prototypes" not in kwargs:
        kwargs["prototypes"] = MSNPrototypes.from_config(
            {**prototypes.get_config(), "name": "prototypes"}
        )
        kwargs["prototypes"].prototypes.assign(prototypes.prototypes)
    pretrainer = cls(online, target_encoder=target, **kwargs)
    # The target head: the saved one (the constructor copied the online head).
    target_head = weights_by_relative_path(pretrainer.target_projection_head)
    for key, variable in weights_by_relative_path(head).items():
        target_head[key].assign(variable)
    _assign_all(_training_variables(pretrainer), state["weights"], path)
    if restore_optimizer:
        if state["optimizer"] is None:
            raise ValueError(f"{path} was saved before the pretrainer was compiled: no optimizer state.")
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
    return pretrainer


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
