"""Fit scale-out benchmark: wall time of `brainalign fit` on 1 vs N MPI ranks, and per-unit cost vs size.

    python bench/scaling.py                 # both parts (about 7 min on 2 cores)
    python bench/scaling.py --part ranks    # 1 vs 2 ranks only
    python bench/scaling.py --part sizing   # per-unit time/memory vs n_trs, p, voxels + the Friends estimate

Every rank uses one BLAS thread (OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1), so N ranks use N
cores. The synthetic design.h5 / bold.h5 follow the documented layouts (README) and live in a temp dir.
Timings are printed as markdown tables; --json PATH also writes them as JSON.
"""
import os

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_k] = "1"      # before numpy: the in-process sizing runs on one thread, like one rank

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))

from brainalign.h5io import atomic_h5, str_attr  # noqa: E402

ALPHAS = [10.0 ** i for i in range(7)]          # the config default: 7 alphas


# ---- synthetic inputs in the documented layouts ----------------------------------------------------

def make_inputs(out: Path, n_runs=8, trs_per_run=250, p=256, n_layers=2, subjects=("01", "02"), n_vox=6000,
                chunk=1000, seed=0):
    """design.h5 (one feature set 'joint', per_fold=0) and bold.h5 with a planted linear signal."""
    rng = np.random.default_rng(seed)
    n = n_runs * trs_per_run
    runs = np.repeat(np.arange(n_runs, dtype=np.int32), trs_per_run)
    episodes = [f"s01e{i + 1:02d}a" for i in range(n_runs)]
    X = rng.standard_normal((n_layers, n, p), dtype=np.float32)
    side = math.ceil(n_vox ** (1 / 3)) + 1
    mask = np.zeros((side, side, side), np.uint8)
    mask.flat[:n_vox] = 1
    with atomic_h5(out / "design.h5", "bench") as f:
        f.create_dataset("runs", data=runs)
        f.attrs["episodes"] = f.attrs["folds"] = str_attr(episodes)
        f.attrs["layers"] = np.arange(n_layers, dtype=np.int64)
        f.attrs["delays"] = np.asarray([1, 2, 3, 4], np.int64)
        f.attrs["trim"] = 0
        f.attrs["tr"] = 1.49
        f.attrs["run_lengths"] = np.full(n_runs, trs_per_run, np.int64)
        f.attrs["feature_sets"] = str_attr(["joint"])
        f.create_group("design").create_dataset("joint", data=X, chunks=(1, n, p)).attrs["per_fold"] = 0
    with atomic_h5(out / "bold.h5", "bench") as f:
        f.create_dataset("runs", data=runs)
        f.attrs["subjects"] = str_attr(subjects)
        f.attrs["episodes"] = str_attr(episodes)
        f.attrs["run_lengths"] = np.full(n_runs, trs_per_run, np.int64)
        f.attrs["tr"] = 1.49
        f.create_dataset("mask", data=mask).attrs["affine"] = np.eye(4)
        f.create_dataset("roi_labels", data=np.zeros(n_vox, np.int32))
        f.attrs["roi_ids"] = np.zeros(0, np.int64)
        f.attrs["roi_names"] = str_attr([])
        g = f.create_group("bold")
        W = rng.standard_normal((p, 64), dtype=np.float32) / np.sqrt(p)
        for s in subjects:
            Y = (X[-1] @ W) @ rng.standard_normal((64, n_vox), dtype=np.float32) * 0.1
            Y += rng.standard_normal((n, n_vox), dtype=np.float32)
            g.create_dataset(f"sub-{s}", data=Y, chunks=(n, min(chunk, n_vox)))
    cfg = {"name": "bench-scaling", "output": str(out),
           "data": {"episodes": episodes, "bold": {"subjects": list(subjects)}},
           "model": {"conditions": ["joint"]},
           "fit": {"alphas": ALPHAS, "chunk_voxels": chunk, "write_maps": False}}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ---- part 1: ranks ----------------------------------------------------------------------------------

