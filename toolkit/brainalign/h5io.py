"""HDF5 at stage edges: atomic writes (temp name + rename), a completion marker, provenance, checked reads."""
import contextlib
import os
from pathlib import Path

import h5py
import numpy as np

from .errors import DataError
from .provenance import provenance

COMPLETE_ATTR = "brainalign_complete"


def _tmp_name(path):
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_h5(path, stage, config_text=None, extra=None):
    """Write an HDF5 file atomically. Provenance and the completion marker are written last."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f
            for k, v in provenance(config_text, stage, extra).items():
                f.attrs[k] = v
            f.attrs[COMPLETE_ATTR] = np.int8(1)


def is_complete(path):
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get(COMPLETE_ATTR, 0))
    except (OSError, FileNotFoundError):
        return False


def open_h5(path, what="HDF5 file", require=()):
    """Open a stage output for reading; one clear DataError if missing, corrupt, incomplete or lacking datasets."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{what} is not a readable HDF5 file (corrupt or truncated): {path} ({e})") from None
    if not f.attrs.get(COMPLETE_ATTR, 0):
        f.close()
        raise DataError(f"{what} is incomplete (no completion marker; was its job killed?): {path}")
    for name in require:
        if name not in f:
            f.close()
            raise DataError(f"{what} {path} lacks dataset '{name}'")
    return f


def str_attr(values):
    """Store a list of strings as an HDF5 attribute (variable-length UTF-8)."""
    return np.array([str(v) for v in values], dtype=h5py.string_dtype())


def read_str_attr(obj, key):
    vals = obj.attrs[key]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(vals)]
