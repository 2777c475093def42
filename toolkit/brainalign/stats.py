"""Group statistics across subjects: Fisher z, one-sample t-tests, Benjamini–Hochberg FDR, ROI means.

The array functions are pure (numpy in, numpy out, float64) and agree with scipy; ``run_stats`` is the
stage: ``{output}/scores.h5`` -> ``{output}/stats.h5``, ``{output}/roi_stats.csv`` and group NIfTI maps
``{output}/maps/group/group_feat-<FS>_stat-r_bold.nii.gz`` (mean r across subjects) and
``group_contrast-<C>_stat-{t,q}_bold.nii.gz``: float32 (X, Y, Z, L), last axis = layer (order of the
``layers`` attr), NaN outside the mask and where fewer than 2 subjects are finite. Parcel data are written into
their parcellation (brain.space), CIFTI data as ``*.dscalar.nii`` (one map per layer).

stats.h5 layout (S subjects, F feature sets, L layers, R ROIs, V voxels; C = one contrast name):

=============================  ===========  ============  ==================================================
dataset                        shape        dtype         meaning
=============================  ===========  ============  ==================================================
/roi/mean_r                    (S, F, L, R) float64       per subject: nan-mean over the ROI's voxels of r_mean
/roi/C/{t,p,q}                 (L, R)       float64       one-sample t on Fisher-z(ROI mean r) a − b; BH q
                                                          over the family of ``stats.fdr_family``
/roi/C/{mean,ci_low,ci_high}   (L, R)       float64       mean difference in Fisher z and its 95 % CI
/roi/C/cohen_d                 (L, R)       float64       mean / SD of the per-subject z differences
/roi/C/n_subjects              (L, R)       int32         subjects with a finite difference
/roi/C/significant             (L, R)       uint8         q <= stats.q
/voxel/mean_r                  (F, L, V)    float32       nan-mean of r_mean across subjects
/voxel/C/{t,p,q,mean}          (L, V)       float32       same test per voxel on Fisher-z(r_mean); BH q over
                                                          the family of ``stats.fdr_family`` (voxels)
/voxel/C/significant           (L, V)       uint8         q <= stats.q
/voxel/C/n_subjects            (L, V)       int16         subjects with a finite difference
=============================  ===========  ============  ==================================================

Root attrs: ``subjects``, ``feature_sets``, ``roi_names`` (string lists), ``layers``, ``roi_ids`` (int64),
``contrasts``, ``contrast_a``, ``contrast_b`` (string lists, b = "" means "a vs zero"), ``q`` (float),
``test``, ``fdr_family`` (``stats.fdr_family``: ``layer`` = BH within each layer and contrast, ``contrast`` =
across layers × ROIs (voxels) within each contrast, ``all`` = across every contrast, layer and ROI (voxel)),
``fdr`` (that family in words), ``scores_file``, ``scores_created`` (the ``created`` attr of the scores.h5 used),
``stage_key`` / ``stage_record`` (brainalign.stagekeys) and the usual provenance attrs (config, git_commit, created, host, packages, ...).
Each ``/roi/C`` and ``/voxel/C`` group carries attrs ``a``, ``b``, ``residual_flag`` (1: a or b is a residual
feature set outside the limits where its bias was measured, see :func:`residual_flags`) and ``residual_note``
(why, or ""); the root attr ``residual_flagged`` lists those contrasts. The group ``/permutation`` is reserved
(per-subject permutation tests live in permutation.h5, see brainalign.permutation). NaN marks elements with
fewer than 2 usable subjects.

Noise ceiling (``stats.noise_ceiling``: ``auto`` (default: ``isc`` when bold.h5 matches scores.h5, else none),
``isc``, ``repeats`` or ``none``; formulas in brainalign.ceiling), written when a ceiling is computed:

=================================  ============  ========  ===============================================
/noise_ceiling/ceiling             (S, V)        float32   ceiling in r units (isc: one per voxel, the same
                                                           row for every subject; repeats: per subject)
/noise_ceiling/ceiling_low|high    (S, V)        float32   isc: 95 % interval of the ceiling
/noise_ceiling/rho | ncsnr         (S, V)        float32   isc: each subject's mean r with the others
                                                           (descriptive); repeats: NC-SNR
/noise_ceiling/roi_ceiling         (S, R)        float64   isc: corrected root of the ROI-mean reliability;
                                                           repeats: nan-mean of the ROI's voxel ceilings
/noise_ceiling/roi_ceiling_low|high (S, R)       float64   isc: its 95 % interval
/noise_ceiling/roi_normalised      (S, F, L, R)  float64   /roi/mean_r / roi_ceiling (NaN: not reliably
                                                           above the floor, see brainalign.ceiling.normalise)
/noise_ceiling/voxel_normalised    (F, L, V)     float32   nan-mean over subjects of r_mean / ceiling (NaN
                                                           where the ceiling is not reliably above the floor)
=================================  ============  ========  ===============================================

attrs ``method`` (isc | repeats), ``formula``, ``floor``, ``sigma`` / ``roi_sigma`` (isc: the pooled SE of the
reliability that scales the low-reliability correction), ``n_avg`` (repeats).
With a ceiling, ``roi_scores.csv`` (FS_COLUMNS: group mean r, its SEM, the group mean ceiling and the group
mean of the per-subject normalised r per feature set, layer and ROI) and the map
``maps/group/group_stat-ceiling_bold.nii.gz`` (3-D, subject-mean ceiling) are written too.
"""
from __future__ import annotations