_RANK_DONE = re.compile(r"rank (\d+)/\d+ .*rank done: (\d+) units in ([\d.]+) s wall, ([\d.]+) s cpu; (\d+) solver")


def time_ranks(ranks, reps, **size):
    """Wall time of the whole command per rank count, and each rank's work-phase wall/CPU from its log."""
    import h5py

    mpiexec = Path(sys.executable).parent / "mpiexec"
    with tempfile.TemporaryDirectory(prefix="brainalign-scaling-") as tmp:
        out = Path(tmp) / "out"
        cfg = make_inputs(out, **size)
        env = dict(os.environ, BRAINALIGN_PROGRESS="0", BRAINALIGN_LOG="INFO")
        rows, ref = [], None
        for n in ranks:
            best = None
            for _ in range(reps):
                shutil.rmtree(out / "fit_shards", ignore_errors=True)
                (out / "scores.h5").unlink(missing_ok=True)
                t0 = time.perf_counter()
                p = subprocess.run([str(mpiexec), "-n", str(n), sys.executable, "-m", "brainalign", "fit", str(cfg)],
                                   env=env, check=True, capture_output=True, text=True, cwd=ROOT)
                wall = time.perf_counter() - t0
                per_rank = sorted((int(r), int(u), float(w), float(c), int(b))
                                  for r, u, w, c, b in _RANK_DONE.findall(p.stderr))
                if best is None or wall < best[0]:
                    best = (wall, per_rank)
            wall, per_rank = best
            with h5py.File(out / "scores.h5", "r") as f:
                r = f["r"][()]
            ref = r if ref is None else ref
            rows.append({"ranks": n, "wall_s": wall, "work_wall_s": max(x[2] for x in per_rank),
                         "cpu_total_s": sum(x[3] for x in per_rank), "cpu_max_rank_s": max(x[3] for x in per_rank),
                         "units_per_rank": [x[1] for x in per_rank], "solver_builds": sum(x[4] for x in per_rank),
                         "max_abs_diff_vs_1": float(np.nanmax(np.abs(r - ref)))})
        for row in rows:
            row["speedup"] = rows[0]["wall_s"] / row["wall_s"]
            row["work_speedup"] = rows[0]["work_wall_s"] / row["work_wall_s"]
            row["cpu_speedup"] = rows[0]["cpu_total_s"] / row["cpu_max_rank_s"]
    return rows


# ---- part 2: per-unit cost vs size ------------------------------------------------------------------

