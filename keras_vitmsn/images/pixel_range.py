"""What pixel values an image's dtype means, for :class:`ViTMSNImageConverter`.

uint8 and uint16 images say what white is (255, 65535); float and other integer
images do not, so the converter takes their range from its ``input_range`` and
checks eager inputs against it: images in [0, 1] passed as if in [0, 255] would
otherwise be normalised silently wrong.

Example:
>>> import numpy as np
>>> dtype_of(np.zeros((2, 2), "uint16")), DTYPE_RANGES["uint16"]
('uint16', (0.0, 65535.0))
>>> check_input_range((0, 1))
(0.0, 1.0)
"""

import math

import keras
import numpy as np

from keras_vitmsn import backend

# Integer images whose dtype says what white is; any other dtype uses `input_range`.
DTYPE_RANGES = {"uint8": (0.0, 255.0), "uint16": (0.0, 65535.0)}
# The pixel scale of the released processor, which `rescale_factor` applies to.
PIXEL_RANGE = (0.0, 255.0)


def check_input_range(input_range):
    """``(low, high)`` as floats, or a ValueError saying what is accepted."""
    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(
            f"`input_range` must be (low, high) with finite low < high, e.g. (0, 255) or "
            f"(0, 1); got {input_range!r}."
        )
    return (low, high)


def dtype_of(images):
    """The standardised dtype name of an array or tensor of any backend."""
    dtype = getattr(images, "dtype", None)
    if dtype is None:
        dtype = np.asarray(images).dtype
    return keras.backend.standardize_dtype(dtype)


def to_pixel_range(x, low, high, ops):
    """Map float images spanning ``[low, high]`` linearly onto [0, 255]."""
    if low:
        x = x - ops.cast(low, x.dtype)
    return x * ops.cast(PIXEL_RANGE[1] / (high - low), x.dtype)


def check_values(images, ops, input_range):
    """Raise if concrete ``images`` hold values outside ``input_range``.

    Symbolic tensors, tracers and graph tensors are not checked: reading their
    values would need a device round trip inside compiled code.
    """
    if not backend.is_concrete(images) or 0 in tuple(images.shape):
        return
    low = float(ops.convert_to_numpy(ops.numpy.min(images)))
    high = float(ops.convert_to_numpy(ops.numpy.max(images)))
    if low < input_range[0] or high > input_range[1]:
        raise ValueError(
            f"Images of dtype {dtype_of(images)} hold values in [{low:g}, {high:g}], "
            f"outside the converter's input_range {input_range}. Declare the "
            "range the images use, e.g. ViTMSNImageConverter(input_range=(0, 1)) "
            "for images in [0, 1], or pass uint8 images (read as [0, 255]). After a "
            "bicubic or Lanczos resize, which overshoots, clip the images to the range."
        )
