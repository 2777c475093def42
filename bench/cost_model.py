"""Calibrate and check the fit's cost model (brainalign.cluster.cost) on this machine.

    python bench/cost_model.py                  # rates + calibration + held-out check (~10 min on 2 idle cores)
    python bench/cost_model.py --no-write       # measure and check, leave rates.json as it is
    python bench/cost_model.py --quick          # fewer repeats and shapes (a smoke run)

1. Machine rates, one BLAS thread, each the median of ``--reps`` repeats: float32 and float64 GEMM
   (GFLOP/s), float64 ``eigh`` (EIGH_FLOPS(m) = 10/3 m^3 per second, m = 512 and 1024), memory-bound
   passes (bytes touched per second by ``multiply(a, b, out=c)``), HDF5 read bandwidth (a bold.h5-like
   dataset read chunk by chunk, as the fit reads it; the file was just written, so this is the page-cache
   rate: a cluster's filesystem is slower, give its rate with ``--read-gbps`` to the sizing calculator),
   the resident memory of a fit process before data, and its start-up time.
2. Calibration: ``brainalign fit`` (one rank, one thread, a fresh process) on synthetic design.h5 / bold.h5
   (bench/scaling.py's inputs) at several shapes; measured CPU and wall time of the whole process, peak
   resident memory (sampled every 5 ms during the fit) and the bytes read from HDF5 (counted at h5py's
   ``Dataset.__getitem__``; the JSON also has ``/proc/self/io`` rchar, which adds the Python modules
   imported lazily and threadpoolctl's reads of /proc). Two factors (on compute and on memory-bound seconds)
   and two fixed overheads (per design and per chunk instance) are fitted by non-negative least squares on
   the relative error of the time.
3. Held-out check: other shapes, never used in the fit of step 2: predicted vs measured wall time, peak
   memory and bytes read, and whether each is within 20 %.

Step 1's rates and step 2's factors are written to toolkit/brainalign/cluster/rates.json (unless
--no-write); ``--gpu-check build/gpu_check/gpu_check.json`` replaces the assumed GPU rates there with those
bench/gpu_check.py measured (float32 GEMM, device and host-to-device copies); ``brainalign submit --dry-run`` and ``python -m brainalign.cluster.cost`` use them.
On a shared machine the numbers are noisy: re-run with ``make bench`` on an idle node of the cluster you
size for.
"""
import os

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_k] = "1"      # before numpy: rates are single-core, like one rank with one core

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))
sys.path.insert(0, str(ROOT / "bench"))

from brainalign.cluster import cost  # noqa: E402
from scaling import make_inputs  # noqa: E402

ALPHAS = 7   # bench/scaling.make_inputs writes the config default: 7 alphas

# (label, trs_per_run, K runs = outer folds, p, voxels, layers, subjects, chunk)
CALIBRATION = [
    ("c1", 250, 6, 128, 2000, 1, 2, 1000),
    ("c2", 300, 6, 384, 1500, 1, 2, 1500),
    ("c3", 500, 5, 256, 3000, 1, 1, 3000),
    ("c4", 200, 8, 256, 1000, 2, 1, 1000),
    ("c5", 400, 4, 640, 1000, 1, 1, 1000),
    ("c6", 300, 6, 64, 6000, 1, 1, 3000),
]
HELD_OUT = [
    ("h1", 350, 6, 320, 2500, 1, 2, 1250),
    ("h2", 600, 5, 64, 8000, 1, 1, 8000),      # a wide chunk: memory well above the process baseline
    ("h3", 600, 4, 512, 1500, 1, 1, 1500),
    ("h4", 250, 7, 192, 4000, 1, 1, 2000),
]


def median_time(fn, reps):
    """Median CPU seconds of ``fn`` (one thread: the wall time it takes on an idle core; robust to the other
    processes of a shared machine, which stretch wall time but not CPU time)."""
    ts = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        ts.append(time.process_time() - t0)
    return statistics.median(ts)


# ---- 1. machine rates -------------------------------------------------------------------------------

