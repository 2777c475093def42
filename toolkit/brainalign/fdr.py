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
