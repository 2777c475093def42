"""Align stage: model features onto the TR grid and BOLD into voxel matrices, ready for the ridge fit.

Per run (= episode) e with n_e TRs (features and BOLD cut to the shorter when they differ by at most
``align.max_tr_mismatch`` TRs):

1. every condition's features (n_e, hidden) per layer are z-scored within the run;
2. residual features (brainalign.residuals): target − ridge prediction from the concatenated predictor
   conditions, *cross-fitted* per outer fold: a training run's residual comes from a regression fitted on
   the other training folds, the held-out fold's from all training folds, the penalty chosen from
   ``align.residual_alphas`` by leave-one-training-fold-out CV per layer and fold; then z-scored within
   each run again;
3. FIR delays (:func:`fir_delays`): the row for TR t holds the features of TRs t−d for each delay d
   (zeros before the run start), giving hidden × n_delays columns; the default delays cover about
   1.5–9 s after each TR at the data's TR;
4. ``align.trim`` TRs are dropped at each run start and end, after delaying.

BOLD is masked, cut to the same TRs, z-scored per run (constant voxels stay 0 and are scored NaN by
the fit) and trimmed identically. Which file holds each subject's run, re-scans and missing runs are decided by
brain.runs.find_runs; the mask / parcellation / CIFTI grayordinates and the ROIs by brain.study.build_space. A
subject's ``/bold/sub-XX`` holds only the runs it has (attr ``runs_present``).
"""
from __future__ import annotations

import json

import numpy as np

from .errors import ConfigError, DataError
from .h5io import atomic_h5, str_attr
from .log import get_logger, progress
from .paths import BOLD, DESIGN, FEATURES
from .residuals import crossfit_folds

log = get_logger("align")


# ---- array functions -----------------------------------------------------------------------------

