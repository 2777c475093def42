"""Resample model-window features onto the fMRI TR grid when windows and TRs do not coincide.

MERLOT Reserve, for example, encodes ~5 s segments while CNeuroMod's TR is 1.49 s. Two methods, both a
linear map ``out = W @ feats`` with a (n_trs, n_windows) weight matrix:

``lanczos`` (the Huth lab's ``lanczosinterp2D``, a = ``window`` lobes, default 3)::

    L(t) = a sin(pi t') sin(pi t' / a) / (pi t')^2,  t' = t * cutoff,  L(0) = 1,  L = 0 for |t'| > a
    W[i, j] = L(tr_times[i] - window_times[j])

  with ``cutoff = cutoff_mult / max(median TR spacing, median window spacing)``: the low-pass frequency of
  the coarser grid (Huth et al. use the TR rate, which is the same when downsampling, e.g. words -> TRs;
  when upsampling coarse windows to finer TRs, the window rate keeps the kernel wide enough to interpolate).
  With ``normalize=True`` (default) each row of W is divided by its sum, so a constant feature stays constant
  and regularly sampled band-limited features are interpolated at their own amplitude; ``normalize=False``
  gives Huth's unnormalised sum (the right choice for sparse events such as word onsets, whose sum then
  scales with the event rate). Rows whose kernel sum is 0 (no window within reach) are 0.

  ``anchor='centre'`` (times are interval centres): the symmetric kernel above, which reaches ``window``
  samples of the coarser grid into the future. ``anchor='end'`` (times are interval ends, as align's windows
  and TRs: "row i describes TR i"): the kernel is evaluated between the interval centres (end − half the
  grid's spacing) and windows that end after the TR's end get weight 0 before normalising, so no stimulus
  after TR i enters row i (a causal, one-sided Lanczos: for windows every 0.25-0.5 s and TRs of 1.49 s its
  centre of mass is within 0.25 s of the TR centre, tests/test_resample.py). Windows coarser than the TRs
  cannot be resampled causally without extrapolation: a ConfigError asks for windows.step <= TR.

``average``: every window and every TR is an interval of its grid's median spacing, centred on the given
  time (``anchor='centre'``) or ending at it (``anchor='end'``, e.g. windows that end at their TR); the TR
  row is the average of the windows weighted by their overlap (in seconds) with the TR interval. TRs that
  overlap no window are 0.

Both return float64 (n_trs, d). Times are seconds on one clock (e.g. from the episode start).
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError, DataError

METHODS = ("none", "lanczos", "average")


def lanczos_kernel(t, cutoff, window=3):
    """The Lanczos kernel of ``window`` lobes at times ``t`` (s) for low-pass ``cutoff`` (Hz); float64."""
    x = np.asarray(t, dtype=np.float64) * cutoff
    with np.errstate(invalid="ignore", divide="ignore"):
        val = window * np.sin(np.pi * x) * np.sin(np.pi * x / window) / (np.pi ** 2 * x ** 2)
    val = np.where(x == 0, 1.0, val)
    return np.where(np.abs(x) > window, 0.0, val)


def _spacing(times, what):
    if times.size < 2:
        raise DataError(f"resample: need at least 2 {what} to know their spacing, got {times.size}")
    d = np.diff(times)
    if np.any(d <= 0):
        raise DataError(f"resample: {what} must be strictly increasing (first problem at index "
                        f"{int(np.flatnonzero(d <= 0)[0]) + 1})")
    return float(np.median(d))


def lanczos_weights(window_times, tr_times, window=3, cutoff_mult=1.0, normalize=True, anchor="centre"):
    """(n_trs, n_windows) Lanczos weights (see the module doc).

    ``anchor='end'``: the times are interval ends; the kernel is evaluated between interval centres and
    windows that end after a TR's end get weight 0, so row i uses no stimulus after TR i.
    """
    wt, tt = np.asarray(window_times, np.float64), np.asarray(tr_times, np.float64)
    ws, ts = _spacing(wt, "window times"), _spacing(tt, "TR times")
    cutoff = cutoff_mult / max(ws, ts)
    if anchor == "end":
        if ws > ts * (1 + 1e-6):
            raise ConfigError(f"windows.resample: lanczos onto TRs of {ts:g} s from windows every {ws:g} s: row i may "
                              "only use stimulus up to the end of TR i, and windows coarser than the TRs would have "
                              "to be extrapolated; set windows.step <= data.bold.tr (long windows via "
                              "windows.context)")
        W = lanczos_kernel((tt - ts / 2)[:, None] - (wt - ws / 2)[None, :], cutoff, window)
        W[wt[None, :] > tt[:, None] + 1e-9 * max(ws, ts)] = 0.0       # causal: nothing after the TR's end
    elif anchor == "centre":
        W = lanczos_kernel(tt[:, None] - wt[None, :], cutoff, window)
    else:
        raise ConfigError(f"resample anchor {anchor!r}: choose 'centre' or 'end'")
    if normalize:
        s = W.sum(axis=1, keepdims=True)
        W = np.divide(W, s, out=np.zeros_like(W), where=np.abs(s) > 1e-12)
    return W


def _intervals(times, width, anchor):
    if anchor == "centre":
        return times - width / 2, times + width / 2
    if anchor == "end":
        return times - width, times
    raise ConfigError(f"resample anchor {anchor!r}: choose 'centre' or 'end'")


def average_weights(window_times, tr_times, anchor="centre"):
    """(n_trs, n_windows) overlap-weighted averaging weights (rows sum to 1, or 0 without overlap)."""
    wt, tt = np.asarray(window_times, np.float64), np.asarray(tr_times, np.float64)
    ws, we = _intervals(wt, _spacing(wt, "window times"), anchor)
    ts, te = _intervals(tt, _spacing(tt, "TR times"), anchor)
    overlap = np.clip(np.minimum(te[:, None], we[None, :]) - np.maximum(ts[:, None], ws[None, :]), 0.0, None)
    s = overlap.sum(axis=1, keepdims=True)
    return np.divide(overlap, s, out=np.zeros_like(overlap), where=s > 0)


def resample_features(feats, window_times, tr_times, method="lanczos", window=3, anchor="centre",
                      cutoff_mult=1.0, normalize=True):
    """Features of model windows (n_windows, d) -> the TR grid (n_trs, d), float64.

    window_times: (n_windows,) seconds (centre or end of each window, see ``anchor``); tr_times: (n_trs,)
    seconds. method: 'lanczos' (``window`` lobes), 'average' (overlap-weighted) or 'none' (the grids must
    already coincide: returns feats when window_times == tr_times).
    """
    feats = np.asarray(feats, dtype=np.float64)
    wt, tt = np.asarray(window_times, np.float64), np.asarray(tr_times, np.float64)
    if feats.ndim != 2 or wt.shape != (feats.shape[0],):
        raise DataError(f"resample: features {feats.shape} and window times {wt.shape} must be (n, d) and (n,)")
    if tt.ndim != 1 or not (np.isfinite(wt).all() and np.isfinite(tt).all()):
        raise DataError("resample: window and TR times must be finite 1-D arrays")
    if not np.isfinite(feats).all():
        raise DataError(f"resample: features {feats.shape} contain NaN/inf")
    if method == "none":
        if wt.shape != tt.shape or not np.allclose(wt, tt, atol=1e-6):
            raise ConfigError("windows.resample: none needs model windows on the TR grid "
                              f"({wt.size} windows vs {tt.size} TRs); use lanczos or average")
        return feats.copy()
    if method == "lanczos":
        if window < 1:
            raise ConfigError(f"resample: Lanczos window must be >= 1 lobe, got {window}")
        W = lanczos_weights(wt, tt, window, cutoff_mult, normalize, anchor)
    elif method == "average":
        W = average_weights(wt, tt, anchor)
    else:
        raise ConfigError(f"windows.resample: unknown method {method!r} (choose {', '.join(METHODS)})")
    return W @ feats
