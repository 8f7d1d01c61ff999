"""A minimal GGUF reader: scalar metadata and memory-mapped tensor bytes, fast.

The ``gguf`` package's GGUFReader turns every metadata value into numpy views, which takes
15-25 s for a vocabulary of 49,152 tokens on the benchmark VM; loading only needs the tensors
and a few numbers. ``read_gguf`` walks the header with ``struct`` (arrays are skipped, not
decoded) and returns each tensor's raw bytes as a read-only view of one memory map, shaped as
the ``gguf`` package shapes them ([rows, bytes per row], or [rows, columns] for float types).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_MAGIC = b"GGUF"
# value type -> struct format for the scalar types (GGUF spec); 8 is a string, 9 an array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_FLOAT_DTYPES = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}


@dataclass
class GGUFTensor:
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]  # torch order (slowest first)
    data: np.ndarray  # read-only view of the file


class _Cursor:
    def __init__(self, buffer: memoryview):
        self.buffer, self.offset = buffer, 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buffer, self.offset)[0]
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        value = bytes(self.buffer[self.offset:self.offset + length]).decode("utf-8", errors="replace")
        self.offset += length
        return value

    def value(self, kind: int) -> Any:
        """A scalar or string; an array is skipped and returned as None."""
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown GGUF value type {kind}")
        item_kind, count = self.unpack("<I"), self.unpack("<Q")
        if item_kind in _SCALARS:
            self.offset += count * struct.calcsize(_SCALARS[item_kind])
        else:
            for _ in range(count):
                self.value(item_kind)
        return None


def read_gguf(path: Path) -> tuple[dict[str, Any], list[GGUFTensor]]:
    """(scalar and string metadata, tensors) of a GGUF file (version 2 or 3)."""
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    cursor = _Cursor(memoryview(mapped))
    if bytes(cursor.buffer[:4]) != _MAGIC:
        raise ValueError(f"{path} is not a GGUF file")
    cursor.offset = 4
    version = cursor.unpack("<I")
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} is not supported")
    n_tensors, n_kv = cursor.unpack("<Q"), cursor.unpack("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cursor.string()
        value = cursor.value(cursor.unpack("<I"))
        if value is not None:
            metadata[key] = value
    infos = []
    for _ in range(n_tensors):
        name = cursor.string()
        dims = [cursor.unpack("<Q") for _ in range(cursor.unpack("<I"))]
        infos.append((name, GGMLQuantizationType(cursor.unpack("<I")), dims, cursor.unpack("<Q")))
    alignment = int(metadata.get("general.alignment", 32))
    start = -(-cursor.offset // alignment) * alignment
    tensors = []
    for name, kind, dims, offset in infos:
        shape = tuple(reversed(dims))  # GGUF lists dimensions fastest-first
        block_weights, block_bytes = GGML_QUANT_SIZES[kind]
        row_bytes = dims[0] // block_weights * block_bytes
        rows = int(np.prod(dims[1:])) if len(dims) > 1 else 1
        data = mapped[start + offset:start + offset + rows * row_bytes]
        if kind in _FLOAT_DTYPES:
            data = data.view(_FLOAT_DTYPES[kind]).reshape(shape)
        else:
            data = data.reshape(rows, row_bytes)
        tensors.append(GGUFTensor(name, kind, shape, data))
    return metadata, tensors
