#!/usr/bin/env python
"""Cost of the refitting permutation null (brainalign.permutation.RefitNull) against its operation count.

Times ``RefitNull.statistics`` for one design (n TRs in K equal runs = outer folds, p columns, v voxels,
n_perm permutations) on this machine, prints the counted multiply-adds per permutation,
n p v + K (2 r p + r^2) v (r = p here), the achieved GFLOP/s, and extrapolates with that rate to a shape
given on the command line (default: the Algonauts parcels, 133k TRs, p = 768 x 6, K = 10, 1,000 parcels,
1,000 permutations). The extrapolation assumes the same rate, which a larger p (bigger GEMMs) only improves.

Usage: python bench/permutation_cost.py [--n 4000] [--p 256] [--v 256] [--k 8] [--perms 5]
       [--target 133000,4608,1000,10,1000]
A benchmark, not a test; nothing is asserted.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from brainalign.permutation import RefitNull, draw_shifts


def macs_per_perm(n, p, v, K):
    return n * p * v + K * (2 * p * p + p * p) * v


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--p", type=int, default=256)
    ap.add_argument("--v", type=int, default=256)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--perms", type=int, default=5)
    ap.add_argument("--target", default="133000,4608,1000,10,1000", help="n,p,v,K,n_perm to extrapolate to")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    n = a.n - a.n % a.k
    runs = np.repeat(np.arange(a.k), n // a.k)
    X = rng.standard_normal((n, a.p))
    Y = rng.standard_normal((n, a.v))
    grid = [1.0, 100.0, 1e4]
    alphas = rng.choice(grid, size=(a.k, a.v))
    t0 = time.perf_counter()
    model = RefitNull(X, runs, runs, grid)
    t_setup = time.perf_counter() - t0
    shifts = draw_shifts([n // a.k] * a.k, a.perms, rng)
    t0, c0 = time.perf_counter(), time.process_time()
    model.statistics(Y, alphas, shifts)
    t, cpu = time.perf_counter() - t0, time.process_time() - c0
    macs = macs_per_perm(n, a.p, a.v, a.k) * a.perms
    rate = 2 * macs / t
    print(f"n {n}, p {a.p}, v {a.v}, K {a.k}, {a.perms} permutations: setup {t_setup:.2f} s (engine, eigh), "
          f"permutations {t:.2f} s = {t / a.perms:.3f} s each; counted {macs / a.perms:.3g} multiply-adds per "
          f"permutation -> {rate / 1e9:.1f} GFLOP/s (process CPU time {cpu:.2f} s: "
          f"{2 * macs / max(cpu, 1e-9) / 1e9:.1f} GFLOP/s per busy core-second)")
    tn, tp, tv, tk, tperm = (int(x) for x in a.target.split(","))
    total = 2 * macs_per_perm(tn, tp, tv, tk) * tperm
    print(f"extrapolated to n {tn}, p {tp}, v {tv}, K {tk}, {tperm} permutations: {total:.3g} flops = "
          f"{total / rate / 3600:.1f} h at this rate; {total / 50e12 / 60:.1f} min at 50 TFLOP/s (one H100, float64)")


if __name__ == "__main__":
    main()
