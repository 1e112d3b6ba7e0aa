"""oneDNN's GEMM on torch (keras_vitmsn/backend/torch_gemm.py, behind backend.matmul_add):
the same values and gradients as ``addmm``, chosen only where it should be, never while
torch traces."""

import keras
import numpy as np
import pytest
from helpers import BACKEND

from keras_vitmsn.backend import calibration
from keras_vitmsn.backend import torch_gemm

torch = pytest.importorskip("torch")
needs_op = pytest.mark.skipif(
    torch_gemm._op() is None, reason="this torch has no mkldnn._linear_pointwise"
)
torch_backend = pytest.mark.skipif(BACKEND != "torch", reason="the torch backend's Dense")


def _leaves(gen, *shapes):
    return [
        torch.randn(*s, generator=gen, dtype=torch.float64).float().requires_grad_() for s in shapes
    ]


def _forward_backward(fn, leaves, upstream):
    for t in leaves:
        t.grad = None
    out = fn(*leaves)
    out.backward(upstream)
    return out.detach(), [None if t.grad is None else t.grad.clone() for t in leaves]


@needs_op
@pytest.mark.parametrize("rows, d_in, d_out", [(7, 5, 3), (394, 24, 72)])
def test_linear_equals_addmm_in_values_and_gradients(rows, d_in, d_out):
    gen = torch.Generator().manual_seed(0)
    x, kernel, bias = _leaves(gen, (rows, d_in), (d_in, d_out), (d_out,))
    # A transposed (non-contiguous) upstream gradient, as autograd hands over after
    # a reshape or transpose further up.
    upstream = torch.randn(d_out, rows, generator=gen).t()
    out, grads = _forward_backward(torch_gemm.linear, [x, kernel, bias], upstream)
    ref, ref_grads = _forward_backward(torch.addmm, [bias, x, kernel], upstream)
    ref_grads = [ref_grads[1], ref_grads[2], ref_grads[0]]
    assert out.shape == ref.shape == (rows, d_out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@needs_op
def test_linear_computes_only_the_gradients_asked_for():
    gen = torch.Generator().manual_seed(1)
    kernel, bias = _leaves(gen, (4, 3), (3,))
    x = torch.randn(5, 4, generator=gen)  # e.g. the image patches: no gradient
    torch_gemm.linear(x, kernel, None).sum().backward()
    assert x.grad is None and bias.grad is None
    torch.testing.assert_close(kernel.grad, x.t() @ torch.ones(5, 3))
    with torch.no_grad():
        assert torch_gemm.linear(x, kernel, bias).grad_fn is None


def test_the_switch_takes_three_values_and_refuses_others(monkeypatch):
    monkeypatch.delenv(torch_gemm.SWITCH, raising=False)
    assert torch_gemm.requested() == "auto"
    monkeypatch.setenv(torch_gemm.SWITCH, " oneDNN ")
    assert torch_gemm.requested() == "onednn"
    monkeypatch.setenv(torch_gemm.SWITCH, "addmm")
    assert torch_gemm.requested() == "addmm" and not torch_gemm.enabled()
    monkeypatch.setenv(torch_gemm.SWITCH, "mkl")
    with pytest.raises(ValueError, match=r"KERAS_VITMSN_TORCH_CPU_GEMM='mkl'.*auto.*onednn.*addmm"):
        torch_gemm.requested()


@pytest.fixture
def fresh_choice():
    """The GEMM choice made again in the test and once more after it, so what the test
    patched does not stay behind in this process."""
    calibration.clear_memory()
    torch_gemm._auto_prefers_onednn.cache_clear()
    yield
    calibration.clear_memory()
    torch_gemm._auto_prefers_onednn.cache_clear()


def test_auto_follows_the_measurement_on_this_machine_not_the_vendor(
    monkeypatch, tmp_path, fresh_choice
):
    monkeypatch.delenv(torch_gemm.SWITCH, raising=False)
    monkeypatch.setenv(calibration.LOCATION, str(tmp_path / "calibration.json"))
    if torch_gemm._op() is None:
        pytest.skip("this torch has no mkldnn._linear_pointwise")
    for winner in ("addmm", "onednn", "addmm"):
        calibration.clear_memory()
        torch_gemm._auto_prefers_onednn.cache_clear()
        (tmp_path / "calibration.json").unlink(missing_ok=True)
        monkeypatch.setattr(torch_gemm, "_measure", lambda winner=winner: winner)
        assert torch_gemm.enabled() == (winner == "onednn")
    # Remembered: a new process (memory cleared) reads the file and does not measure.
    calibration.clear_memory()
    torch_gemm._auto_prefers_onednn.cache_clear()
    monkeypatch.setattr(torch_gemm, "_measure", lambda: pytest.fail("measured again"))
    assert not torch_gemm.enabled()
    torch_gemm._auto_prefers_onednn.cache_clear()
    calibration.clear_memory()
    monkeypatch.setenv(torch_gemm.SWITCH, "onednn")
    assert torch_gemm.enabled()


@needs_op
def test_the_measurement_times_both_kernels_on_the_projection_shape(monkeypatch):
    timed = []

    def fastest(kernels, **kwargs):
        for name, run in kernels.items():
            timed.append((name, tuple(run().shape)))
        return "addmm"

    monkeypatch.setattr(calibration, "fastest", fastest)
    assert torch_gemm._measure() == "addmm"
    rows, _, d_out = torch_gemm.CALIBRATION_SHAPE
    assert timed == [("addmm", (rows, d_out)), ("onednn", (rows, d_out))]


def test_a_torch_without_the_op_falls_back(monkeypatch):
    monkeypatch.setenv(torch_gemm.SWITCH, "onednn")
    monkeypatch.setattr(torch_gemm, "_op", lambda: None)
    assert not torch_gemm.enabled()
    x, kernel = torch.ones(2, 3), torch.ones(3, 4)
    assert not torch_gemm.applies(x, kernel, None)


@needs_op
def test_applies_only_to_plain_float32_cpu_tensors(monkeypatch):
    monkeypatch.setenv(torch_gemm.SWITCH, "onednn")
    x, kernel, bias = torch.ones(2, 3), torch.ones(3, 4), torch.ones(4)
    assert torch_gemm.applies(x, kernel, bias)
    assert torch_gemm.applies(x, torch.nn.Parameter(kernel), None)
    assert not torch_gemm.applies(x.double(), kernel.double(), bias.double())
    assert not torch_gemm.applies(x.bfloat16(), kernel.bfloat16(), bias.bfloat16())
    assert not torch_gemm.applies(x.to("meta"), kernel.to("meta"), bias.to("meta"))
    assert not torch_gemm.applies(x[0], kernel, bias)
    assert not torch_gemm.applies(x[:0], kernel, bias)  # oneDNN refuses empty GEMMs
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (x, kernel, bias)]
        assert not torch_gemm.applies(*fake)


