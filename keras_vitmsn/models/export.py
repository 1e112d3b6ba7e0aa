"""``model.export`` for ViT-MSN models: a declared input signature, a dynamic batch
dimension, and the formats each backend can write checked before any work is done.

The formats by backend, and how each backend writes them, are the backend seam's
(``keras_vitmsn.backend.EXPORT_FORMATS`` and ``backend.export``); each is reloaded
with its own runtime in ``tests/test_export.py``. ``"openvino"`` and ``"litert"`` are
Keras formats this package does not test, so they are refused rather than attempted.
"""

from keras_vitmsn import backend
from keras_vitmsn.backend.keras_internals import all_layers

EXPORT_FORMATS = backend.EXPORT_FORMATS
INPUT_NAME = "images"


def supported_export_formats(backend_name=None):
    """The ``export`` formats ViT-MSN models support on ``backend_name`` (default:
    the running backend).

    Example:
    >>> supported_export_formats("torch")
    ('onnx', 'torch')
    """
    return EXPORT_FORMATS.get(backend_name or backend.NAME, ())


def check_export_format(format, backend_name=None):
    """Raise a ValueError naming the supported formats if ``format`` is not one."""
    backend_name = backend_name or backend.NAME
    supported = supported_export_formats(backend_name)
    if format in supported:
        return
    by_backend = "; ".join(f"{b}: {', '.join(f)}" for b, f in EXPORT_FORMATS.items())
    raise ValueError(
        f"ViT-MSN models cannot be exported with format={format!r} on the "
        f"{backend_name!r} backend. Supported on {backend_name!r}: "
        f"{', '.join(supported) or 'none'} (by backend: {by_backend}). Switch backends "
        "with the KERAS_BACKEND environment variable to write another format."
    )


class ExportMixin:
    """``export`` with a default input signature and per-backend format checks.

    Subclasses implement :meth:`export_input_signature`.
    """

    def export_input_signature(self):
        """The ``input_signature`` ``export`` uses when none is given."""
        raise NotImplementedError

    def export(
        self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs
    ):
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

        Example (``docs/deploy.md`` reloads each format):
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
        return backend.export(
            super().export, self, filepath, format, verbose, input_signature, **kwargs
        )

    def _check_onnx_dtypes(self):
        wrong = sorted(
            {layer.compute_dtype for layer in all_layers(self) if layer.compute_dtype != "float32"}
        )
        if wrong:
            raise ValueError(
                "ONNX export needs the float32 dtype policy; this model computes in "
                f"{', '.join(wrong)}. Rebuild it with dtype='float32' (e.g. "
                "from_preset(..., dtype='float32')) to export to ONNX."
            )

    def _check_onnx_quantization(self):
        modes = {layer.quantization_mode for layer in all_layers(self)} - {None}
        backend.check_onnx_quantization(modes)
