"""Per-rank shard files of unit results, their resume scan, and HDF5 virtual datasets over them.

A shard is ``{output}/fit_shards/eEEEE-rank-RRRR-part-PPPPP.h5`` (E: attempt/epoch of the job, R: MPI
rank, P: part number within that rank and attempt). Each is written with :func:`brainalign.h5io.atomic_h5`
(temp name + rename, completion marker last), so it is complete or absent; its ``/units`` rows are the
completion records of the units it holds. Layout (n units, S subjects, W = chunk width):

- ``/units``  int32 (n, k)   unit key, e.g. (feature set, layer, fold, chunk)
- ``/voxels`` int64 (n, 2)   voxel range [start, stop) of each unit
- ``/r``, ``/alpha`` float32 (n, S, W)   per-subject values; columns >= stop - start are NaN padding
- attrs: ``stage_key`` (the fit's key, brainalign.stagekeys), ``layout`` (JSON of the output geometry),
  ``epoch``, ``rank``, ``part`` + provenance

At the end of its work each rank merges its parts of the epoch into one file (:func:`compact`), and the
assembly merges leftovers of killed attempts, so ``scores.h5`` rests on about ranks x attempts files.
A shard whose ``stage_key`` or ``layout`` differ from the current fit is stale and ignored (and removed
by the next fit); a unit found in two shards is taken from the first by file name (identical values).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..h5io import COMPLETE_ATTR, atomic_h5
from ..log import get_logger
from ..paths import FIT_SHARDS

log = get_logger("sharding.shards")

SHARD_DIR = FIT_SHARDS
_NAME = re.compile(r"^e(\d{4})-rank-(\d{4})-part-(\d{5})\.h5$")


def shard_name(epoch: int, rank: int, part: int) -> str:
    return f"e{epoch:04d}-rank-{rank:04d}-part-{part:05d}.h5"


class ShardWriter:
    """Buffers unit results of one rank and writes them as atomic shard parts.

    A part is written when ``flush_s`` seconds have passed since the last one (so a kill loses at most that
    much work per rank), when ``max_units`` are buffered (bounds memory), and on :meth:`close`.
    """

    def __init__(self, directory, epoch, rank, n_subjects, width, attrs, config_text=None,
                 flush_s=60.0, max_units=256, stage="fit-shard"):
        self.directory = Path(directory)
        self.epoch, self.rank, self.S, self.W = int(epoch), int(rank), int(n_subjects), int(width)
        self.attrs, self.config_text, self.stage = dict(attrs), config_text, stage
        self.flush_s, self.max_units = float(flush_s), max(1, int(max_units))
        self.part = 0
        self.written: list[Path] = []
        self.n_units = 0                     # units written to parts so far
        self._buf = []
        self._t = time.monotonic()

    def add(self, key, start, stop, r, alpha):
        """Buffer one unit: ``key`` tuple of ints, voxels [start, stop), r/alpha float32 (S, stop - start)."""
        self._buf.append((tuple(int(k) for k in key), int(start), int(stop),
                          np.asarray(r, np.float32), np.asarray(alpha, np.float32)))
        if len(self._buf) >= self.max_units or time.monotonic() - self._t >= self.flush_s:
            self.flush()

    def flush(self):
        self._t = time.monotonic()
        if not self._buf:
            return None
        n = len(self._buf)
        r = np.full((n, self.S, self.W), np.nan, np.float32)
        alpha = np.full_like(r, np.nan)
        for i, (_, a, b, ri, ai) in enumerate(self._buf):
            r[i, :, : b - a] = ri
            alpha[i, :, : b - a] = ai
        path = self.directory / shard_name(self.epoch, self.rank, self.part)
        extra = dict(self.attrs, epoch=str(self.epoch), rank=str(self.rank), part=str(self.part))
        with atomic_h5(path, self.stage, self.config_text, extra, need=2 * r.nbytes) as f:
            f.create_dataset("units", data=np.asarray([k for k, *_ in self._buf], np.int32))
            f.create_dataset("voxels", data=np.asarray([(a, b) for _, a, b, *_ in self._buf], np.int64))
            f.create_dataset("r", data=r)
            f.create_dataset("alpha", data=alpha)
        log.debug("wrote %s (%d units)", path.name, n)
        self.part += 1
        self.n_units += n
        self.written.append(path)
        self._buf = []
        return path

    def close(self):
        """Write the buffered units, then merge this rank's parts of this epoch into one file."""
        self.flush()
        if len(self.written) > 1:
            self.written = [compact(self.written, self.attrs, self.config_text, self.stage)]


def parse_name(name):
    """(epoch, rank, part) of a shard file name, or None."""
    m = _NAME.match(name)
    return None if m is None else tuple(int(g) for g in m.groups())