import csv
import io
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .contrasts import resolve_contrasts
from .errors import ConfigError, DataError
from .fdr import fdr_by_family, family_text, significant, stats_family
from .groupstats import ROI_STATS, VOXEL_STATS, fisher_z, one_sample_t, roi_means
from .partition import CSV_COLUMNS as PARTITION_COLUMNS
from .partition import partition_group_stats, partition_rows, test_names, write_partition_stats
from .h5io import atomic_h5, atomic_path, is_complete, open_h5, read_str_attr, str_attr
from .log import get_logger
from .paths import BOLD, DESIGN, ROI_PARTITIONS_CSV, ROI_SCORES_CSV, ROI_STATS_CSV, SCORES, STATS, group_maps
from .scores import ScoresMeta, read_scores_meta

log = get_logger("stats")

CSV_COLUMNS = ("contrast", "a", "b", "layer", "roi", "n_subjects", "mean_dz", "ci_low", "ci_high",
               "t", "p", "q", "significant")
FS_COLUMNS = ("feature_set", "layer", "roi", "n_subjects", "mean_r", "sem_r", "ceiling", "normalised_r",
              "sem_normalised_r")


# ---- noise ceiling -------------------------------------------------------------------------------

@dataclass
class Ceiling:
    method: str                  # "isc" | "repeats"
    ceiling: np.ndarray          # (S, V) float64, r units
    raw_name: str                # "rho" | "ncsnr"
    raw: np.ndarray              # (S, V) float64
    attrs: dict
    low: Optional[np.ndarray] = None     # (S, V) lower end of the 95 % interval (isc)
    high: Optional[np.ndarray] = None    # (S, V) upper end
    roi: Optional[dict] = None           # isc: {"ceiling", "low", "high"}: (R,) from the ROI-mean reliability


def _ceiling_keys(cfg):
    st = cfg.stats
    method = st.noise_ceiling or "none"
    if method not in ("auto", "isc", "repeats", "none"):
        raise ConfigError(f"stats.noise_ceiling: expected one of 'auto', 'isc', 'repeats', 'none', got {method!r}")
    return (method, float(st.ceiling_floor), st.noise_ceiling_repeats,
            int(st.noise_ceiling_n_avg))


