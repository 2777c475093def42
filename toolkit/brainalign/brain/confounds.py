"""Confound regression from fMRIPrep's ``desc-confounds_timeseries.tsv``.

Strategies (``data.bold.confounds``):

- ``null``: none (the default; the demo BOLD has no confounds);
- ``minimal``: the six rigid-body motion parameters (``trans_x/y/z``, ``rot_x/y/z``), the mean white-matter
  and CSF signals (``white_matter``, ``csf``) and fMRIPrep's discrete-cosine high-pass regressors
  (``cosine*``) when present — the small set most encoding-model studies of naturalistic fMRI use;
- a list of column names: exactly those columns.

Regression is per run, with an intercept, by least squares, before per-run z-scoring. NaNs in the first
row (derivative columns) become 0; NaNs elsewhere are an error naming the file and column.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ..errors import DataError

MINIMAL = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "white_matter", "csf")


def confounds_path(bold_path) -> Path:
    """fMRIPrep's confounds TSV beside a preprocessed BOLD run (same entities, no space/res/den/desc);
    volumetric ``…_bold.nii[.gz]`` and CIFTI ``…_bold.dtseries.nii`` runs share it."""
    p = Path(bold_path)
    stem = re.sub(r"_bold\.(dtseries\.)?nii(\.gz)?$", "", p.name)
    stem = re.sub(r"_(space|res|den|desc)-[^_]+", "", stem)
    return p.with_name(f"{stem}_desc-confounds_timeseries.tsv")


def read_confounds(path, strategy) -> np.ndarray:
    """float64 (n_trs, n_confounds) of the strategy's columns from a confounds TSV."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"confounds file not found: {path} (needed by data.bold.confounds)")
    with open(path, newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        rows = list(reader)
    if not header:
        raise DataError(f"confounds file {path} is empty")
    if strategy == "minimal":
        cols = [c for c in MINIMAL] + [c for c in header if c.startswith("cosine")]
    else:
        cols = list(strategy)
    missing = [c for c in cols if c not in header]
    if missing:
        raise DataError(f"confounds file {path} lacks column(s) {', '.join(missing)}")
    idx = [header.index(c) for c in cols]
    out = np.empty((len(rows), len(cols)))
    for i, row in enumerate(rows):
        for j, k in enumerate(idx):
            v = row[k] if k < len(row) else ""
            try:
                out[i, j] = float(v) if v not in ("", "n/a", "NaN", "nan") else np.nan
            except ValueError:
                raise DataError(f"confounds file {path} line {i + 2}: column {cols[j]} has {v!r}") from None
    out[0, np.isnan(out[0])] = 0.0
    bad = np.argwhere(~np.isfinite(out))
    if len(bad):
        i, j = bad[0]
        raise DataError(f"confounds file {path} line {i + 2}: column {cols[j]} is not a finite number")
    return out


def regress_out(Y: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Y (n, v) minus its least-squares fit on [1, C] (n, k); the intercept is kept (mean preserved)."""
    if C.shape[0] != Y.shape[0]:
        raise DataError(f"confounds have {C.shape[0]} rows but the BOLD run has {Y.shape[0]} TRs")
    Cc = C - C.mean(0)
    beta, *_ = np.linalg.lstsq(Cc, Y - Y.mean(0), rcond=None)
    return (Y - Cc @ beta).astype(Y.dtype, copy=False)