def compact(files, attrs, config_text=None, stage="fit-shard"):
    """Merge complete shard parts of one (epoch, rank) into one part numbered after them; remove the inputs.

    HDF5 opens every source file a virtual-dataset read touches at once, and a source it cannot open
    (e.g. past the open-file limit) silently reads as the fill value; so scores.h5 must rest on few files.
    Killed between the rename and the removals, the units exist twice with equal values (harmless).
    """
    files = sorted(Path(p) for p in files)
    keys = {parse_name(p.name)[:2] for p in files}
    if len(keys) != 1:
        raise ValueError(f"compact: parts of several (epoch, rank) pairs: {sorted(keys)}")
    (epoch, rank), = keys
    part = max(parse_name(p.name)[2] for p in files) + 1
    sizes = []
    for p in files:
        with h5py.File(p, "r") as g:
            sizes.append((g["r"].shape, g["units"].shape[1]))
    (_, S, W), k = sizes[0]
    n = sum(sh[0] for sh, _ in sizes)
    path = files[0].parent / shard_name(epoch, rank, part)
    extra = dict(attrs, epoch=str(epoch), rank=str(rank), part=str(part), compacted_from=str(len(files)))
    with atomic_h5(path, stage, config_text, extra) as f:
        units = f.create_dataset("units", (n, k), np.int32)
        voxels = f.create_dataset("voxels", (n, 2), np.int64)
        r = f.create_dataset("r", (n, S, W), np.float32)
        alpha = f.create_dataset("alpha", (n, S, W), np.float32)
        o = 0
        for p in files:
            with h5py.File(p, "r") as g:
                m = g["units"].shape[0]
                for dst, name in ((units, "units"), (voxels, "voxels"), (r, "r"), (alpha, "alpha")):
                    dst[o:o + m] = g[name][()]
                o += m
    remove(files)
    log.debug("compacted %d parts into %s", len(files), path.name)
    return path


def compact_all(scan: "ShardScan", attrs, config_text=None, stage="fit-shard"):
    """Compact every (epoch, rank) of ``scan.files`` that has several parts; True if anything changed."""
    groups: dict = {}
    for p in scan.files:
        groups.setdefault(parse_name(p.name)[:2], []).append(p)
    changed = False
    for files in groups.values():
        if len(files) > 1:
            compact(files, attrs, config_text, stage)
            changed = True
    return changed


@dataclass(frozen=True)
class ShardEntry:
    file: str        # shard file name (inside the shard directory)
    row: int         # row in that file's /units
    start: int
    stop: int
    n_rows: int      # rows of the file (shape of its /r)
    width: int       # W of the file


@dataclass
class ShardScan:
    entries: dict = field(default_factory=dict)       # unit key tuple -> ShardEntry
    files: list = field(default_factory=list)         # usable shard paths
    stale: list = field(default_factory=list)         # complete, but another config/layout
    incomplete: list = field(default_factory=list)    # no marker, unreadable, or leftover temp files
    max_epoch: int = 0


def scan_shards(directory, attrs: dict) -> ShardScan:
    """Classify the shards under ``directory``: usable ones (every attr in ``attrs`` equal) give entries."""
    directory = Path(directory)
    scan = ShardScan()
    if not directory.is_dir():
        return scan
    for p in sorted(directory.iterdir()):
        m = _NAME.match(p.name)
        if not m:
            if p.name.startswith(".") and ".tmp-" in p.name:
                scan.incomplete.append(p)
            continue
        scan.max_epoch = max(scan.max_epoch, int(m.group(1)))
        try:
            with h5py.File(p, "r") as f:
                if not f.attrs.get(COMPLETE_ATTR, 0):
                    scan.incomplete.append(p)
                    continue
                if any(_attr_str(f.attrs.get(k)) != str(v) for k, v in attrs.items()):
                    scan.stale.append(p)
                    continue
                units, voxels = f["units"][()], f["voxels"][()]
                n, _, width = f["r"].shape
        except (OSError, KeyError):
            scan.incomplete.append(p)
            continue
        scan.files.append(p)
        for row, (key, (a, b)) in enumerate(zip(units, voxels)):
            scan.entries.setdefault(tuple(int(k) for k in key), ShardEntry(p.name, row, int(a), int(b), n, width))
    return scan


def _attr_str(v):
    return v.decode() if isinstance(v, bytes) else (None if v is None else str(v))


def remove(paths):
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def virtual_dataset(f, name, shape, entries: dict, index, shard_dir=SHARD_DIR, source=None):
    """Create ``f[name]``: float32 virtual dataset of ``shape`` (S, ..., V) over the shards' ``source``
    datasets (default: ``name``).

    ``index(key)`` gives the middle indices of a unit (e.g. (fs, layer, fold)); unit ``key`` fills
    ``[:, *index(key), start:stop]``. Source paths are relative (``fit_shards/<file>``), resolved by HDF5
    against the directory of ``f``'s file; unmapped elements read as NaN.
    """
    S = shape[0]
    layout = h5py.VirtualLayout(shape=shape, dtype=np.float32)
    sources = {}
    for key, e in entries.items():
        src = sources.get(e.file)
        if src is None:
            src = sources[e.file] = h5py.VirtualSource(f"{shard_dir}/{e.file}", source or name,
                                                       shape=(e.n_rows, S, e.width))
        layout[(slice(None), *index(key), slice(e.start, e.stop))] = src[e.row, :, : e.stop - e.start]
    return f.create_virtual_dataset(name, layout, fillvalue=np.float32(np.nan))


def virtual_files(ds) -> set:
    """The source file names of a virtual dataset (empty for a regular one)."""
    if not ds.is_virtual:
        return set()
    return {m.file_name for m in ds.virtual_sources()}
