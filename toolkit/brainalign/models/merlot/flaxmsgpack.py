"""Read and write Flax's msgpack serialisation (``flax.serialization.msgpack_serialize``) without flax/jax.

Format: a msgpack map tree (tuples/lists are maps with keys "0", "1", ...). An ndarray leaf is
``ExtType(1, packb((shape, dtype_name, C-order bytes)))``, a numpy scalar ``ExtType(3, same)``, a complex
``ExtType(2, packb((real, imag)))``. Arrays over 2**30 bytes are stored as
``{"__msgpack_chunked_array__": True, "shape": {"0": ...}, "chunks": {"0": flat, ...}}``.
bfloat16 arrays (dtype name "bfloat16") are returned as float32.
"""
from __future__ import annotations

import numpy as np

try:
    import msgpack
except ImportError:  # pragma: no cover - reported by the callers
    msgpack = None

EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR = 1, 2, 3
CHUNKED = "__msgpack_chunked_array__"
MAX_CHUNK_BYTES = 2 ** 30


def require_msgpack():
    if msgpack is None:
        raise ImportError("reading Flax checkpoints needs the 'msgpack' package: pip install msgpack")
    return msgpack


def _array_from_bytes(data: bytes) -> np.ndarray:
    shape, dtype_name, buf = msgpack.unpackb(data, raw=True)
    name = dtype_name.decode() if isinstance(dtype_name, bytes) else dtype_name
    if name == "bfloat16":
        bits = np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(buf, dtype=np.dtype(name)).reshape(shape)


def _array_to_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    return msgpack.packb((list(arr.shape), arr.dtype.name, arr.tobytes("C")), use_bin_type=True)


def _ext_unpack(code, data):
    if code == EXT_NDARRAY:
        return _array_from_bytes(data)
    if code == EXT_NPSCALAR:
        return _array_from_bytes(data)[()]
    if code == EXT_COMPLEX:
        re, im = msgpack.unpackb(data)
        return complex(re, im)
    return msgpack.ExtType(code, data)


def _ext_pack(x):
    if isinstance(x, np.ndarray):
        return msgpack.ExtType(EXT_NDARRAY, _array_to_bytes(x))
    if isinstance(x, np.generic):
        return msgpack.ExtType(EXT_NPSCALAR, _array_to_bytes(np.asarray(x)))
    if isinstance(x, complex):
        return msgpack.ExtType(EXT_COMPLEX, msgpack.packb((x.real, x.imag)))
    raise TypeError(f"cannot serialise {type(x).__name__}")


def _unchunk(tree):
    if isinstance(tree, dict):
        if tree.get(CHUNKED) is True:
            shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
            flat = np.concatenate([tree["chunks"][str(i)] for i in range(len(tree["chunks"]))])
            return flat.reshape(shape)
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def _chunk(tree):
    if isinstance(tree, dict):
        return {k: _chunk(v) for k, v in tree.items()}
    if isinstance(tree, np.ndarray) and tree.nbytes > MAX_CHUNK_BYTES:
        step = max(1, MAX_CHUNK_BYTES // tree.dtype.itemsize)
        flat = tree.reshape(-1)
        chunks = [flat[i:i + step] for i in range(0, flat.size, step)]
        return {CHUNKED: True, "shape": {str(i): s for i, s in enumerate(tree.shape)},
                "chunks": {str(i): c for i, c in enumerate(chunks)}}
    return tree


def restore(data: bytes):
    """msgpack bytes -> nested dict of numpy arrays (the inverse of flax's msgpack_serialize)."""
    require_msgpack()
    return _unchunk(msgpack.unpackb(data, ext_hook=_ext_unpack, raw=False, strict_map_key=False))


def serialize(tree) -> bytes:
    """Nested dict of numpy arrays / python scalars -> msgpack bytes as flax's msgpack_serialize writes them."""
    require_msgpack()
    return msgpack.packb(_chunk(tree), default=_ext_pack, strict_types=True)
