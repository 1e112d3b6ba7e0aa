"""``export``: each format the backend supports, reloaded with its own runtime.

Every artefact is written without an ``input_signature`` (the model declares its
own), then run by TensorFlow (``tf.saved_model.load``), onnxruntime or
``torch.export.load`` at two batch sizes other than the one traced, and compared
with the Keras outputs. Formats a backend cannot write are skipped with the reason,
and ``test_unsupported_format_raises`` checks the error users get for them.
"""

import os

import keras
import numpy as np
import pytest
from helpers import BACKEND
from helpers import tiny_backbone
from helpers import to_numpy

import keras_vitmsn as kv
from keras_vitmsn import backend
from keras_vitmsn.models.export import EXPORT_FORMATS
from keras_vitmsn.models.export import supported_export_formats

TOL = 1e-5
FORMATS = ("tf_saved_model", "onnx", "torch")
KINDS = ("backbone", "classifier", "classifier_converter")
RUNTIMES = {"tf_saved_model": "tensorflow", "onnx": "onnxruntime", "torch": "torch"}


def randomize(model, seed=0):
    """Non-trivial weights (the zero-initialised tables would hide layout bugs)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.dtype == "float32":
            v.assign(rng.normal(0.0, 0.2, v.shape).astype("float32"))


def make_model(kind):
    backbone = tiny_backbone()
    if kind == "backbone":
        model = backbone
    else:
        converter = None
        if kind == "classifier_converter":
            converter = kv.ViTMSNImageConverter(image_size=(32, 32))
        model = kv.ViTMSNClassifier(backbone, num_classes=5, preprocessor=converter)
    randomize(model)
    return model


def images_for(kind, batch, seed):
    rng = np.random.default_rng(seed)
    if kind == "classifier_converter":
        return rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    return rng.standard_normal((batch, 32, 32, 3)).astype("float32")


def keras_output(model, x):
    out = model(x)
    if isinstance(out, dict):
        out = out["last_hidden_state"]
    return to_numpy(out)


def artefact_path(tmp_path, fmt):
    return str(tmp_path / {"onnx": "model.onnx", "torch": "model.pt2"}.get(fmt, "saved_model"))


def runner(fmt, path):
    """A function ``images -> first output`` running the artefact in its runtime."""
    if fmt == "tf_saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)  # referenced by `run`: it owns the variables

        def run(x):
            out = loaded.serve(tf.constant(x))
            return np.asarray(out["last_hidden_state"] if isinstance(out, dict) else out)

    elif fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        (spec,) = session.get_inputs()
        assert spec.name == "images"
        assert not isinstance(spec.shape[0], int), f"batch dimension is fixed: {spec.shape}"

        def run(x):
            return session.run(None, {"images": x})[0]

    else:
        import torch

        module = torch.export.load(path).module()

        def run(x):
            with torch.no_grad():
                out = module(torch.from_numpy(x))
            return (out["last_hidden_state"] if isinstance(out, dict) else out).numpy()

    return run


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_reloads_with_its_runtime(tmp_path, fmt, kind):
    if fmt not in supported_export_formats():
        pytest.skip(
            f"format={fmt!r} is not supported on the {BACKEND} backend "
            "(see test_unsupported_format_raises)"
        )
    pytest.importorskip(RUNTIMES[fmt], reason=f"reloading {fmt} needs {RUNTIMES[fmt]}")
    model = make_model(kind)
    path = artefact_path(tmp_path, fmt)
    model.export(path, format=fmt, verbose=False)
    run = runner(fmt, path)
    for batch, seed in ((3, 1), (1, 2)):  # neither is the batch size traced
        x = images_for(kind, batch, seed)
        expected = keras_output(model, x)
        got = run(x)
        assert got.shape == expected.shape
        diff = float(np.max(np.abs(got - expected)))
        assert diff <= TOL, f"{fmt} {kind} batch {batch}: max abs diff {diff:.2e} > {TOL}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_model_exports(tmp_path, fmt):
    if fmt not in supported_export_formats():
        pytest.skip(f"format={fmt!r} is not supported on the {BACKEND} backend")
    pytest.importorskip(RUNTIMES[fmt], reason=f"reloading {fmt} needs {RUNTIMES[fmt]}")
    model = make_model("classifier")
    model.quantize("int8")
    path = artefact_path(tmp_path, fmt)
    if fmt == "onnx" and BACKEND == "jax":
        with pytest.raises(ValueError, match="onnxruntime cannot run"):
            model.export(path, format=fmt)
        assert not os.path.exists(path)
        return
    model.export(path, format=fmt, verbose=False)
    x = images_for("classifier", 3, 4)
    diff = float(np.max(np.abs(runner(fmt, path)(x) - keras_output(model, x))))
    assert diff <= TOL, f"int8 {fmt}: max abs diff {diff:.2e}"


@pytest.mark.parametrize(
    "fmt", sorted(set(FORMATS + ("openvino", "litert")) - set(supported_export_formats()))
)
def test_unsupported_format_raises(tmp_path, fmt):
    model = make_model("classifier")
    path = artefact_path(tmp_path, fmt)
    with pytest.raises(ValueError, match=f"format='{fmt}'") as info:
        model.export(path, format=fmt)
    for supported in supported_export_formats():
        assert supported in str(info.value)
    assert not os.path.exists(path), "nothing must be written before the error"


def test_export_input_signature():
    backbone = tiny_backbone()
    (spec,) = backbone.export_input_signature()
    assert (tuple(spec.shape), spec.dtype, spec.name) == ((None, 32, 32, 3), "float32", "images")
    first = tiny_backbone(data_format="channels_first")
    assert tuple(first.export_input_signature()[0].shape) == (None, 3, 32, 32)

    clf = kv.ViTMSNClassifier(tiny_backbone(), num_classes=2)
    assert tuple(clf.export_input_signature()[0].shape) == (None, 32, 32, 3)
    converter = kv.ViTMSNImageConverter(image_size=(64, 48))
    clf = kv.ViTMSNClassifier(
        tiny_backbone(), num_classes=2, preprocessor=converter, interpolate_pos_encoding=True
    )
    (spec,) = clf.export_input_signature()
    # Raw pixels at the converter's size: the exported graph does no resizing.
    assert (tuple(spec.shape), spec.dtype) == ((None, 64, 48, 3), "uint8")


def test_onnx_needs_float32(tmp_path):
    if "onnx" not in supported_export_formats():
        pytest.skip(f"no ONNX export on {BACKEND}")
    model = tiny_backbone(dtype="mixed_bfloat16")
    with pytest.raises(ValueError, match="float32 dtype policy"):
        model.export(str(tmp_path / "m.onnx"), format="onnx")


def test_formats_table_covers_every_backend():
    assert set(EXPORT_FORMATS) == {"jax", "tensorflow", "torch"}
    assert supported_export_formats() == EXPORT_FORMATS[keras.backend.backend()]
    assert EXPORT_FORMATS is backend.EXPORT_FORMATS
