"""Read ``.safetensors`` files with NumPy alone (no torch, no safetensors package).

Format: an 8-byte little-endian header length N, N bytes of UTF-8 JSON mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the
byte buffer that follows the header; an optional ``"__metadata__"`` entry holds
strings), then the raw little-endian tensor bytes. Every offset and size is checked
against the file, so a truncated or corrupted file raises :class:`CheckpointError`
instead of yielding garbage.
"""

import json
import os

import ml_dtypes
import numpy as np

from keras_vitmsn.errors import CheckpointError

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# Real headers are a few kB; a huge value means the first bytes are not a length.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_safetensors_header(path):
    """``(header_dict, data_start)`` of a safetensors file, validated against its size."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size < 8:
        raise CheckpointError(
            f"{path} is not a safetensors file: {size} bytes, shorter than the 8-byte "
            "header length (truncated download?)."
        )
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
            raise CheckpointError(
                f"{path} is truncated or not a safetensors file: the header claims "
                f"{header_len} bytes but the file has {size - 8} bytes after the length."
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} has a corrupted safetensors header: {e}.") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupted safetensors header (not a JSON object).")
    return header, 8 + header_len


def load_safetensors(path):
    """Load every tensor of a ``.safetensors`` file as a NumPy array.

    The arrays are read-only views of a memory map of the file (no copy): copy them
    before modifying. bfloat16 and float8 tensors use the ``ml_dtypes`` types.

    Args:
        path: the ``.safetensors`` file.

    Returns:
        ``{name: np.ndarray}`` in file order.

    Raises:
        CheckpointError: the file is truncated, its header is corrupted, a tensor's
            byte range does not match its dtype and shape, or a dtype is unknown.

    Example:
    >>> import os, tempfile
    >>> from safetensors.numpy import save_file  # only to write the example file
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_file({"a": np.arange(6, dtype="float32").reshape(2, 3)}, path)
    >>> load_safetensors(path)["a"].shape
    (2, 3)
    """
    path = os.fspath(path)
    header, data_start = read_safetensors_header(path)
    data_size = os.path.getsize(path) - data_start
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    problems = []
    spans = []
    for name, info in entries.items():
        try:
            dtype_name = info["dtype"]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (TypeError, KeyError, ValueError):
            problems.append(f"{name}: malformed entry {info!r}")
            continue
        if dtype_name not in _DTYPES:
            problems.append(
                f"{name}: unsupported dtype {dtype_name!r} (supported: {', '.join(_DTYPES)})"
            )
            continue
        expected = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype_name].itemsize
        if end - begin != expected or begin < 0:
            problems.append(
                f"{name}: byte range [{begin}, {end}) does not hold a {dtype_name} "
                f"tensor of shape {shape} ({expected} bytes)"
            )
        elif end > data_size:
            problems.append(
                f"{name}: ends at byte {end} of the data section but the file only has "
                f"{data_size} bytes of data"
            )
        else:
            spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            problems.append(f"{name_a} and {name_b} overlap")
    if problems:
        truncated = any("only has" in p for p in problems)
        raise CheckpointError(
            f"{path} is {'truncated' if truncated else 'corrupted'}: " + "; ".join(problems) + "."
        )
    # A memory map avoids copying the file: the caller converts each tensor once.
    buffer = None
    if data_size:
        buffer = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_size,))
    tensors = {}
    for name, info in entries.items():
        begin, end = (int(o) for o in info["data_offsets"])
        dtype = _DTYPES[info["dtype"]]
        shape = tuple(int(s) for s in info["shape"])
        if end == begin:
            tensors[name] = np.zeros(shape, dtype)
            continue
        count = (end - begin) // dtype.itemsize
        flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=begin)
        tensors[name] = flat.reshape(shape)
    return tensors
