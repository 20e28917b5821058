"""Read a safetensors file with numpy alone: its header, and float tensors as float32 arrays.

The llama.cpp engine reads adapters without torch (importing torch costs a llama.cpp process about 300 MiB
of resident memory and seconds of start-up). ``safetensors``' own numpy loader cannot read bfloat16, the
dtype adapters trained in bf16 have, so the format (an 8-byte little-endian header length, a JSON header of
``{name: {dtype, shape, data_offsets}}``, then the data) is read here; bfloat16 becomes float32 by widening
its 16 bits to the upper half of a float32, which is exact.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_NUMPY_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


class SafetensorsFormatError(ValueError):
    """The file is not a readable safetensors file (the message says why)."""


def read_header(file: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Every tensor's entry (``dtype``, ``shape``, ``data_offsets``) and where the data starts.

    Raises:
        SafetensorsFormatError: If the file is truncated or its header is not a safetensors header.
        OSError: If the file cannot be read.
    """
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsFormatError("file too short for a header")
        (length,) = struct.unpack("<Q", head)
        if length > 100_000_000 or length > size - 8:
            raise SafetensorsFormatError(f"header length {length} does not fit the file")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsFormatError(f"header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError("header is not a JSON object")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        if not (isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= entry.keys()):
            raise SafetensorsFormatError(f"tensor {name!r} has no dtype, shape and data_offsets")
    end = max((int(e["data_offsets"][1]) for e in header.values()), default=0)
    if 8 + length + end > size:  # a truncated file: its last tensors have no data
        raise SafetensorsFormatError(f"the tensors' data ends at byte {8 + length + end}, past the end")
    return header, 8 + length


def read_float32(file: Path, keys: list[str]) -> dict[str, Any]:
    """The named float tensors of the file as float32 numpy arrays.

    Raises:
        SafetensorsFormatError: If a tensor is missing, not a float, or its data does not fit the file.
    """
    import numpy as np

    header, start = read_header(file)
    data = np.memmap(file, dtype=np.uint8, mode="r")
    out: dict[str, Any] = {}
    for key in keys:
        entry = header.get(key)
        if entry is None:
            raise SafetensorsFormatError(f"no tensor {key!r}")
        begin, end = (start + int(o) for o in entry["data_offsets"])
        if not start <= begin <= end <= data.size:
            raise SafetensorsFormatError(f"tensor {key!r}: its data lies outside the file")
        raw = np.asarray(data[begin:end])
        dtype, shape = entry["dtype"], [int(d) for d in entry["shape"]]
        if dtype == "BF16":
            array = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype in _NUMPY_DTYPES:
            array = raw.view(_NUMPY_DTYPES[dtype]).astype(np.float32)
        else:
            raise SafetensorsFormatError(f"tensor {key!r} has dtype {dtype}, not a float")
        if array.size != int(np.prod(shape)):
            raise SafetensorsFormatError(f"tensor {key!r}: {array.size} values for shape {shape}")
        out[key] = array.reshape(shape)
    return out


__all__ = ["SafetensorsFormatError", "read_float32", "read_header"]
