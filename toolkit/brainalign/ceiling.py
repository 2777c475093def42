"""Noise ceilings: the best Pearson r any model could reach for each voxel, and r / ceiling.

Two estimators, both in units of Pearson r between a prediction and one subject's single-presentation BOLD
(the quantity the fit scores), both under the model ``y = signal + noise`` with noise independent of the
signal and across presentations (or subjects):

**Repeated presentations (NC-SNR, Allen et al. 2022, Nature Neuroscience, NSD; the Algonauts convention).**
``reps`` (n_rep, n_trs, v): the same stimulus shown n_rep times. Each repetition's time series is z-scored
per voxel, so total variance is 1; then

    noise_var  = mean over TRs of the across-repetition variance (ddof=1)
    signal_var = max(0, 1 - noise_var)
    ncsnr      = sqrt(signal_var) / sqrt(noise_var)
    NC         = ncsnr^2 / (ncsnr^2 + 1 / n_avg)          (fraction of variance; NSD reports 100 * NC)
    ceiling    = sqrt(NC)                                  (in r units)

``n_avg`` is the number of presentations averaged in the data being predicted: 1 for the fit's
single-run BOLD (then ceiling = sqrt(signal_var), the correlation of the signal with one presentation).

**No repeats: between-subject reliability (ISC) across subjects who saw the same stimulus.**
``Y`` (S, n_trs, v) on a common voxel/parcel space, every subject ``y_s = a_s signal + noise_s`` z-scored per
run. With equal reliability rho = signal var / total var in every subject (the model behind any ISC
ceiling), the Pearson r of two subjects estimates rho itself, and the ceiling is the r of the signal with
one subject, sqrt(rho). The estimator (:func:`isc_reliability`):

    rho_run   = mean over the S (S - 1) / 2 subject pairs of r(y_s, y_t) on one run's TRs
    rho       = mean over runs of rho_run            (unbiased for rho up to O(rho / n_trs))
    se        = SD over runs of rho_run / sqrt(n_runs)
    sigma     = sqrt(median over voxels of se^2)     (one SE scale for the map)
    ceiling   = sign(rho) sqrt(|rho|) (1 + 0.3 exp(-u^2 / (2 * 1.6^2))),   u = rho / sigma
    interval  = sign(x) sqrt(|x|) at x = rho -/+ t(0.975, n_runs - 1) se  (95 %, the transform is monotone)

Why not the former estimator (leave-one-subject-out r with the mean of the others, Spearman-Brown
corrected, clipped at 0): it is the square root of a noisy quantity clipped at zero, so at low reliability
its mean is far from the truth (S = 4, 4 x 157 TRs: 0.070 at a true 0, 0.135 at 0.15), and the ROI ceiling
as a mean of such voxel ceilings inherits the bias. Here the noisy quantity (rho) is averaged first and the
square root is signed and odd: at a true 0 the estimate is symmetric about 0 (mean 0). Pooling every pair
(rather than one subject against the rest) halves the variance. The signed root alone still reads low
where the true rho is within a few SE of 0 (S = 4, 4 x 157 TRs, AR(1) 0.5: 0.119 at 0.15): the factor
(:func:`corrected_root`) removes most of that (worst mean bias 0.093 sqrt(sigma) for true c^2 >= 0.9 sigma,
i.e. 0.013 at sigma = 0.02; tests/test_ceiling.py measures 0, 0.15, 0.30 at S = 4 and 6). No estimator of
sqrt(rho) is unbiased at every c near 0 (the root is not analytic there), so below c = sqrt(0.9 sigma)
(0.13 for S = 4, 4 x 157 TRs) the mean reads low by up to 0.25 sqrt(sigma); the interval is exact there. An ROI's ceiling is the signed root of the
ROI-mean rho (not the mean of voxel roots), its interval from the spread of the ROI-mean rho over runs.
The ceiling is one per voxel, shared by the subjects (the equal-reliability model; per-subject mean pair r
is kept as ``rho_subject``, descriptive). Only stimulus-locked signal shared across subjects counts as
signal, so idiosyncratic but reliable responses lower this ceiling. A negative ceiling means the measured
reliability is below 0 (a null voxel); nothing is normalised by it.

``normalise(r, ceiling, floor, low)`` = r / ceiling where the ceiling is reliably above the floor: its
interval's lower end ``low`` > floor (or, without an interval, the ceiling > floor); NaN elsewhere. With a
floor of 0.1 a null voxel's lower end exceeds it with probability < 0.5 % (measured: tests/test_ceiling.py).
"""
from __future__ import annotations

