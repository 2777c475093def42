#!/usr/bin/env python
"""Size of the per-subject permutation test: the refitting null with alphas held fixed, the refitting null
with alphas re-selected by inner CV under every permutation, and the former fixed-prediction null.

Per seed (a "subject"): K runs of an AR(1) design (p columns) and AR(1) BOLD independent of it (phi and
run length as given). The statistic is the fit's: nested CV (leave-one-run-out outer folds, inner folds
leaving one training run out, alpha per voxel by mean inner r, float64 ridge from brainalign.ridge), the
mean over outer folds of the held-out r. Its p-value against

- ``fixed``    the refitting null (brainalign.permutation.RefitNull): every run shifted once, every fold
               refitted, each voxel's per-fold alpha from the real data (what the stage does);
- ``reselect`` the same shifts, but every permutation reruns the whole nested CV on the shifted BOLD, so
               the alphas are re-selected (exact exchangeability; what "fixed" approximates);
- ``old``      the former null: held-out predictions fixed, only the test BOLD shifted.

Prints the false-positive rate at 0.05 and 0.01 with its binomial SE, pooled over seeds x voxels, and the
share of voxels where fixed and reselect disagree at 0.05.

Usage: python bench/permutation_size.py [--phi 0.7] [--n-trs 76] [--voxels 200] [--seeds 10] [--perms 99]
       [--runs 4] [--features 8] [--no-reselect]
This is a benchmark (minutes with --reselect), not a test.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.signal import lfilter

from brainalign.permutation import (RefitNull, circular_shift_null, draw_shifts, heldout_predictions,
                                    perm_pvalues)
from brainalign.ridge import nested_cv

ALPHAS = [0.1, 10.0, 1000.0, 1e5]


def ar1(rng, n, v, phi):
    return lfilter([np.sqrt(1 - phi ** 2)], [1.0, -phi], rng.standard_normal((n + 200, v)), axis=0)[200:]


def splits(runs):
    out = []
    for k in np.unique(runs):
        train, test = np.flatnonzero(runs != k), np.flatnonzero(runs == k)
        g = runs[train]
        out.append((train, test, [(np.flatnonzero(g != j), np.flatnonzero(g == j)) for j in np.unique(g)]))
    return out


def nested(X, Y, runs):
    sp = splits(runs)
    inner = {tuple(tr[:3]): inn for tr, _, inn in sp}
    res = nested_cv(X, Y, [(tr, te) for tr, te, _ in sp], ALPHAS, inner_cv=lambda tr: inner[tuple(tr[:3])],
                    dtype="float64")
    with np.errstate(invalid="ignore"):
        return np.nanmean(res.r.astype(np.float64), axis=0), res.best_alpha.astype(np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phi", type=float, default=0.7)
    ap.add_argument("--n-trs", type=int, default=76)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--voxels", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--perms", type=int, default=99)
    ap.add_argument("--no-reselect", action="store_true")
    a = ap.parse_args()
    K, n = a.runs, a.n_trs
    runs = np.repeat(np.arange(K), n)
    p = {k: [] for k in ("fixed", "reselect", "old")}
    t0 = time.perf_counter()
    for seed in range(a.seeds):
        rng = np.random.default_rng([2021, seed])
        X = np.concatenate([ar1(rng, n, a.features, a.phi) for _ in range(K)])
        Y = np.concatenate([ar1(rng, n, a.voxels, a.phi) for _ in range(K)])
        obs, alphas = nested(X, Y, runs)
        shifts = draw_shifts([n] * K, a.perms, rng)
        model = RefitNull(X, runs, runs, ALPHAS)
        o_fixed, null = model.test_statistic(Y, alphas, shifts)
        p["fixed"].append(perm_pvalues(o_fixed, null))
        pred = heldout_predictions(X, Y, runs, alphas)
        p["old"].append(perm_pvalues(o_fixed, circular_shift_null(pred, Y, runs, 0, None, shifts=shifts)))
        if not a.no_reselect:
            null_r = np.empty((a.perms, a.voxels))
            for i, sh in enumerate(shifts):
                Ys = np.concatenate([np.roll(Y[runs == k], sh[k], axis=0) for k in range(K)])
                null_r[i] = nested(X, Ys, runs)[0]
            p["reselect"].append(perm_pvalues(obs, null_r))
        print(f"  seed {seed}: " + ", ".join(f"{k} {np.mean(v[-1] <= 0.05):.3f}" for k, v in p.items() if v),
              flush=True)
    print(f"phi {a.phi}, {K} runs x {n} TRs, p = {a.features}, {a.seeds} seeds x {a.voxels} voxels, "
          f"{a.perms} permutations ({time.perf_counter() - t0:.0f} s)")
    for k, v in p.items():
        if not v:
            continue
        v = np.concatenate(v)
        line = []
        for nominal in (0.05, 0.01):
            fpr = np.mean(v <= nominal)
            line.append(f"{fpr:.4f} at {nominal} (SE {np.sqrt(nominal * (1 - nominal) / v.size):.4f})")
        print(f"  {k:9s} FPR " + ", ".join(line))
    if p["reselect"]:
        f, r = np.concatenate(p["fixed"]), np.concatenate(p["reselect"])
        print(f"  fixed vs reselect: decisions at 0.05 differ on {np.mean((f <= 0.05) != (r <= 0.05)):.4f} of voxels; "
              f"corr of p {np.corrcoef(f, r)[0, 1]:.3f}")


if __name__ == "__main__":
    main()
