#!/usr/bin/env python
"""Measured limits of cross-fitted residual features (brainalign.residuals): recovery and unimodal bias.

Simulation (independent of the package; issue 21's "harder" case and larger ones): K runs of n TRs; two
unimodal predictor sets A and B of q columns each (white, z-scored per run); the target ("joint") has d = 64
columns, 80 % of its variance a random linear map of [A, B], 20 % a residual E independent of them. Voxels:

- residual-driven: y = E w + noise (held-out r with the true E about 0.3);
- unimodal-only:   y = A w + noise, r about 0.7 (nothing to find in the residual: the true E gives r ~ 0).

The residual of joint given [A, B] is cross-fitted per outer fold by ``crossfit_folds`` (what align does)
and the encoding model is the fit's nested CV (leave-one-run-out outer folds, inner folds leaving one
training run out, alpha per voxel; brainalign.ridge.nested_cv). Printed per (training TRs, q):

- recovery = mean held-out r with the cross-fitted residual / the same with the true E (residual voxels);
- bias     = mean held-out r with the cross-fitted residual on unimodal-only voxels (truth 0), with its SE.

Usage: python bench/residual_limits.py [--grid 4x100,4x400,5x400,9x400] [--q 64,160] [--seeds 3]
       [--voxels 400]
This is a benchmark (minutes), not a test.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from brainalign.residuals import crossfit_folds
from brainalign.ridge import nested_cv

ALPHAS = np.logspace(-1, 5, 7)
RESID_ALPHAS = np.logspace(-1, 5, 7)
D = 64


def zrun(x, runs):
    out = np.empty_like(x)
    for k in np.unique(runs):
        m = runs == k
        out[m] = (x[m] - x[m].mean(0)) / x[m].std(0)
    return out


def simulate(rng, K, n, q, v):
    runs = np.repeat(np.arange(K), n)
    N = runs.size
    A, B = zrun(rng.standard_normal((N, q)), runs), zrun(rng.standard_normal((N, q)), runs)
    shared = np.concatenate([A, B], 1) @ rng.standard_normal((2 * q, D))
    shared /= shared.std(0)
    E = rng.standard_normal((N, D))
    T = zrun(np.sqrt(0.8) * shared + np.sqrt(0.2) * E, runs)
    sig_e = E @ rng.standard_normal((D, v))
    sig_a = A @ rng.standard_normal((q, v))
    Y_e = sig_e / sig_e.std(0) * 0.35 + rng.standard_normal((N, v))
    Y_a = sig_a / sig_a.std(0) * 1.0 + rng.standard_normal((N, v))      # r about 0.7: a strong unimodal drive
    return runs, np.concatenate([A, B], 1), T, E, Y_e, Y_a


def heldout_r(Xs, Y, runs):
    """Mean over leave-one-run-out folds of the held-out r; Xs: one design per fold (or a single one)."""
    r = []
    for k in np.unique(runs):
        X = Xs[k] if isinstance(Xs, list) else Xs
        train, test = np.flatnonzero(runs != k), np.flatnonzero(runs == k)
        g = runs[train]
        inner = [(np.flatnonzero(g != j), np.flatnonzero(g == j)) for j in np.unique(g)]
        res = nested_cv(X, Y, [(train, test)], ALPHAS, inner_cv=lambda tr, inner=inner: inner, dtype="float64")
        r.append(res.r[0].astype(np.float64))
    return np.mean(r, axis=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="4x100,4x400,5x400,9x400")
    ap.add_argument("--q", default="64,160")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--voxels", type=int, default=400)
    a = ap.parse_args()
    print(f"{'runs x TRs':>10} {'train TRs':>9} {'q (2 sets)':>10} {'q/train':>7} {'recovery':>8} "
          f"{'r true E':>8} {'bias unimodal':>14} {'SE':>6} {'s':>5}")
    for cell in a.grid.split(","):
        K, n = (int(x) for x in cell.split("x"))
        for q in (int(x) for x in a.q.split(",")):
            t0 = time.perf_counter()
            r_cf, r_true, bias = [], [], []
            for seed in range(a.seeds):
                rng = np.random.default_rng([21, K, n, q, seed])
                runs, P, T, E, Y_e, Y_a = simulate(rng, K, n, q, a.voxels)
                resid = [cf.residual for cf in crossfit_folds(T, P, runs, list(range(K)), RESID_ALPHAS)]
                r_cf.append(heldout_r(resid, Y_e, runs))
                r_true.append(heldout_r(E, Y_e, runs))
                bias.append(heldout_r(resid, Y_a, runs))
            r_cf, r_true, bias = (np.concatenate(x) for x in (r_cf, r_true, bias))
            train = (K - 1) * n
            print(f"{cell:>10} {train:>9} {2 * q:>10} {2 * q / train:>7.3f} {r_cf.mean() / r_true.mean():>8.3f} "
                  f"{r_true.mean():>8.3f} {bias.mean():>14.4f} {bias.std(ddof=1) / np.sqrt(bias.size):>6.4f} "
                  f"{time.perf_counter() - t0:>5.0f}", flush=True)


if __name__ == "__main__":
    main()
