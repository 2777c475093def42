"""Input validation for the ridge engine: one-line DataError / ConfigError naming the culprit."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError


def check_matrix(X, name, ndim=2):
    """Return ``X`` as a float ndarray of ``ndim`` dims; DataError on wrong shape or non-finite values.

    The error names the array, its shape and the first bad (row, column).
    """
    try:
        arr = np.asarray(X)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise DataError(f"{name}: cannot be read as an array ({err})") from None
    if arr.ndim != ndim:
        raise DataError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise DataError(f"{name}: empty array of shape {arr.shape}")
    return arr


def check_finite_X(X, name):
    """Raise DataError naming the first NaN/inf of the feature matrix ``X`` (n, p)."""
    bad = ~np.isfinite(X)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"{name} of shape {X.shape} has {int(bad.sum())} non-finite value(s); "
                        f"first at row {i}, feature {j} ({X[i, j]})")


def check_alphas(alphas):
    """1-D positive finite float64 alphas, at least one; ConfigError otherwise."""
    a = np.asarray(alphas, dtype=np.float64).reshape(-1) if np.ndim(alphas) <= 1 else None
    if a is None:
        raise ConfigError(f"alphas: expected a 1-D list of positive numbers, got shape {np.shape(alphas)}")
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ConfigError(f"alphas: expected positive finite numbers, got {a.tolist()}")
    return a


def check_splits(splits, n, what="inner_splits", min_val=2):
    """List of (train, val) int64 index arrays into ``n`` rows; DataError on empty/out-of-range."""
    out = []
    try:
        splits = list(splits)
    except TypeError:
        raise ConfigError(f"{what}: expected a list of (train_idx, val_idx) pairs, got {type(splits).__name__}") from None
    if not splits:
        raise ConfigError(f"{what}: no splits given")
    for k, pair in enumerate(splits):
        try:
            tr, va = pair
        except (TypeError, ValueError):
            raise ConfigError(f"{what}[{k}]: expected a (train_idx, val_idx) pair") from None
        tr = np.asarray(tr).reshape(-1)
        va = np.asarray(va).reshape(-1)
        if tr.dtype == bool or va.dtype == bool:
            raise ConfigError(f"{what}[{k}]: give integer row indices, not boolean masks")
        tr = tr.astype(np.int64)
        va = va.astype(np.int64)
        for nm, idx, need in (("train", tr, 2), ("validation", va, min_val)):
            if idx.size < need:
                raise DataError(f"{what}[{k}]: {nm} part has {idx.size} rows; need at least {need}")
            if idx.min() < 0 or idx.max() >= n:
                raise DataError(f"{what}[{k}]: {nm} index out of range [0, {n}) "
                                f"(min {idx.min()}, max {idx.max()})")
        out.append((tr, va))
    return out


def contiguous_runs(idx):
    """Split an index array into maximal runs of consecutive integers.

    Returns [(start, stop, offset)] where ``idx[offset:offset + stop - start] == arange(start, stop)``.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    bounds = np.concatenate([[0], breaks, [idx.size]])
    return [(int(idx[b0]), int(idx[b1 - 1]) + 1, int(b0)) for b0, b1 in zip(bounds[:-1], bounds[1:])]
