#!/usr/bin/env python
"""Benchmark: the nested-CV engine before issue 20 (git 307b213, one FoldSolver per outer fold, Y read once
per outer fold) vs the per-fold sufficient-statistics engine (brainalign.ridge.suffstats) vs himalaya.

Cases (same data and splits for every engine; 10 alphas logspace(-1, 5)):

  a  10 runs x 4,000 TRs, p 768, v 8,000: leave-one-run-out nested in leave-one-run-out (n >> p)
  b  n 3,000, p 1,024, v 20,000: the medium case of bench/ridge.py (first 80 % train, last 20 % test),
     5-fold contiguous inner CV
  c  streaming 25,000 and 200,000 voxels from HDF5 (2,000 TRs, 5 runs, p 64, leave-one-run-out nested)
     with fit's chunk width (4,096 voxels): peak RSS at both voxel counts (flat in voxels)

Each engine runs in its own subprocess (its own peak RSS); the old engine is ``git archive 307b213
toolkit/brainalign`` extracted to a temporary directory and imported from there. For the two brainalign
engines the X-only set-up (decompositions) and the per-voxel work are timed apart, so a run with fewer
voxels (``--voxels``, for a busy machine) also projects the full case: ``setup + per_voxel x v``.
Printed: wall time, CPU time, peak RSS, alphas identical (and rounding-level ties: the old engine's own
inner-CV scores of the two alphas within 1e-5), max |delta r| where the alphas agree, ratios.

Usage:  python bench/engine.py [--cases a,b,c] [--voxels N] [--peers old,new,himalaya]

This is a benchmark, not a test; no timing is asserted anywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OLD_REV = "307b213"
ALPHAS = np.logspace(-1, 5, 10)
CASES = {  # name: (runs, TRs per run, p, v, design)
    "a": dict(runs=10, trs=4000, p=768, v=8000, kind="loro"),
    "b": dict(runs=1, trs=3000, p=1024, v=20000, kind="medium"),
    "tiny": dict(runs=5, trs=400, p=96, v=2000, kind="loro"),      # a quick check while developing
}
STREAM = dict(runs=5, trs=400, p=64, voxels=(25_000, 200_000), chunk=4096)


def make_data(n, p, v, seed=0, chunk=2048):
    """float32 X (n, p) with correlated columns, Y (n, v) with voxel-varying signal and an offset."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p), dtype=np.float32)
    X[:, 1:] += 0.5 * X[:, :-1]
    Y = np.empty((n, v), dtype=np.float32)
    for c0 in range(0, v, chunk):
        w = min(chunk, v - c0)
        W = rng.standard_normal((p, w), dtype=np.float32)
        W *= rng.random((p, w)) < 0.1
        W *= (np.logspace(-1.5, 0.5, v)[c0:c0 + w] / np.sqrt(0.1 * p)).astype(np.float32)
        Y[:, c0:c0 + w] = X @ W + rng.standard_normal((n, w), dtype=np.float32) + 100.0
    return X, Y


def splits(case):
    """(outer [(train, test)], inner per outer fold [(train, val)] local to its training rows)."""
    from brainalign.ridge import kfold_splits

    c = CASES[case]
    n = c["runs"] * c["trs"]
    if c["kind"] == "medium":
        ntr = int(0.8 * n)
        return [(np.arange(ntr), np.arange(ntr, n))], [kfold_splits(ntr, 5)]
    groups = np.repeat(np.arange(c["runs"]), c["trs"])
    outer, inner = [], []
    for g in range(c["runs"]):
        tr, te = np.flatnonzero(groups != g), np.flatnonzero(groups == g)
        tg = groups[tr]
        outer.append((tr, te))
        inner.append([(np.flatnonzero(tg != h), np.flatnonzero(tg == h)) for h in np.unique(tg)])
    return outer, inner


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pearson(a, b):
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / den, np.nan)


