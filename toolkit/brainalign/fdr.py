"""Multiple-comparison control: Benjamini–Hochberg adjusted p-values (q).

A leaf module (numpy only) so that stats and permutation both use it without importing each other."""
from __future__ import annotations

import numpy as np


def fdr_bh(p, axis=-1):
    """Benjamini–Hochberg adjusted p-values (q) along ``axis``; NaN p-values are ignored and stay NaN.

    p: any-shaped array of p-values in [0, 1] (or NaN). Returns float64 of the same shape; each 1-D slice
    along ``axis`` equals ``scipy.stats.false_discovery_control`` applied to its finite values.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 0:
        return fdr_bh(p[None])[0]
    pm = np.moveaxis(p, axis, -1)
    shape = pm.shape
    if p.size == 0:
        return np.full(p.shape, np.nan)
    flat = pm.reshape(-1, shape[-1])
    valid = np.isfinite(flat)
    if np.any(valid & ((flat < 0) | (flat > 1))):
        raise ValueError("fdr_bh: p-values must lie in [0, 1]")
    q = np.full(flat.shape, np.nan)
    if flat.size:
        m = valid.sum(axis=1, keepdims=True)
        order = np.argsort(np.where(valid, flat, np.inf), axis=1, kind="stable")
        ps = np.take_along_axis(flat, order, axis=1)
        ok = np.take_along_axis(valid, order, axis=1)
        qs = np.where(ok, ps * m / np.arange(1, flat.shape[1] + 1), np.inf)
        qs = np.minimum.accumulate(qs[:, ::-1], axis=1)[:, ::-1]
        qs = np.where(ok, np.minimum(qs, 1.0), np.nan)
        np.put_along_axis(q, order, qs, axis=1)
    return np.moveaxis(q.reshape(shape), -1, axis)


def significant(q, level):
    """uint8 mask of q <= ``level`` (NaN q: not significant), as stats.h5 and permutation.h5 store it."""
    return (np.nan_to_num(q, nan=np.inf) <= level).astype(np.uint8)


# ---- families: which tests one BH correction spans (stats.fdr_family) ------------------------------

FDR_FAMILIES = ("layer", "contrast", "all")
_FAMILY_TEXT = {
    "layer": "within each layer and test",
    "contrast": "across layers × {units} within each test",
    "all": "across every test, layer and {unit}",
}


def fdr_by_family(p: dict, across_tests: bool, across_rows: bool) -> dict:
    """BH q-values of several tests' p-value arrays, each family corrected together.

    p: {test name: (rows, N) p-values} (rows = layers in stats, subjects in permutation; N = ROIs or voxels).
    A family is one row of one test (both False), all rows of one test (``across_rows``), one row of every
    test (``across_tests``) or everything (both). Returns {test name: (rows, N) float64 q}; NaN stays NaN.
    """
    names = list(p)
    if not names:
        return {}
    arrs = [np.asarray(p[k], dtype=np.float64) for k in names]
    rows = {a.shape[0] for a in arrs}
    if any(a.ndim != 2 for a in arrs) or len(rows) != 1:
        raise ValueError(f"fdr_by_family: every test needs a (rows, N) array with the same rows, got "
                         f"{[a.shape for a in arrs]}")
    sizes = [a.shape[1] for a in arrs]
    stacked = np.concatenate(arrs, axis=1) if across_tests else None
    out = {}
    if across_tests:
        q = fdr_bh(stacked.reshape(1, -1))[0].reshape(stacked.shape) if across_rows else fdr_bh(stacked, axis=1)
        for k, a, b in zip(names, np.cumsum([0] + sizes[:-1]), np.cumsum(sizes)):
            out[k] = q[:, a:b]
        return out
    for k, a in zip(names, arrs):
        out[k] = fdr_bh(a.reshape(1, -1))[0].reshape(a.shape) if across_rows else fdr_bh(a, axis=1)
    return out


def stats_family(family: str) -> tuple[bool, bool]:
    """(across_tests, across_rows) of ``stats.fdr_family`` for the group statistics (rows = layers)."""
    if family not in FDR_FAMILIES:
        raise ValueError(f"stats.fdr_family: {family!r} is not one of {', '.join(FDR_FAMILIES)}")
    return family == "all", family != "layer"


def family_text(family: str, unit: str = "ROI") -> str:
    """One line saying what a BH correction of ``stats.fdr_family`` spans, e.g. for figure captions."""
    return ("Benjamini–Hochberg FDR " + _FAMILY_TEXT[family].format(unit=unit, units=unit + "s")
            + f" (stats.fdr_family: {family})")
