"""Per-target Pearson correlation (the encoding-model score)."""
from __future__ import annotations

import numpy as np

from ..errors import DataError


def pearson_r(y_true, y_pred, axis=0):
    """Pearson r of each column (``axis=0``) of two equally shaped arrays, in float64 arithmetic.

    Returns float32 of shape ``y_true.shape`` without ``axis``. A column where either input is
    constant or contains NaN/inf gets NaN (never a silent 0).
    """
    a = np.asarray(y_true, dtype=np.float64)
    b = np.asarray(y_pred, dtype=np.float64)
    if a.shape != b.shape:
        raise DataError(f"pearson_r: shapes differ, y_true {a.shape} vs y_pred {b.shape}")
    if a.ndim == 1:
        a, b, axis = a[:, None], b[:, None], 0
        squeeze = True
    else:
        squeeze = False
    a = np.moveaxis(a, axis, 0)
    b = np.moveaxis(b, axis, 0)
    if a.shape[0] < 2:
        raise DataError(f"pearson_r: need at least 2 samples along axis {axis}, got {a.shape[0]}")
    finite = np.isfinite(a).all(0) & np.isfinite(b).all(0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ac = a - a.mean(0)
        bc = b - b.mean(0)
        num = (ac * bc).sum(0)
        den = np.sqrt((ac * ac).sum(0) * (bc * bc).sum(0))
        r = np.where(finite & (den > 0), num / np.where(den > 0, den, 1.0), np.nan)
    r = r.astype(np.float32)
    return r[0] if squeeze else r
