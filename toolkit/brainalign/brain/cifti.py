"""CIFTI-2 dense time series (``*.dtseries.nii``, e.g. fMRIPrep/HCP ``space-fsLR_den-91k_bold.dtseries.nii``).

Grayordinates are the columns of the file: cortical surface vertices (per hemisphere, only those in the
medial-wall-free mask) followed by / interleaved with subcortical voxels, in the file's own order, which this
module keeps. Rows are time points; the TR is the series axis step (seconds).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..log import get_logger

log = get_logger("brain")

_TR_TOL = 1e-3


@dataclass
class CiftiInfo:
    """Geometry of a dense CIFTI file."""
    path: str
    tr: float                               # seconds (series axis step)
    n_trs: int
    n_grayordinates: int
    structures: list = field(default_factory=list)   # [(name, "surface" | "volume", start, stop)] column ranges
    volume_shape: tuple | None = None       # (X, Y, Z) of the subcortical voxels' grid, None if surface only
    affine: np.ndarray | None = None        # (4, 4) voxel -> mm of that grid

    @property
    def n_vertices(self) -> int:
        return sum(b - a for _, kind, a, b in self.structures if kind == "surface")

    @property
    def n_voxels(self) -> int:
        return sum(b - a for _, kind, a, b in self.structures if kind == "volume")


def _load(path):
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"CIFTI BOLD file not found: {path}")
    try:
        img = nib.load(str(path))
    except Exception as e:
        raise DataError(f"CIFTI BOLD {path} is not a readable CIFTI-2 file: {e}") from None
    if not isinstance(img, nib.Cifti2Image):
        raise DataError(f"CIFTI BOLD {path} is not a CIFTI-2 file (nibabel reads it as {type(img).__name__}; "
                        "expected a *.dtseries.nii)")
    return img


def _axes(img, path):
    import nibabel as nib

    try:
        series, models = img.header.get_axis(0), img.header.get_axis(1)
    except Exception as e:
        raise DataError(f"CIFTI BOLD {path}: unreadable CIFTI axes: {e}") from None
    if not isinstance(series, nib.cifti2.SeriesAxis) or not isinstance(models, nib.cifti2.BrainModelAxis):
        raise DataError(f"CIFTI BOLD {path} is not a dense time series: axes are ({type(series).__name__}, "
                        f"{type(models).__name__}), expected (SeriesAxis, BrainModelAxis) as in *.dtseries.nii")
    if str(series.unit).upper() != "SECOND":
        raise DataError(f"CIFTI BOLD {path}: series axis unit is {series.unit}, expected SECOND")
    return series, models


def cifti_info(path) -> CiftiInfo:
    """The TR, size and grayordinate structures of a dtseries file (reads only the header)."""
    img = _load(path)
    series, models = _axes(img, path)
    structures = []
    for name, slc, bm in models.iter_structures():
        kind = "surface" if bm.surface_mask.any() else "volume"
        start, stop = slc.start or 0, slc.stop if slc.stop is not None else len(models)
        structures.append((str(name).replace("CIFTI_STRUCTURE_", ""), kind, int(start), int(stop)))
    has_vol = bool(models.volume_mask.any())
    return CiftiInfo(str(path), float(series.step), int(series.size), int(len(models)), structures,
                     tuple(int(x) for x in models.volume_shape) if has_vol else None,
                     np.asarray(models.affine, np.float64) if has_vol else None)


def read_cifti_bold(path, tr: float | None = None) -> np.ndarray:
    """float32 (n_trs, n_grayordinates) of a CIFTI-2 dense time series, in the file's grayordinate order.

    Checks: a CIFTI-2 file with (SeriesAxis in seconds, BrainModelAxis) axes, series step equal to ``tr``
    (tolerance 1e-3 s) when given, finite values. One-line DataError naming the file otherwise.
    """
    img = _load(path)
    series, models = _axes(img, path)
    if tr is not None and not abs(float(series.step) - float(tr)) <= _TR_TOL:
        raise DataError(f"CIFTI BOLD {path}: series step (TR) {float(series.step):g} s differs from data.bold.tr "
                        f"{float(tr):g} s")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:
        raise DataError(f"CIFTI BOLD {path}: reading failed (truncated or corrupt?): {e}") from None
    if data.shape != (series.size, len(models)):
        raise DataError(f"CIFTI BOLD {path}: data shape {data.shape} does not match its axes "
                        f"({series.size} time points, {len(models)} grayordinates)")
    bad = ~np.isfinite(data).all(axis=0)
    if bad.any():
        raise DataError(f"CIFTI BOLD {path}: {int(bad.sum())} grayordinate(s) contain NaN/inf values "
                        f"(first: column {int(np.flatnonzero(bad)[0])})")
    const = int((data.max(axis=0) == data.min(axis=0)).sum()) if data.shape[0] > 1 else 0
    if const:
        log.warning("CIFTI BOLD %s: %d constant grayordinate(s) (they will score NaN)", path, const)
    return data


def write_cifti_dscalar(path, values, like, names=None) -> Path:
    """Write maps (k, n_grayordinates) or (n_grayordinates,) as a CIFTI-2 dscalar on the grayordinates of
    ``like`` (a dtseries file, or its BrainModelAxis), atomically; ``names`` labels the k maps (default map0,
    map1, ...)."""
    import nibabel as nib

    from .volumes import save_image

    models = like if isinstance(like, nib.cifti2.BrainModelAxis) else brain_models(like)
    values = np.atleast_2d(np.asarray(values, dtype=np.float32))
    if values.shape[1] != len(models):
        raise DataError(f"dscalar values of shape {values.shape} do not fit {like} ({len(models)} grayordinates)")
    names = list(names) if names is not None else [f"map{i}" for i in range(values.shape[0])]
    if len(names) != values.shape[0]:
        raise DataError(f"dscalar: {len(names)} names for {values.shape[0]} maps")
    img = nib.Cifti2Image(values, header=(nib.cifti2.ScalarAxis(names), models))
    return save_image(img, path, ".dscalar.nii")


def brain_models(path):
    """The BrainModelAxis (grayordinate geometry) of a dtseries file."""
    return _axes(_load(path), path)[1]


def brain_models_to_h5(group, axis):
    """Store a BrainModelAxis in an HDF5 group: per grayordinate its structure (index into attr ``structures``),
    voxel ijk (-1 on surfaces) and vertex (-1 in volumes); attrs ``nvertices`` (JSON), ``affine``,
    ``volume_shape`` (when there are voxels)."""
    import json

    names = np.asarray(axis.name)
    structures, index = np.unique(names, return_inverse=True)
    group.create_dataset("structure", data=index.astype(np.int16), compression="gzip", shuffle=True)
    group.create_dataset("voxel", data=np.asarray(axis.voxel, np.int32), compression="gzip", shuffle=True)
    group.create_dataset("vertex", data=np.asarray(axis.vertex, np.int32), compression="gzip", shuffle=True)
    group.attrs["structures"] = np.array([str(x) for x in structures], dtype=object).astype("S")
    group.attrs["nvertices"] = json.dumps({str(k): int(v) for k, v in axis.nvertices.items()})
    if axis.affine is not None:
        group.attrs["affine"] = np.asarray(axis.affine, np.float64)
        group.attrs["volume_shape"] = np.asarray(axis.volume_shape, np.int64)


def brain_models_from_h5(group):
    """The BrainModelAxis stored by brain_models_to_h5."""
    import json

    import nibabel as nib

    structures = [s.decode() if isinstance(s, bytes) else str(s) for s in group.attrs["structures"]]
    name = np.asarray(structures, dtype=object)[group["structure"][()].astype(np.int64)]
    affine = group.attrs["affine"] if "affine" in group.attrs else None
    shape = tuple(int(x) for x in group.attrs["volume_shape"]) if "volume_shape" in group.attrs else None
    return nib.cifti2.BrainModelAxis(name, voxel=group["voxel"][()], vertex=group["vertex"][()], affine=affine,
                                     volume_shape=shape, nvertices=json.loads(group.attrs["nvertices"]))


def structure_labels(info: CiftiInfo) -> tuple[np.ndarray, dict]:
    """ROI labels from the CIFTI structures: int32 (n_grayordinates,) label per column (1, 2, ... in file
    order) and {label: structure name}, e.g. {1: 'CORTEX_LEFT', 2: 'CORTEX_RIGHT', 3: 'ACCUMBENS_LEFT', ...}."""
    labels = np.zeros(info.n_grayordinates, np.int32)
    names = {}
    for i, (name, _, a, b) in enumerate(info.structures, start=1):
        labels[a:b] = i
        names[i] = name
    return labels, names


def find_cifti_bold(bids_dir, subject: str, task: str, space: str = "fsLR", den: str = "91k", rescans: str = "error",
                    session: str | None = None) -> Path:
    """The fMRIPrep CIFTI run ``sub-<s>[_ses-*]_task-<task>_space-<space>_den-<den>_bold.dtseries.nii`` under
    ``bids_dir`` (with or without ses- folders; re-scans chosen as in bids.choose_rescan); MissingRunError naming
    what was searched when there is none."""
    from .bids import MissingRunError, choose_rescan

    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise DataError(f"BOLD derivatives directory not found: {bids_dir} (data.bold.dir)")
    s = f"sub-{subject}"
    stem = f"task-{task}_space-{space}_den-{den}_bold.dtseries.nii"
    found = sorted(set(bids_dir.glob(f"{s}/ses-*/func/{s}_ses-*_{stem}")) | set(bids_dir.glob(f"{s}/func/{s}_{stem}")))
    if found:
        rel = [str(p.relative_to(bids_dir)) for p in found]
        return found[choose_rescan(rel, f"CIFTI runs for {s} task-{task} under {bids_dir}", rescans, session)]
    raise MissingRunError(f"no CIFTI run for {s} task-{task} space-{space} den-{den} under {bids_dir} "
                          f"(expected e.g. {s}/func/{s}_{stem})")
