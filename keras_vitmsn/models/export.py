"""``model.export`` for ViT-MSN models: a declared input signature, a dynamic batch
dimension, and the formats each backend can write checked before any work is done.

What each backend writes (each one reloaded with its own runtime and compared with
the Keras outputs in ``tests/test_export.py``):

- ``"tf_saved_model"`` (Keras' default): TensorFlow natively, JAX through jax2tf.
  Keras writes it from torch through torch_xla, which is built for one torch release
  at a time, and Keras 3.15's torch path fails inside ``torch.export`` (its dynamic
  batch spec does not match the inputs' structure); it is not offered on torch.
- ``"onnx"``: tf2onnx (TensorFlow), jax2onnx (JAX), torch.onnx (torch).
- ``"torch"``: ``torch.export`` (``.pt2``), torch backend only.

``"openvino"`` and ``"litert"`` are Keras formats this package does not test, so
they are refused with the list above rather than attempted.
"""

import contextlib
import os
import tempfile

import keras

from keras_vitmsn.backend.keras_internals import all_layers
from keras_vitmsn.layers.activations import erfc_gelu_on_jax

EXPORT_FORMATS = {
    "tensorflow": ("tf_saved_model", "onnx"),
    "jax": ("tf_saved_model", "onnx"),
    "torch": ("onnx", "torch"),
}
INPUT_NAME = "images"


def supported_export_formats(backend=None):
    """The ``export`` formats ViT-MSN models support on ``backend`` (default: the
    running one).

    Example:
    >>> supported_export_formats("torch")
    ('onnx', 'torch')
    """
    return EXPORT_FORMATS.get(backend or keras.backend.backend(), ())


def check_export_format(format, backend=None):
    """Raise a ValueError naming the supported formats if ``format`` is not one."""
    backend = backend or keras.backend.backend()
    supported = supported_export_formats(backend)
    if format in supported:
        return
    by_backend = "; ".join(f"{b}: {', '.join(f)}" for b, f in EXPORT_FORMATS.items())
    raise ValueError(
        f"ViT-MSN models cannot be exported with format={format!r} on the {backend!r} "
        f"backend. Supported on {backend!r}: {', '.join(supported) or 'none'} "
        f"(by backend: {by_backend}). Switch backends with the KERAS_BACKEND "
        "environment variable to write another format."
    )


def _batch_dim_torch():
    import torch

    return torch.export.Dim("batch", min=1)


def _export_onnx_torch(model, filepath, input_signature, verbose=None, opset_version=None):
    """ONNX from torch with a dynamic batch, through torch.onnx's dynamo exporter.

    Keras' own torch ONNX path hands inputs with a dynamic dimension to the
    TorchScript exporter, which cannot trace Keras' LayerNormalization: it passes
    ``x.shape[-1]`` as ``normalized_shape``, a traced value where ONNX needs a
    constant. The dynamo exporter (``torch.export`` underneath) keeps the batch
    symbolic and everything else static.
    """
    import torch

    specs = list(input_signature)
    # Batch 2, not 1: torch.export specialises size-1 dimensions to constants.
    samples = tuple(
        keras.ops.zeros([2 if d is None else d for d in spec.shape], dtype=spec.dtype)
        for spec in specs
    )
    names = [getattr(spec, "name", None) or f"input_{i}" for i, spec in enumerate(specs)]
    batch = _batch_dim_torch()
    dynamic = [{0: batch} if spec.shape[0] is None else None for spec in specs]
    model.eval()
    program = torch.onnx.export(
        model,
        samples,
        dynamo=True,
        # Keras models take `*args`: one entry for the whole positional tuple.
        dynamic_shapes=[tuple(dynamic)],
        input_names=names,
        opset_version=opset_version,
        verbose=bool(verbose),
    )
    # Written next to the target, then renamed: no half-written file on failure.
    folder, name = os.path.split(os.path.abspath(os.fspath(filepath)))
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".onnx", dir=folder)
    os.close(handle)
    try:
        program.save(tmp)
        os.replace(tmp, filepath)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if verbose is None or verbose:
        print(f"Saved artifact at '{filepath}'.")