@needs_op
def test_export_traces_addmm_where_eager_runs_onednn(monkeypatch):
    monkeypatch.setenv(torch_gemm.SWITCH, "onednn")
    calls = []
    linear = torch_gemm.linear
    monkeypatch.setattr(torch_gemm, "linear", lambda *a: calls.append(1) or linear(*a))

    class Projection(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.kernel = torch.nn.Parameter(torch.randn(3, 4))
            self.bias = torch.nn.Parameter(torch.randn(4))

        def forward(self, x):
            if torch_gemm.applies(x, self.kernel, self.bias):
                return torch_gemm.linear(x, self.kernel, self.bias)
            return torch.addmm(self.bias, x, self.kernel)

    module, x = Projection(), torch.randn(2, 3)
    eager = module(x)
    assert calls == [1]
    exported = torch.export.export(module, (x,))
    targets = " ".join(str(node.target) for node in exported.graph.nodes)
    assert "addmm" in targets and "mkldnn" not in targets
    torch.testing.assert_close(exported.module()(x), eager, rtol=1e-5, atol=1e-5)


@needs_op
@torch_backend
def test_a_backbone_trains_the_same_on_onednn_and_addmm(monkeypatch):
    import keras_vitmsn as kv

    calls = []
    linear = torch_gemm.linear
    monkeypatch.setattr(torch_gemm, "linear", lambda *a: calls.append(1) or linear(*a))
    images = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    backbone = kv.ViTMSNBackbone(
        image_shape=(16, 16, 3),
        patch_size=8,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
    )
    results = {}
    for choice in ("addmm", "onednn"):
        monkeypatch.setenv(torch_gemm.SWITCH, choice)
        calls.clear()
        for v in backbone.trainable_variables:
            v.value.grad = None
        out = backbone(images)["last_hidden_state"]
        (out * out).mean().backward()
        results[choice] = (
            out.detach(),
            [v.value.grad.clone() for v in backbone.trainable_variables],
        )
        # 1 patch projection + 4 per block (qkv, output, 2 MLP) on oneDNN, none on addmm
        assert len(calls) == (0 if choice == "addmm" else 1 + 4 * 2)
    torch.testing.assert_close(results["onednn"][0], results["addmm"][0], rtol=1e-5, atol=1e-5)
    for got, want in zip(results["onednn"][1], results["addmm"][1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_command_line_refuses_a_bad_switch_before_any_work(monkeypatch, capsys, tmp_path):
    from keras_vitmsn.cli import main

    monkeypatch.setenv(torch_gemm.SWITCH, "fast")
    output = tmp_path / "converted"
    assert main(["convert", "--source", str(tmp_path), "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: KERAS_VITMSN_TORCH_CPU_GEMM='fast'")
    assert not output.exists()
