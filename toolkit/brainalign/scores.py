"""Reading scores.h5 (the fit stage's output) for the stages downstream of it: its metadata, cross-checked."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .h5io import check_float, read_str_attr


@dataclass
class ScoresMeta:
    """What run_stats/run_report need from scores.h5 besides the big arrays."""
    path: Path
    subjects: list[str]
    feature_sets: list[str]
    layers: list[int]
    roi_names: list[str]
    roi_ids: np.ndarray          # (R,) int64
    roi_labels: np.ndarray       # (V,) int32
    space: object = None         # brain.space.MapSpace: how a value per unit becomes a map
    runs_present: dict | None = None   # subject -> run indices it has (None: every subject has every run)

    @property
    def n_voxels(self) -> int:
        return int(self.roi_labels.shape[0])


def _attr_list(f, path, key, cast=str):
    if key not in f.attrs:
        raise DataError(f"scores file {path} lacks root attribute '{key}'")
    if cast is str:
        return read_str_attr(f, key)
    return [cast(v) for v in np.atleast_1d(f.attrs[key])]


def read_scores_meta(f, path) -> ScoresMeta:
    """Read and cross-check the metadata of an open scores.h5 (DataError naming the file and key)."""
    path = Path(path)
    subjects = _attr_list(f, path, "subjects")
    feature_sets = _attr_list(f, path, "feature_sets")
    layers = _attr_list(f, path, "layers", int)
    roi_names = _attr_list(f, path, "roi_names")
    roi_ids = np.asarray(_attr_list(f, path, "roi_ids", int), dtype=np.int64)
    if len(roi_names) != len(roi_ids):
        raise DataError(f"scores file {path}: attrs roi_names ({len(roi_names)}) and roi_ids ({len(roi_ids)}) "
                        "differ in length")
    mask = f["mask"][()].astype(bool)
    if mask.ndim != 3:
        raise DataError(f"scores file {path}: /mask must be 3-D, got shape {mask.shape}")
    affine = np.asarray(f["mask"].attrs.get("affine", np.eye(4)), dtype=np.float64)
    if affine.shape != (4, 4):
        raise DataError(f"scores file {path}: /mask attr affine must be 4x4, got shape {affine.shape}")
    labels = f["roi_labels"][()].astype(np.int32)
    expect = (len(subjects), len(feature_sets), len(layers), int(mask.sum()))
    check_float(f["r_mean"], path, "scores file", expect, "subjects, feature_sets, layers, voxels in /mask")
    if "folds" in f.attrs:
        full = expect[:3] + (len(_attr_list(f, path, "folds")), expect[3])
        for name in ("r", "alpha"):
            if name in f:
                check_float(f[name], path, "scores file", full, "subjects, feature_sets, layers, folds, voxels")

    if labels.shape != (expect[3],):
        raise DataError(f"scores file {path}: /roi_labels has shape {labels.shape}, expected ({expect[3]},)")
    from .brain.space import MapSpace

    runs_present = json.loads(f.attrs["runs_present"]) if "runs_present" in f.attrs else None
    return ScoresMeta(path, subjects, feature_sets, layers, roi_names, roi_ids, labels,
                      MapSpace.from_h5(f, path), runs_present)