class ExportMixin:
    """``export`` with a default input signature and per-backend format checks.

    Subclasses implement :meth:`export_input_signature`.
    """

    def export_input_signature(self):
        """The ``input_signature`` ``export`` uses when none is given."""
        raise NotImplementedError

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """Export the model for inference (see ``keras.Model.export``).

        The input signature defaults to :meth:`export_input_signature`: one input
        named ``"images"``, a dynamic batch dimension and the model's declared image
        size. Formats by backend: ``"tf_saved_model"`` and ``"onnx"`` on TensorFlow
        and JAX, ``"onnx"`` and ``"torch"`` on torch; any other combination raises a
        ValueError listing them, before anything is traced or written. ONNX export
        needs the float32 dtype policy (a Keras requirement). Quantised models
        export too, except int8/int4 ones to ONNX from JAX (onnxruntime cannot run
        the int8 Einsum nodes jax2onnx writes): that raises a ValueError as well.

        Args:
            filepath: where to write the artefact (a ``.pt2`` file for "torch").
            format: "tf_saved_model", "onnx" or "torch".
            verbose: bool, print a message when done.
            input_signature: optional list of ``keras.InputSpec``.
            **kwargs: passed to Keras' exporter for that format.

        Example (the README's "Deploy" section reloads an export):
        >>> import keras_vitmsn as kv
        >>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8,
        ...     hidden_dim=32, num_layers=1, num_heads=4, intermediate_dim=64)
        >>> spec, = backbone.export_input_signature()
        >>> spec.shape, spec.dtype, spec.name
        ((None, 32, 32, 3), 'float32', 'images')
        >>> backbone.export("model", format="openvino")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ViT-MSN models cannot be exported with format='openvino' ...
        """
        check_export_format(format)
        if format == "onnx":
            self._check_onnx_dtypes()
            self._check_onnx_quantization()
        if input_signature is None:
            input_signature = self.export_input_signature()
        if keras.backend.backend() == "torch":
            if format == "onnx":
                unknown = sorted(set(kwargs) - {"opset_version"})
                if unknown:
                    raise ValueError(
                        f"Unsupported arguments for format='onnx' on torch: "
                        f"{', '.join(unknown)}. Supported: opset_version."
                    )
                return _export_onnx_torch(self, filepath, input_signature, verbose, **kwargs)
            if format == "torch" and "dynamic_shapes" not in kwargs:
                if len(input_signature) == 1 and input_signature[0].shape[0] is None:
                    kwargs["dynamic_shapes"] = {0: _batch_dim_torch()}
        scope = contextlib.nullcontext()
        if keras.backend.backend() == "jax" and format == "tf_saved_model":
            scope = erfc_gelu_on_jax()  # TensorFlow may not read JAX's erf (see there)
        with scope:
            return super().export(
                filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs
            )

    def _check_onnx_dtypes(self):
        wrong = sorted(
            {
                layer.compute_dtype
                for layer in all_layers(self)
                if layer.compute_dtype != "float32"
            }
        )
        if wrong:
            raise ValueError(
                "ONNX export needs the float32 dtype policy; this model computes in "
                f"{', '.join(wrong)}. Rebuild it with dtype='float32' (e.g. "
                "from_preset(..., dtype='float32')) to export to ONNX."
            )

    def _check_onnx_quantization(self):
        modes = {layer.quantization_mode for layer in all_layers(self)} - {None}
        if keras.backend.backend() == "jax" and modes & {"int8", "int4"}:
            raise ValueError(
                "This model is quantised (int8 weights and activations); jax2onnx writes "
                "its int8 products as ONNX Einsum nodes on int8 inputs, which "
                "onnxruntime cannot run. Save it (model.save('model.keras')) and export "
                "it to ONNX under the torch or tensorflow backend, or use "
                "format='tf_saved_model' here."
            )
