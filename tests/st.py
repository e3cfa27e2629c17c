#!/usr/bin/python3
"""st.py -- a tiny numpy reader/writer for safetensors files.

Format: 8-byte little-endian header length N, N bytes of JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}, then the data. This writer lays tensors out contiguously
(largest element size first) and space-pads the header so the data section
starts 8-aligned. Used by
tests/parity.py (and anything else that wants to look inside a checkpoint).
"""
import json
import struct

import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U64": np.dtype("<u8"), "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def _st_dtype(arr):
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    for k, v in _DTYPES.items():
        if v == dt:
            return k
    raise ValueError("st: unsupported dtype %s" % arr.dtype)


def dumps(tensors, metadata=None):
    """Serialise {name: ndarray} (+ {str: str} metadata) to bytes."""
    header = {}
    blobs = []
    off = 0
    # Tensors are contiguous (no gaps: strict readers, nllm's and the reference
    # safetensors loader, reject holes); ordering them by element size, largest
    # first, keeps every offset a multiple of its own element size.
    items = [(name, np.asarray(arr)) for name, arr in tensors.items()]
    items.sort(key=lambda kv: -np.dtype(_DTYPES[_st_dtype(kv[1])]).itemsize)
    for name, arr in items:
        code = _st_dtype(arr)
        data = np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("st: metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hdr += b" " * ((-(8 + len(hdr))) % 8)
    return struct.pack("<Q", len(hdr)) + hdr + b"".join(blobs)


def write(path, tensors, metadata=None):
    with open(path, "wb") as f:
        f.write(dumps(tensors, metadata))


def loads(buf):
    """Parse bytes -> ({name: ndarray}, {str: str} metadata)."""
    if len(buf) < 8:
        raise ValueError("st: file shorter than its header length")
    (n,) = struct.unpack("<Q", buf[:8])
    if 8 + n > len(buf):
        raise ValueError("st: header length %d past end of file" % n)
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    out = {}
    for name, info in header.items():
        dt = _DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if e - b != count * dt.itemsize or base + e > len(buf) or b > e:
            raise ValueError("st: bad data_offsets for %s" % name)
        out[name] = np.frombuffer(buf, dtype=dt, count=count,
                                  offset=base + b).reshape(shape).copy()
    return out, meta


def read(path):
    with open(path, "rb") as f:
        return loads(f.read())


if __name__ == "__main__":
    import sys
    for p in sys.argv[1:]:
        t, m = read(p)
        print("%s: %d tensors, metadata %s" % (p, len(t), m))
        for k, v in t.items():
            print("  %-36s %-5s %s" % (k, _NAMES[v.dtype], list(v.shape)))
