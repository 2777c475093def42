"""scikit-learn compatible estimators: RidgeCV (one alpha per target) and BandedRidgeCV (one alpha per
feature band per target). scikit-learn itself is never imported here (it is a test dependency only);
``get_params`` / ``set_params`` are implemented so ``sklearn.base.clone`` and pipelines work.
"""
from __future__ import annotations

import inspect
from collections import namedtuple

import numpy as np

from ..errors import ConfigError, DataError
from .checks import check_alphas, check_finite_X, check_matrix
from .cv import resolve_cv
from .metrics import pearson_r
from .solver import FoldSolver


class _Params:
    """Minimal get_params / set_params / repr following scikit-learn's conventions."""

    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values() if p.name != "self")

    def get_params(self, deep=True):
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        valid = self._get_param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"Invalid parameter {key!r} for estimator {type(self).__name__}; "
                                 f"valid parameters: {valid}")
            setattr(self, key, value)
        return self

    def __repr__(self):
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        parts = []
        for k, v in self.get_params().items():
            d = defaults.get(k, inspect.Parameter.empty)
            try:
                same = d is v or (d is not inspect.Parameter.empty and bool(np.all(d == v))
                                  and np.shape(d) == np.shape(v))
            except Exception:
                same = False
            if not same:
                parts.append(f"{k}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _check_fitted(self):
        if not hasattr(self, "coef_"):
            raise DataError(f"{type(self).__name__} is not fitted yet; call fit(X, Y) first")

    def _check_X(self, X):
        X = check_matrix(X, "X")
        check_finite_X(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise DataError(f"X has {X.shape[1]} features but {type(self).__name__} was fitted "
                            f"with {self.n_features_in_} (shape {X.shape})")
        return X

    def predict(self, X):
        """Predictions (n_samples, n_targets) float64 (1-D if fitted on a 1-D y)."""
        self._check_fitted()
        X = self._check_X(X)
        pred = np.asarray(X, dtype=np.float64) @ self.coef_.astype(np.float64) + self.intercept_
        return pred[:, 0] if self._ravel else pred

    def score(self, X, y):
        """Per-target Pearson r between ``predict(X)`` and ``y`` (NaN for constant targets)."""
        y = check_matrix(y, "y", ndim=np.ndim(y) if np.ndim(y) in (1, 2) else 2)
        return pearson_r(y, self.predict(X))


def _prepare_xy(X, y):
    X = check_matrix(X, "X")
    check_finite_X(X, "X")
    y = check_matrix(y, "y", ndim=np.ndim(y) if np.ndim(y) in (1, 2) else 2)
    ravel = y.ndim == 1
    Y = y[:, None] if ravel else y
    if Y.shape[0] != X.shape[0]:
        raise DataError(f"X has {X.shape[0]} rows but y has {Y.shape[0]} (shapes {X.shape}, {y.shape})")
    return X, Y, ravel


class RidgeCV(_Params):
    """Ridge regression with one alpha per target chosen by K-fold cross-validation.

    Parameters
    ----------
    alphas : sequence of positive floats.
    cv : int (contiguous K-fold, no shuffling), a scikit-learn splitter, or (train, val) pairs.
    backend : 'numpy' | 'torch' | 'cupy' | 'auto' (see :func:`brainalign.ridge.get_backend`).
    n_targets_batch : targets per internal batch (None: automatic).
    scoring : inner criterion, 'r' (Pearson, default) or 'r2'.
    dtype : 'float32' (default) or 'float64' working precision.
    method : 'eigh' or 'svd' decomposition (see :class:`FoldSolver`).

    Attributes after fit: ``best_alphas_`` (n_targets,), ``cv_scores_`` (n_alphas, n_targets),
    ``coef_`` (n_features, n_targets), ``intercept_`` (n_targets,), ``n_features_in_``.
    Targets that are constant or contain NaN get NaN alphas, scores and coefficients.

    Unlike himalaya's RidgeCV (default ``fit_intercept=False`` and inner score: negative mean squared
    error) this always fits an intercept and selects alpha by mean inner-fold Pearson r. ``score``
    returns Pearson r per target (not R^2).
    """

    def __init__(self, alphas=(0.1, 1.0, 10.0, 100.0, 1000.0), cv=5, backend="numpy",
                 n_targets_batch=None, scoring="r", dtype="float32", method="eigh"):
        self.alphas = alphas
        self.cv = cv
        self.backend = backend
        self.n_targets_batch = n_targets_batch
        self.scoring = scoring
        self.dtype = dtype
        self.method = method

    def fit(self, X, y):
        X, Y, ravel = _prepare_xy(X, y)
        splits = resolve_cv(self.cv, X.shape[0], X)
        solver = FoldSolver(X, None, self.alphas, splits, backend=self.backend, dtype=self.dtype,
                            scoring=self.scoring, method=self.method,
                            targets_batch=self.n_targets_batch, keep_coef=True)
        res = solver.fit_chunk(Y)
        self.best_alphas_ = res.best_alpha
        self.cv_scores_ = res.cv_scores
        self.coef_ = res.coef
        self.intercept_ = res.intercept
        self.n_features_in_ = X.shape[1]
        self._ravel = ravel
        if ravel:
            self.coef_ = self.coef_[:, 0]
            self.intercept_ = self.intercept_[0]
            self.best_alphas_ = self.best_alphas_[0]
            self.cv_scores_ = self.cv_scores_[:, 0]
        return self

    def predict(self, X):
        self._check_fitted()
        X = self._check_X(X)
        coef = self.coef_[:, None] if self._ravel else self.coef_
        pred = np.asarray(X, dtype=np.float64) @ coef.astype(np.float64) + self.intercept_
        return pred[:, 0] if self._ravel else pred


def band_labels(bands, n_features):
    """Per-feature band label (n_features,) int from ``bands``.

    ``bands`` is a sequence with one entry per band (a slice, or an array of feature indices), or a
    1-D array of integer labels (one per feature, 0..n_bands-1). Every feature must be in one band.
    """
    if bands is None:
        return np.zeros(n_features, dtype=np.int64)
    arr = None
    if not isinstance(bands, (list, tuple)):
        arr = np.asarray(bands)
    if arr is not None and arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer) and arr.size == n_features:
        labels = arr.astype(np.int64)
    else:
        labels = np.full(n_features, -1, dtype=np.int64)
        for k, sel in enumerate(bands):
            idx = np.arange(n_features)[sel] if isinstance(sel, slice) else np.asarray(sel, dtype=np.int64)
            if idx.size == 0 or idx.min() < 0 or idx.max() >= n_features:
                raise ConfigError(f"bands[{k}]: empty or out of range for {n_features} features")
            if np.any(labels[idx] >= 0):
                raise ConfigError(f"bands[{k}]: overlaps an earlier band")
            labels[idx] = k
    uniq = np.unique(labels)
    if labels.min() < 0 or not np.array_equal(uniq, np.arange(uniq.size)):
        missing = np.flatnonzero(labels < 0)
        raise ConfigError(f"bands: every feature must belong to exactly one band 0..K-1 "
                          f"(features without a band: {missing[:5].tolist()}..., labels {uniq.tolist()})")
    return labels


def band_weight_samples(n_iter, n_bands, concentration=(0.1, 1.0), random_state=None):
    """Band weights (n_iter, n_bands) on the simplex: the first row is uniform, the rest are
    Dirichlet samples cycling through ``concentration`` (the random search of banded ridge)."""
    rng = np.random.default_rng(random_state)
    conc = np.atleast_1d(np.asarray(concentration, dtype=np.float64))
    out = np.empty((int(n_iter), n_bands))
    for i in range(int(n_iter)):
        out[i] = rng.dirichlet(np.full(n_bands, conc[i % conc.size]))
    out[0] = 1.0 / n_bands
    return out


class BandedRidgeCV(_Params):
    """Banded ridge: one penalty per feature band (e.g. vision vs language) and per target.

    Solves ``min_b ||Y - X b||^2 + sum_k (alpha / w_k) ||b_k||^2`` by scaling band k of X by
    ``sqrt(w_k)`` and running the ridge CV over ``alphas`` for every band-weight vector ``w``
    (a random search on the simplex, as himalaya's BandedRidgeCV / GroupRidgeCV; or a given grid).
    A target keeps a later weight vector only if it beats the best score so far by more than the
    float32 epsilon (himalaya's rule), so results match himalaya given the same weights.

    Parameters
    ----------
    bands : sequence of slices / index arrays (one per band) or (n_features,) integer labels.
    alphas : overall ridge penalties searched for every weight vector.
    n_iter : int (random search: first row uniform, then Dirichlet samples) or an array
        (n_iter, n_bands) of band weights to try.
    concentration : Dirichlet concentration(s), cycled.
    cv, backend, n_targets_batch, scoring, dtype, method : as :class:`RidgeCV`.
    random_state : seed of the random search.

    Attributes: ``band_weights_`` (n_iter, n_bands) tried, ``cv_scores_`` (n_iter, n_targets)
    best-over-alpha score per weight vector, ``best_band_weights_`` (n_bands, n_targets),
    ``best_alphas_`` (n_targets,), ``band_alphas_`` (n_bands, n_targets) = alpha / w_k, ``deltas_``
    (n_bands, n_targets) = log(w_k / alpha) (himalaya's convention), ``coef_`` (n_features, n_targets)
    on the unscaled features, ``intercept_`` (n_targets,).
    """

    def __init__(self, bands=None, alphas=(0.1, 1.0, 10.0, 100.0, 1000.0), n_iter=20,
                 concentration=(0.1, 1.0), cv=5, backend="numpy", n_targets_batch=None,
                 scoring="r", dtype="float32", method="eigh", random_state=None):
        self.bands = bands
        self.alphas = alphas
        self.n_iter = n_iter
        self.concentration = concentration
        self.cv = cv
        self.backend = backend
        self.n_targets_batch = n_targets_batch
        self.scoring = scoring
        self.dtype = dtype
        self.method = method
        self.random_state = random_state

    def _weights(self, n_bands):
        if np.ndim(self.n_iter) == 0:
            if int(self.n_iter) < 1:
                raise ConfigError(f"n_iter must be >= 1, got {self.n_iter}")
            return band_weight_samples(int(self.n_iter), n_bands, self.concentration, self.random_state)
        w = np.asarray(self.n_iter, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != n_bands or not np.all(np.isfinite(w)) or np.any(w < 0) \
                or np.any(w.sum(1) <= 0):
            raise ConfigError(f"n_iter as band weights must be (n_iter, {n_bands}) non-negative rows "
                              f"with a positive sum, got shape {w.shape}")
        return w

    def fit(self, X, y):
        X, Y, ravel = _prepare_xy(X, y)
        labels = band_labels(self.bands, X.shape[1])
        solver = BandedSolver(X, None, labels, self._weights(int(labels.max()) + 1), self.alphas,
                              resolve_cv(self.cv, X.shape[0], X), backend=self.backend, dtype=self.dtype,
                              scoring=self.scoring, method=self.method, targets_batch=self.n_targets_batch)
        res = solver.fit_chunk(Y)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.band_alphas_ = (res.best_alpha[None, :] / res.best_weights).astype(np.float32)
            self.deltas_ = np.log(res.best_weights / res.best_alpha[None, :]).astype(np.float32)
        self.band_weights_ = solver.weights
        self.cv_scores_ = res.cv_scores
        self.best_band_weights_ = res.best_weights.astype(np.float32)
        self.best_alphas_ = res.best_alpha.astype(np.float32)
        self.coef_ = res.coef
        self.intercept_ = res.intercept
        self.n_features_in_ = X.shape[1]
        self.n_bands_ = solver.n_bands
        self._ravel = ravel
        return self


BandedResult = namedtuple("BandedResult", ["best_alpha", "best_weights", "cv_scores", "coef", "intercept"])
BandedResult.__doc__ = """Result of :meth:`BandedSolver.fit_chunk`: best_alpha (v,), best_weights (n_bands, v),
cv_scores (n_iter, v) best-over-alpha inner score per weight vector, coef (p, v) on the unscaled features and
intercept (v,) (NaN for invalid targets)."""


class BandedSolver:
    """The X-only work of banded ridge for one training set: one :class:`FoldSolver` per band-weight vector.

    Band k of X is scaled by sqrt(w_k) for each weight vector w (rows of ``weights``); every FoldSolver is
    built once, then :meth:`fit_chunk` serves any number of target chunks (e.g. subjects x voxel chunks of
    one fit unit). A target keeps a later weight vector only if it beats the best inner score so far by
    more than the working dtype's epsilon (himalaya's rule). Memory: n_iter FoldSolvers.
    """

    def __init__(self, X_train, X_test, labels, weights, alphas, inner_splits, backend="numpy", dtype="float32",
                 scoring="r", method="eigh", targets_batch=None, n_jobs=None):
        X64 = np.asarray(X_train, dtype=np.float64)
        Xte = None if X_test is None else np.asarray(X_test, dtype=np.float64)
        self.labels = np.asarray(labels)
        self.n_bands = int(self.labels.max()) + 1
        self.weights = np.asarray(weights, dtype=np.float64)
        self.alphas = check_alphas(alphas)
        self.eps = float(np.finfo(np.dtype(dtype)).eps)
        self.scales = [np.sqrt(w)[self.labels] for w in self.weights]
        self.solvers = [FoldSolver(X64 * sc, None, self.alphas, inner_splits, backend=backend, dtype=dtype,
                                   scoring=scoring, method=method, targets_batch=targets_batch, keep_coef=True,
                                   n_jobs=n_jobs) for sc in self.scales]
        self.X_test = Xte

    def fit_chunk(self, Y_train):
        """Best (weights, alpha) per target by inner CV and the coefficients of that refit."""
        Y = check_matrix(Y_train, "Y_train")
        p, v = self.labels.size, Y.shape[1]
        best_score = np.full(v, -np.inf)
        best_w = np.full((self.n_bands, v), np.nan)
        best_alpha = np.full(v, np.nan)
        coef = np.full((p, v), np.nan, dtype=np.float32)
        intercept = np.full(v, np.nan, dtype=np.float32)
        cv_scores = np.full((len(self.weights), v), np.nan, dtype=np.float32)
        for i, (w, scale, solver) in enumerate(zip(self.weights, self.scales, self.solvers)):
            res = solver.fit_chunk(Y)
            score = np.nanmax(np.where(np.isnan(res.cv_scores), -np.inf, res.cv_scores), 0)
            score = np.where(np.isfinite(score), score, np.nan)
            cv_scores[i] = score
            better = np.isfinite(score) & (score > best_score + self.eps)
            if better.any():
                best_score[better] = score[better]
                best_w[:, better] = w[:, None]
                best_alpha[better] = res.best_alpha[better]
                coef[:, better] = res.coef[:, better] * scale[:, None]
                intercept[better] = res.intercept[better]
        return BandedResult(best_alpha, best_w, cv_scores, coef, intercept)

    def predict(self, res: "BandedResult"):
        """Predictions (n_test, v) float64 of the test rows given at construction."""
        if self.X_test is None:
            raise DataError("BandedSolver.predict needs X_test; it was built with X_test=None")
        return self.X_test @ np.nan_to_num(res.coef.astype(np.float64)) + res.intercept.astype(np.float64)
