"""Group statistics shared by the stats, partition and permutation code: pure array functions (numpy in,
numpy out, float64) that agree with scipy, and the names of the per-ROI / per-voxel test outputs."""
from __future__ import annotations

import numpy as np
from scipy import stats as _sps

R_CLIP = 1.0 - 1e-7          # |r| is clipped to this before arctanh (z <= 8.4)
ROI_STATS = ("t", "p", "q", "mean", "ci_low", "ci_high", "cohen_d")
VOXEL_STATS = ("t", "p", "q", "mean")


def fisher_z(r):
    """Fisher z = arctanh(r) of any-shaped r (float64 out); |r| clipped to 1 - 1e-7, NaN stays NaN."""
    r = np.asarray(r, dtype=np.float64)
    return np.arctanh(np.clip(r, -R_CLIP, R_CLIP))


def one_sample_t(x, axis=0, popmean=0.0, confidence=0.95):
    """Two-sided one-sample t-test of mean(x) == popmean along ``axis``, ignoring non-finite values.

    x: array (..., n, ...) with the samples (subjects) on ``axis``. Each output has x's shape without
    ``axis``: ``t``, ``p``, ``mean``, ``ci_low``/``ci_high`` (``confidence`` interval of the mean), ``df``
    (n - 1), ``cohen_d`` ((mean - popmean) / SD, ddof=1), all float64, and ``n`` (int64, finite samples).
    Elements with fewer than 2 finite samples are NaN (except ``n``). Equal to
    ``scipy.stats.ttest_1samp(..., nan_policy='omit')`` including zero-variance cases (t = ±inf, p = 0).
    """
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    valid = np.isfinite(x)
    n = valid.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(valid, x, 0.0).sum(axis=0) / n
        dev = np.where(valid, x - mean, 0.0)
        sd = np.sqrt((dev * dev).sum(axis=0) / (n - 1))
        se = sd / np.sqrt(n)
        diff = mean - popmean
        t = diff / se
        df = (n - 1).astype(np.float64)
        few = n < 2
        df[few] = np.nan
        p = 2.0 * _sps.t.sf(np.abs(t), df)
        crit = _sps.t.ppf(0.5 + confidence / 2.0, df)
        half = crit * se
        cohen_d = diff / sd
    out = {"t": t, "p": p, "mean": mean, "ci_low": mean - half, "ci_high": mean + half, "df": df,
           "cohen_d": cohen_d}
    for k, v in out.items():
        v = np.array(v, dtype=np.float64)
        v[few] = np.nan
        out[k] = v
    out["n"] = np.asarray(n, dtype=np.int64)
    return out


def roi_means(r, labels, ids):
    """Nan-mean of r over each ROI's voxels.

    r: (..., n_voxels); labels: (n_voxels,) int ROI id per voxel; ids: (n_rois,) ROI ids.
    Returns float64 (..., n_rois); NaN for an ROI with no voxel or only NaN values. One pass over the voxels
    (sums by sorted label), so 1,000 parcels cost what 10 ROIs do.
    """
    r = np.asarray(r, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.shape != r.shape[-1:]:
        raise ValueError(f"roi_means: labels shape {labels.shape} does not match r's last axis {r.shape[-1:]}")
    ids = np.asarray(ids).ravel()
    lead = r.shape[:-1]
    out = np.full(lead + (len(ids),), np.nan)
    if not len(ids) or not labels.size:
        return out
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    flat = r.reshape(-1, r.shape[-1])[:, order]
    ok = np.isfinite(flat)
    starts = np.searchsorted(sorted_labels, ids, side="left")
    stops = np.searchsorted(sorted_labels, ids, side="right")
    has = stops > starts
    if has.any():
        cuts = np.unique(np.concatenate([starts[has], stops[has]]))
        cuts = cuts[cuts < flat.shape[1]]
        sums = np.add.reduceat(np.where(ok, flat, 0.0), cuts, axis=1)
        cnts = np.add.reduceat(ok, cuts, axis=1)
        pos = np.searchsorted(cuts, starts[has])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(cnts[:, pos] > 0, sums[:, pos] / cnts[:, pos], np.nan)
        out.reshape(-1, len(ids))[:, has] = mean
    return out
