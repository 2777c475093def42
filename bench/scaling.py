"""Fit scale-out benchmark: wall time of `brainalign fit` on 1 vs N MPI ranks.

    python bench/scaling.py                 # 1 vs 2 ranks (about 3 min on 2 cores)

The per-unit cost vs size (time, memory, bytes read as a function of n, p, v, folds, alphas) is the cost
model's: bench/cost_model.py measures and checks it, brainalign.cluster.cost holds it.

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
            g.create_dataset(f"sub-{s}", data=Y.astype(np.float32), chunks=(n, min(chunk, n_vox)))   # as align writes it
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


# ---- report -----------------------------------------------------------------------------------------

def _table(rows, cols, fmt):
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("ranks", "all"), default="all")
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
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