def time_unit(n_trs, p, v, n_runs=8, seed=0):
    """Build one FoldSolver (outer fold 0, inner leave-one-run-out) and score one chunk of v voxels."""
    from brainalign.fit import fold_splits
    from brainalign.ridge import FoldSolver

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_trs, p), dtype=np.float32)
    Y = rng.standard_normal((n_trs, v), dtype=np.float32)
    runs = np.repeat(np.arange(n_runs), -(-n_trs // n_runs))[:n_trs]
    train, test, inner = fold_splits(runs, 0)
    Xtr, Xte, Ytr, Yte = X[train], X[test], Y[train], Y[test]
    tracemalloc.start()
    t0 = time.process_time()           # CPU time of this one-thread process: robust to a busy machine
    solver = FoldSolver(Xtr, Xte, ALPHAS, inner)
    t_x = time.process_time() - t0
    mem_x = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.process_time()
    solver.score_chunk(Ytr, Yte)
    t_c = time.process_time() - t0
    mem_c = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return {"n_trs": n_trs, "p": p, "voxels": v, "inner_folds": len(inner), "t_solver_s": t_x,
            "t_chunk_s": t_c, "mem_solver_MiB": mem_x / 2 ** 20, "mem_chunk_MiB": mem_c / 2 ** 20}


# (n_trs, p, voxels, runs): runs - 1 inner folds
SIZING_GRID = ([(n, 256, 1000, 8) for n in (1000, 2000, 4000)] + [(2000, p, 1000, 8) for p in (128, 512, 1024)]
               + [(2000, 256, v, 8) for v in (500, 2000, 4000)] + [(4000, 1024, 2000, 8)]
               + [(2000, 512, 1000, n_runs) for n_runs in (4, 16)])
VALIDATION = (3000, 1536, 1000, 8)      # held out of the model fit: checks the extrapolation in p


def _n_train(row):
    k = row["inner_folds"]
    return row["n_trs"] * k / (k + 1)


def _features(k, n, p, v):
    """Flop-count terms of the two costs (k inner folds, n training TRs, p features <= n, v voxels, A alphas)."""
    A = len(ALPHAS)
    solver = [(k + 1) * n * p * p, (k + 1) * p ** 3, (k + 1) * n * p]       # Gram, eigh, centring/copies
    chunk = [(k + 1) * n * p * v, A * p * v, n * v]                        # U^T Y per fold, per-alpha maps, Y copies
    return solver, chunk


def fit_cost_model(rows):
    """Non-negative least-squares seconds per term (relative error), one thread; see _features."""
    from scipy.optimize import nnls

    fx, fc = [], []
    for r in rows:
        sx, sc = _features(r["inner_folds"], _n_train(r), r["p"], r["voxels"])
        fx.append(np.array(sx) / r["t_solver_s"])
        fc.append(np.array(sc) / r["t_chunk_s"])
    cx, _ = nnls(np.array(fx), np.ones(len(rows)))
    cc, _ = nnls(np.array(fc), np.ones(len(rows)))
    return {"solver": cx.tolist(), "chunk": cc.tolist()}


def predict(model, k, n, p, v):
    sx, sc = _features(k, n, p, v)
    return float(np.dot(model["solver"], sx)), float(np.dot(model["chunk"], sc))


def predict_memory(rows, k, n_tr, p, v, n):
    """Peak MiB of a solver ~ (k+1) p^2, n p, const and of one subject's chunk ~ n v, p v, const (nnls fits)."""
    from scipy.optimize import nnls

    def fit(feats, y):
        coef, _ = nnls(np.array(feats) / np.array(y)[:, None], np.ones(len(y)))
        return coef

    cx = fit([[(r["inner_folds"] + 1) * r["p"] ** 2, _n_train(r) * r["p"], 1.0] for r in rows],
             [r["mem_solver_MiB"] for r in rows])
    cc = fit([[r["n_trs"] * r["voxels"], r["p"] * r["voxels"], 1.0] for r in rows], [r["mem_chunk_MiB"] for r in rows])
    return float(np.dot(cx, [(k + 1) * p * p, n_tr * p, 1.0])), float(np.dot(cc, [n * v, p * v, 1.0]))


def friends_estimate(model, rows, K=10, S=6, V=250_000, n=10_000, p=768 * 4, F=5, L=12, chunk=4096,
                     cores_per_node=32, mem_per_node_gib=128, wall_h=24.0, efficiency=0.85):
    """Node count for the full CNeuroMod Friends fit (design shared by subjects; K outer folds)."""
    k, n_tr = K - 1, n * (K - 1) / K
    t_x, t_c = predict(model, k, n_tr, p, chunk)
    chunks = math.ceil(V / chunk)
    groups = F * L * K
    per_group = t_x + S * chunks * t_c
    core_h = groups * per_group / 3600
    # memory per rank: non-negative least squares over the measured peaks (tracemalloc, MiB)
    mem_x, mem_c = predict_memory(rows, k, n_tr, p, chunk, n)
    mem_rank_gib = (mem_x + mem_c + n * p * 4 / 2 ** 20) / 1024     # + the design matrix as read
    ranks_per_node = min(cores_per_node, int(mem_per_node_gib * 0.8 // mem_rank_gib))
    nodes = math.ceil(core_h / (ranks_per_node * wall_h * efficiency))
    return {"K": K, "S": S, "V": V, "n": n, "p": p, "F": F, "L": L, "chunk": chunk, "t_solver_s": t_x,
            "t_chunk_s": t_c, "chunks": chunks, "groups": groups, "units": groups * chunks,
            "per_group_s": per_group, "core_h": core_h, "mem_solver_GiB": mem_x / 1024, "mem_chunk_GiB": mem_c / 1024,
            "mem_rank_GiB": mem_rank_gib,
            "ranks_per_node": ranks_per_node, "wall_h": wall_h, "efficiency": efficiency, "nodes": nodes}


# ---- report -----------------------------------------------------------------------------------------

def _table(rows, cols, fmt):
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("ranks", "sizing", "all"), default="all")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--voxels", type=int, default=8000, help="voxels of the ranks benchmark")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    results = {"host_cpus": os.cpu_count()}
    if args.part in ("ranks", "all"):
        size = dict(n_runs=8, trs_per_run=250, p=256, n_layers=2, subjects=("01", "02"), n_vox=args.voxels,
                    chunk=1000)
        rows = time_ranks(args.ranks, args.reps, **size)
        results["ranks"] = {"size": size, "rows": rows}
        print(f"## fit wall time vs ranks (1 BLAS thread per rank; {size})\n")
        print(_table(rows, ["ranks", "wall_s", "speedup", "work_wall_s", "work_speedup", "cpu_total_s",
                            "cpu_max_rank_s", "cpu_speedup", "units_per_rank", "solver_builds", "max_abs_diff_vs_1"],
                     {"wall_s": "{:.1f}", "speedup": "{:.2f}x", "work_wall_s": "{:.1f}", "work_speedup": "{:.2f}x",
                      "cpu_total_s": "{:.1f}", "cpu_max_rank_s": "{:.1f}", "cpu_speedup": "{:.2f}x",
                      "max_abs_diff_vs_1": "{:.1e}"}))
        print("\nwall_s: the whole command (start-up, units, assembly); work_*: the unit loop of the slowest rank; "
              "cpu_speedup: CPU of 1 rank / CPU of the busiest rank (the speedup on otherwise idle cores)")
        print()
    if args.part in ("sizing", "all"):
        rows = [time_unit(n, p, v, runs) for n, p, v, runs in SIZING_GRID]
        results["sizing"] = rows
        print("## one unit, one thread: solver build (per feature set x layer x fold) and one subject's chunk\n")
        print(_table(rows, ["n_trs", "p", "voxels", "inner_folds", "t_solver_s", "t_chunk_s", "mem_solver_MiB",
                            "mem_chunk_MiB"],
                     {k: "{:.2f}" for k in ("t_solver_s", "t_chunk_s")} | {k: "{:.0f}" for k in ("mem_solver_MiB",
                                                                                             "mem_chunk_MiB")}))
        model = fit_cost_model(rows)
        results["model"] = model
        print("\ncost model, seconds per term (one thread): solver (k+1)*[n p^2, p^3, n p] = "
              + ", ".join(f"{c:.3g}" for c in model["solver"]) + "; chunk [(k+1) n p v, A p v, n v] = "
              + ", ".join(f"{c:.3g}" for c in model["chunk"]))
        val = time_unit(*VALIDATION)
        pred = predict(model, val["inner_folds"], _n_train(val), val["p"], val["voxels"])
        results["validation"] = dict(val, model_solver_s=pred[0], model_chunk_s=pred[1])
        print(f"held-out check n={val['n_trs']} p={val['p']} v={val['voxels']}: solver {val['t_solver_s']:.2f} s "
              f"measured / {pred[0]:.2f} s model, chunk {val['t_chunk_s']:.2f} / {pred[1]:.2f} s; memory solver "
              f"{val['mem_solver_MiB']:.0f} MiB, chunk {val['mem_chunk_MiB']:.0f} MiB")
        rows = rows + [val]
        for K in (10, 70):
            est = friends_estimate(model, rows, K=K)
            results[f"friends_K{K}"] = est
            print(f"\n## CNeuroMod Friends estimate, K={K} outer folds\n")
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in est.items()}))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
