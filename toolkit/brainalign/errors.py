"""User-facing errors: the CLI prints ``str(err)`` as one line and exits non-zero (no traceback)."""


MAX_MESSAGE = 500          # characters of an error line; longer messages are cut (a value can be huge)


def one_line(text, limit: int = MAX_MESSAGE, join: bool = True) -> str:
    """``text`` on one line (``join``) of at most ``limit`` characters (the cut says how much was left out)."""
    text = " ".join(str(text).split()) if join else str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit - 40]} ... ({len(text) - limit + 40} more characters)"


class BrainAlignError(Exception):
    """Bad input or an unmet precondition a user can fix. The message names the file, key or shape
    (cut to MAX_MESSAGE characters: brainalign.errors.one_line)."""

    exit_code = 2

    def __init__(self, message="", *args):
        super().__init__(one_line(message, join=False), *args)


class ConfigError(BrainAlignError):
    """A config key is unknown, of the wrong type, or points at something missing."""


class DataError(BrainAlignError):
    """An input file is missing, corrupt, or disagrees with the others (lengths, spaces, NaNs)."""


class OutputError(BrainAlignError):
    """An output cannot be written: the disk is full, the folder is read-only or not ours."""


_NO_SPACE = (28, 122)                       # ENOSPC, EDQUOT
_READ_ONLY = (30,)                          # EROFS
_DENIED = (13, 1)                           # EACCES, EPERM
_TEXT = ((_NO_SPACE, ("No space left on device", "Disk quota exceeded", "errno = 28", "errno = 122")),
         (_READ_ONLY, ("Read-only file system", "errno = 30")),
         (_DENIED, ("Permission denied", "errno = 13")))


def _size(n) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def output_error(err: BaseException, path=None, need=None, written=None):
    """An :class:`OutputError` (one line: the path, and for a full disk the bytes needed and free where known)
    for an OSError that says the disk is full, the file system read-only or the folder not writable, else
    None. HDF5 reports these inside its own message ("errno = 28"), so the text is read too."""
    import os
    import shutil

    if not isinstance(err, (OSError, RuntimeError)):     # h5py raises RuntimeError for HDF5's failed writes
        return None
    text, code = str(err), getattr(err, "errno", None)
    kind = next((codes for codes, words in _TEXT if code in codes or any(w in text for w in words)), None)
    if kind is None:
        return None
    path = path or getattr(err, "filename", None) or ""
    where = str(path) or "the output"
    if kind is _READ_ONLY:
        return OutputError(f"cannot write {where}: read-only file system")
    if kind is _DENIED:
        return OutputError(f"cannot write {where}: permission denied")
    detail = []
    if need:
        detail.append(f"needs about {_size(need)}")
    if written:
        detail.append(f"{_size(written)} written before it ran out")
    probe = os.path.dirname(os.path.abspath(str(path))) if path else None
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe:
        try:
            detail.append(f"{_size(shutil.disk_usage(probe).free)} free there")
        except OSError:
            pass
    return OutputError(f"no space left on the device writing {where}" + (f" ({'; '.join(detail)})" if detail else "")
                       + "; free space (or point output elsewhere) and re-run: finished work is kept")
