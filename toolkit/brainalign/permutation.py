"""Per-subject voxel-wise significance of encoding scores by blocked (circular-shift) permutation.

The statistic is the fit stage's score: the mean over outer folds of the Pearson r between the held-out
prediction and the BOLD over the fold's rows (``r_mean`` in scores.h5; a fold is one run, or several
consecutive runs with ``align.outer_folds``). Its null distribution comes from circularly
shifting the BOLD of each run against the prediction by a random lag (one lag per run and permutation,
shared by every voxel, so spatial correlation is kept; the shift keeps the BOLD's autocorrelation,
which shuffling TRs would destroy).

What the null assumes (H0: the BOLD of a run is independent of the held-out prediction for that run):

- the prediction is fixed: the model was fitted on other runs, so under H0 it carries nothing about the
  held-out run's BOLD;
- within a run, the BOLD is exchangeable under circular shifts (exact for a circularly stationary series;
  for a stationary, non-circular one approximate: the shifted series has one wrap-around join);
- runs are independent of each other; each run gets its own lag.

The lags are drawn uniformly from *all* n lags 0 … n−1 of a run (the cyclic group, the unshifted lag
included): then the observed statistic is one draw of its own permutation distribution and the
p-value is valid (Phipson & Smyth 2010). Leaving out lags near zero (``min_shift`` > 0, formerly the
default of 10 TRs) breaks this: the circular cross-correlations of centred series sum to zero over
all lags, and the lags left out are those most like the observed one, so the remaining null is
shifted away from it — on AR(1) nulls (phi 0.7, 76-TR runs) 9 % of null voxels reached p <= 0.05.
With every lag, AR(1) nulls give 0.050 ± 0.002 at 0.05 and 0.0107 ± 0.0004 at 0.01 on 76-TR runs
(phi 0.3 and 0.7, 4 runs; tests/test_permutation.py checks phi 0.3 and 0.7, 76 and 400 TRs).

For a condition difference ``r_a - r_b`` the *same* lags are applied to both feature sets and the null is
``null_a - null_b``: it is the distribution of the difference between two models that are not time-locked
to the BOLD. Rejecting it says "a beats b by more than two non-aligned models would"; it is not an exact
test of r_a = r_b when both models predict (use the group t-tests in stats.h5 for that).

p-values use the +1 correction (Phipson & Smyth 2010): p = (1 + #{null >= observed}) / (1 + n_perm).

The per-run correlations for *every* lag are computed at once with FFT cross-correlation (O(n log n) per
run and voxel), so the cost does not grow with the number of permutations beyond an index gather.

``run_permutation`` is the stage: per subject and requested feature set it recomputes the held-out
predictions at one layer from design.h5 / bold.h5 with each voxel's alpha from scores.h5 (a float64 ridge
refit on the same folds, the same model the fit scored) and writes ``{output}/permutation.h5``:

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
layer), ``fdr_family``, ``fdr`` (what each BH correction spans), ``n_perm``, ``min_shift``, ``seed``, ``q``,
``tail`` ("greater"), ``statistic``, ``null``,
``scores_created``, ``stage_key`` / ``stage_record`` and the provenance attrs. NaN where the observed r is NaN (constant voxel).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import numpy as np

from .errors import ConfigError, DataError
from .interrupt import Interrupted
from .log import get_logger
from .paths import PERMUTATION, SCORES

log = get_logger("permutation")


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
        rows_of = {groups[a]: (a, b) for a, b in run_bounds(groups)}   # consecutive runs form a fold
        obs = np.full((S, F, V), np.nan, np.float32)
        pv = np.full((S, F, V), np.nan, np.float32)
        cobs = {c.name: np.full((S, V), np.nan, np.float32) for c in contrasts}
        cp = {c.name: np.full((S, V), np.nan, np.float32) for c in contrasts}
        all_shifts = np.empty((S, n_perm, len(lengths)), np.int32)
        log.info("permutation: %d subjects x %d feature sets at layer %d, %d voxels, %d permutations "
                 "(min shift %d TRs), %d contrasts", S, F, score_layers[li], V, n_perm, min_shift, len(contrasts))
        scratch = out / f".permutation-scratch-{os.getpid()}.h5"
        parts = SubjectParts(out / PARTS_DIR, key.key, [c.name for c in contrasts], force)
        finished = []
        try:
            with open_h5(scores_path, "scores file") as f, h5py.File(scratch, "w") as tmp:
                alpha_ds = f["alpha"]
                preds = {fs: tmp.create_dataset(fs, (len(runs), V), np.float32,
                                                chunks=(len(runs), max(1, min(V, inp.chunk_width))))
                         for fs in fsets}
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
                    # pass 1: held-out predictions of every feature set (X-only work once per fold)
                    for fs in fsets:
                        fsi = score_fs.index(fs)
                        for k, label in enumerate(folds):
                            model = HeldoutRidge(inp.X(Unit(fsi, li, k)), groups == label)
                            x, y = rows_of[label]                     # the held-out run's rows (contiguous)
                            for a, b in inp.chunks:
                                Y = Yds[:, a:b]
                                preds[fs][x:y, a:b] = model.predict(Y[~model.test], alpha_ds[si, fsi, li, k, a:b])
                    # pass 2: lagged correlations, nulls and p-values chunk by chunk
                    for a, b in inp.chunks:
                        Y = Yds[:, a:b]
                        nulls = {}
                        for fi, fs in enumerate(fsets):
                            pred = preds[fs][:, a:b]
                            lagged, fold_of_run = fold_lagged(pred, Y, runs, groups)
                            o = observed_from_lagged(lagged, fold_of_run)
                            null = null_from_lagged(lagged, shifts, fold_of_run)
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
        finally:
            if scratch.exists():
                scratch.unlink()
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
        g.attrs["null"] = ("within-run circular shifts of the BOLD against the held-out prediction, one lag per "
                           "run and permutation shared by all voxels and feature sets, "
                           + ("uniform on all lags 0..n-1" if min_shift == 0 else
                              f"uniform on [{min_shift}, n-{min_shift}]") + "; p = (1+#null>=obs)/(1+n)")
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
