"""HDF5 at stage edges: atomic writes (temp name + rename), a completion marker, provenance, checked reads."""
import contextlib
import os
import sys
from pathlib import Path

import h5py
import numpy as np

from .errors import DataError, output_error
from .provenance import provenance

COMPLETE_ATTR = "brainalign_complete"
LONG_ATTR_BYTES = 48 * 1024        # HDF5 object headers hold at most 64 KiB of attributes
LONG_ATTR_GROUP = "_long_attrs"    # longer string attrs live here as scalar string datasets


def _tmp_name(path):
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


#: set once an HDF5 write failed for lack of space or permission: HDF5 then keeps the file open in a state
#: its own exit handler cannot flush (it segfaults), so the CLI leaves with os._exit (brainalign.cli.main)
FAILED_WRITE = []


def _failed_write():
    FAILED_WRITE.append(True)


def _quiet_h5_dealloc(unraisable=sys.unraisablehook, excepthook=sys.excepthook):
    """h5py reports each object it cannot close after a failed write (full disk, read-only) twice (Cython
    prints the traceback through sys.excepthook, then the ignored exception through sys.unraisablehook),
    several per file; the one-line error says it instead."""

    def quiet(exc, tb):
        import traceback

        return output_error(exc) is not None and any("h5py" in fr.filename for fr in traceback.extract_tb(tb))

    def on_unraisable(u):
        if not quiet(u.exc_value, u.exc_traceback):
            unraisable(u)

    def on_except(kind, value, tb):
        if not quiet(value, tb):
            excepthook(kind, value, tb)

    sys.unraisablehook, sys.excepthook = on_unraisable, on_except


_quiet_h5_dealloc()


@contextlib.contextmanager
def atomic_path(path, need=None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A full disk, a read-only file system or a folder that is not writable becomes one OutputError naming
    ``path`` (with ``need``, the bytes it needs, where the caller knows them); the temp file is removed."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        written = tmp.stat().st_size if tmp.exists() else None
        err = output_error(e, path, need, written)
        if err is None:
            raise
        _failed_write()
        raise err from None
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_h5(path, stage, config_text=None, extra=None, need=None):
    """Write an HDF5 file atomically. Provenance and the completion marker are written last."""
    with atomic_path(path, need) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f
            for k, v in provenance(config_text, stage, extra).items():
                set_attr(f, k, v)
            f.attrs[COMPLETE_ATTR] = np.int8(1)


def set_attr(obj, key, value):
    """``obj.attrs[key] = value``; a string longer than LONG_ATTR_BYTES goes to ``/_long_attrs/<path>``
    (a scalar string dataset) and the attr names it (``@dataset:/_long_attrs/...``)."""
    if isinstance(value, str) and len(value.encode()) > LONG_ATTR_BYTES:
        f, name = obj.file, f"{LONG_ATTR_GROUP}/{(obj.name.strip('/') or 'root').replace('/', '.')}.{key}"
        if name in f:
            del f[name]
        f.create_dataset(name, data=value, dtype=h5py.string_dtype())
        value = f"@dataset:/{name}"
    obj.attrs[key] = value


def read_long_attr(obj, key, default=None):
    """A string attr written by :func:`set_attr` (following a ``@dataset:`` reference)."""
    v = obj.attrs.get(key, default)
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v.startswith("@dataset:"):
        v = obj.file[v[len("@dataset:"):]][()]
        v = v.decode() if isinstance(v, bytes) else str(v)
    return v


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


def check_float(ds, path, what="HDF5 file", shape=None, axes=""):
    """Refuse (one line) a dataset that is not floating point, or (``shape``) not of that shape; returns it."""
    name = ds.name
    if ds.dtype.kind != "f":
        raise DataError(f"{what} {path}: {name} has dtype {ds.dtype}, expected floating point (a file from "
                        "elsewhere or edited by hand?)")
    if shape is not None and tuple(ds.shape) != tuple(shape):
        raise DataError(f"{what} {path}: {name} has shape {ds.shape}, expected {tuple(shape)}"
                        + (f" ({axes})" if axes else ""))
    return ds


def str_attr(values):
    """Store a list of strings as an HDF5 attribute (variable-length UTF-8)."""
    return np.array([str(v) for v in values], dtype=h5py.string_dtype())


def read_str_attr(obj, key):
    vals = obj.attrs[key]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(vals)]
