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

**No repeats: inter-subject correlation (ISC) across subjects who saw the same stimulus.**
``Y`` (S, n_trs, v) on a common voxel/parcel space. Per subject s and run, ``isc_s`` = Pearson r of
subject s with the mean of the other S - 1 subjects (leave-one-subject-out), averaged over runs.
If all subjects share the signal with pairwise reliability rho (= signal_var / total var), the mean of
k = S - 1 subjects has reliability rho_k = k rho / (1 + (k - 1) rho) (Spearman-Brown) and

    isc = sqrt(rho * rho_k)            so       rho = (isc^2 (k - 1) + sqrt(isc^4 (k - 1)^2 + 4 k isc^2)) / (2 k)

The Spearman-Brown corrected ceiling is ``sqrt(rho)``: the r of the shared signal with one subject. It
is >= isc, and equal to it as S grows. Uncorrected (``spearman_brown=False``) the ceiling is isc itself,
a conservative (lower) estimate. Only stimulus-locked signal shared across subjects counts as "signal",
so idiosyncratic but reliable responses lower this ceiling (ISC ceilings are lower bounds on the
within-subject ceiling). isc <= 0 gives ceiling 0.

``normalise(r, ceiling, floor)`` = r / ceiling where ceiling > floor, else NaN (ratios over unreliable
voxels are noise).
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


def loso_isc(Y, runs=None):
    """Leave-one-subject-out ISC: r of each subject with the mean of the others, averaged over runs.

    Y: (S, n_trs, v), S >= 2; runs: (n_trs,) run labels (None: one run). Each run's r is computed on that
    run's TRs; runs where r is undefined (constant data) are left out. Returns float64 (S, v).
    """
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 3 or Y.shape[0] < 2:
        raise DataError(f"ISC noise ceiling needs (subjects >= 2, TRs, voxels), got shape {Y.shape}")
    runs = np.zeros(Y.shape[1], int) if runs is None else np.asarray(runs)
    if runs.shape != (Y.shape[1],):
        raise DataError(f"runs has shape {runs.shape}, expected ({Y.shape[1]},) to match the TRs of Y {Y.shape}")
    S = Y.shape[0]
    total = np.zeros((S, Y.shape[2]))
    count = np.zeros_like(total)
    for lab in np.unique(runs):
        y = Y[:, runs == lab]
        others = (y.sum(axis=0, keepdims=True) - y) / (S - 1)
        a, b = _zscore_time(y, axis=1), _zscore_time(others, axis=1)
        r = (a * b).mean(axis=1)
        ok = np.isfinite(r)
        total += np.where(ok, r, 0.0)
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def spearman_brown_isc(isc, n_subjects):
    """Ceiling sqrt(rho) from a leave-one-out ISC with ``n_subjects`` subjects (k = n - 1 in the mean).

    Solves isc^2 = k rho^2 / (1 + (k - 1) rho) for rho >= 0; isc <= 0 -> 0; NaN stays NaN.
    """
    k = int(n_subjects) - 1
    if k < 1:
        raise DataError(f"ISC ceiling needs >= 2 subjects, got {n_subjects}")
    r = np.asarray(isc, dtype=np.float64)
    r2 = np.where(r > 0, r, 0.0) ** 2
    rho = (r2 * (k - 1) + np.sqrt(r2 * r2 * (k - 1) ** 2 + 4 * k * r2)) / (2 * k)
    return np.where(np.isnan(r), np.nan, np.sqrt(np.minimum(rho, 1.0)))


def ceiling_from_isc(isc, n_subjects: int, spearman_brown: bool = True):
    """The ceiling of leave-one-subject-out ISC values (any shape) of ``n_subjects`` subjects: Spearman-Brown
    corrected, or (uncorrected) max(isc, 0); NaN stays NaN. What the stats stage uses (it computes the ISC in
    voxel chunks)."""
    isc = np.asarray(isc, dtype=np.float64)
    if spearman_brown:
        return spearman_brown_isc(isc, n_subjects)
    with np.errstate(invalid="ignore"):
        return np.where(isc > 0, isc, np.where(np.isnan(isc), np.nan, 0.0))


def isc_ceiling(Y, runs=None, spearman_brown=True):
    """ISC noise ceiling (S, v) float64 of subjects' BOLD ``Y`` (S, n_trs, v) in memory; see the module doc."""
    return ceiling_from_isc(loso_isc(Y, runs), Y.shape[0], spearman_brown)


def normalise(r, ceiling, floor=DEFAULT_FLOOR):
    """r / ceiling (broadcasting), NaN where the ceiling is <= ``floor`` or not finite. float64."""
    r = np.asarray(r, dtype=np.float64)
    c = np.asarray(ceiling, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ok = np.isfinite(c) & (c > floor)
        return np.where(ok, r / np.where(ok, c, 1.0), np.nan)
