"""MSN projection head and prototypes: structure, config, and loading released state."""

import math

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers reference needs torch")

from checkpoint_helpers import write_msn_checkpoint
from helpers import max_abs_diff
from helpers import to_numpy

import keras_vitmsn as kv
from keras_vitmsn import msn
from keras_vitmsn.msn.head_state import save_msn_pretraining_state


def head_state(rng, input_dim=24, hidden=32, out=16, batch_norm=True):
    """A random state in load_msn_pretraining_state's layout (Dense kernels (in, out))."""

    def rand(*shape):
        return (0.1 * rng.standard_normal(shape)).astype("float32")

    state = {}
    for name, (fan_in, fan_out) in {
        "fc1": (input_dim, hidden),
        "fc2": (hidden, hidden),
        "fc3": (hidden, out),
    }.items():
        state[f"{name}/kernel"] = rand(fan_in, fan_out)
        state[f"{name}/bias"] = rand(fan_out)
    if batch_norm:
        for name in ("bn1", "bn2"):
            state[f"{name}/gamma"] = 1.0 + rand(hidden)
            state[f"{name}/beta"] = rand(hidden)
            state[f"{name}/moving_mean"] = rand(hidden)
            state[f"{name}/moving_variance"] = 1.0 + np.abs(rand(hidden))
    return state


def pretraining_state(rng, num_prototypes=20, **kwargs):
    head = head_state(rng, **kwargs)
    out = head["fc3/kernel"].shape[1]
    return {
        "head": head,
        "prototypes": rng.uniform(-0.2, 0.2, (num_prototypes, out)).astype("float32"),
        "batchnorm_epsilon": 1e-5,
        "batchnorm_momentum": 0.9,
        "activation": "gelu",
        "encoder": "target_encoder",
        "epoch": 3,
    }


def numpy_head(state, x, eps=1e-5):
    """fc1 -> bn1 -> GELU -> fc2 -> bn2 -> GELU -> fc3, inference mode, in float64."""
    from scipy.special import erf

    def gelu(v):
        return 0.5 * v * (1.0 + erf(v / math.sqrt(2.0)))

    def bn(v, name):
        if f"{name}/gamma" not in state:
            return v
        return (v - state[f"{name}/moving_mean"]) / np.sqrt(
            state[f"{name}/moving_variance"] + eps
        ) * state[f"{name}/gamma"] + state[f"{name}/beta"]

    x = np.asarray(x, np.float64)
    x = gelu(bn(x @ state["fc1/kernel"] + state["fc1/bias"], "bn1"))
    x = gelu(bn(x @ state["fc2/kernel"] + state["fc2/bias"], "bn2"))
    return x @ state["fc3/kernel"] + state["fc3/bias"]


def torch_head(state):
    """The original's head (nn.Sequential of Linear/BatchNorm1d/GELU) from the state."""
    modules = []
    for name in ("fc1", "bn1", "g", "fc2", "bn2", "g", "fc3"):
        if name.startswith("fc"):
            kernel = state[f"{name}/kernel"]
            m = torch.nn.Linear(*kernel.shape)
            m.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.T))
            m.bias.data = torch.from_numpy(state[f"{name}/bias"])
        elif name.startswith("bn"):
            if f"{name}/gamma" not in state:
                continue  # a head trained with use_bn=False
            m = torch.nn.BatchNorm1d(state[f"{name}/gamma"].shape[0])
            m.weight.data = torch.from_numpy(state[f"{name}/gamma"])
            m.bias.data = torch.from_numpy(state[f"{name}/beta"])
            m.running_mean.data = torch.from_numpy(state[f"{name}/moving_mean"].copy())
            m.running_var.data = torch.from_numpy(state[f"{name}/moving_variance"].copy())
        else:
            m = torch.nn.GELU()
        modules.append(m)
    return torch.nn.Sequential(*modules)


# -- structure and config ------------------------------------------------------------------


def test_defaults_are_the_papers_head():
    head = msn.MSNProjectionHead(input_dim=384)
    assert [l.name for l in (head.fc1, head.bn1, head.fc2, head.bn2, head.fc3)] == [
        "fc1",
        "bn1",
        "fc2",
        "bn2",
        "fc3",
    ]
    assert (head.fc1.units, head.fc2.units, head.fc3.units) == (2048, 2048, 256)
    assert (head.bn1.epsilon, head.bn1.momentum) == (1e-5, 0.9)
    expected = (384 * 2048 + 2048) + (2048 * 2048 + 2048) + (2048 * 256 + 256) + 2 * 4 * 2048
    assert head.count_params() == expected
    # Original init: Dense truncated normal(0.02) (Keras' truncation at 2 std gives a
    # std of 0.88 * 0.02), zero biases.
    kernel = to_numpy(head.fc2.kernel)
    assert abs(kernel.std() - 0.02 * 0.88) < 0.002
    assert not np.any(to_numpy(head.fc1.bias))
    protos = msn.MSNPrototypes()
    assert tuple(protos.prototypes.shape) == (1024, 256)
    values = to_numpy(protos.prototypes)
    assert np.abs(values).max() <= 1 / 16 and values.std() > 0.03  # uniform(+-1/sqrt(256))