import warnings

import numpy as np

from .errors import ConfigError, DataError

DEFAULT_FLOOR = 0.1


def _zscore_time(x, axis):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = x - x.mean(axis=axis, keepdims=True)
        sd = x.std(axis=axis, keepdims=True)
        return np.where(sd > 0, c / np.where(sd > 0, sd, 1.0), np.nan)


def ncsnr(reps):
    """Noise-ceiling SNR of repeated presentations (Allen et al. 2022).

    reps: (n_rep, n_trs, v), n_rep >= 2. Returns dict of float64 (v,): ``ncsnr``, ``signal_var``,
    ``noise_var`` (in units of each repetition's z-scored variance). NaN for voxels that are constant or
    non-finite in any repetition.
    """
    reps = np.asarray(reps, dtype=np.float64)
    if reps.ndim != 3 or reps.shape[0] < 2 or reps.shape[1] < 3:
        raise DataError(f"noise ceiling from repeats needs (n_rep >= 2, n_trs >= 3, voxels), got shape {reps.shape}")
    z = _zscore_time(reps, axis=1)
    noise_var = z.var(axis=0, ddof=1).mean(axis=0)
    bad = ~np.isfinite(z).all(axis=(0, 1))
    signal_var = np.maximum(0.0, 1.0 - noise_var)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.sqrt(signal_var) / np.sqrt(noise_var)
    out = {"ncsnr": snr, "signal_var": signal_var, "noise_var": noise_var}
    for v in out.values():
        v[bad] = np.nan
    return out