def zscore(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """z-score along ``axis``; constant columns become 0 (never NaN)."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=axis, keepdims=True)
    sd = x.std(axis=axis, keepdims=True)
    return np.divide(x - mu, sd, out=np.zeros_like(x), where=sd > 1e-12 * np.maximum(1.0, np.abs(mu)))


def delay(x: np.ndarray, delays) -> np.ndarray:
    """FIR delays: (n, d) -> (n, d * len(delays)); block j holds x shifted down by delays[j] rows."""
    n, d = x.shape
    out = np.zeros((n, d * len(delays)), dtype=x.dtype)
    for j, k in enumerate(delays):
        if k < n:
            out[k:, j * d:(j + 1) * d] = x[: n - k]
    return out


# the default FIR window (seconds after the TR's own stimulus): where the canonical HRF has its mass
DEFAULT_DELAY_WINDOW_S = (1.5, 9.0)


def default_delays(tr: float) -> list[int]:
    """Whole-TR delays d >= 1 with d·TR in about DEFAULT_DELAY_WINDOW_S: round(1.5 / TR) … floor(9 / TR).

    TR 1.49 s -> 1…6 (1.5–8.9 s), TR 2 s -> 1…4 (2–8 s), TR 0.72 s -> 2…12.
    """
    lo_s, hi_s = DEFAULT_DELAY_WINDOW_S
    lo = max(1, int(round(lo_s / tr)))
    return list(range(lo, max(lo, int(np.floor(hi_s / tr + 1e-9))) + 1))


def fir_delays(align_cfg, tr: float) -> list[int]:
    """The FIR delays in TRs from ``align.delays`` / ``align.delay_unit`` (null: :func:`default_delays`).

    Delays in seconds are rounded to the nearest whole TR; two that round to the same TR are an error.
    """
    delays = align_cfg.delays
    if delays is None:
        return default_delays(tr)
    if align_cfg.delay_unit == "seconds":
        out = [int(round(d / tr)) for d in delays]
        if len(set(out)) != len(out):
            raise ConfigError(f"align.delays: {list(delays)} s round to the TR delays {out} at TR {tr} s "
                              "(two coincide); give them in TRs or spaced by at least one TR")
        return out
    return [int(d) for d in delays]


def design_from_runs(runs: list[np.ndarray], delays, trim: int, zscore_runs: bool = True) -> np.ndarray:
    """Per-run TR-grid features [(n_e, d)] -> design (sum_e (n_e − 2·trim), d·len(delays)) float32."""
    blocks = []
    for x in runs:
        x = zscore(x) if zscore_runs else np.asarray(x, np.float64)
        xd = delay(x, delays)
        blocks.append(xd[trim: x.shape[0] - trim])
    return np.concatenate(blocks).astype(np.float32)


def run_lengths_after_trim(lengths, trim):
    return [n - 2 * trim for n in lengths]


def fold_groups(episodes, n_folds=None):
    """Outer CV folds: fold index of each run and the folds' names.

    One fold per run by default; with ``n_folds`` consecutive runs are grouped into that many folds of
    near-equal size (np.array_split order), e.g. runs of one episode or season stay together.
    """
    n = len(episodes)
    groups = np.array_split(np.arange(n), n_folds or n)
    fold_of_run = np.empty(n, np.int32)
    for k, g in enumerate(groups):
        fold_of_run[g] = k
    return fold_of_run, ["+".join(episodes[i] for i in g) for g in groups]


# ---- stage ---------------------------------------------------------------------------------------

def _match_lengths(cfg, feat_lengths: dict, bold_lengths: dict) -> dict:
    """Per episode the usable TR count; a mismatch beyond align.max_tr_mismatch names the files."""
    out = {}
    tol = cfg.align.max_tr_mismatch
    for ep, nf in feat_lengths.items():
        n = nf
        for (sub, path), nb in bold_lengths.get(ep, {}).items():
            if abs(nb - nf) > tol:
                raise DataError(
                    f"TR count mismatch for episode {ep}: features have {nf} TRs, {path} has {nb} "
                    f"(sub-{sub}); allowed difference align.max_tr_mismatch={tol}")
            n = min(n, nb)
        if n - 2 * cfg.align.trim < 10:
            raise DataError(f"episode {ep}: only {n} TRs, too few after trimming {cfg.align.trim} at each end")
        out[ep] = n
    return out


def tr_grid_features(cfg, feats, condition, episode) -> np.ndarray:
    """(n_layers, n_trs, hidden) features of one run on the TR grid.

    Windows that end at each TR (the default) are the TR grid already; with ``windows.step`` != TR the
    window features are resampled (``windows.resample``: Lanczos or overlap averaging) from the window end
    times onto TR ends (t + 1) * TR for every TR the windows cover.
    """
    x = feats.get(condition, episode)
    tr, step = cfg.data.bold.tr, cfg.windows.step
    if not step or abs(step - tr) < 1e-9:
        return x
    from .resample import resample_features

    ends = feats.windows(episode)[:, 1]
    tr_ends = (np.arange(int(np.floor(ends[-1] / tr + 1e-6))) + 1.0) * tr
    return np.stack([resample_features(layer, ends, tr_ends, cfg.windows.resample,
                                       window=cfg.windows.resample_lobes, anchor="end") for layer in x])


def _source(run):
    """(path, dataset) as _read_run takes it: the HDF5 dataset name, "cifti", or None for NIfTI."""
    return run.path, run.dataset if run.kind == "hdf5" else ("cifti" if run.kind == "cifti" else None)


def _n_columns(table):
    """Parcel count of HDF5 data: the column count of the first run's dataset."""
    import h5py

    run = table.items()[0][1]
    with h5py.File(run.path, "r") as f:
        shape = f[run.dataset].shape
    if len(shape) != 2:
        raise DataError(f"BOLD HDF5 {run.path}:{run.dataset}: expected 2D (TRs, parcels), got shape {shape}")
    return int(shape[1])


def _read_run(cfg, source, mask):
    """One run's BOLD (n_trs, n_vox) float32, confounds regressed out if the config asks."""
    from .brain.confounds import confounds_path, read_confounds, regress_out
    from .brain.volumes import read_bold_run, read_hdf5_bold

    from .brain.cifti import read_cifti_bold

    path, dataset = source
    if dataset == "cifti":
        y = read_cifti_bold(path, tr=cfg.data.bold.tr)
    else:
        y = read_hdf5_bold(path, dataset) if dataset else read_bold_run(path, mask, tr=cfg.data.bold.tr)
    strategy = cfg.data.bold.confounds
    if strategy:
        if dataset and dataset != "cifti":
            raise DataError(f"data.bold.confounds needs fMRIPrep confound TSVs; {path} is HDF5 parcel data")
        y = regress_out(y, read_confounds(confounds_path(path), strategy))   # once, NIfTI or CIFTI alike
    return y


def _residual_design(cfg, res, grid, fold_of_row, splits, delays, trim, n_folds, attrs):
    """(K, L, N, P) float32 design of residual feature set ``res``: per outer fold k and layer, the
    cross-fitted residuals (brainalign.residuals) delayed and trimmed; ``attrs`` gets the chosen alphas."""
    alphas = np.asarray(cfg.align.residual_alphas, np.float64)
    n_layers = grid[res.target][0].shape[0]
    X = None
    chosen = np.empty((n_folds, n_layers))
    cv_r2 = np.empty_like(chosen)
    for li in range(n_layers):
        tgt = np.concatenate([r[li] for r in grid[res.target]])
        prd = np.concatenate([np.concatenate([r[li] for r in grid[p]]) for p in res.predictors], axis=1)
        # outer fold k: its runs never enter a regression of its design
        for k, cf in enumerate(crossfit_folds(tgt, prd, fold_of_row, range(n_folds), alphas)):
            Xk = design_from_runs(np.split(cf.residual, splits), delays, trim)
            if X is None:
                X = np.empty((n_folds, n_layers) + Xk.shape, np.float32)
            X[k, li] = Xk
            chosen[k, li] = cf.alpha
            cv_r2[k, li] = cf.cv_r2[int(np.flatnonzero(alphas == cf.alpha)[0])]
            if li == 0 and k == 0 and prd.shape[1] > cf.min_fit_rows:
                log.warning("align: residual %s: %d predictor columns exceed the %d TRs its smallest "
                            "cross-fitted regression is fitted on; the penalty, not the data, then shapes "
                            "the residual (use more runs or fewer predictor dimensions)", res.name,
                            prd.shape[1], cf.min_fit_rows)
    edge = np.isin(chosen, [alphas.min(), alphas.max()])
    if alphas.size > 1 and edge.any():
        log.warning("align: residual %s: the chosen penalty is at the edge of align.residual_alphas for %d of "
                    "%d layer x fold cells (widen the grid)", res.name, int(edge.sum()), edge.size)
    log.info("align: residual %s: penalty per layer (median over folds) %s; out-of-sample R² of %s from %s %s",
             res.name, np.median(chosen, 0).tolist(), res.target, "+".join(res.predictors),
             np.round(np.median(cv_r2, 0), 3).tolist())
    attrs.update(alpha=chosen, cv_r2=cv_r2, alphas=alphas, criterion=(
        "cross-fitted: training fold j's rows from a ridge fitted on the other training folds, the held-out "
        "fold's from all training folds; alpha per (fold, layer) minimising the leave-one-training-fold-out "
        "squared error of the target summed over columns (ties: larger alpha); instantaneous (no lags)"))
    return X


def run_align(cfg, force: bool = False):
    from .features import read_features
    from .stagecheck import stage_check

    out = cfg.out
    design_path, bold_path = out / DESIGN, out / BOLD
    key = stage_check(cfg, "align", force)        # what align reads: brainalign.stagetable
    if key.current:
        return design_path

    feats = read_features(out / FEATURES)
    episodes = list(cfg.data.episodes)
    missing = [e for e in episodes if e not in feats.episodes]
    if missing:
        raise DataError(f"{out / 'features.h5'} lacks episodes {', '.join(missing)} (run extract)")
    layers = list(feats.layers)
    b = cfg.data.bold
    from .brain.runs import find_runs
    from .brain.study import build_space

    table = find_runs(cfg)
    study = build_space(cfg, table, _n_columns(table) if b.format == "hdf5" else None)

    # read BOLD once per run; lengths first
    bold_runs, bold_lengths = {}, {}
    for (s, ep), run in progress(table.items(), desc="read BOLD"):
        y = _read_run(cfg, _source(run), study.mask)
        bold_runs[(s, ep)] = y
        bold_lengths.setdefault(ep, {})[(s, run.label)] = y.shape[0]
    n_vox = {y.shape[1] for y in bold_runs.values()}
    if len(n_vox) != 1:
        raise DataError(f"BOLD runs disagree on their voxel/parcel count: {sorted(n_vox)} "
                        f"({', '.join(run.label for _, run in table.items()[:6])} ...)")
    (n_vox,) = n_vox
    if n_vox != study.space.n:
        raise DataError(f"BOLD runs have {n_vox} units but the study space has {study.space.n}")
    for c in cfg.all_conditions:
        if c not in feats.conditions:
            raise DataError(f"{out / 'features.h5'} lacks condition {c!r} (has {', '.join(feats.conditions)})")
    on_grid = {(c, ep): tr_grid_features(cfg, feats, c, ep) for c in cfg.all_conditions for ep in episodes}
    feat_lengths = {ep: on_grid[(cfg.model.conditions[0], ep)].shape[1] for ep in episodes}
    n_use = _match_lengths(cfg, feat_lengths, bold_lengths)
    trim, delays = cfg.align.trim, fir_delays(cfg.align, b.tr)
    kept = run_lengths_after_trim([n_use[e] for e in episodes], trim)
    runs_index = np.concatenate([np.full(k, i, np.int32) for i, k in enumerate(kept)])
    fold_of_run, fold_names = fold_groups(episodes, cfg.align.outer_folds)

    # per-run, per-layer TR-grid features, z-scored within run: {cond: [ (n_layers, n_e, d) per run ]}
    grid = {}
    for c in cfg.all_conditions:
        grid[c] = [zscore(on_grid[(c, ep)][:, : n_use[ep]], axis=1) for ep in episodes]

    extra = key.attrs
    with atomic_h5(design_path, "align", cfg.text, extra) as f:
        f.create_dataset("runs", data=runs_index)
        f.create_dataset("cv_groups", data=fold_of_run[runs_index])
        f.attrs["episodes"] = str_attr(episodes)
        f.attrs["folds"] = str_attr(fold_names)
        f.attrs["layers"] = np.asarray(layers, np.int64)
        f.attrs["delays"] = np.asarray(delays, np.int64)
        f.attrs["delays_s"] = np.asarray(delays, np.float64) * b.tr
        f.attrs["trim"] = trim
        f.attrs["tr"] = b.tr
        f.attrs["run_lengths"] = np.asarray(kept, np.int64)
        f.attrs["feature_sets"] = str_attr(cfg.all_conditions + [r.name for r in cfg.align.residuals])
        g = f.create_group("design")
        for c in cfg.all_conditions:
            X = np.stack([design_from_runs([r[li] for r in grid[c]], delays, trim) for li in range(len(layers))])
            ds = g.create_dataset(c, data=X, chunks=(1,) + X.shape[1:])
            ds.attrs["per_fold"] = 0
        fold_of_row = np.concatenate([np.full(n_use[e], fold_of_run[i]) for i, e in enumerate(episodes)])
        splits = np.cumsum([n_use[e] for e in episodes])[:-1]
        for res in progress(cfg.align.residuals, desc="residual features"):
            attrs = {}
            X = _residual_design(cfg, res, grid, fold_of_row, splits, delays, trim, len(fold_names), attrs)
            ds = g.create_dataset(res.name, data=X, chunks=(1, 1) + X.shape[2:])
            ds.attrs["per_fold"] = 1
            ds.attrs["target"] = res.target
            ds.attrs["predictors"] = str_attr(res.predictors)
            for k, v in attrs.items():
                ds.attrs[k] = v

    with atomic_h5(bold_path, "align", cfg.text, extra) as f:
        f.create_dataset("runs", data=runs_index)
        f.attrs["subjects"] = str_attr(b.subjects)
        f.attrs["episodes"] = str_attr(episodes)
        f.attrs["run_lengths"] = np.asarray(kept, np.int64)
        f.attrs["tr"] = b.tr
        study.space.to_h5(f)               # /mask (+ /atlas for parcels, /cifti for grayordinates)
        ids = sorted(study.names)
        f.create_dataset("roi_labels", data=study.labels.astype(np.int32))
        f.attrs["roi_ids"] = np.asarray(ids, np.int64)
        f.attrs["roi_names"] = str_attr([study.names[i] for i in ids])
        f.attrs["runs_present"] = json.dumps({s: table.of(s) for s in b.subjects})
        g = f.create_group("bold")
        for s in b.subjects:
            present = table.of(s)
            Y = np.concatenate([zscore(bold_runs[(s, ep)][: n_use[ep]])[trim: n_use[ep] - trim] for ep in present])
            ds = g.create_dataset(f"sub-{s}", data=Y.astype(np.float32),
                                  chunks=(Y.shape[0], min(Y.shape[1], max(1, cfg.fit.chunk_voxels))))
            ds.attrs["runs_present"] = np.asarray([episodes.index(ep) for ep in present], np.int64)
    log.info("align: %d runs, %d TRs kept, %d layers, feature sets %s, %d voxels x %d subjects",
             len(episodes), len(runs_index), len(layers), ", ".join(cfg.feature_sets), n_vox,
             len(b.subjects))
    return design_path