# ----------------------------------------------------------------------------- workers
def worker(peer, case, v, out):
    c = CASES[case]
    X, Y = make_data(c["runs"] * c["trs"], c["p"], v)
    outer, inner = splits(case)
    K, A = len(outer), ALPHAS.size
    r = np.full((K, v), np.nan)
    alpha = np.full((K, v), np.nan)
    cv = np.full((K, A, v), np.nan)
    setup = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    picked = "samples"
    if peer == "new":               # what nested_cv(engine="auto") picks for this shape
        from brainalign.ridge.nested import _pick_engine

        picked = _pick_engine(X, outer, inner, ALPHAS, "eigh")
    if peer == "old" or picked == "samples":   # 307b213's nested_cv loop (or today's sample engine), set-up apart
        from brainalign.ridge import FoldSolver, score_stream

        for k, ((tr, te), inn) in enumerate(zip(outer, inner)):
            ts = time.perf_counter()
            solver = FoldSolver(X[tr], X[te], ALPHAS, inn)
            setup += time.perf_counter() - ts
            res = score_stream(solver, Y, tr, te)
            r[k], alpha[k], cv[k] = res.r, res.best_alpha, res.cv_scores
    elif peer == "new":             # the statistics engine (nested_cv(engine="stats")), set-up apart
        from brainalign.ridge.nested import prefetched, stream_chunks
        from brainalign.ridge.suffstats import NestedEngine, default_stats_chunk

        ts = time.perf_counter()
        eng = NestedEngine(X, outer, inner, ALPHAS)
        setup = time.perf_counter() - ts
        for cols, block in prefetched(stream_chunks(Y, default_stats_chunk(*X.shape, eng.n_atoms))):
            r[:, cols], alpha[:, cols], cv[:, :, cols] = eng.score(eng.chunk_stats(block))
    elif peer == "himalaya":        # RidgeCV per outer fold with the same inner splits, correlation score
        from himalaya.backend import set_backend
        from himalaya.ridge import RidgeCV
        from himalaya.scoring import correlation_score

        backend = set_backend("numpy", on_error="raise")
        for k, ((tr, te), inn) in enumerate(zip(outer, inner)):
            model = RidgeCV(alphas=ALPHAS, fit_intercept=True, cv=inn,
                            solver_params=dict(score_func=correlation_score, n_targets_batch=2048))
            model.fit(X[tr], Y[tr])
            coef = backend.to_numpy(model.coef_).astype(np.float64)
            r[k] = pearson(Y[te].astype(np.float64), X[te].astype(np.float64) @ coef)
            alpha[k] = backend.to_numpy(model.best_alphas_)
    else:
        raise SystemExit(f"unknown peer {peer}")
    wall = time.perf_counter() - t0
    np.savez(out, r=r, alpha=alpha, cv=cv, wall=wall, cpu=time.process_time() - c0, setup=setup,
             rss=peak_rss_mb(), engine=picked if peer == "new" else peer)


def stream_worker(path, out):
    import h5py

    from brainalign.ridge import nested_cv

    s = STREAM
    with h5py.File(path, "r") as f:
        ds = f["bold"]
        n, v = ds.shape
        X = make_data(n, s["p"], 1)[0]
        groups = np.repeat(np.arange(s["runs"]), s["trs"])
        from sklearn.model_selection import LeaveOneGroupOut

        t0 = time.perf_counter()
        res = nested_cv(X, ds, LeaveOneGroupOut(), ALPHAS, inner_cv=LeaveOneGroupOut(), groups=groups,
                        chunk_size=s["chunk"], engine="stats")
        wall = time.perf_counter() - t0
    with open(out, "w") as fh:
        json.dump({"wall": wall, "rss": peak_rss_mb(), "voxels": v, "rows": n,
                   "n_scored": int(np.isfinite(res.r).sum())}, fh)


# ----------------------------------------------------------------------------- driver
def old_tree(tmp):
    """``git archive OLD_REV toolkit/brainalign`` extracted under ``tmp``; returns the toolkit dir."""
    dest = os.path.join(tmp, "old")
    os.makedirs(dest, exist_ok=True)
    arch = subprocess.run(["git", "-C", ROOT, "archive", OLD_REV, "toolkit/brainalign"], capture_output=True,
                          check=True).stdout
    subprocess.run(["tar", "x", "-C", dest], input=arch, check=True)
    return os.path.join(dest, "toolkit")


def run(args, tmp, pythonpath, timeout):
    env = dict(os.environ, PYTHONPATH=pythonpath)
    cmd = [sys.executable, os.path.abspath(__file__)] + args
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"timeout after {timeout} s"
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return None


def machine():
    model = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores, {platform.node()}, load {os.getloadavg()[0]:.1f}"


def compare(res, ref):
    """(share of identical alphas, share of rounding-level ties, max |dr| where the alphas agree)."""
    a, b = res["alpha"].astype(np.float32), ref["alpha"].astype(np.float32)
    fin = np.isfinite(b)
    same = (a == b) & fin
    k, j = np.nonzero(fin & ~same)
    ia = np.searchsorted(ALPHAS.astype(np.float32), a[k, j])
    ib = np.searchsorted(ALPHAS.astype(np.float32), b[k, j])
    ties = 0
    if k.size and np.isfinite(ref["cv"]).any():
        ok = (ia < ALPHAS.size) & (ib < ALPHAS.size)
        ties = int((np.abs(ref["cv"][k[ok], ib[ok], j[ok]] - ref["cv"][k[ok], ia[ok], j[ok]]) < 1e-5).sum())
    dr = np.abs(res["r"] - ref["r"])[same]
    return same.sum() / max(1, fin.sum()), ties / max(1, fin.sum()), float(np.nanmax(dr)) if dr.size else np.nan