def ceiling_from_ncsnr(snr, n_avg=1):
    """Ceiling in r units, sqrt(ncsnr^2 / (ncsnr^2 + 1 / n_avg)), for data averaged over ``n_avg`` presentations."""
    if n_avg < 1:
        raise ConfigError(f"noise ceiling n_avg must be >= 1, got {n_avg}")
    snr = np.asarray(snr, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.sqrt(snr ** 2 / (snr ** 2 + 1.0 / n_avg))


def repeats_ceiling(reps, n_avg=1):
    """NC-SNR ceiling (v,) float64 of repeated presentations ``reps`` (n_rep, n_trs, v); see the module doc."""
    return ceiling_from_ncsnr(ncsnr(reps)["ncsnr"], n_avg)


def pair_reliability(Y):
    """Per-voxel mean Pearson r over subject pairs of one run, and each subject's mean r with the others.

    Y: (S, n_trs, v), S >= 2. Returns (pooled (v,), per_subject (S, v)) float64; NaN where a subject's
    series is constant or non-finite (that voxel is then NaN for everyone)."""
    Y = np.asarray(Y, dtype=np.float64)
    S, n = Y.shape[0], Y.shape[1]
    z = _zscore_time(Y, axis=1)                                # (S, n, v), population SD
    total = z.sum(axis=0)                                      # (n, v)
    # sum_{s != t} r_st = (sum_t |sum_s z_s|^2 - sum_s |z_s|^2) / n, and sum_s |z_s|^2 = S n
    pooled = ((total * total).sum(axis=0) / n - S) / (S * (S - 1))
    per_subject = np.einsum("snv,nv->sv", z, total) / n
    per_subject = (per_subject - 1.0) / (S - 1)
    return pooled, per_subject


def isc_reliability(Y, runs=None):
    """Between-subject reliability rho per voxel: see the module doc.

    Y: (S, n_trs, v), S >= 2; runs: (n_trs,) run labels (None: one run). Returns a dict of float64 arrays:
    ``rho`` (v,) mean over runs of the pooled pair r, ``se`` (v,) its standard error over runs (NaN with one
    run), ``rho_runs`` (n_runs, v), ``rho_subject`` (S, v) mean over runs of each subject's mean pair r, and
    ``n_runs`` (v,) runs with a defined r.
    """
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 3 or Y.shape[0] < 2:
        raise DataError(f"ISC noise ceiling needs (subjects >= 2, TRs, voxels), got shape {Y.shape}")
    runs = np.zeros(Y.shape[1], int) if runs is None else np.asarray(runs)
    if runs.shape != (Y.shape[1],):
        raise DataError(f"runs has shape {runs.shape}, expected ({Y.shape[1]},) to match the TRs of Y {Y.shape}")
    labels = np.unique(runs)
    rho_runs = np.empty((len(labels), Y.shape[2]))
    subj = np.empty((len(labels),) + (Y.shape[0], Y.shape[2]))
    for i, lab in enumerate(labels):
        rho_runs[i], subj[i] = pair_reliability(Y[:, runs == lab])
    out = run_summary(rho_runs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out["rho_subject"] = np.nanmean(subj, axis=0)
    out["rho_runs"] = rho_runs
    return out


def run_summary(rho_runs):
    """``rho`` (mean over runs, NaN runs left out), ``se`` (SD over runs / sqrt(runs); NaN with < 2 runs) and
    ``n_runs`` of per-run reliabilities (n_runs, ...)."""
    x = np.asarray(rho_runs, dtype=np.float64)
    ok = np.isfinite(x)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, x, 0.0).sum(axis=0) / n
        var = (np.where(ok, x - mean, 0.0) ** 2).sum(axis=0) / (n - 1)
        se = np.where(n > 1, np.sqrt(var / n), np.nan)
    return {"rho": np.where(n > 0, mean, np.nan), "se": se, "n_runs": n}


def signed_sqrt(x):
    """sign(x) sqrt(|x|), NaN kept: the ceiling in r units of a reliability (variance fraction) estimate."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.sqrt(np.abs(x))


ROOT_BOOST, ROOT_WIDTH = 0.3, 1.6


def pooled_se(se):
    """One standard error for every voxel (or ROI): sqrt of the median of the squared SEs (NaN: none finite).

    Each voxel's SE over a handful of runs is itself noisy; the pooled value sets the scale of the
    low-reliability correction in :func:`corrected_root`."""
    se = np.asarray(se, dtype=np.float64)
    ok = np.isfinite(se)
    return float(np.sqrt(np.median(se[ok] ** 2))) if ok.any() else np.nan


def corrected_root(rho, sigma):
    """Ceiling in r units from a reliability estimate ``rho`` with standard error ``sigma`` (module doc):
    ``sign(rho) sqrt(|rho|) (1 + 0.3 exp(-u^2 / (2 * 1.6^2)))``, u = rho / sigma.

    The signed root alone is unbiased at a true 0 but reads low where the true rho is within a few SE of 0
    (at u ~ 1 by about 0.19 sqrt(sigma)); the odd, bounded factor (1 at |u| >> 1.6) cuts the worst bias of the
    mean over true u = c^2 / sigma >= 0.9 to 0.093 sqrt(sigma) for Gaussian rho (numerical minimax over the
    two constants), at 1.2x the SD near u = 0. sigma NaN or <= 0: the plain signed root."""
    rho = np.asarray(rho, dtype=np.float64)
    root = signed_sqrt(rho)
    if not np.isfinite(sigma) or sigma <= 0:
        return root
    return root * (1.0 + ROOT_BOOST * np.exp(-0.5 * (rho / sigma / ROOT_WIDTH) ** 2))


def ceiling_interval(rho, se, n_runs, level=0.95):
    """(low, high) of the ceiling: signed roots of rho -/+ t(1 - (1 - level) / 2, n_runs - 1) se (NaN where
    se is NaN, i.e. fewer than 2 runs)."""
    from scipy import stats as sps

    n = np.asarray(n_runs, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        t = sps.t.ppf(0.5 + level / 2.0, np.where(n > 1, n - 1, np.nan))
    half = t * np.asarray(se, dtype=np.float64)
    return signed_sqrt(rho - half), signed_sqrt(rho + half)


def isc_ceiling(Y, runs=None):
    """ISC noise ceiling (v,) float64 of subjects' BOLD ``Y`` (S, n_trs, v): :func:`corrected_root` of the
    pooled pair reliability, with the SE pooled over the voxels of ``Y``."""
    rel = isc_reliability(Y, runs)
    return corrected_root(rel["rho"], pooled_se(rel["se"]))


def normalise(r, ceiling, floor=DEFAULT_FLOOR, low=None):
    """r / ceiling (broadcasting), NaN where the ceiling is not reliably above ``floor``: where ``low`` (the
    lower end of the ceiling's interval, broadcasting like ``ceiling``) is <= floor or, without ``low``, where
    the ceiling itself is <= floor; NaN where the ceiling is not finite. float64."""
    r = np.asarray(r, dtype=np.float64)
    c = np.asarray(ceiling, dtype=np.float64)
    gate = c if low is None else np.asarray(low, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ok = np.isfinite(c) & (c > 0) & np.isfinite(gate) & (gate > floor)
        return np.where(ok, r / np.where(ok, c, 1.0), np.nan)