def test_lazy_build_and_shapes(rng):
    head = msn.MSNProjectionHead(hidden_dim=32, output_dim=8)
    assert not head.built
    out = head(rng.standard_normal((5, 12)).astype("float32"))
    assert tuple(out.shape) == (5, 8) and head.input_dim == 12
    with pytest.raises(ValueError, match="takes 12-dimensional features"):
        head(rng.standard_normal((5, 13)).astype("float32"))
    scores = msn.MSNPrototypes(6, 8)(out)
    assert tuple(scores.shape) == (5, 6) and np.abs(to_numpy(scores)).max() <= 1.0 + 1e-6


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {
            "use_batch_norm": False,
            "input_dim": 12,
            "hidden_dim": 16,
            "output_dim": 4,
            "batchnorm_epsilon": 1e-3,
        },
    ],
)
def test_config_round_trip(kwargs):
    head = msn.MSNProjectionHead(name="h", **kwargs)
    clone = msn.MSNProjectionHead.from_config(head.get_config())
    assert clone.get_config() == head.get_config()
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    assert isinstance(revived, msn.MSNProjectionHead) and revived.get_config() == head.get_config()
    protos = msn.MSNPrototypes(7, 3, name="p")
    assert msn.MSNPrototypes.from_config(protos.get_config()).get_config() == protos.get_config()


def test_dtype_policy_reaches_sublayers(rng):
    head = msn.MSNProjectionHead(hidden_dim=16, output_dim=4, input_dim=8, dtype="mixed_bfloat16")
    assert all(l.dtype_policy.name == "mixed_bfloat16" for l in (head.fc1, head.bn1, head.fc3))
    assert head.fc1.kernel.dtype == "float32"
    assert (
        keras.backend.standardize_dtype(head(rng.standard_normal((2, 8)).astype("float32")).dtype)
        == "bfloat16"
    )