def _isc_from_bold(cfg, meta: ScoresMeta, required: bool):
    from .ceiling import ceiling_interval, corrected_root, isc_reliability, pooled_se, run_summary

    bold_path = Path(cfg.output) / BOLD
    if not required and not is_complete(bold_path):
        log.info("stats: no complete %s; no ISC noise ceiling (stats.noise_ceiling: auto)", bold_path)
        return None
    with open_h5(bold_path, "BOLD file (noise ceiling)", require=("runs", "bold")) as f:
        subjects = read_str_attr(f, "subjects")
        runs = f["runs"][()]
        local, common = _shared_rows(f, meta.subjects, runs)
        shapes = {s: f["bold"][f"sub-{s}"].shape if f"sub-{s}" in f["bold"] else None for s in meta.subjects}
        mismatch = subjects != meta.subjects or any(sh is None or sh[1] != meta.n_voxels
                                                    for sh in shapes.values())
        if mismatch:
            msg = (f"{bold_path} does not match {meta.path} (subjects {subjects} vs {meta.subjects}, or voxel "
                   f"count differs from {meta.n_voxels})")
            if required:
                raise DataError(msg + "; re-run align or set stats.noise_ceiling: none")
            log.warning("stats: %s; no ISC noise ceiling", msg)
            return None
        if len(meta.subjects) < 2:
            return None
        S, V, R = len(meta.subjects), meta.n_voxels, len(meta.roi_ids)
        rho, se, n_runs = np.empty(V), np.empty(V), np.empty(V)
        rho_subject = np.empty((S, V))
        roi_index = _roi_index(meta.roi_ids, meta.roi_labels)      # (V,) position in roi_ids, R = none
        in_roi = roi_index < R
        roi_sum = roi_cnt = None
        step = max(1, int(cfg.fit.chunk_voxels))
        for a in range(0, V, step):
            b = min(a + step, V)
            Y = np.stack([f["bold"][f"sub-{s}"][:, a:b][local[s]] for s in meta.subjects])
            rel = isc_reliability(Y, runs[common])
            rho[a:b], se[a:b], n_runs[a:b], rho_subject[:, a:b] = rel["rho"], rel["se"], rel["n_runs"], \
                rel["rho_subject"]
            rr = rel["rho_runs"]                                   # (n_runs, chunk): ROI sums per run
            if roi_sum is None:
                roi_sum, roi_cnt = np.zeros((rr.shape[0], R)), np.zeros((rr.shape[0], R))
            ok = np.isfinite(rr) & in_roi[a:b]
            for i in range(rr.shape[0]):
                roi_sum[i] += np.bincount(roi_index[a:b][ok[i]], weights=rr[i, ok[i]], minlength=R)[:R]
                roi_cnt[i] += np.bincount(roi_index[a:b][ok[i]], minlength=R)[:R]
    low, high = ceiling_interval(rho, se, n_runs)
    with np.errstate(invalid="ignore", divide="ignore"):
        roi_rel = run_summary(np.where(roi_cnt > 0, roi_sum / np.maximum(roi_cnt, 1), np.nan))
    roi_low, roi_high = ceiling_interval(roi_rel["rho"], roi_rel["se"], roi_rel["n_runs"])
    per_subject = lambda x: np.broadcast_to(x, (S,) + x.shape).copy()          # noqa: E731
    formula = ("rho = mean over runs of the mean Pearson r over subject pairs (each run's TRs); ceiling = "
               "sign(rho) sqrt(|rho|) (1 + 0.3 exp(-(rho/sigma)^2 / (2*1.6^2))), sigma = sqrt(median SE^2 over "
               "runs), one per voxel shared by the subjects; 95 % interval = signed roots of rho -/+ "
               "t(0.975, runs-1) SE; ROI: the same on the ROI-mean rho of each run (brainalign.ceiling)")
    sigma, roi_sigma = pooled_se(se), pooled_se(roi_rel["se"])
    return Ceiling("isc", per_subject(corrected_root(rho, sigma)), "rho", rho_subject,
                   {"formula": formula, "bold_file": str(bold_path), "sigma": sigma, "roi_sigma": roi_sigma},
                   per_subject(low), per_subject(high),
                   {"ceiling": corrected_root(roi_rel["rho"], roi_sigma), "low": roi_low, "high": roi_high})