def main_cases(cases, peers, voxels, timeout):
    print(f"# brainalign nested-CV engine benchmark; machine: {machine()}")
    print(f"# old = git {OLD_REV} (FoldSolver per outer fold); new = nested_cv(engine='auto'): the statistics "
          "engine (suffstats.NestedEngine) or, where its operation count is higher, the sample engine; himalaya "
          "RidgeCV per outer fold with the same inner splits; alphas logspace(-1, 5, 10); float32")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"old": old_tree(tmp), "new": os.path.join(ROOT, "toolkit"), "himalaya": os.path.join(ROOT, "toolkit")}
        for case in cases:
            c = CASES[case]
            v = voxels or c["v"]
            print(f"\n## case {case}: {c['runs']} x {c['trs']} TRs, p {c['p']}, v {v} (full case v {c['v']}), "
                  f"{c['kind']}; load {os.getloadavg()[0]:.1f}")
            print(f"{'engine':13s} {'wall_s':>8s} {'cpu_s':>8s} {'setup_s':>8s} {'proj_full_s':>11s} "
                  f"{'peakRSS_MB':>10s} {'alpha_same':>10s} {'ties':>7s} {'max|dr|':>9s} {'old/this':>8s} "
                  f"{'proj old/this':>13s}")
            results = {}
            for peer in peers:
                out = os.path.join(tmp, f"{peer}-{case}.npz")
                t0 = time.perf_counter()
                err = run(["--worker", peer, "--case", case, "--v", str(v), "--out", out], tmp, paths[peer], timeout)
                results[peer] = err if err else dict(np.load(out))
                print(f"#   {peer} done in {time.perf_counter() - t0:.0f} s (load {os.getloadavg()[0]:.1f})",
                      flush=True)
            old = results.get("old")
            for peer in peers:
                res = results[peer]
                if isinstance(res, str):
                    print(f"{peer:13s} {'-':>8s}  {res}")
                    continue
                proj = (float(res["setup"]) + (float(res["wall"]) - float(res["setup"])) * c["v"] / v
                        if peer != "himalaya" else float("nan"))
                res["proj"] = proj
                same = ties = dr = ratio = pratio = float("nan")
                if isinstance(old, dict):
                    same, ties, dr = compare(res, old)
                    ratio = float(old["wall"]) / float(res["wall"])
                    pratio = old.get("proj", np.nan) / proj if np.isfinite(proj) else float("nan")
                name = f"new:{res['engine']}" if peer == "new" else peer
                print(f"{name:13s} {float(res['wall']):8.1f} {float(res['cpu']):8.1f} {float(res['setup']):8.1f} "
                      f"{proj:11.1f} {float(res['rss']):10.0f} {same:10.4f} {ties:7.4f} {dr:9.2e} {ratio:8.2f} "
                      f"{pratio:13.2f}")
        print("# setup = X-only work (decompositions); proj_full_s = setup + (wall - setup) x v_full / v (the "
              "per-voxel work is linear in v); alpha_same and max|dr| against the old engine; ties = differing "
              "alphas whose old inner-CV scores are within 1e-5 (rounding-level)")


def main_stream(timeout):
    import h5py

    s = STREAM
    n = s["runs"] * s["trs"]
    print(f"\n## case c: streaming from HDF5, {n} TRs ({s['runs']} runs), p {s['p']}, chunk {s['chunk']} "
          f"voxels, leave-one-run-out nested; load {os.getloadavg()[0]:.1f}")
    print(f"{'voxels':>8s} {'wall_s':>8s} {'peakRSS_MB':>10s} {'scored':>8s}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for v in s["voxels"]:
            path = os.path.join(tmp, f"bold-{v}.h5")
            with h5py.File(path, "w") as f:
                ds = f.create_dataset("bold", shape=(n, v), dtype="f4", chunks=(n, 256))
                for c0 in range(0, v, 8192):
                    w = min(8192, v - c0)
                    ds[:, c0:c0 + w] = rng.standard_normal((n, w), dtype=np.float32)
            out = os.path.join(tmp, "stream.json")
            err = run(["--stream-worker", path, "--out", out], tmp, os.path.join(ROOT, "toolkit"), timeout)
            if err:
                print(f"{v:8d}  {err}")
                continue
            with open(out) as fh:
                res = json.load(fh)
            print(f"{v:8d} {res['wall']:8.1f} {res['rss']:10.0f} {res['n_scored']:8d}")
            os.remove(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="a,b,c")
    ap.add_argument("--peers", default="old,new,himalaya")
    ap.add_argument("--voxels", type=int, default=0, help="voxels per case (0: the full case)")
    ap.add_argument("--timeout", type=int, default=7200)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--stream-worker", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--v", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.case, args.v, args.out)
    if args.stream_worker:
        return stream_worker(args.stream_worker, args.out)
    cases = args.cases.split(",")
    main_cases([c for c in cases if c in CASES], args.peers.split(","), args.voxels, args.timeout)
    if "c" in cases:
        main_stream(args.timeout)


if __name__ == "__main__":
    main()