def test_save_and_load_in_a_keras_file(tmp_path, rng):
    head = msn.MSNProjectionHead(hidden_dim=16, output_dim=4, input_dim=8)
    model = keras.Sequential([keras.Input((8,)), head])
    x = rng.standard_normal((3, 8)).astype("float32")
    path = str(tmp_path / "head.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert max_abs_diff(reloaded(x), to_numpy(model(x))) <= 1e-6


def test_batch_norm_trains_on_batch_statistics(rng):
    head = msn.MSNProjectionHead(hidden_dim=16, output_dim=4, input_dim=8)
    x = 3.0 + rng.standard_normal((32, 8)).astype("float32")
    before = to_numpy(head.bn1.moving_mean).copy()
    head(x, training=True)
    assert np.abs(to_numpy(head.bn1.moving_mean) - before).max() > 1e-4
    head_no_bn = msn.MSNProjectionHead(
        hidden_dim=16, output_dim=4, input_dim=8, use_batch_norm=False
    )
    assert head_no_bn.bn1 is None and len(head_no_bn.weights) == 6


# -- loading released state ----------------------------------------------------------------


@pytest.mark.parametrize("batch_norm", [True, False])
def test_from_state_matches_numpy_and_torch(rng, batch_norm):
    state = pretraining_state(rng, batch_norm=batch_norm)
    head, protos = msn.head_and_prototypes_from_state(state)
    assert (head.input_dim, head.hidden_dim, head.output_dim, head.use_batch_norm) == (
        24,
        32,
        16,
        batch_norm,
    )
    np.testing.assert_array_equal(to_numpy(protos.prototypes), state["prototypes"])
    np.testing.assert_array_equal(to_numpy(head.fc2.kernel), state["head"]["fc2/kernel"])
    x = rng.standard_normal((6, 24)).astype("float32")
    got = head(x, training=False)
    assert max_abs_diff(got, numpy_head(state["head"], x)) <= 1e-5
    with torch.no_grad():
        expected = torch_head(state["head"]).eval()(torch.from_numpy(x)).numpy()
    assert max_abs_diff(got, expected) <= 1e-5
    if batch_norm:
        # Training mode: batch statistics and the same moving-average update as torch.
        train_x = rng.standard_normal((16, 24)).astype("float32")
        torch_model = torch_head(state["head"]).train()
        with torch.no_grad():
            expected = torch_model(torch.from_numpy(train_x)).numpy()
        # torch normalises with the biased batch variance and updates its running
        # variance with the unbiased one (Keras' BatchNormalization: biased for both).
        assert max_abs_diff(head(train_x, training=True), expected) <= 1e-5
        for bn, torch_bn in ((head.bn1, torch_model[1]), (head.bn2, torch_model[4])):
            assert max_abs_diff(bn.moving_mean, torch_bn.running_mean.numpy()) <= 1e-6
            assert max_abs_diff(bn.moving_variance, torch_bn.running_var.numpy()) <= 1e-6
        # A frozen head (MSN's EMA target) in torch's training mode: batch statistics
        # and its own running statistics updated, as the original's no_grad forward.
        target = msn.MSNProjectionHead.from_pretraining_state(state)
        target.trainable = False
        frozen_model = torch_head(state["head"]).train()
        with torch.no_grad():
            expected = frozen_model(torch.from_numpy(train_x)).numpy()
        got = target(train_x, training=True, use_batch_statistics=True)
        assert max_abs_diff(got, expected) <= 1e-5
        assert max_abs_diff(target.bn2.moving_variance, frozen_model[4].running_var.numpy()) <= 1e-6
        # Frozen and training=True without use_batch_statistics: Keras' inference mode.
        before = to_numpy(target.bn1.moving_mean).copy()
        target(train_x, training=True)
        np.testing.assert_array_equal(to_numpy(target.bn1.moving_mean), before)


def test_from_files(tmp_path, rng):
    state = pretraining_state(rng)
    h5 = tmp_path / "msn_head.weights.h5"
    save_msn_pretraining_state(state, str(h5))
    for source in (str(h5), str(tmp_path)):  # the file, or a preset directory holding it
        head, protos = msn.head_and_prototypes_from_state(source)
        for key, value in state["head"].items():
            layer, param = key.split("/")
            np.testing.assert_array_equal(to_numpy(getattr(getattr(head, layer), param)), value)
        np.testing.assert_array_equal(to_numpy(protos.prototypes), state["prototypes"])

    # An original .pth.tar: torch names and layout, through kv.load_msn_pretraining_state.
    encoder = {}
    for key, value in state["head"].items():
        layer, param = key.split("/")
        torch_param = {
            "kernel": "weight",
            "bias": "bias",
            "gamma": "weight",
            "beta": "bias",
            "moving_mean": "running_mean",
            "moving_variance": "running_var",
        }[param]
        encoder[f"module.fc.{layer}.{torch_param}"] = value.T.copy() if param == "kernel" else value
    path = str(tmp_path / "msn.pth.tar")
    prototypes = write_msn_checkpoint(path, encoder, rng, num_prototypes=12, prototype_dim=16)
    loaded = kv.load_msn_pretraining_state(path)
    head = msn.MSNProjectionHead.from_pretraining_state(loaded)
    protos = msn.MSNPrototypes.from_pretraining_state(path)
    x = rng.standard_normal((4, 24)).astype("float32")
    assert max_abs_diff(head(x, training=False), numpy_head(state["head"], x)) <= 1e-5
    np.testing.assert_array_equal(to_numpy(protos.prototypes), prototypes)


def test_loading_into_an_existing_head(rng):
    state = pretraining_state(rng)
    head = msn.MSNProjectionHead(hidden_dim=32, output_dim=16)
    head.set_msn_weights(state["head"])  # builds from fc1's shape
    assert head.input_dim == 24
    protos = msn.MSNPrototypes(20, 16)
    protos.set_msn_weights(state["prototypes"])
    np.testing.assert_array_equal(to_numpy(protos.prototypes), state["prototypes"])


def test_loading_errors(rng):
    state = pretraining_state(rng)
    with pytest.raises(
        ValueError, match=r"shape mismatches \['fc1/kernel: state \(24, 32\), head \(10, 32\)"
    ):
        msn.MSNProjectionHead(hidden_dim=32, output_dim=16, input_dim=10).set_msn_weights(
            state["head"]
        )
    broken = dict(state["head"])
    del broken["fc2/bias"]
    with pytest.raises(ValueError, match=r"missing \['fc2/bias'\]"):
        msn.MSNProjectionHead.from_pretraining_state({"head": broken})
    with pytest.raises(ValueError, match="build with use_batch_norm=True"):
        msn.MSNProjectionHead(hidden_dim=32, output_dim=16, use_batch_norm=False).set_msn_weights(
            state["head"]
        )
    no_bn = head_state(rng, batch_norm=False)
    with pytest.raises(ValueError, match="build with use_batch_norm=False"):
        msn.MSNProjectionHead(hidden_dim=32, output_dim=16).set_msn_weights(no_bn)
    with pytest.raises(ValueError, match="no projection head"):
        msn.MSNProjectionHead.from_pretraining_state(
            {"head": None, "prototypes": state["prototypes"]}
        )
    with pytest.raises(ValueError, match="no prototypes"):
        msn.MSNPrototypes.from_pretraining_state({"head": state["head"], "prototypes": None})
    with pytest.raises(ValueError, match=r"\(20, 16\) do not fit this layer \(1024, 256\)"):
        msn.MSNPrototypes().set_msn_weights(state["prototypes"])
    mismatch = dict(state, prototypes=state["prototypes"][:, :8])
    with pytest.raises(ValueError, match="outputs 16 features but the prototypes have 8"):
        msn.head_and_prototypes_from_state(mismatch)
    with pytest.raises(ValueError, match="positive int"):
        msn.MSNProjectionHead(hidden_dim=0)
    with pytest.raises(FileNotFoundError):
        msn.head_and_prototypes_from_state("/nonexistent/msn_head.weights.h5")