def measure_rates(reps, tmp: Path):
    import h5py

    rng = np.random.default_rng(0)
    out = {}
    # GEMMs of the fit's shapes: U^T Y (r x n_in @ n_in x w), the stacked scoring GEMM (A n_val x r @ r x w),
    # the Gram X^T X (p x n @ n x p) and U = Xc V (n x p @ p x r)
    for dt, key, shapes in ((np.float32, "gemm32_gflops", ((256, 1500, 2000), (1750, 256, 2000))),
                            (np.float64, "gemm64_gflops", ((256, 1500, 256), (1500, 256, 256)))):
        rs = []
        for m, k, n in shapes:
            a = rng.standard_normal((m, k)).astype(dt)
            b = rng.standard_normal((k, n)).astype(dt)
            a @ b
            rs.append(2 * m * k * n / median_time(lambda: a @ b, reps) / 1e9)
        out[key] = statistics.median(rs)
    eig = []
    for m in (256, 512):
        g = rng.standard_normal((m, 2 * m))
        g = g @ g.T
        eig.append(cost.eigh_flops(m) / median_time(lambda: np.linalg.eigh(g), reps) / 1e9)
    out["eigh_gflops"] = statistics.median(eig)
    # memory-bound passes as the fit makes them on (rows, voxels) float32 blocks: an elementwise product,
    # column dot products (einsum), float64 column means, column max; bytes touched per CPU second, median
    a = rng.standard_normal((2000, 2000)).astype(np.float32)
    b, c = a.copy(), np.empty_like(a)
    passes = [(lambda: np.multiply(a, b, out=c), 3 * a.nbytes), (lambda: np.einsum("ij,ij->j", a, b), 2 * a.nbytes),
              (lambda: a.mean(0, dtype=np.float64), a.nbytes), (lambda: a.max(0), a.nbytes)]
    out["elem_gbps"] = statistics.median(nb / median_time(fn, reps) / 1e9 for fn, nb in passes)
    # HDF5: a bold.h5-like dataset (n, v) chunked (n, 1000), read [:, a:b] per chunk as the fit does
    n, v, w = 6000, 8000, 1000
    path = tmp / "read.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("y", data=rng.standard_normal((n, v), dtype=np.float32), chunks=(n, w))

    def read():
        with h5py.File(path, "r") as f:
            ds = f["y"]
            for a0 in range(0, v, w):
                ds[:, a0:a0 + w]
    read()
    read_gbps = n * v * 4 / median_time(read, reps) / 1e9
    path.unlink()
    # a fit process before data: interpreter + numpy + h5py + brainalign's fit modules (resident, MiB)
    probe = ("import os, time; t0 = time.perf_counter(); import brainalign.fit, brainalign.ridge, "
             "brainalign.sharding.shards, brainalign.sharding.scheduler, brainalign.stagekeys, h5py; "
             "t = time.perf_counter() - t0; "
             "print(int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20, t)")
    rss, imp = [], []
    for _ in range(reps):
        c0 = _children_cpu()
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=_env())
        imp.append(_children_cpu() - c0)          # CPU seconds of the whole process: start-up + imports
        rss.append(float(res.stdout.split()[0]))
    return out, read_gbps, statistics.median(rss), statistics.median(imp)


def _children_cpu():
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _env():
    env = dict(os.environ, BRAINALIGN_PROGRESS="0", BRAINALIGN_LOG="INFO", PYTHONPATH=str(ROOT / "toolkit"))
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = "1"
    return env


# ---- 2./3. measured fits ------------------------------------------------------------------------------

DRIVER = r"""
import json, os, sys, threading, time
import brainalign.fit, brainalign.ridge, brainalign.sharding.shards, brainalign.sharding.scheduler
import brainalign.stagekeys, h5py
from brainalign.config import load_config
cfg = load_config(sys.argv[1])
PAGE = os.sysconf('SC_PAGE_SIZE') / 2 ** 20
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * PAGE
def rchar():
    for line in open('/proc/self/io'):
        if line.startswith('rchar:'):
            return int(line.split()[1])
h5_bytes = [0]
_getitem = h5py.Dataset.__getitem__
def counted(self, key):            # the bytes the fit pulls from HDF5 files (what the model counts)
    val = _getitem(self, key)
    h5_bytes[0] += getattr(val, 'nbytes', 0)
    return val
h5py.Dataset.__getitem__ = counted
peak, stop = [rss()], threading.Event()
def sample():                      # resident memory every 5 ms (ru_maxrss is the imports' transient peak)
    while not stop.wait(0.005):
        peak.append(max(peak[-1], rss()))
base = rss()
th = threading.Thread(target=sample, daemon=True)
th.start()
r0, t0, c0 = rchar(), time.perf_counter(), time.process_time()
brainalign.fit.run_fit(cfg, force=True)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
stop.set(); th.join()
print(json.dumps({'cpu_s': cpu, 'wall_s': wall, 'read_bytes': h5_bytes[0], 'rchar_bytes': rchar() - r0,
                  'peak_rss_mib': max(peak[-1], rss()), 'base_rss_mib': base}))
"""


