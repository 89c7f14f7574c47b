"""Reader for CTranslate2 `model.bin` files (binary version 6), no ctranslate2 package needed.

Layout, all little-endian (strings are u16 length counting a trailing NUL, then the bytes and NUL):

    u32 binary_version | str spec_name | u32 spec_revision | u32 n_variables
    n_variables x ( str name | u8 rank | rank x u32 dim | u8 dtype_id | u32 n_bytes | n_bytes of data )
    u32 n_aliases | n_aliases x ( str alias | str target_name )

dtype ids follow CTranslate2's DataType enum: float32, int8, int16, int32, float16, bfloat16.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SUPPORTED_VERSIONS = (6,)
_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 model.bin this reader understands."""


@dataclass
class CT2Model:
    spec: str                      # e.g. "WhisperSpec"
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)  # aliases resolved (same array object)

    def scalar(self, name: str) -> int | float:
        return self.variables[name].item()


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise CT2FormatError(f"truncated file: need {n} bytes at offset {self.pos}, size {len(self.buf)}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.unpack("H")))
        if not raw.endswith(b"\0"):
            raise CT2FormatError(f"string at offset {self.pos} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def _to_numpy(raw: memoryview, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "bfloat16":  # numpy has no bfloat16: widen the top half of a float32
        u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return u16.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()


def read_ct2(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 model.bin into numpy arrays (dtype as stored; bfloat16 -> float32)."""
    data = Path(path).read_bytes()
    cur = _Cursor(memoryview(data))
    version = cur.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version}, this reader knows {SUPPORTED_VERSIONS}")
    model = CT2Model(spec=cur.string(), revision=cur.unpack("I"))
    for _ in range(cur.unpack("I")):
        name = cur.string()
        shape = tuple(cur.unpack("I") for _ in range(cur.unpack("B")))
        type_id = cur.unpack("B")
        if type_id >= len(_DTYPES):
            raise CT2FormatError(f"{name}: unknown dtype id {type_id}")
        n_bytes = cur.unpack("I")
        dtype = _DTYPES[type_id]
        expected = int(np.prod(shape, dtype=np.int64)) * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)
        if n_bytes != expected:
            raise CT2FormatError(f"{name}: {n_bytes} bytes for shape {shape} {dtype}")
        model.variables[name] = _to_numpy(cur.take(n_bytes), dtype, shape)
    for _ in range(cur.unpack("I")):
        alias, target = cur.string(), cur.string()
        model.variables[alias] = model.variables[target]
    if cur.pos != len(data):
        raise CT2FormatError(f"{path}: {len(data) - cur.pos} trailing bytes")
    return model
