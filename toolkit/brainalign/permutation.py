"""Per-subject voxel-wise significance of encoding scores by blocked (circular-shift) permutation that refits.

The statistic is the fit stage's score: the mean over outer folds of the Pearson r between the held-out
prediction and the BOLD over the fold's rows (``r_mean`` in scores.h5; a fold is one run, or several
consecutive runs with ``align.outer_folds``). Its null (:class:`RefitNull`, the stage's): permutation i shifts
the BOLD of every run circularly by one random lag (one lag per run and permutation, shared by every voxel and
feature set, so spatial correlation is kept; the shift keeps the BOLD's autocorrelation, which shuffling TRs
would destroy), **once**, and uses the shifted BOLD both as training targets and as test data: every outer
fold's ridge model is refitted on permuted data, with each voxel's per-fold alpha from the real data's inner
CV held fixed (bench/permutation_size.py compares re-selecting them under every permutation).

Why refit: each fold's model is fitted on the other runs' BOLD, so under H0 the folds' r values are correlated;
a null that keeps every fold's prediction fixed and shifts only the test BOLD (:func:`circular_shift_null`,
the former stage null, kept for comparison) misses that correlation and is anti-conservative by about 2x on
the stage's path (tests/test_permutation_size.py). It is valid only for predictions that really are fixed.

What the refitting null assumes (H0: the BOLD is independent of the design):

- within a run, the BOLD is exchangeable under circular shifts (exact for a circularly stationary series;
  for a stationary, non-circular one approximate: the shifted series has one wrap-around join);
- runs are independent of each other; each run gets its own lag;
- the fixed alphas' dependence on the real data is negligible (measured, docs/methods.md).

The lags are drawn uniformly from *all* n lags 0 … n−1 of a run (the cyclic group, the unshifted lag
included): then the observed statistic is one draw of its own permutation distribution and the
p-value is valid (Phipson & Smyth 2010). Leaving out lags near zero (``min_shift`` > 0, formerly the
default of 10 TRs) breaks this: the circular cross-correlations of centred series sum to zero over
all lags, and the lags left out are those most like the observed one, so the remaining null is
shifted away from it.

For a condition difference ``r_a - r_b`` the *same* lags are applied to both feature sets and the null is
``null_a - null_b``: it is the distribution of the difference between two models refitted on BOLD that is not
time-locked to the stimulus. Rejecting it says "a beats b by more than two non-aligned models would"; it is
not an exact test of r_a = r_b when both models predict (use the group t-tests in stats.h5 for that).

p-values use the +1 correction (Phipson & Smyth 2010): p = (1 + #{null >= observed}) / (1 + n_perm).

``run_permutation`` is the stage: per subject and requested feature set it rebuilds the fit's fold models at
one layer from design.h5 / bold.h5 with each voxel's alpha from scores.h5 (the fit's engine in float64, the
same model the fit scored), runs the refitting null and writes ``{output}/permutation.h5``:

================================  ==============  ========  ==========================================
dataset                           shape           dtype     meaning
================================  ==============  ========  ==========================================
/r/observed                       (S, F, V)       float32   mean over outer folds of the held-out r (= the
                                                            layer's r_mean in scores.h5 up to float32)
/r/p                              (S, F, V)       float32   one-sided (r > null) permutation p, +1 corrected
/r/q                              (S, F, V)       float32   BH-FDR of p over voxels, per subject and F (with
                                                            stats.fdr_family all: over voxels of every F and C)
/r/significant                    (S, F, V)       uint8     q <= stats.q
/contrast/C/{observed,p,q}        (S, V)          float32   the same for r_a - r_b (contrast C, b not null)
/contrast/C/significant           (S, V)          uint8     q <= stats.q
/shifts                           (S, n_perm, K)  int32     the lag of each permutation and run (TRs)
================================  ==============  ========  ==========================================

S subjects, F permuted feature sets, V voxels (voxel order of scores.h5), K runs. Root attrs: ``subjects``,
``feature_sets``, ``contrasts``, ``contrast_a``, ``contrast_b`` (string lists), ``layer`` (int, the model
layer), ``fdr_family``, ``fdr`` (what each BH correction spans), ``n_permutations`` (= ``n_perm``),
``min_shift``, ``seed``, ``q``, ``tail`` ("greater"), ``statistic``, ``null`` (short name, "circular-shift
refit"), ``null_description`` (one sentence: what is permuted, that fold models are refitted, what is fixed),
``scores_created``, ``stage_key`` / ``stage_record`` and the provenance attrs. NaN where the observed r is NaN (constant voxel).
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np

from .errors import ConfigError, DataError
from .interrupt import Interrupted
from .log import get_logger
from .paths import PERMUTATION, SCORES

log = get_logger("permutation")

NULL_NAME = "circular-shift refit"


# ---- pure array functions ------------------------------------------------------------------------

def run_bounds(runs):
    """(start, stop) row ranges of the contiguous runs in ``runs`` (n,) int; DataError if a run is split."""
    runs = np.asarray(runs)
    if runs.ndim != 1 or runs.size == 0:
        raise DataError(f"runs must be a non-empty 1-D array, got shape {runs.shape}")
    edges = np.flatnonzero(np.diff(runs)) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [runs.size]])
    labels = runs[starts]
    if len(np.unique(labels)) != len(labels):
        raise DataError("runs: each run's TRs must be contiguous (a run label appears in two blocks)")
    return list(zip(starts.tolist(), stops.tolist()))


def fold_lagged(pred, y, runs, groups=None):
    """Per-run lagged contributions to the per-fold Pearson r, for every lag, by FFT.

    pred, y: (n, v); runs: (n,) run label per row (runs contiguous); groups: (n,) outer-fold label per row
    (None: one fold per run). Each run lies in one fold; a fold's r is computed over all of its rows
    (centred and normalised over the fold, as the fit scores a fold), so the r of fold g with run k shifted
    by lag s_k is ``sum over runs k in g of lagged[k][s_k]``.
    Returns (lagged, fold_of_run): list of float64 (n_k, v) per run (NaN for voxels whose fold r is
    undefined: constant or non-finite over the fold), and (n_runs,) fold label of each run.
    """
    pred, y = np.asarray(pred, dtype=np.float64), np.asarray(y, dtype=np.float64)
    runs = np.asarray(runs)
    if pred.shape != y.shape or pred.ndim != 2 or pred.shape[0] != len(runs):
        raise DataError(f"pred {pred.shape}, y {y.shape} and runs ({len(runs)},) must agree as (n, v), (n, v), (n,)")
    groups = runs if groups is None else np.asarray(groups)
    if groups.shape != runs.shape:
        raise DataError(f"groups {groups.shape} must match runs {runs.shape}")
    bounds = run_bounds(runs)
    for a, b in bounds:
        if np.any(groups[a:b] != groups[a]):
            raise DataError(f"run {runs[a]} spans several outer folds; a run must lie in one fold")
    fold_of_run = np.array([groups[a] for a, _ in bounds])
    pc, yc = np.zeros_like(pred), np.zeros_like(y)
    den = {}
    for g in np.unique(fold_of_run):
        rows = groups == g
        with np.errstate(invalid="ignore"):
            pc[rows] = pred[rows] - pred[rows].mean(axis=0)
            yc[rows] = y[rows] - y[rows].mean(axis=0)
            d = np.sqrt((pc[rows] ** 2).sum(axis=0) * (yc[rows] ** 2).sum(axis=0))
        den[g] = np.where(np.isfinite(d) & (d > 0), d, np.nan)
    pc, yc = np.nan_to_num(pc), np.nan_to_num(yc)
    lagged = []
    for (a, b), g in zip(bounds, fold_of_run):
        n = b - a
        # sum_t p[t] y[t - k] = irfft(rfft(p) * conj(rfft(y)))[k]
        cc = np.fft.irfft(np.fft.rfft(pc[a:b], axis=0) * np.conj(np.fft.rfft(yc[a:b], axis=0)), n=n, axis=0)
        lagged.append(cc / den[g])
    return lagged, fold_of_run


def lagged_r(pred, y):
    """Pearson r of ``pred`` with ``np.roll(y, k, axis=0)`` for every lag k: float64 (n, v), row k = lag k.

    NaN for a constant/non-finite column."""
    pred = np.asarray(pred)
    return fold_lagged(pred, y, np.zeros(pred.shape[0], int))[0][0]


def draw_shifts(run_lengths, n_perm, rng, min_shift=0):
    """Random lags (n_perm, K) int64. ``min_shift`` 0 (the default): the lag of run k is uniform on all
    n_k lags 0 … n_k − 1 (the valid null, module doc); m > 0: uniform on [m, n_k − m] (lags within m of
    zero left out, which makes the test anti-conservative; kept for comparisons)."""
    run_lengths = [int(n) for n in run_lengths]
    if min_shift < 0:
        raise ConfigError(f"stats.permutation_min_shift must be >= 0, got {min_shift}")
    short = [n for n in run_lengths if n - 2 * min_shift < 0 or n < 2]
    if short:
        raise DataError(f"a run of {short[0]} TRs is too short for circular shifts of at least {min_shift} TRs "
                        "(lower stats.permutation_min_shift)")
    if min_shift == 0:
        return np.stack([rng.integers(0, n, size=int(n_perm)) for n in run_lengths], axis=1)
    return np.stack([rng.integers(min_shift, n - min_shift + 1, size=int(n_perm)) for n in run_lengths], axis=1)


def null_from_lagged(lagged, shifts, fold_of_run=None):
    """Mean over folds of the fold r with run k shifted by ``shifts[:, k]``: (n_perm, v) float64.

    lagged, fold_of_run: from :func:`fold_lagged` (fold_of_run None: one fold per run). Folds whose r is
    NaN for a voxel are left out of that voxel's mean (as the fit's nanmean over folds).
    """
    shifts = np.asarray(shifts)
    fold_of_run = np.arange(len(lagged)) if fold_of_run is None else np.asarray(fold_of_run)
    total = np.zeros((shifts.shape[0], lagged[0].shape[1]))
    count = np.zeros_like(total)
    for g in np.unique(fold_of_run):
        r = sum(lagged[k][shifts[:, k]] for k in np.flatnonzero(fold_of_run == g))
        ok = np.isfinite(r)
        total += np.where(ok, r, 0.0)
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def observed_from_lagged(lagged, fold_of_run=None):
    """The unshifted statistic (v,): mean over folds of the lag-0 fold r (NaN folds left out)."""
    return null_from_lagged(lagged, np.zeros((1, len(lagged)), np.int64), fold_of_run)[0]


def circular_shift_null(pred, y, runs, n_perm, rng, min_shift=0, shifts=None, groups=None):
    """Null distribution of the mean-over-folds Pearson r under within-run circular shifts of ``y``.

    pred, y: (n, v) held-out predictions and BOLD; runs: (n,) run label of each row (runs contiguous);
    groups: (n,) outer-fold label per row (None: one fold per run). Permutation i shifts run k of y by
    ``shifts[i, k]`` TRs (np.roll within the run); lags are drawn by :func:`draw_shifts` unless given.
    Returns float64 (n_perm, v).
    """
    lagged, fold_of_run = fold_lagged(pred, y, runs, groups)
    if shifts is None:
        shifts = draw_shifts([c.shape[0] for c in lagged], n_perm, rng, min_shift)
    return null_from_lagged(lagged, shifts, fold_of_run)


def perm_pvalues(observed, null, tail="greater"):
    """Permutation p-values with the +1 correction: (1 + #{null >= obs}) / (1 + n_valid).

    observed: (v,); null: (n_perm, v). ``tail`` 'greater' (default) or 'two-sided' (compares |values|).
    Non-finite null draws are not counted; NaN observed -> NaN. Returns float64 (v,).
    """
    obs = np.asarray(observed, dtype=np.float64)
    null = np.asarray(null, dtype=np.float64)
    if null.ndim != 2 or null.shape[1:] != obs.shape:
        raise DataError(f"perm_pvalues: null {null.shape} must be (n_perm,) + observed's shape {obs.shape}")
    if tail == "two-sided":
        obs, null = np.abs(obs), np.abs(null)
    elif tail != "greater":
        raise ConfigError(f"permutation tail {tail!r}: choose 'greater' or 'two-sided'")
    valid = np.isfinite(null)
    with np.errstate(invalid="ignore"):
        exceed = (valid & (null >= obs)).sum(axis=0)
    p = (1.0 + exceed) / (1.0 + valid.sum(axis=0))
    return np.where(np.isfinite(obs), p, np.nan)


class HeldoutRidge:
    """Float64 ridge (with intercept) of one leave-one-run-out fold: X-only work once, then any targets.

    X: (n, p) design of this fold; test: (n,) bool rows of the held-out run (the model is fitted on the rest).
    """

    def __init__(self, X, test):
        from .ridge import factorize, get_backend

        X = np.asarray(X, dtype=np.float64)
        self.test = np.asarray(test, dtype=bool)
        Xtr = X[~self.test]
        mu = Xtr.mean(axis=0)
        self.U, self.s, V = factorize(get_backend("numpy"), Xtr - mu)
        self.M = (X[self.test] - mu) @ V                           # (n_test, rank)

    def predict(self, Y_train, alphas):
        """Y_train (n_train, v), alphas (v,) (NaN: invalid voxel) -> float64 (n_test, v) predictions."""
        Y_train = np.asarray(Y_train, dtype=np.float64)
        alphas = np.asarray(alphas, dtype=np.float64)
        mu_y = Y_train.mean(axis=0)
        Z = self.U.T @ (Y_train - mu_y)                             # (rank, v)
        out = np.full((self.M.shape[0], Y_train.shape[1]), np.nan)
        for a in np.unique(alphas[np.isfinite(alphas)]):
            cols = np.flatnonzero(alphas == a)
            out[:, cols] = self.M @ ((self.s / (self.s * self.s + a))[:, None] * Z[:, cols]) + mu_y[cols]
        return out


def heldout_predictions(X, Y, groups, alphas, folds=None):
    """Leave-one-fold-out ridge predictions with a given alpha per (fold, voxel), in float64.

    X: (n, p) design, or a callable ``X(k) -> (n, p)`` for fold-specific designs (residual features);
    Y: (n, v); groups: (n,) outer-fold label per row (the run, or the fold of grouped runs); fold k holds out
    the rows with ``groups == folds[k]`` (default: the sorted labels); alphas: (K, v), NaN = invalid voxel
    (prediction NaN). The model per fold is ridge with intercept fitted on the other folds' rows
    (scikit-learn ``Ridge(alpha, fit_intercept=True)``).
    Returns float64 (n, v): each row predicted by the model that did not see its fold.
    """
    Y = np.asarray(Y, dtype=np.float64)
    groups = np.asarray(groups)
    folds = np.unique(groups) if folds is None else np.asarray(folds)
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.shape != (len(folds), Y.shape[1]):
        raise DataError(f"alphas shape {alphas.shape} != (folds, voxels) {(len(folds), Y.shape[1])}")
    pred = np.full(Y.shape, np.nan)
    for k, label in enumerate(folds):
        test = groups == label
        model = HeldoutRidge(X(k) if callable(X) else X, test)
        pred[test] = model.predict(Y[~test], alphas[k])
    return pred


# ---- the refitting null (the stage's) ------------------------------------------------------------

class RefitNull:
    """Outer-fold ridge models refitted under circular shifts of the BOLD, from per-run sufficient statistics.

    Permutation i shifts run j of the BOLD by ``shifts[i, j]`` TRs, once, and the shifted BOLD is used
    everywhere: as the training targets of every fold model that trains on run j and as the test data of the
    fold that holds run j out. Every fold model is refitted (same design, same per-voxel alpha as the real
    data's fit: the alphas are held fixed) and the statistic is recomputed: the mean over outer folds of the
    held-out Pearson r (the fit's ``r_mean``). Lag 0 in every run gives the observed statistic.

    The fit's engine does the work (brainalign.ridge.suffstats.NestedEngine: per-atom X'Y, sums and sums of
    squares; each outer training Gram eigendecomposed once). A circular shift of run j leaves its sums and
    sums of squares (and finiteness, min, max) unchanged and changes only its cross products with the design,
    ``X_j' roll(Y_j, s)``; a permutation recomputes those (n p v multiply-adds over all runs; memory one
    (atoms, p, v) array) and re-scores every outer fold with the given alphas (``outer_r``: 2 r p v + r^2 v per
    fold; r = rank <= p). Fold-specific designs pay the cross products once per fold.

    X: (n, p) design shared by the folds, or a callable ``X(k) -> (n, p)`` (fold-specific designs: residual
    features, one engine per fold); groups: (n,) outer-fold label per row; runs: (n,) run label (contiguous,
    each run in one fold); alphas: the fit's alpha grid (``fit.alphas``); folds: the fold labels in
    scores.h5 order (default: sorted labels). Equal to refitting a float64 ridge on the shifted data
    (tests/test_permutation.py).
    """

    def __init__(self, X, groups, runs, alphas, folds=None):
        from .ridge.suffstats import NestedEngine

        groups, runs = np.asarray(groups), np.asarray(runs)
        self.bounds = run_bounds(runs)
        self.folds = np.unique(groups) if folds is None else np.asarray(folds)
        for a, b in self.bounds:
            if np.any(groups[a:b] != groups[a]):
                raise DataError(f"run {runs[a]} spans several outer folds; a run must lie in one fold")
        self.grid = np.asarray(alphas, np.float64).reshape(-1)
        splits = []
        for lab in self.folds:
            train, test = np.flatnonzero(groups != lab), np.flatnonzero(groups == lab)
            g = groups[train]
            splits.append(((train, test), [(np.flatnonzero(g != j), np.flatnonzero(g == j)) for j in np.unique(g)]))
        shared = not callable(X)
        self.engines = []                       # (engine, its outer fold index) per fold k
        for k, (outer, inner) in enumerate(splits):
            if shared and k:
                self.engines.append((self.engines[0][0], k))
                continue
            eng = NestedEngine(X if shared else X(k), [s[0] for s in splits] if shared else [outer],
                               [s[1] for s in splits] if shared else [inner], self.grid, dtype="float64")
            self.engines.append((eng, k if shared else 0))
        self.n_folds = len(self.folds)

    def _alpha_index(self, alphas):
        """(K, v) alpha values (NaN: fold left out) -> indices into the grid (-1 for NaN); DataError when a
        value is not on the grid."""
        alphas = np.asarray(alphas, np.float64)
        idx = np.abs(np.log(self.grid)[:, None, None] - np.log(np.where(alphas > 0, alphas, 1.0))[None]).argmin(0)
        ok = np.isfinite(alphas)
        off = ok & ~np.isclose(self.grid[idx], alphas, rtol=1e-5)
        if off.any():
            raise DataError(f"alpha {alphas[off][0]:g} is not in the fit's alpha grid {self.grid.tolist()}")
        return np.where(ok, idx, -1)

    def statistics(self, Y, alphas, shifts):
        """Mean-over-folds held-out r under each permutation: float64 (n_perm, v).

        Y: (n, v) BOLD; alphas: (K, v) per fold and voxel, values of the grid (NaN: fold left out for that
        voxel, as the fit's nan-mean); shifts: (n_perm, n_runs) lags (a row of zeros gives the observed
        statistic).
        """
        Y = np.asarray(Y, dtype=np.float64)
        shifts = np.asarray(shifts, dtype=np.int64)
        K, v = self.n_folds, Y.shape[1]
        if np.shape(alphas) != (K, v):
            raise DataError(f"alphas shape {np.shape(alphas)} != (folds, voxels) {(K, v)}")
        if shifts.ndim != 2 or shifts.shape[1] != len(self.bounds):
            raise DataError(f"shifts shape {shifts.shape} != (n_perm, runs {len(self.bounds)})")
        best = self._alpha_index(alphas)
        r_sum = np.zeros((shifts.shape[0], v))
        count = np.zeros_like(r_sum)
        for eng in dict.fromkeys(e for e, _ in self.engines):   # each design once (shared: one engine)
            st = eng.chunk_stats(Y)
            Y0 = Y - np.asarray(st.shift)
            runs = [(eng.X64[a:b], Y0[a:b], int(eng.labels[a])) for a, b in self.bounds]
            for i, sh in enumerate(shifts):
                C = np.zeros_like(st.C)
                for (Xj, Yj, atom), s in zip(runs, sh):
                    C[atom] += Xj.T @ np.roll(Yj, s, axis=0)          # the run's cross products, shifted
                st_i = replace(st, C=C)
                for k in (k for k, (e, _) in enumerate(self.engines) if e is eng):
                    r = eng.outer_r(st_i, self.engines[k][1], best[k]).astype(np.float64)
                    ok = np.isfinite(r)
                    r_sum[i] += np.where(ok, r, 0.0)
                    count[i] += ok
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, r_sum / count, np.nan)

    def test_statistic(self, Y, alphas, shifts):
        """(observed (v,), null (n_perm, v)): lag 0 everywhere, then the permutations of ``shifts``."""
        zero = np.zeros((1, len(self.bounds)), np.int64)
        stat = self.statistics(Y, alphas, np.concatenate([zero, np.asarray(shifts, np.int64)]))
        return stat[0], stat[1:]


# ---- the stage -----------------------------------------------------------------------------------

def _settings(cfg):
    st = cfg.stats
    n_perm = int(st.permutations or 0)
    layer = st.permutation_layer
    fsets = st.permutation_feature_sets
    min_shift = int(st.permutation_min_shift)
    seed = int(st.permutation_seed)
    if n_perm < 0:
        raise ConfigError(f"stats.permutations must be >= 0, got {n_perm}")
    return n_perm, layer, fsets, min_shift, seed


def _resolve_layer(layer, layers, path):
    if layer is None:
        return len(layers) - 1
    if layer in layers:
        return layers.index(layer)
    if -len(layers) <= layer < 0:
        return layer % len(layers)
    raise ConfigError(f"stats.permutation_layer: {layer} is not a layer in {path} "
                      f"(layers: {', '.join(map(str, layers))})")


PARTS_DIR = "permutation_parts"


class SubjectParts:
    """Per-subject results of an unfinished permutation stage: ``{output}/permutation_parts/sub-XX.h5``
    (atomic, with the stage key), so an interrupted run resumes after its last finished subject. Parts of
    another key are ignored; the directory is removed once permutation.h5 is written."""

    def __init__(self, directory: Path, key: str, contrasts: list, force: bool):
        self.dir, self.key, self.contrasts = Path(directory), key, contrasts
        if force:
            self.remove()

    def _path(self, s) -> Path:
        return self.dir / f"sub-{s}.h5"

    def load(self, s, si, obs, pv, cobs, cp, shifts) -> bool:
        from .h5io import is_complete

        p = self._path(s)
        if not is_complete(p):
            return False
        with h5py.File(p, "r") as f:
            if str(f.attrs.get("stage_key", "")) != self.key:
                return False
            obs[si], pv[si], shifts[si] = f["observed"][()], f["p"][()], f["shifts"][()]
            for c in self.contrasts:
                cobs[c][si], cp[c][si] = f[f"contrast/{c}/observed"][()], f[f"contrast/{c}/p"][()]
        log.info("permutation: sub-%s taken from %s (finished by an earlier, interrupted run)", s, p)
        return True

    def save(self, s, si, obs, pv, cobs, cp, shifts, config_text):
        from .h5io import atomic_h5

        with atomic_h5(self._path(s), "permutation-part", config_text, {"stage_key": self.key}) as f:
            f.create_dataset("observed", data=obs[si])
            f.create_dataset("p", data=pv[si])
            f.create_dataset("shifts", data=shifts[si])
            for c in self.contrasts:
                f.create_dataset(f"contrast/{c}/observed", data=cobs[c][si])
                f.create_dataset(f"contrast/{c}/p", data=cp[c][si])

    def remove(self):
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def run_permutation(cfg, force: bool = False):
    """The permutation stage (``stats.permutations`` > 0): scores.h5 + design.h5 + bold.h5 -> permutation.h5.

    Returns the path written, or None when ``stats.permutations`` is 0 (off). Skipped when permutation.h5 is
    current (its stage key: brainalign.stagekeys; unless ``force``).
    """
    from .fitdata import FitInputs, Unit
    from .h5io import atomic_h5, open_h5, read_str_attr, str_attr
    from .log import progress
    from .stagecheck import stage_check
    from .contrasts import resolve_contrasts
    from .fdr import fdr_by_family, significant

    n_perm, layer, fsets, min_shift, seed = _settings(cfg)
    path = Path(cfg.output) / PERMUTATION
    if n_perm == 0:
        log.info("permutation: stats.permutations is 0; per-subject permutation tests are off")
        return None
    out = Path(cfg.output)
    scores_path = out / SCORES
    key = stage_check(cfg, "permutation", force)
    if key.current:
        return path
    with open_h5(scores_path, "scores file", require=("alpha", "r_mean")) as f:
        scores_created = str(f.attrs.get("created", ""))
        score_fs = read_str_attr(f, "feature_sets")
        score_layers = [int(x) for x in np.atleast_1d(f.attrs["layers"])]
        subjects = read_str_attr(f, "subjects")
    fsets = list(fsets) if fsets else list(score_fs)
    for i, fs in enumerate(fsets):
        if fs not in score_fs:
            raise ConfigError(f"stats.permutation_feature_sets[{i}]: {fs!r} is not a feature set in {scores_path} "
                              f"({', '.join(score_fs)})")
    li = _resolve_layer(layer, score_layers, scores_path)
    contrasts = [c for c in resolve_contrasts(cfg, score_fs) if c.b is not None and c.a in fsets and c.b in fsets]
    q_level = float(cfg.stats.q)

    inp = FitInputs(cfg)
    try:
        if inp.subjects != subjects or inp.layers != score_layers or inp.feature_sets != score_fs:
            raise DataError(f"{scores_path} does not match design.h5/bold.h5 (subjects, layers or feature sets "
                            "differ); re-run fit")
        runs, groups, V, S, F = inp.runs, inp.groups, inp.n_vox, len(subjects), len(fsets)
        lengths = [b - a for a, b in run_bounds(runs)]
        if min_shift > 0:
            log.warning("permutation: stats.permutation_min_shift = %d leaves lags near zero out of the null, "
                        "which makes the p-values anti-conservative (0 draws every lag; see brainalign.permutation)",
                        min_shift)
        folds = np.arange(len(inp.folds))                         # fold k holds out rows with groups == k
        obs = np.full((S, F, V), np.nan, np.float32)
        pv = np.full((S, F, V), np.nan, np.float32)
        cobs = {c.name: np.full((S, V), np.nan, np.float32) for c in contrasts}
        cp = {c.name: np.full((S, V), np.nan, np.float32) for c in contrasts}
        all_shifts = np.empty((S, n_perm, len(lengths)), np.int32)
        log.info("permutation: %d subjects x %d feature sets at layer %d, %d voxels, %d permutations "
                 "(min shift %d TRs), %d contrasts", S, F, score_layers[li], V, n_perm, min_shift, len(contrasts))
        # the fold models of each feature set: designs and their eigendecompositions, shared by every subject
        per_fold = [bool(inp.design["design"][fs].attrs.get("per_fold", 0)) for fs in fsets]
        models = {fs: RefitNull((lambda k, fsi=score_fs.index(fs): inp.X(Unit(fsi, li, k))) if pf
                                else inp.X(Unit(score_fs.index(fs), li, 0)), groups, runs, cfg.fit.alphas, folds)
                  for fs, pf in zip(fsets, per_fold)}
        parts = SubjectParts(out / PARTS_DIR, key.key, [c.name for c in contrasts], force)
        finished = []
        try:
            with open_h5(scores_path, "scores file") as f:
                alpha_ds = f["alpha"]
                for si, s in enumerate(progress(subjects, desc="permutation subjects")):
                    if parts.load(s, si, obs, pv, cobs, cp, all_shifts):     # finished by an interrupted run
                        continue
                    rng = np.random.default_rng([seed, si])
                    shifts = draw_shifts(lengths, n_perm, rng, min_shift)
                    all_shifts[si] = shifts
                    if inp.rows[s] is not None:      # missing runs (data.missing_runs: skip): left NaN
                        log.warning("permutation: sub-%s lacks some runs; its permutation tests are skipped (NaN)", s)
                        parts.save(s, si, obs, pv, cobs, cp, all_shifts, cfg.text)
                        finished.append(s)
                        continue
                    Yds = inp.bold["bold"][f"sub-{s}"]
                    for a, b in inp.chunks:
                        Y = Yds[:, a:b]
                        nulls = {}
                        for fi, fs in enumerate(fsets):
                            alphas = alpha_ds[si, score_fs.index(fs), li, :, a:b]
                            o, null = models[fs].test_statistic(Y, alphas, shifts)
                            obs[si, fi, a:b], pv[si, fi, a:b] = o, perm_pvalues(o, null)
                            nulls[fs] = (o, null)
                        for c in contrasts:
                            (oa, na), (ob, nb) = nulls[c.a], nulls[c.b]
                            cobs[c.name][si, a:b] = oa - ob
                            cp[c.name][si, a:b] = perm_pvalues(oa - ob, na - nb)
                    parts.save(s, si, obs, pv, cobs, cp, all_shifts, cfg.text)
                    finished.append(s)
        except Interrupted as e:
            e.kept = (f"{len(finished)} subject(s) finished in this run saved in {parts.dir}; a re-run computes "
                      "only the rest")
            raise
        with open_h5(scores_path, "scores file") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.stack([f["r_mean"][:, score_fs.index(fs), li, :] for fs in fsets], axis=1)
            dev = np.nanmax(np.abs(ref - obs)) if np.isfinite(obs).any() else 0.0
        if dev > 1e-3:
            log.warning("permutation: recomputed r differs from scores.h5 r_mean by up to %.2g", dev)
    finally:
        inp.close()

    with atomic_h5(path, "permutation", cfg.text, dict(key.attrs, scores_created=scores_created)) as g:
        g.attrs["subjects"] = str_attr(subjects)
        g.attrs["feature_sets"] = str_attr(fsets)
        g.attrs["contrasts"] = str_attr([c.name for c in contrasts])
        g.attrs["contrast_a"] = str_attr([c.a for c in contrasts])
        g.attrs["contrast_b"] = str_attr([c.b for c in contrasts])
        g.attrs["layer"] = int(score_layers[li])
        g.attrs["n_perm"] = n_perm
        g.attrs["min_shift"] = min_shift
        g.attrs["seed"] = seed
        g.attrs["q"] = q_level
        g.attrs["tail"] = "greater"
        g.attrs["statistic"] = "mean over outer folds of the held-out Pearson r (scores.h5 r_mean)"
        g.attrs["n_permutations"] = n_perm
        g.attrs["null"] = NULL_NAME
        g.attrs["null_description"] = (
            "each run's BOLD circularly shifted by one random lag per permutation ("
            + ("uniform on all lags 0..n-1" if min_shift == 0 else f"uniform on [{min_shift}, n-{min_shift}]")
            + ", shared by every voxel and feature set) and used as both training and test data, so every outer "
            "fold's ridge model is refitted on the shifted BOLD; held fixed: the design, the folds and each "
            "voxel's per-fold alpha from the real data's inner CV; p = (1 + #null >= observed) / (1 + n)")
        # BH per subject (rows) over voxels of each test; stats.fdr_family 'all' pools the tests of a subject
        family = cfg.stats.fdr_family
        tests = {f"r:{fs}": pv[:, fi] for fi, fs in enumerate(fsets)} | {f"c:{c.name}": cp[c.name] for c in contrasts}
        qs = fdr_by_family(tests, family == "all", False)
        g.attrs["fdr_family"] = family
        g.attrs["fdr"] = ("Benjamini-Hochberg per subject across voxels and " + (
            "every feature set and contrast together" if family == "all" else "within each feature set or contrast")
            + f" (stats.fdr_family: {family})")
        gr = g.create_group("r")
        q = np.stack([qs[f"r:{fs}"] for fs in fsets], axis=1).astype(np.float32)
        for k, arr in (("observed", obs), ("p", pv), ("q", q), ("significant", significant(q, q_level))):
            gr.create_dataset(k, data=arr, compression="gzip", shuffle=True)
        gc = g.create_group("contrast")
        for c in contrasts:
            gg = gc.create_group(c.name)
            gg.attrs["a"], gg.attrs["b"] = c.a, c.b
            cq = qs[f"c:{c.name}"].astype(np.float32)
            for k, arr in (("observed", cobs[c.name]), ("p", cp[c.name]), ("q", cq),
                           ("significant", significant(cq, q_level))):
                gg.create_dataset(k, data=arr, compression="gzip", shuffle=True)
        g.create_dataset("shifts", data=all_shifts)
    parts.remove()
    log.info("permutation: wrote %s; significant voxels (q <= %g) per subject and feature set: %s", path, q_level,
             {fs: significant(q[:, fi], q_level).sum(axis=-1).tolist() for fi, fs in enumerate(fsets)})
    return path