def shape_of(row):
    label, trs, K, p, v, L, S, w = row
    return cost.FitShape(n=trs * K, p=p, v=v, subjects=S, designs=1, layers=L, K=K, alphas=ALPHAS, chunk=w)


def measure_fit(row, reps, tmp: Path):
    label, trs, K, p, v, L, S, w = row
    out = tmp / label
    cfg = make_inputs(out, n_runs=K, trs_per_run=trs, p=p, n_layers=L,
                      subjects=tuple(f"{i + 1:02d}" for i in range(S)), n_vox=v, chunk=w)
    runs = []
    for _ in range(reps):
        c0, t0 = _children_cpu(), time.perf_counter()
        p_ = subprocess.run([sys.executable, "-c", DRIVER, str(cfg)], capture_output=True, text=True,
                            env=_env(), cwd=ROOT)
        if p_.returncode:
            raise RuntimeError(f"fit of {label} failed:\n{p_.stderr[-3000:]}")
        m = json.loads(p_.stdout.strip().splitlines()[-1])
        # the whole process, as a job runs it: start-up, imports, the fit, assembly
        m["cpu_s"], m["wall_s"] = _children_cpu() - c0, time.perf_counter() - t0
        runs.append(m)
    for f in out.parent.glob(f"{label}*"):
        subprocess.run(["rm", "-rf", str(f)])
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def terms(shape, rates):
    """The model's terms for one rank on one core: seconds of compute and of passes at the measured rates,
    and the numbers of design and chunk instances (each costs a fitted fixed overhead); + fixed seconds."""
    c = cost.counts(shape, cores=1)
    dg, dm = cost._compute_s(c.design, rates.cpu)
    cg, cm = cost._compute_s(c.chunk, rates.cpu)
    t = {"compute": c.n_design * dg + c.n_chunk * cg, "elem": c.n_design * dm + c.n_chunk * cm,
         "design_s": c.n_design, "chunk_s": c.n_chunk}
    fixed = (c.n_design * c.design.read + c.bold_bytes_read + c.assembly_read) / (rates.read_gbps * 1e9) \
        + rates.startup_s
    return t, fixed


TIME_TERMS = ("compute", "elem", "design_s", "chunk_s")


def fit_efficiency(rows, rates):
    """NNLS on the relative errors: the time terms, and peak memory = base + mem x arrays + mem_mib."""
    from scipy.optimize import nnls

    A, b, M, m = [], [], [], []
    for shape, meas in rows:
        t, fixed = terms(shape, rates)
        A.append([t[k] / meas["cpu_s"] for k in TIME_TERMS])
        b.append(1.0 - fixed / meas["cpu_s"])
        arrays = cost.estimate(shape, rates=rates.__class__(cpu=rates.cpu, rss_base_mib=0.0,
                                                           efficiency={cost.ENGINE: dict(cost.NO_OVERHEAD)}),
                               ).mem_rank_bytes / 2 ** 20
        grown = meas["peak_rss_mib"] - rates.rss_base_mib
        M.append([arrays / grown, 1.0 / grown])
        m.append(1.0)
    coef, _ = nnls(np.array(A), np.array(b))
    mem, _ = nnls(np.array(M), np.array(m))
    return {**dict(zip(TIME_TERMS, map(float, coef))), "mem": float(mem[0]), "mem_mib": float(mem[1])}


