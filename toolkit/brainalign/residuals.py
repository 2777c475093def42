"""Residual features: the target condition minus its ridge prediction from predictor conditions, cross-fitted.

For outer fold k (its runs held out from the encoding model) every row's residual is *out-of-sample*:

- a row of the held-out fold k: target − prediction of the regression fitted on all training folds;
- a row of training fold j: target − prediction of the regression fitted on the training folds other
  than j (the training runs of fold k without j).

The encoding fit's inner CV holds out one training fold j at a time (brainalign.fitdata.fold_splits), so the
residual of an inner-validation row came from a regression fitted on exactly the inner-training rows,
the relation the outer test rows have to the outer-training rows, and no regression ever saw the row it
residualises. (A regression fitted on the training runs and applied in-sample, as before, shrinks the
training residuals towards zero and leaves the test residuals larger and still partly predictable from
the predictors; the encoding model then learns on features distributed unlike those it is tested on.)

The penalty is chosen per layer and outer fold by the same leave-one-training-fold-out CV over
``align.residual_alphas``: the alpha minimising the squared prediction error of the target, summed over
all target columns and all training rows (= maximising the pooled out-of-sample R²; the columns are
z-scored per run, so each weighs about equally); ties go to the larger alpha. The chosen alpha then
serves both the cross-fitted training residuals and the test fold's. Only this one scalar per layer
and fold is informed by a training fold's own rows (its coefficients never are).

The regression is instantaneous: TR t of the target is predicted from TR t of the predictors (FIR
delays are applied afterwards to the residual, by align). Features shared with a lag are therefore
not removed; the conditions come from the same stimulus window, so their shared content is
simultaneous.

All regressions use ridge with intercept (scikit-learn ``Ridge(alpha, fit_intercept=True)``) in float64.
Per-fold sufficient statistics (P^T P, P^T T, sums) are computed once, so each regression costs one
eigendecomposition of the (q, q) Gram matrix (q predictor columns) or, when q exceeds the rows it is
fitted on, of the (n, n) linear kernel.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, DataError
from .ridge.backend import NumpyBackend
from .ridge.solver import truncated_eigh

_NP = NumpyBackend()


def ridge_residual(target: np.ndarray, predictors: np.ndarray, train: np.ndarray, alpha: float) -> np.ndarray:
    """target − ridge prediction from predictors, the map (with intercept) fitted on rows ``train`` only.

    target (n, d), predictors (n, q), train bool (n,) -> residual (n, d) float64. One fixed penalty and
    no cross-fitting: the primitive (the align stage uses :func:`crossfit_residuals`).
    """
    target = np.asarray(target, np.float64)
    predictors = np.asarray(predictors, np.float64)
    fit = _Regression.from_rows(predictors[train], target[train])
    return target - fit.predict(predictors, [alpha])[0]


class _Regression:
    """Ridge (with intercept) of T on P for every alpha from one decomposition.

    ``V`` (q, r), ``lam`` (r,) eigenvalues of the centred Gram matrix, ``Zp`` = V^T Pc^T Tc (r, d): the
    coefficients for penalty a are V diag(1 / (lam + a)) Zp.
    """

    def __init__(self, mu_p, mu_t, V, lam, Zp):
        self.mu_p, self.mu_t, self.V, self.lam, self.Zp = mu_p, mu_t, V, lam, Zp

    @classmethod
    def from_gram(cls, n, sum_p, sum_t, PtP, PtT):
        """From sufficient statistics of the fitted rows (primal form, q <= n)."""
        mu_p, mu_t = sum_p / n, sum_t / n
        G = PtP - n * np.outer(mu_p, mu_p)
        C = PtT - n * np.outer(mu_p, mu_t)
        lam, V = truncated_eigh(_NP, G, max(G.shape[0], n))
        return cls(mu_p, mu_t, V, lam, V.T @ C)

    @classmethod
    def from_rows(cls, P, T):
        """From the fitted rows themselves (dual form when q > n)."""
        n, q = P.shape
        if q <= n:
            return cls.from_gram(n, P.sum(0), T.sum(0), P.T @ P, P.T @ T)
        mu_p, mu_t = P.mean(0), T.mean(0)
        Pc, Tc = P - mu_p, T - mu_t
        lam, U = truncated_eigh(_NP, Pc @ Pc.T, max(n, q))
        s = np.sqrt(lam)
        V = (Pc.T @ U) / s
        return cls(mu_p, mu_t, V, lam, s[:, None] * (U.T @ Tc))

    def project(self, P):
        """(P − mu_p) V: the evaluation map of rows P (n_e, r)."""
        return (np.asarray(P, np.float64) - self.mu_p) @ self.V

    def predict_from(self, M, alpha):
        return M @ (self.Zp / (self.lam + alpha)[:, None]) + self.mu_t

    def predict(self, P, alphas):
        M = self.project(P)
        return [self.predict_from(M, a) for a in alphas]


@dataclass
class CrossFit:
    """Result of :func:`crossfit_residuals` for one outer fold."""

    residual: np.ndarray     # (n, d) float64: every row out-of-sample (see the module doc)
    alpha: float             # the penalty chosen by leave-one-training-fold-out CV
    cv_r2: np.ndarray        # (n_alphas,) pooled out-of-sample R² of the target per alpha
    min_fit_rows: int        # rows of the smallest regression fitted (training folds minus one)


class _FoldStats:
    """Per-fold sufficient statistics; a regression on any union of folds is a sum of them.

    The Gram sums are kept only when every regression of the cross-fit (all folds but two) has at least
    as many rows as predictor columns (primal form); otherwise each regression uses its rows (dual form).
    """

    def __init__(self, P, T, groups):
        self.P, self.T = P, T
        self.labels = np.unique(groups)
        self.rows = {g: np.flatnonzero(groups == g) for g in self.labels}
        sizes = sorted(idx.size for idx in self.rows.values())
        self.primal = P.shape[1] <= sum(sizes[:-2])
        self.stats = {}
        for g, idx in self.rows.items():
            Pg, Tg = P[idx], T[idx]
            self.stats[g] = (idx.size, Pg.sum(0), Tg.sum(0)) + ((Pg.T @ Pg, Pg.T @ Tg) if self.primal else ())

    def fit(self, folds) -> _Regression:
        folds = [g for g in self.labels if g in set(folds)]
        if self.primal:
            parts = [self.stats[g] for g in folds]
            return _Regression.from_gram(*(sum(p[i] for p in parts) for i in range(5)))
        idx = np.concatenate([self.rows[g] for g in folds])
        return _Regression.from_rows(self.P[idx], self.T[idx])


def crossfit_residuals(target, predictors, groups, fold, alphas) -> CrossFit:
    """Cross-fitted residual features of outer fold ``fold`` (module doc).

    target (n, d), predictors (n, q): per-run z-scored features of every run, rows in run order;
    groups (n,): the outer-fold label of each row (align's fold of the row's run); fold: the held-out
    label; alphas: candidate penalties. Needs at least two training folds.
    """
    return next(crossfit_folds(target, predictors, groups, [fold], alphas))


def crossfit_folds(target, predictors, groups, folds, alphas) -> Iterator[CrossFit]:
    """:func:`crossfit_residuals` of each outer fold in ``folds``, one at a time; the per-fold sufficient
    statistics, which do not depend on the held-out fold, are computed once for all of them."""
    T = np.asarray(target, np.float64)
    P = np.asarray(predictors, np.float64)
    groups = np.asarray(groups)
    alphas = np.asarray(alphas, np.float64).reshape(-1)
    if T.ndim != 2 or P.ndim != 2 or T.shape[0] != P.shape[0] or groups.shape != (T.shape[0],):
        raise DataError(f"residuals: target {T.shape}, predictors {P.shape} and groups {groups.shape} must be "
                        "(n, d), (n, q) and (n,)")
    if alphas.size == 0 or not np.all(np.isfinite(alphas) & (alphas > 0)):
        raise ConfigError(f"align.residual_alphas: expected positive numbers, got {alphas.tolist()}")
    stats = _FoldStats(P, T, groups)
    for fold in folds:
        yield _crossfit(stats, fold, alphas)


def _crossfit(stats: _FoldStats, fold, alphas) -> CrossFit:
    """The cross-fit of held-out fold ``fold`` from the statistics of every fold."""
    P, T = stats.P, stats.T
    train = [g for g in stats.labels if g != fold]
    if fold not in stats.rows or len(train) < 2:
        raise DataError(f"residuals: fold {fold!r} needs to be one of {len(stats.labels)} folds with at least two "
                        "others to cross-fit on")
    sse = np.zeros(alphas.size)
    sst = 0.0
    inner = {}
    for j in train:
        reg = stats.fit([g for g in train if g != j])
        Tj = T[stats.rows[j]]
        M = reg.project(P[stats.rows[j]])
        inner[j] = (reg, M)
        sse += [((Tj - reg.predict_from(M, a)) ** 2).sum() for a in alphas]
        sst += ((Tj - reg.mu_t) ** 2).sum()
    order = np.argsort(-alphas, kind="stable")                      # ties -> the larger alpha
    best = float(alphas[order[np.argmin(sse[order])]])
    out = np.empty_like(T)
    for j, (reg, M) in inner.items():
        out[stats.rows[j]] = T[stats.rows[j]] - reg.predict_from(M, best)
    full = stats.fit(train)
    test = stats.rows[fold]
    out[test] = T[test] - full.predict(P[test], [best])[0]
    min_rows = min(sum(stats.rows[g].size for g in train if g != j) for j in train)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv_r2 = 1.0 - sse / sst if sst > 0 else np.full(alphas.size, np.nan)
    return CrossFit(out, best, cv_r2, min_rows)