def _roi_index(ids, labels):
    """Position of each voxel's label in ``ids`` (len(ids) where the label is no ROI)."""
    ids, labels = np.asarray(ids), np.asarray(labels)
    if not ids.size:
        return np.zeros(labels.shape, np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.minimum(np.searchsorted(ids[order], labels), ids.size - 1)
    hit = ids[order][pos] == labels
    return np.where(hit, order[pos], ids.size)


def _shared_rows(f, subjects, runs):
    """Rows of the runs every subject has: ({subject: indices into its /bold rows}, indices into /runs)."""
    n_runs = int(runs.max()) + 1 if len(runs) else 0
    present = {s: (np.asarray(f["bold"][f"sub-{s}"].attrs.get("runs_present", np.arange(n_runs)))
                   if f"sub-{s}" in f["bold"] else np.arange(n_runs)) for s in subjects}
    shared = np.arange(n_runs)
    for p in present.values():
        shared = np.intersect1d(shared, p)
    if len(shared) < n_runs:
        log.info("stats: ISC noise ceiling on the %d of %d runs every subject has", len(shared), n_runs)
    common = np.flatnonzero(np.isin(runs, shared))
    local = {s: np.flatnonzero(np.isin(runs[np.isin(runs, p)], shared)) for s, p in present.items()}
    return local, common


def _ceiling_from_repeats(cfg, meta: ScoresMeta, template, n_avg: int):
    from .ceiling import ceiling_from_ncsnr, ncsnr

    if not template:
        raise ConfigError("stats.noise_ceiling: repeats needs stats.noise_ceiling_repeats (an HDF5 path per "
                          "subject, {subject} placeholder, holding /repeats (n_rep, n_trs, n_voxels))")
    snr = np.empty((len(meta.subjects), meta.n_voxels))
    for si, s in enumerate(meta.subjects):
        path = cfg.path(template, subject=s)
        with open_h5(path, f"noise-ceiling repeats of sub-{s}", require=("repeats",)) as f:
            shape = f["repeats"].shape
            if len(shape) != 3 or shape[2] != meta.n_voxels:
                raise DataError(f"{path}: /repeats has shape {shape}, expected (n_rep, n_trs, {meta.n_voxels}) "
                                "in the voxel order of bold.h5")
            reps = f["repeats"][()]
        if not np.isfinite(reps).all():
            raise DataError(f"{path}: /repeats contains NaN/inf")
        snr[si] = ncsnr(reps)["ncsnr"]
    formula = (f"NC-SNR (Allen et al. 2022): ceiling = sqrt(ncsnr^2 / (ncsnr^2 + 1/n_avg)), n_avg = {n_avg}")
    return Ceiling("repeats", ceiling_from_ncsnr(snr, n_avg), "ncsnr", snr,
                   {"formula": formula, "n_avg": n_avg, "repeats_files": str(template)})


def compute_ceiling(cfg, meta: ScoresMeta) -> Optional[Ceiling]:
    """The noise ceiling chosen by ``stats.noise_ceiling`` (None when off or, for ``auto``, unavailable)."""
    method, floor, template, n_avg = _ceiling_keys(cfg)
    if method == "none":
        return None
    if method == "repeats":
        c = _ceiling_from_repeats(cfg, meta, template, n_avg)
    else:
        c = _isc_from_bold(cfg, meta, required=method == "isc")
    if c is not None:
        c.attrs["floor"] = floor
    return c


def residual_flags(cfg, contrasts) -> dict:
    """{contrast name: reason} for contrasts whose a or b is a residual feature set outside the limits where
    its bias on voxels driven by its predictors alone was measured within +-0.01 (brainalign.residuals)."""
    from .residuals import BIAS_MAX_COLS_PER_ROW, BIAS_MIN_ROWS, within_measured_limits

    names = {r.name for r in getattr(cfg.align, "residuals", [])}
    used = {s for c in contrasts for s in (c.a, c.b) if s in names}
    if not used:
        return {}
    info = {}
    design = Path(cfg.output) / DESIGN
    with (open_h5(design, "design file") if is_complete(design) else nullcontext()) as f:
        for s in used:
            ds = f["design"][s] if f is not None and s in f.get("design", {}) else None
            rows = int(ds.attrs["train_rows"]) if ds is not None and "train_rows" in ds.attrs else None
            cols = int(ds.attrs["predictor_columns"]) if ds is not None and "predictor_columns" in ds.attrs else None
            if not within_measured_limits(rows, cols):
                info[s] = (f"residual {s}: {rows} training rows per outer fold for {cols} predictor columns, "
                           f"outside the measured limits (>= {BIAS_MIN_ROWS} rows, <= {BIAS_MAX_COLS_PER_ROW} "
                           "columns per row) where its bias on voxels its predictors drive "
                           "alone is within +-0.01 of 0; a residual effect there may be partly the predictors' "
                           "(docs/methods.md)" if rows is not None else
                           f"residual {s}: design.h5 does not record its cross-fit size (re-run align); its bias "
                           "on voxels its predictors drive alone is unmeasured")
    return {c.name: "; ".join(info[s] for s in (c.a, c.b) if s in info) for c in contrasts
            if c.a in info or c.b in info}


def write_fs_csv(path, rows):
    """roi_scores.csv with FS_COLUMNS, written atomically."""
    return write_csv(path, FS_COLUMNS, rows)


def _mean_sem(x):
    """nan-mean and SEM over axis 0 (NaN with < 1 / < 2 finite values) and the finite count."""
    ok = np.isfinite(x)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, x, 0.0).sum(axis=0) / n
        var = np.where(ok, x - mean, 0.0) ** 2
        sem = np.sqrt(var.sum(axis=0) / (n - 1) / n)
    return mean, np.where(n > 1, sem, np.nan), n