def table(results):
    lines = ["| shape | n | p | v | K | S x L | time pred / meas (s) | err | wall (s) | peak RSS pred / meas (MiB) "
             "| err | read pred / meas (MB) | err |", "|" + "---|" * 13]
    ok = True
    for label, shape, meas, est in results:
        errs = [(est.wall_s - meas["cpu_s"]) / meas["cpu_s"],
                (est.mem_rank_bytes / 2 ** 20 - meas["peak_rss_mib"]) / meas["peak_rss_mib"],
                (est.bytes_read - meas["read_bytes"]) / meas["read_bytes"]]
        ok &= all(abs(e) <= 0.2 for e in errs)
        lines.append(f"| {label} | {shape.n} | {shape.p} | {shape.v} | {shape.K} | {shape.subjects} x {shape.layers} "
                     f"| {est.wall_s:.1f} / {meas['cpu_s']:.1f} | {errs[0]:+.0%} | {meas['wall_s']:.1f} "
                     f"| {est.mem_rank_bytes / 2 ** 20:.0f} / {meas['peak_rss_mib']:.0f} | {errs[1]:+.0%} "
                     f"| {est.bytes_read / 1e6:.1f} / {meas['read_bytes'] / 1e6:.1f} | {errs[2]:+.0%} |")
    return "\n".join(lines), ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 3 calibration and 2 held-out shapes")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite rates.json")
    ap.add_argument("--json", help="also write every measurement here")
    ap.add_argument("--gpu-check", metavar="JSON", help="only take the GPU rates from bench/gpu_check.py's "
                    "gpu_check.json into rates.json (nothing else is measured)")
    args = ap.parse_args(argv)
    if args.gpu_check:
        rates = cost.Rates.load()
        rates.gpu = cost.gpu_rates(json.loads(Path(args.gpu_check).read_text()), rates.gpu)
        rates.save()
        print(f"# GPU rates: {rates.gpu}\n# wrote {cost.RATES_FILE}")
        return 0
    reps = 1 if args.quick else args.reps
    cal = CALIBRATION[:4] if args.quick else CALIBRATION
    held = HELD_OUT[1:3] if args.quick else HELD_OUT
    with tempfile.TemporaryDirectory(prefix="brainalign-cost-") as tmp:
        tmp = Path(tmp)
        dev, read_gbps, rss, imp = measure_rates(max(3, reps), tmp)
        rates = cost.Rates.load()
        rates.cpu = cost.DeviceRates(**dev, note="measured, one core")
        rates.read_gbps, rates.rss_base_mib = read_gbps, rss
        rates.machine = (f"{platform.node()}: {platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} cores, numpy {np.__version__}")
        rates.measured = datetime.date.today().isoformat() + " by bench/cost_model.py"
        print(f"# machine: {rates.machine}")
        print(f"# rates (one core, CPU time, median of {max(3, reps)}): float32 GEMM {dev['gemm32_gflops']:.1f} GFLOP/s, "
              f"float64 GEMM {dev['gemm64_gflops']:.1f}, eigh {dev['eigh_gflops']:.1f} (10/3 m^3 per s), "
              f"passes {dev['elem_gbps']:.1f} GB/s, HDF5 read {read_gbps:.2f} GB/s (page cache), "
              f"fit process base RSS {rss:.0f} MiB, start-up + imports {imp:.2f} s")
        measured = {}
        for row in cal + held:
            t0 = time.perf_counter()
            measured[row[0]] = measure_fit(row, reps, tmp)
            print(f"# measured {row[0]} {shape_of(row).describe()}: {measured[row[0]]} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    # start-up: the part of the wall time that is neither work nor reads, from the smallest shape
    rates.startup_s = imp
    rates.efficiency[cost.ENGINE] = e = fit_efficiency([(shape_of(r), measured[r[0]]) for r in cal], rates)
    print(f"# fitted on the calibration shapes ({cost.ENGINE} engine): compute x {e['compute']:.2f}, passes x "
          f"{e['elem']:.2f}, {e['design_s']:.3f} s per design instance, {e['chunk_s']:.3f} s per chunk instance; "
          f"memory: arrays x {e['mem']:.2f} + {e['mem_mib']:.0f} MiB")
    results = {}
    for name, rows in (("calibration", cal), ("held-out", held)):
        res = [(r[0], shape_of(r), measured[r[0]], cost.estimate(shape_of(r), rates=rates)) for r in rows]
        text, ok = table(res)
        results[name] = ok
        print(f"\n## {name} shapes: model vs measured (1 rank, 1 thread; within 20 %: {'yes' if ok else 'NO'})\n")
        print("time: the fit's CPU seconds (one thread: its wall time on an idle core; the wall column is this "
              "run's, stretched by whatever else the machine ran)\n")
        print(text)
    if not args.no_write:
        rates.save()
        print(f"\n# wrote {cost.RATES_FILE}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rates": json.loads(json.dumps(rates.__dict__, default=vars)),
                                               "measured": measured, "ok": results}, indent=2))
    return 0 if results.get("held-out") else 1


if __name__ == "__main__":
    sys.exit(main())
