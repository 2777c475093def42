"""Cross-validation splits: contiguous K-fold (no shuffling) and normalisation of ``cv`` arguments."""
from __future__ import annotations

import numbers

import numpy as np

from ..errors import ConfigError


def kfold_splits(n, k):
    """Contiguous K-fold over ``n`` rows without shuffling (the same folds as sklearn ``KFold(k)``).

    The first ``n % k`` folds get one extra row. Returns a list of (train_idx, val_idx) int64 arrays.
    """
    k = int(k)
    if k < 2 or k > n:
        raise ConfigError(f"cv: need 2 <= folds <= n_samples, got {k} folds for {n} samples")
    sizes = np.full(k, n // k, dtype=np.int64)
    sizes[: n % k] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    rows = np.arange(n, dtype=np.int64)
    return [(np.concatenate([rows[:a], rows[b:]]), rows[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def resolve_cv(cv, n, X=None, groups=None):
    """Turn ``cv`` into a list of (train, val) index arrays over ``n`` rows.

    ``cv`` may be an int (contiguous K-fold), an object with ``.split`` (any scikit-learn splitter;
    called as ``split(X, groups=groups)``), or an iterable of (train, val) pairs.
    """
    if isinstance(cv, numbers.Integral) and not isinstance(cv, bool):
        return kfold_splits(n, cv)
    if hasattr(cv, "split"):
        data = X if X is not None else np.zeros((n, 1))
        try:
            pairs = cv.split(data, None, groups) if groups is not None else cv.split(data)
            return [(np.asarray(tr), np.asarray(va)) for tr, va in pairs]
        except Exception as err:
            raise ConfigError(f"cv splitter {type(cv).__name__} failed: {err}") from None
    try:
        return [(np.asarray(tr), np.asarray(va)) for tr, va in cv]
    except TypeError:
        raise ConfigError(f"cv: expected an int, a splitter with .split, or (train, val) pairs; "
                          f"got {type(cv).__name__}") from None