# ---- the stage -----------------------------------------------------------------------------------

def _fmt(v):
    return "" if v is None else (repr(float(v)) if isinstance(v, (float, np.floating)) else str(v))


def write_csv(path, columns, rows):
    """Tidy CSV of ``rows`` (dicts) with ``columns`` (floats at full precision), written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([_fmt(row[k]) for k in columns])
    with atomic_path(path) as tmp:
        Path(tmp).write_text(buf.getvalue())
    return Path(path)


def write_roi_csv(path, rows):
    """Tidy CSV with CSV_COLUMNS (floats at full precision, b empty = vs zero), written atomically."""
    return write_csv(path, CSV_COLUMNS, rows)


def run_stats(cfg, force: bool = False) -> Path:
    """The ``stats`` stage: scores.h5 -> stats.h5 (layout in this module's docstring), roi_stats.csv and
    the group maps of ``brainalign.paths.group_maps`` (+ roi_scores.csv with a noise ceiling). The ``stats``
    verb runs the permutation stage (brainalign.permutation) before it when ``stats.permutations`` > 0
    (brainalign.stagetable). Skipped while its stage key is current (the stats config values, scores.h5's key,
    inputs: brainalign.stagekeys; unless ``force``). Returns stats.h5."""
    from .stagecheck import stage_check

    out = Path(cfg.output)
    scores_path = out / SCORES
    stats_path = out / STATS
    q_level = float(cfg.stats.q)
    key = stage_check(cfg, "stats", force)
    if key.current:
        return stats_path
    with open_h5(scores_path, "scores file", require=("r_mean", "mask", "roi_labels")) as f:
        meta = read_scores_meta(f, scores_path)
        scores_created = str(f.attrs.get("created", ""))
        contrasts = resolve_contrasts(cfg, meta.feature_sets)
        S, F, L, V, R = (len(meta.subjects), len(meta.feature_sets), len(meta.layers), meta.n_voxels,
                         len(meta.roi_ids))
        if S < 2:
            raise DataError(f"group statistics need ≥ 2 subjects; scores.h5 has {S} ({scores_path})")
        if not contrasts:
            log.warning("stats.contrasts is empty: writing group means only")
        log.info("stats: %d subjects, %d feature sets, %d layers, %d voxels, %d ROIs, %d contrasts",
                 S, F, L, V, R, len(contrasts))
        ceil = compute_ceiling(cfg, meta)
        floor = float(ceil.attrs["floor"]) if ceil is not None else 0.0
        vox_norm = np.empty((F, L, V), dtype=np.float32) if ceil is not None else None
        roi_r = np.empty((S, F, L, R))
        vox_mean_r = np.empty((F, L, V), dtype=np.float32)
        vox = {c.name: {k: np.empty((L, V), dtype=np.float32) for k in VOXEL_STATS} for c in contrasts}
        vox_n = {c.name: np.empty((L, V), dtype=np.int16) for c in contrasts}
        for li in range(L):                      # one layer at a time keeps memory at S*F*V
            rm = f["r_mean"][:, :, li, :].astype(np.float64)
            roi_r[:, :, li, :] = roi_means(rm, meta.roi_labels, meta.roi_ids)
            with np.errstate(invalid="ignore"):
                ok = np.isfinite(rm)
                cnt = ok.sum(axis=0)
                vox_mean_r[:, li, :] = np.where(cnt > 0, np.where(ok, rm, 0).sum(axis=0) / cnt, np.nan)
            if ceil is not None:
                from .ceiling import normalise

                low = None if ceil.low is None else ceil.low[:, None, :]
                vox_norm[:, li, :] = _mean_sem(normalise(rm, ceil.ceiling[:, None, :], floor, low))[0]
            z = fisher_z(rm)
            for c in contrasts:
                d = z[:, c.ia] - (z[:, c.ib] if c.ib is not None else 0.0)
                res = one_sample_t(d, axis=0)
                for k in ("t", "p", "mean"):
                    vox[c.name][k][li] = res[k]
                vox_n[c.name][li] = res["n"]
        parts = partition_group_stats(f, meta)    # variance partitioning (fit.partitions): region > 0 tests

    roi_z = fisher_z(roi_r)
    roi = {}
    for c in contrasts:
        d = roi_z[:, c.ia] - (roi_z[:, c.ib] if c.ib is not None else 0.0)   # (S, L, R)
        roi[c.name] = one_sample_t(d, axis=0)
    # multiple comparisons: the families of stats.fdr_family (fdr.py) over contrasts and partition regions
    family = cfg.stats.fdr_family
    across = stats_family(family)
    for store, get in ((vox, lambda ps: ps.vox), (roi, lambda ps: ps.roi)):
        tests = {c.name: store[c.name]["p"] for c in contrasts}
        for ps in parts:
            tests.update(zip(test_names(ps), get(ps)["p"]))
        qs = fdr_by_family(tests, *across)
        for c in contrasts:
            store[c.name]["q"] = qs[c.name].astype(store[c.name]["p"].dtype)
            store[c.name]["significant"] = significant(qs[c.name], q_level)
        for ps in parts:
            q = np.stack([qs[t] for t in test_names(ps)]).astype(get(ps)["p"].dtype)
            get(ps)["q"], get(ps)["significant"] = q, significant(q, q_level)

    # CSV and maps first, stats.h5 (with its completion marker) last, the old stats.h5 gone before: a killed job
    # or a full disk never leaves new CSV/maps beside an old stats.h5 that makes them look done
    from .stagecheck import invalidate

    invalidate(cfg, "stats")
    rows = []
    for c in contrasts:
        res = roi[c.name]
        for li, layer in enumerate(meta.layers):
            for ri, name in enumerate(meta.roi_names):
                rows.append({"contrast": c.name, "a": c.a, "b": c.b, "layer": layer, "roi": name,
                             "n_subjects": int(res["n"][li, ri]), "mean_dz": res["mean"][li, ri],
                             "ci_low": res["ci_low"][li, ri], "ci_high": res["ci_high"][li, ri],
                             "t": res["t"][li, ri], "p": res["p"][li, ri], "q": res["q"][li, ri],
                             "significant": int(res["significant"][li, ri])})
    write_roi_csv(out / ROI_STATS_CSV, rows)
    if parts:
        write_csv(out / ROI_PARTITIONS_CSV, PARTITION_COLUMNS, partition_rows(parts, meta.layers, meta.roi_names))
    if ceil is not None:
        from .ceiling import normalise

        if ceil.roi is not None:     # isc: from the ROI-mean reliability (not the mean of voxel roots)
            roi_ceil, roi_low = (np.broadcast_to(ceil.roi[k], (S, R)).copy() for k in ("ceiling", "low"))
        else:
            roi_ceil, roi_low = roi_means(ceil.ceiling, meta.roi_labels, meta.roi_ids), None          # (S, R)
        roi_norm = normalise(roi_r, roi_ceil[:, None, None, :], floor,
                             None if roi_low is None else roi_low[:, None, None, :])   # (S, F, L, R)
        m_r, s_r, n_r = _mean_sem(roi_r)
        m_n, s_n, _ = _mean_sem(roi_norm)
        m_c = _mean_sem(roi_ceil)[0]
        write_fs_csv(out / ROI_SCORES_CSV, [
            {"feature_set": fs, "layer": layer, "roi": name, "n_subjects": int(n_r[fi, li, ri]),
             "mean_r": m_r[fi, li, ri], "sem_r": s_r[fi, li, ri], "ceiling": m_c[ri],
             "normalised_r": m_n[fi, li, ri], "sem_normalised_r": s_n[fi, li, ri]}
            for fi, fs in enumerate(meta.feature_sets) for li, layer in enumerate(meta.layers)
            for ri, name in enumerate(meta.roi_names)])

    vols = [(vox_mean_r[fi], f"group mean r {fs}") for fi, fs in enumerate(meta.feature_sets)]
    vols += [(vox[c.name][k], f"{c.name} {k}") for c in contrasts for k in ("t", "q")]
    if ceil is not None:
        vols.append((_mean_sem(ceil.ceiling)[0].astype(np.float32)[None], f"subject-mean noise ceiling ({ceil.method})"))
    layer_names = [f"layer {x}" for x in meta.layers]
    for path, (values, what) in zip(group_maps(out, meta.feature_sets, [c.name for c in contrasts], ceil is not None,
                                              meta.space), vols):
        per_layer = values.shape[0] == L and "ceiling" not in what
        descrip = f"{what}; axis 4 = layers {','.join(map(str, meta.layers))}" if per_layer else what
        meta.space.write_map(path, values.T if per_layer else values[0], names=layer_names if per_layer else [what],
                             descrip=descrip)
    extra = dict(key.attrs, scores_created=scores_created)
    with atomic_h5(stats_path, "stats", cfg.text, extra) as g:
        g.attrs["subjects"] = str_attr(meta.subjects)
        g.attrs["feature_sets"] = str_attr(meta.feature_sets)
        g.attrs["layers"] = np.asarray(meta.layers, dtype=np.int64)
        g.attrs["roi_names"] = str_attr(meta.roi_names)
        g.attrs["roi_ids"] = meta.roi_ids
        g.attrs["contrasts"] = str_attr([c.name for c in contrasts])
        g.attrs["contrast_a"] = str_attr([c.a for c in contrasts])
        g.attrs["contrast_b"] = str_attr([c.b or "" for c in contrasts])
        g.attrs["q"] = q_level
        g.attrs["test"] = ("two-sided one-sample t across subjects of Fisher-z(r) differences a - b "
                           "(ROI: z of the ROI-mean r; voxel: z of r_mean)")
        g.attrs["fdr_family"] = family
        g.attrs["fdr"] = (family_text(family, "ROI") + " for /roi; " + family_text(family, "voxel")
                          + " for /voxel (ROI and voxel tests are corrected separately)")
        g.attrs["scores_file"] = str(scores_path)
        groi = g.create_group("roi")
        groi.create_dataset("mean_r", data=roi_r)
        gvox = g.create_group("voxel")
        gvox.create_dataset("mean_r", data=vox_mean_r, compression="gzip", shuffle=True, chunks=True)
        flags = residual_flags(cfg, contrasts)
        for name, why in flags.items():
            log.warning("stats: contrast %s flagged: %s", name, why)
        g.attrs["residual_flagged"] = str_attr(list(flags))
        for c in contrasts:
            gr = groi.create_group(c.name)
            gv = gvox.create_group(c.name)
            for grp in (gr, gv):
                grp.attrs["a"] = c.a
                grp.attrs["b"] = c.b or ""
                grp.attrs["residual_flag"] = int(c.name in flags)
                grp.attrs["residual_note"] = flags.get(c.name, "")
            res = roi[c.name]
            for k in ROI_STATS:
                gr.create_dataset(k, data=res[k].astype(np.float64))
            gr.create_dataset("n_subjects", data=res["n"].astype(np.int32))
            gr.create_dataset("significant", data=res["significant"])
            for k, arr in vox[c.name].items():
                gv.create_dataset(k, data=arr, compression="gzip", shuffle=True, chunks=True)
            gv.create_dataset("n_subjects", data=vox_n[c.name], compression="gzip", shuffle=True, chunks=True)
        write_partition_stats(g, parts)

        if ceil is not None:
            gc = g.create_group("noise_ceiling")
            gc.attrs["method"] = ceil.method
            for k, v in ceil.attrs.items():
                gc.attrs[k] = v
            kw = dict(compression="gzip", shuffle=True, chunks=True)
            gc.create_dataset("ceiling", data=ceil.ceiling.astype(np.float32), **kw)
            gc.create_dataset(ceil.raw_name, data=ceil.raw.astype(np.float32), **kw)
            gc.create_dataset("roi_ceiling", data=roi_ceil)
            if ceil.low is not None:
                gc.create_dataset("ceiling_low", data=ceil.low.astype(np.float32), **kw)
                gc.create_dataset("ceiling_high", data=ceil.high.astype(np.float32), **kw)
                gc.create_dataset("roi_ceiling_low", data=roi_low)
                gc.create_dataset("roi_ceiling_high", data=np.broadcast_to(ceil.roi["high"], (S, R)).copy())
            gc.create_dataset("roi_normalised", data=roi_norm)
            gc.create_dataset("voxel_normalised", data=vox_norm, **kw)

    n_sig = {c.name: int(roi[c.name]["significant"].sum()) for c in contrasts}
    log.info("stats: wrote %s, %s and %d maps; significant ROI x layer cells per contrast: %s", stats_path,
             out / ROI_STATS_CSV, F + 2 * len(contrasts), n_sig)
    return stats_path
