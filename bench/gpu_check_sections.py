"""The sections of bench/gpu_check.py: each runs in its own process (``section_NAME(ctx)``), records
checks and measurements in ``ctx.rec`` and calls ``ctx.save()`` after every step, so a section killed
at its budget keeps what it had measured. The numpy/CPU reference sections save their results in the
run's work folder; the GPU sections compare against them (same data, regenerated from the same seeds).
"""
from __future__ import annotations

import json
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ridge import make_data, pearson  # bench/ridge.py: the benchmark's data and a float64 Pearson r

ALPHAS = np.logspace(0, 5, 10)
DR_LIMIT = 1e-4                   # |delta r| allowed between a GPU backend and numpy (float32 both)
FP32_REL_L2 = 5e-3                # extraction, CUDA float32 vs CPU float32: per-layer relative L2 error
BF16_REL_L2 = 5e-2                # CUDA bf16 autocast vs CPU float32: per-layer relative L2 error ...
BF16_MIN_CORR = 0.99              # ... and per-layer Pearson correlation of the features
KERNEL_REL = 1e-10                # fused kernel (float64 sums of exact float32 products) vs float64 reference
HOST_RESIDENT_FRACTION = 0.25     # streamed run: peak device memory below this fraction of Y's size

SIZES = {
    "full": {
        "gemm_cpu": 4096, "gemm_gpu": 8192, "gemm_reps": 10, "copy_mib": 1024,
        "cases": {"p<n": (3000, 512, 20000), "p>n": (600, 4096, 20000)},      # n, p, v (train: first 80 %)
        "ridgecv": (3000, 512, 5000), "nested": (1500, 256, 10000, 3, 4),       # ... + outer, inner folds
        "stream": {"n": 3000, "p": 512, "v": 200_000, "ref_v": 20_000, "outer": 3, "inner": 5,
                   "batches": (4096, 16384, 65536)},
        "kernel": (6, 480, 16384), "kernel_reps": 20, "eigh": 2048,
        "tiny": {"windows": 512, "batch": 64},
        "merlot": {"size": "base", "ref_windows": 4, "gpu_windows": 64, "batch": 16, "tr": 1.49, "max_words": 12},
    },
    "quick": {
        "gemm_cpu": 256, "gemm_gpu": 1024, "gemm_reps": 3, "copy_mib": 16,
        "cases": {"p<n": (300, 32, 400), "p>n": (80, 200, 400)},
        "ridgecv": (300, 32, 200), "nested": (150, 16, 300, 3, 3),
        "stream": {"n": 240, "p": 24, "v": 3000, "ref_v": 1000, "outer": 2, "inner": 3, "batches": (512, 2048)},
        "kernel": (3, 64, 1000), "kernel_reps": 3, "eigh": 96,
        "tiny": {"windows": 16, "batch": 8},
        "merlot": {"size": "tiny", "ref_windows": 3, "gpu_windows": 6, "batch": 3, "tr": 1.49, "max_words": 6},
    },
}
# a MERLOT Reserve of a few layers for --quick (same code paths as base, seconds on a CPU)
MERLOT_QUICK = dict(hidden_size=96, size_per_head=48, rotary_hsize=32, vocab_size=512, joint_num_layers=2,
                    vit_num_layers=2, audio_num_layers=2, span_num_layers=2, vit_patch_size=4, output_grid=(4, 6),
                    audio_seq_length=60, audio_token_length=6, audio_patch_size=2, num_mels=64)


class Skip(Exception):
    """The whole section cannot run here (the message says why)."""


@dataclass
class Context:
    mode: str
    workdir: Path
    rec: dict
    save: Callable[[], None]
    sizes: dict = field(init=False)

    def __post_init__(self):
        self.sizes = SIZES[self.mode]

    def check(self, name, ok, value=None, limit=None, note=None):
        self.rec["checks"].append({"name": name, "ok": bool(ok), "value": value, "limit": limit, "note": note})
        self.save()

    def measure(self, key, value):
        self.rec["measurements"][key] = value
        self.save()

    def skip(self, part, reason):
        self.rec["skipped"][part] = reason
        self.save()

    def usable(self, backend):
        """(ok, reason) of a GPU backend, as the env section probed it (no CUDA call here)."""
        u = self.measurements("env").get("usable", {}).get(backend)
        if u is None:
            return False, "the env section did not report on this backend"
        return bool(u["ok"]), u["reason"]

    def store(self, name, **arrays):
        np.savez(self.workdir / f"ref-{name}.npz", **arrays)

    def load(self, name):
        path = self.workdir / f"ref-{name}.npz"
        return dict(np.load(path)) if path.exists() else None

    def measurements(self, section):
        """What ``section`` measured in this run ({} if it saved nothing readable)."""
        path = self.workdir / f"{section}.json"
        try:
            return json.loads(path.read_text()).get("measurements", {})
        except (OSError, ValueError):
            return {}


def clean(obj):
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ------------------------------------------------------------------------------------ GPU helpers
class Device:
    """Synchronisation and peak-memory accounting for one GPU backend ('cupy' or 'torch-cuda').
    'torch-cpu' is a stand-in with no device (the tests run the GPU sections' logic with it)."""

    def __init__(self, backend):
        self.backend = backend
        self.real = backend != "torch-cpu"
        if backend == "cupy":
            import cupy

            self.cp = cupy
            self.pool = cupy.get_default_memory_pool()
        else:
            import torch

            self.torch = torch

    def sync(self):
        if self.backend == "cupy":
            self.cp.cuda.Device().synchronize()
        elif self.real:
            self.torch.cuda.synchronize()

    def reset(self):
        self.sync()
        if not self.real:
            return
        if self.backend == "cupy":
            self.pool.free_all_blocks()
        else:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self):
        """Peak device memory since reset, MiB: torch's allocated/reserved peaks; for cupy the bytes its
        pool holds (the pool never returns memory, so this is the high-water mark of what it reserved)."""
        self.sync()
        if not self.real:
            return {}
        if self.backend == "cupy":
            return {"peak_reserved_mib": self.pool.total_bytes() / 2**20}
        t = self.torch.cuda
        return {"peak_allocated_mib": t.max_memory_allocated() / 2**20, "peak_reserved_mib": t.max_memory_reserved() / 2**20}


def timed(fn, sync=None):
    if sync:
        sync()
    t0 = time.perf_counter()
    out = fn()
    if sync:
        sync()
    return out, time.perf_counter() - t0


def gemm_rate(ctx, backend):
    """The float32 GEMM rate (TFLOP/s) of ``backend`` measured by the gemm section of this run, or None."""
    key = "torch_float32" if backend == "torch-cuda" else "cupy_float32"
    return ctx.measurements("gemm").get(key, {}).get("tflops")


# ------------------------------------------------------------------------------------ data
def case_data(n, p, v, seed=0):
    """bench/ridge.py's data with bad targets planted: NaN in one training row, constant columns,
    a column constant on the test rows only and one constant on the training rows only."""
    X, Y = make_data(n, p, v, seed=seed)
    ntr = int(0.8 * n)
    Y[3, 0:3] = np.nan
    Y[:, 3:6] = 2.0
    Y[ntr:, 6] = 1.0
    Y[:ntr, 7] = -1.0
    return X, Y, ntr


def stream_data(n, p, v, tile=4096):
    """Design X (n, p) and targets Y (n, v) float32 for the streamed run, built tile by tile so any
    leading subset of columns is identical however many are made: 32 informative features, signal
    strength varying over voxels, per-tile row-rotated noise (cheap for 200,000 voxels)."""
    X = np.random.default_rng(1).standard_normal((n, p), dtype=np.float32)
    E = np.random.default_rng(2).standard_normal((n, tile), dtype=np.float32)
    k = min(32, p)
    Y = np.empty((n, v), np.float32)
    for t, c0 in enumerate(range(0, v, tile)):
        w = min(tile, v - c0)
        W = np.random.default_rng(100 + t).standard_normal((k, tile), dtype=np.float32)[:, :w]
        W *= np.logspace(-1.5, 0.0, tile, dtype=np.float32)[None, :w] / np.float32(math.sqrt(k))
        np.matmul(X[:, :k], W, out=Y[:, c0:c0 + w])
        Y[:, c0:c0 + w] += np.roll(E[:, :w], 37 * t + 1, axis=0)
        Y[:, c0:c0 + w] += 100.0
    Y[:, 1] = 5.0                                  # a constant voxel and a NaN one survive streaming
    Y[7, 2] = np.nan
    return X, Y


def flops_nested(n, p, outer, inner, v):
    """GEMM flops of nested CV (FoldSolver.flops_per_target's formula with full-rank ranks)."""
    from brainalign.ridge import kfold_splits

    A = ALPHAS.size
    total = 0.0
    for tr, te in kfold_splits(n, outer):
        for itr, iva in kfold_splits(tr.size, inner):
            r = min(p, itr.size - 1)
            total += 2 * r * itr.size + A * 2 * iva.size * r
        r = min(p, tr.size - 1)
        total += 2 * r * tr.size + 2 * te.size * r
    return total * v


def compare(ctx, label, ref_r, ref_alpha, got_r, got_alpha, ref_cv=None, got_cv=None):
    """Checks of a GPU result against the numpy reference: same NaN targets, the same alphas, |dr|.

    Two float32 GEMM libraries round differently, so where two alphas score within rounding of each
    other numpy itself could have picked either: a mismatch counts as a rounding-level tie when numpy's
    own inner-CV scores of the two alphas differ by at most twice the largest inner-CV score difference
    between the backends (+1e-7). Every other mismatch fails the check; the raw count is reported too."""
    nan_ref, nan_got = np.isnan(ref_r), np.isnan(got_r)
    ctx.check(f"{label}: same NaN targets as numpy", np.array_equal(nan_ref, nan_got)
              and np.array_equal(np.isnan(ref_alpha), np.isnan(got_alpha)),
              value=int((nan_ref != nan_got).sum()), limit=0)
    out = {}
    if ref_cv is not None and got_cv is not None:
        f = np.isfinite(ref_cv) & np.isfinite(got_cv)
        out["max_abs_dcv"] = float(np.max(np.abs(ref_cv[f] - got_cv[f]))) if f.any() else 0.0
    both = ~(np.isnan(ref_alpha) | np.isnan(got_alpha))
    idx = np.flatnonzero(both & (ref_alpha != got_alpha))
    unexplained = idx.size
    note = None
    if idx.size and ref_cv is not None:
        grid = np.log(ALPHAS)[:, None]                 # alphas come back as float32: nearest grid point
        a_ref = np.abs(grid - np.log(ref_alpha[idx].astype(np.float64))[None]).argmin(0)
        a_got = np.abs(grid - np.log(got_alpha[idx].astype(np.float64))[None]).argmin(0)
        gap = np.abs(ref_cv[a_ref, idx].astype(np.float64) - ref_cv[a_got, idx])
        tol = 2 * out.get("max_abs_dcv", 0.0) + 1e-7
        unexplained = int((gap > tol).sum())
        note = f"{idx.size} alpha(s) differ; {idx.size - unexplained} are rounding-level ties (cv gap <= {tol:.2g})"
    elif idx.size:
        note = f"{idx.size} alpha(s) differ (no inner-CV scores to tell ties)"
    out["alpha_mismatches"] = int(idx.size)
    ctx.check(f"{label}: alphas identical to numpy (rounding-level ties excepted)", unexplained == 0,
              value=unexplained, limit=0, note=note)
    fin = np.isfinite(ref_r) & np.isfinite(got_r)
    dr = float(np.max(np.abs(ref_r[fin] - got_r[fin]))) if fin.any() else float("nan")
    ctx.check(f"{label}: max |dr| <= {DR_LIMIT:g}", fin.any() and dr <= DR_LIMIT, value=dr, limit=DR_LIMIT)
    return out


# ------------------------------------------------------------------------------------ env
def section_env(ctx):
    import platform

    from brainalign import provenance
    from brainalign.ridge.backend import cupy_status, torch_cuda_status

    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "git_commit": provenance.git_commit(), "packages": provenance.package_versions()}
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [f"{i['internal_api']} {i.get('version')} {i.get('architecture')} threads={i['num_threads']}"
                        for i in threadpool_info()]
    except Exception as err:  # pragma: no cover
        info["blas"] = f"threadpoolctl unavailable ({err})"
    ctx.measure("host", info)
    usable = {}
    for name, probe in (("cupy", cupy_status), ("torch-cuda", torch_cuda_status)):
        ok, why = probe()
        usable[name] = {"ok": ok, "reason": why}
    ctx.measure("usable", usable)
    gpu = {}
    if usable["torch-cuda"]["ok"]:
        import torch

        pr = torch.cuda.get_device_properties(0)
        gpu.update(name=pr.name, memory_gib=pr.total_memory / 2**30, sms=pr.multi_processor_count,
                   capability=f"{pr.major}.{pr.minor}", torch_cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), devices=torch.cuda.device_count())
    if usable["cupy"]["ok"]:
        import cupy

        from brainalign.ridge.backend import cupy_device_name

        gpu.setdefault("name", cupy_device_name())
        gpu.update(cupy_runtime=cupy.cuda.runtime.runtimeGetVersion(), cuda_driver=cupy.cuda.runtime.driverGetVersion())
    smi = _nvidia_smi()
    if smi:
        gpu["nvidia_smi"] = smi
    if gpu:
        ctx.measure("gpu", gpu)
    else:
        ctx.skip("gpu", "no CUDA device: " + "; ".join(u["reason"] for u in usable.values()))


def _nvidia_smi():
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------ gemm
def section_gemm(ctx):
    s = ctx.sizes
    N = s["gemm_cpu"]
    a = np.random.default_rng(1).standard_normal((N, N), dtype=np.float32)
    b = np.random.default_rng(2).standard_normal((N, N), dtype=np.float32)
    a @ b
    best = min(timed(lambda: a @ b)[1] for _ in range(3))
    ctx.measure("numpy_float32", {"n": N, "tflops": 2 * N**3 / best / 1e12, "seconds": best})
    ok, why = ctx.usable("torch-cuda")
    if ok:
        _torch_rates(ctx, s["gemm_gpu"], s["gemm_reps"], s["copy_mib"])
    else:
        ctx.skip("torch-cuda", why)
    ok, why = ctx.usable("cupy")
    if ok:
        import cupy

        N = s["gemm_gpu"]
        x = cupy.random.standard_normal((N, N), dtype=cupy.float32)
        y = cupy.random.standard_normal((N, N), dtype=cupy.float32)
        sec = _event_time(lambda: x @ y, s["gemm_reps"], "cupy")
        ctx.measure("cupy_float32", {"n": N, "tflops": 2 * N**3 / sec / 1e12, "seconds": sec,
                                     "note": "cuBLAS default math mode (CUPY_TF32 unset)"})
    else:
        ctx.skip("cupy", why)


def _event_time(fn, reps, backend):
    """Mean seconds of ``fn`` over ``reps`` launches after 3 warm-ups, timed with CUDA events."""
    if backend == "cupy":
        import cupy

        ev = cupy.cuda.Event
        sync = cupy.cuda.Device().synchronize
        elapsed = cupy.cuda.get_elapsed_time
    else:
        import torch

        ev = lambda: torch.cuda.Event(enable_timing=True)   # noqa: E731
        sync = torch.cuda.synchronize
        elapsed = lambda s, e: s.elapsed_time(e)            # noqa: E731
    for _ in range(3):
        fn()
    sync()
    start, end = ev(), ev()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return elapsed(start, end) / 1e3 / reps


def _torch_rates(ctx, N, reps, copy_mib):
    import torch

    x = torch.randn(N, N, device="cuda")
    y = torch.randn(N, N, device="cuda")
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for key, tf32, dtype in (("torch_float32", False, torch.float32), ("torch_tf32", True, torch.float32),
                                 ("torch_bfloat16", False, torch.bfloat16)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            xa, ya = x.to(dtype), y.to(dtype)
            sec = _event_time(lambda: xa @ ya, reps, "torch")
            ctx.measure(key, {"n": N, "tflops": 2 * N**3 / sec / 1e12, "seconds": sec})
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    nbytes = copy_mib * 2**20
    src = torch.empty(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    sec = _event_time(lambda: dst.copy_(src), reps, "torch")
    ctx.measure("device_copy", {"mib": copy_mib, "gb_per_s": 2 * nbytes / sec / 1e9,
                                "note": "bytes read + written per second"})
    host = torch.empty(nbytes // 4)
    pinned = torch.empty(nbytes // 4, pin_memory=True)
    for key, h in (("h2d_pageable", host), ("h2d_pinned", pinned)):
        _, sec = timed(lambda: src.copy_(h), torch.cuda.synchronize)
        _, sec = timed(lambda: src.copy_(h), torch.cuda.synchronize)
        ctx.measure(key, {"mib": copy_mib, "gb_per_s": nbytes / sec / 1e9})


# ------------------------------------------------------------------------------------ ridge
def _ridge_cases(ctx):
    for label, (n, p, v) in ctx.sizes["cases"].items():
        X, Y, ntr = case_data(n, p, v, seed=len(label) + p)
        yield label, X, Y, ntr


def section_ridge_numpy(ctx):
    """The CPU reference: FoldSolver (p < n and p > n), RidgeCV and nested_cv on numpy, float32."""
    from brainalign.ridge import FoldSolver, kfold_splits

    for label, X, Y, ntr in _ridge_cases(ctx):
        solver, t_setup = timed(lambda: FoldSolver(X[:ntr], X[ntr:], ALPHAS, kfold_splits(ntr, 5)))
        res, t_score = timed(lambda: solver.score_chunk(Y[:ntr], Y[ntr:]))
        flops = solver.flops_per_target() * Y.shape[1]
        ctx.store(label, r=res.r, alpha=res.best_alpha, cv=res.cv_scores)
        ctx.measure(label, {"shape": list(X.shape) + [Y.shape[1]], "setup_s": t_setup, "score_s": t_score,
                            "tflops_score": flops / t_score / 1e12, "gemm_tflop": flops / 1e12})
    _ridgecv_and_nested(ctx, "numpy", None)


def _ridgecv_and_nested(ctx, backend, ref_of):
    """RidgeCV and nested_cv on ``backend``; stores them (numpy) or compares with ``ref_of`` (GPU)."""
    from brainalign.ridge import RidgeCV, nested_cv

    n, p, v = ctx.sizes["ridgecv"]
    X, Y, ntr = case_data(n, p, v, seed=7)
    est, t = timed(lambda: RidgeCV(alphas=ALPHAS, cv=5, backend=backend).fit(X[:ntr], Y[:ntr]))
    with np.errstate(invalid="ignore"):
        r = pearson(Y[ntr:].astype(np.float64), est.predict(X[ntr:]))
    r = np.where(np.isnan(est.best_alphas_), np.nan, r)
    m = {"fit_s": t}
    if ref_of is None:
        ctx.store("ridgecv", r=r, alpha=est.best_alphas_, coef=est.coef_, cv=est.cv_scores_)
    else:
        ref = ref_of("ridgecv")
        if ref is not None:
            m.update(compare(ctx, "RidgeCV", ref["r"], ref["alpha"], r, est.best_alphas_, ref["cv"], est.cv_scores_))
            ok = np.isfinite(ref["coef"]) & np.isfinite(est.coef_)
            scale = float(np.max(np.abs(ref["coef"][ok]))) if ok.any() else 1.0
            m["coef_max_rel_err"] = float(np.max(np.abs(ref["coef"][ok] - est.coef_[ok]))) / scale
    ctx.measure("RidgeCV", m)
    n, p, v, outer, inner = ctx.sizes["nested"]
    X, Y, _ = case_data(n, p, v, seed=8)
    res, t = timed(lambda: nested_cv(X, Y, outer, ALPHAS, inner_cv=inner, backend=backend, return_cv_scores=True))
    m = {"wall_s": t, "shape": [n, p, v], "folds": [outer, inner]}
    if ref_of is None:
        ctx.store("nested", r=res.r, alpha=res.best_alpha, cv=res.cv_scores)
    else:
        ref = ref_of("nested")
        if ref is not None:
            for k in range(outer):
                m[f"fold {k}"] = compare(ctx, f"nested_cv fold {k}", ref["r"][k], ref["alpha"][k], res.r[k],
                                         res.best_alpha[k], ref["cv"][k], res.cv_scores[k])
    ctx.measure("nested_cv", m)


def _ridge_gpu(ctx, backend):
    from brainalign.ridge import FoldSolver, kfold_splits

    dev = Device(backend)
    Xw, Yw, nw = case_data(200, 16, 64, seed=99)          # warm-up: kernels compiled, cuBLAS handles made
    _, t_warm = timed(lambda: FoldSolver(Xw[:nw], Xw[nw:], ALPHAS, kfold_splits(nw, 5), backend=backend)
                      .score_chunk(Yw[:nw], Yw[nw:]), dev.sync)
    ctx.measure("warmup_s", t_warm)
    peak32 = gemm_rate(ctx, backend)
    numpy_meas = ctx.measurements("ridge_numpy")

    def ref_of(name):
        ref = ctx.load(name)
        if ref is None:
            ctx.skip(f"{name} comparison", "no numpy reference (the ridge_numpy section did not finish)")
        return ref

    for label, X, Y, ntr in _ridge_cases(ctx):
        dev.reset()
        solver, t_setup = timed(lambda: FoldSolver(X[:ntr], X[ntr:], ALPHAS, kfold_splits(ntr, 5),
                                                   backend=backend), dev.sync)
        runs = [timed(lambda: solver.score_chunk(Y[:ntr], Y[ntr:]), dev.sync) for _ in range(2)]
        res, t_score = min(runs, key=lambda rt: rt[1])
        flops = solver.flops_per_target() * Y.shape[1]
        m = {"shape": list(X.shape) + [Y.shape[1]], "setup_s": t_setup, "score_s": [t for _, t in runs],
             "tflops_score": flops / t_score / 1e12, **dev.peak()}
        if peak32:
            m["fraction_of_float32_gemm"] = flops / t_score / 1e12 / peak32
        ref_t = numpy_meas.get(label)
        if ref_t:
            m["speedup_vs_numpy"] = (ref_t["setup_s"] + ref_t["score_s"]) / (t_setup + t_score)
        ref = ref_of(label)
        if ref is not None:
            m.update(compare(ctx, f"FoldSolver {label}", ref["r"], ref["alpha"], res.r, res.best_alpha,
                             ref["cv"], res.cv_scores))
        ctx.measure(label, m)
    _eigh_cost(ctx, backend, dev)
    if backend == "torch-cuda":
        _torch_syncs_and_tf32(ctx)
    _ridgecv_and_nested(ctx, backend, ref_of)


def _eigh_cost(ctx, backend, dev):
    """The float64 eigendecomposition each FoldSolver runs per fold: on the device vs numpy on the host
    (a GPU with slow float64 would want it on the host)."""
    from brainalign.ridge import get_backend

    B = get_backend(backend)
    n = ctx.sizes["eigh"]
    A = np.random.default_rng(4).standard_normal((n, n))
    G = A @ A.T
    Gd = B.asarray(G, "float64")
    B.eigh(Gd)
    dev.sync()
    _, t_dev = timed(lambda: B.eigh(Gd), dev.sync)
    (lam, _), t_host = timed(lambda: np.linalg.eigh(G))
    lam_dev = B.to_numpy(B.eigh(Gd)[0])
    ctx.measure("eigh_float64", {"n": n, "device_s": t_dev, "numpy_s": t_host,
                                 "max_rel_eigenvalue_err": float(np.max(np.abs(lam_dev - lam)) / np.max(np.abs(lam)))})


def _torch_syncs_and_tf32(ctx):
    """Host syncs per target batch (torch's sync debug mode counts them) and what TF32 GEMMs would do."""
    import warnings

    import torch

    from brainalign.ridge import FoldSolver, kfold_splits

    label = "p<n"
    n, p, v = ctx.sizes["cases"][label]
    X, Y, ntr = case_data(n, p, v, seed=len(label) + p)
    solver = FoldSolver(X[:ntr], X[ntr:], ALPHAS, kfold_splits(ntr, 5), backend="torch-cuda")
    batches = -(-v // solver.targets_batch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            solver.score_chunk(Y[:ntr], Y[ntr:])
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    ctx.measure("host_syncs", {"per_batch": syncs / batches, "batches": batches, "total": syncs})
    ref = ctx.load(label)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        res, t = timed(lambda: solver.score_chunk(Y[:ntr], Y[ntr:]), torch.cuda.synchronize)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    info = {"score_s": t, "note": "informational: brainalign leaves TF32 off; this is what turning it on costs"}
    if ref is not None:
        fin = np.isfinite(ref["r"]) & np.isfinite(res.r)
        info["max_abs_dr"] = float(np.max(np.abs(ref["r"][fin] - res.r[fin])))
        ok = ~(np.isnan(ref["alpha"]) | np.isnan(res.best_alpha))
        info["alpha_agreement"] = float(np.mean(ref["alpha"][ok] == res.best_alpha[ok]))
    ctx.measure("tf32_p<n", info)


def section_ridge_cupy(ctx):
    _ridge_gpu(ctx, "cupy")


def section_ridge_torch(ctx):
    _ridge_gpu(ctx, "torch-cuda")


# ------------------------------------------------------------------------------------ kernels
def section_kernels(ctx):
    """The fused colsums2 kernel and the colsumsq ReductionKernel against their plain-array equivalents."""
    import cupy

    from brainalign.ridge.cuda_kernels import colsums2, colsums2_reference, colsumsq

    k, n, v = ctx.sizes["kernel"]
    reps = ctx.sizes["kernel_reps"]
    P = cupy.random.standard_normal((k, n, v), dtype=cupy.float32)
    Y = cupy.random.standard_normal((n, v), dtype=cupy.float32)
    ref_pp, ref_py = colsums2_reference(P, Y)
    pp, py = colsums2(P, Y)
    for name, got, want in (("sum P^2", pp, ref_pp), ("sum P*Y", py, ref_py)):
        err = float(cupy.max(cupy.abs(got - want) / cupy.maximum(cupy.abs(want), 1e-30)))
        ctx.check(f"fused colsums2 {name} = float64 reference", err <= KERNEL_REL, value=err, limit=KERNEL_REL)
    plain32 = lambda: ((P * P).sum(1), (P * Y[None]).sum(1))   # noqa: E731  what cupy does without the kernel
    p32, y32 = plain32()
    ctx.measure("plain_float32_max_rel_err", float(cupy.max(cupy.abs(p32 - ref_pp) / cupy.abs(ref_pp))))
    t_fused = _event_time(lambda: colsums2(P, Y), reps, "cupy")
    t_plain = _event_time(plain32, reps, "cupy")
    read_gb = (P.nbytes + Y.nbytes) / 1e9
    copy = ctx.measurements("gemm").get("device_copy", {}).get("gb_per_s")
    m = {"shape_k_n_v": [k, n, v], "fused_s": t_fused, "plain_s": t_plain, "speedup": t_plain / t_fused,
         "fused_read_gb_per_s": read_gb / t_fused}
    if copy:
        m["fraction_of_copy_bandwidth"] = read_gb / t_fused / copy
    ctx.measure("colsums2", m)
    A = Y
    want = (A.astype(cupy.float64) ** 2).sum(0)
    err = float(cupy.max(cupy.abs(colsumsq(A) - want) / want))
    ctx.check("colsumsq ReductionKernel = float64 reference", err <= KERNEL_REL, value=err, limit=KERNEL_REL)
    ctx.measure("colsumsq", {"kernel_s": _event_time(lambda: colsumsq(A), reps, "cupy"),
                             "plain_s": _event_time(lambda: (A * A).sum(0), reps, "cupy")})


# ------------------------------------------------------------------------------------ streaming
def section_stream_numpy(ctx):
    """The CPU reference of the streamed run, on its first ``ref_v`` voxels."""
    from brainalign.ridge import nested_cv

    s = ctx.sizes["stream"]
    X, Y = stream_data(s["n"], s["p"], s["ref_v"])
    res, t = timed(lambda: nested_cv(X, Y, s["outer"], ALPHAS, inner_cv=s["inner"], backend="numpy",
                                     return_cv_scores=True))
    ctx.store("stream", r=res.r, alpha=res.best_alpha, cv=res.cv_scores)
    ctx.measure("subset", {"voxels": s["ref_v"], "wall_s": t, "voxels_per_s": s["ref_v"] / t})


def _stream_gpu(ctx, backend):
    from brainalign.ridge import FoldSolver, kfold_splits, nested_cv, score_stream
    from brainalign.ridge.nested import default_chunk

    s = ctx.sizes["stream"]
    dev = Device(backend)
    (X, Y), t_gen = timed(lambda: stream_data(s["n"], s["p"], s["v"]))
    ctx.measure("data", {"shape": [s["n"], s["p"], s["v"]], "y_host_mib": Y.nbytes / 2**20, "generate_s": t_gen,
                         "chunk_voxels": default_chunk(s["n"])})
    nested = lambda Yv, cv=False: nested_cv(X, Yv, s["outer"], ALPHAS, inner_cv=s["inner"],  # noqa: E731
                                            backend=backend, return_cv_scores=cv)
    _, t_warm = timed(lambda: nested(Y[:, :512]), dev.sync)
    ref = ctx.load("stream")
    res, t_sub = timed(lambda: nested(Y[:, :s["ref_v"]], True), dev.sync)
    sub = {"voxels": s["ref_v"], "wall_s": t_sub, "warmup_s": t_warm}
    numpy_sub = ctx.measurements("stream_numpy").get("subset", {}).get("wall_s")
    if numpy_sub:
        sub["speedup_vs_numpy"] = numpy_sub / t_sub
    if ref is None:
        ctx.skip("subset comparison", "no numpy reference (the stream_numpy section did not finish)")
    else:
        for k in range(s["outer"]):
            sub[f"fold {k}"] = compare(ctx, f"streamed nested_cv fold {k} (first {s['ref_v']} voxels)", ref["r"][k],
                                       ref["alpha"][k], res.r[k], res.best_alpha[k], ref["cv"][k], res.cv_scores[k])
    ctx.measure("subset", sub)
    dev.reset()
    full, t_full = timed(lambda: nested(Y), dev.sync)
    peak = dev.peak()
    flops = flops_nested(s["n"], s["p"], s["outer"], s["inner"], s["v"])
    m = {"voxels": s["v"], "wall_s": t_full, "voxels_per_s": s["v"] / t_full, "tflops": flops / t_full / 1e12,
         "finite_r": int(np.isfinite(full.r).sum()), **peak}
    peak32 = gemm_rate(ctx, backend)
    if peak32:
        m["fraction_of_float32_gemm"] = m["tflops"] / peak32
    ctx.measure("full", m)
    if peak:
        ctx.check("streamed: peak device memory well below Y's size (Y stays on the host)",
                  peak["peak_reserved_mib"] < HOST_RESIDENT_FRACTION * Y.nbytes / 2**20,
                  value=peak["peak_reserved_mib"], limit=HOST_RESIDENT_FRACTION * Y.nbytes / 2**20,
                  note="MiB reserved by the GPU allocator vs a quarter of Y's host size")
    ctx.check("streamed: constant and NaN voxels give NaN, all others finite",
              bool(np.isnan(full.r[:, [1, 2]]).all()) and int(np.isfinite(full.r).sum()) == s["outer"] * (s["v"] - 2))
    tr, te = kfold_splits(s["n"], s["outer"])[0]
    sweep = {}
    for tb in s["batches"]:
        solver = FoldSolver(X[tr], X[te], ALPHAS, kfold_splits(tr.size, s["inner"]), backend=backend, targets_batch=tb)
        for prefetch in (True, False) if tb == s["batches"][0] else (True,):
            dev.reset()
            _, t = timed(lambda: score_stream(solver, Y, tr, te, sink=lambda c, r: None, prefetch=prefetch), dev.sync)
            sweep[f"targets_batch={tb}{'' if prefetch else ' no-prefetch'}"] = {"wall_s": t, **dev.peak()}
            ctx.measure("one_fold_sweep", sweep)


def section_stream_cupy(ctx):
    _stream_gpu(ctx, "cupy")


def section_stream_torch(ctx):
    _stream_gpu(ctx, "torch-cuda")


# ------------------------------------------------------------------------------------ extraction
def feature_errors(ref, got):
    """Per layer: relative L2 error and Pearson correlation of (n_layers, windows, hidden) features."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    rel, corr = [], []
    for a, b in zip(ref, got):
        rel.append(float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-30)))
        corr.append(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
    return {"rel_l2": rel, "corr": corr, "max_abs": float(np.max(np.abs(got - ref)))}


def _encode(bb, stim, batch, sync=None):
    import torch

    def run():
        return torch.cat([bb.encode(stim, slice(i, i + batch), "joint") for i in range(0, stim.n_windows, batch)],
                         1).numpy()
    return timed(run, sync)


def _extraction(ctx, label, bb, make_stim, ref_windows, gpu_windows, batch, device="cuda"):
    """CPU float32 reference, then CUDA float32 and CUDA bf16 autocast: features and windows/s.
    (``device="cpu"`` runs the same steps without a GPU: the tests' stand-in.)"""
    import torch

    ref_stim = make_stim("reference", ref_windows)
    bb.precision = "float32"
    ref, t = _encode(bb, ref_stim, batch)
    ctx.measure("cpu_reference_float32", {"windows": ref_windows, "windows_per_s": ref_windows / t,
                                          "threads": torch.get_num_threads(), "features": list(ref.shape)})
    ok, why = ctx.usable("torch-cuda") if device == "cuda" else (True, "")
    if not ok:
        ctx.skip("cuda", why)
        return
    bb.to(device)
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else None
    for precision, limit in (("float32", FP32_REL_L2), ("bfloat16", BF16_REL_L2)):
        bb.precision = precision
        got, _ = _encode(bb, make_stim("reference", ref_windows), batch, sync)   # fresh object: no cache
        err = feature_errors(ref, got)
        ctx.check(f"{label} {device.upper()} {precision}: per-layer relative L2 error <= {limit:g}",
                  max(err["rel_l2"]) <= limit, value=max(err["rel_l2"]), limit=limit)
        if precision == "bfloat16":
            ctx.check(f"{label} {device.upper()} bf16: per-layer feature correlation >= {BF16_MIN_CORR}",
                      min(err["corr"]) >= BF16_MIN_CORR, value=min(err["corr"]), limit=BF16_MIN_CORR)
        _encode(bb, make_stim("warm", min(batch, gpu_windows)), batch, sync)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        _, t = _encode(bb, make_stim("timed", gpu_windows), batch, sync)
        m = {"windows": gpu_windows, "batch": batch, "windows_per_s": gpu_windows / t, "errors": err}
        if cuda:
            m["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        ctx.measure(f"{device}_{precision}", m)
    bb.to("cpu")


def section_extract_tiny(ctx, device="cuda"):
    import torch

    from brainalign.config import Config
    from brainalign.models import get_backbone
    from brainalign.models.synthetic import synthetic_stimuli

    s = ctx.sizes["tiny"]
    cfg = Config()
    w = cfg.windows
    torch.manual_seed(0)
    bb = get_backbone(cfg.model, cfg.windows)
    make = lambda name, n: synthetic_stimuli(name, n_windows=n, tr=1.0, frames=w.frames,  # noqa: E731
                                             image_size=w.image_size, audio_rate=w.audio_rate, seed=5)
    _extraction(ctx, "tiny", bb, make, s["windows"], s["windows"], s["batch"], device)


def section_extract_merlot(ctx, device="cuda"):
    import torch

    from brainalign.models.merlot.backbone import MerlotBackbone
    from brainalign.models.merlot.model import MerlotConfig, build_model
    from brainalign.models.synthetic import synthetic_stimuli

    s = ctx.sizes["merlot"]
    cfg = MerlotConfig(**MERLOT_QUICK) if s["size"] == "tiny" else MerlotConfig.named(s["size"])
    torch.manual_seed(0)
    # random init is quick on a GPU and slow on a CPU; the CPU reference then gets a copy of those weights
    where = "cuda" if device == "cuda" and ctx.usable("torch-cuda")[0] else "cpu"
    model, t_build = timed(lambda: build_model(cfg, where).eval().cpu())
    ctx.measure("model", {"size": s["size"], "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
                          "build_s": t_build, "built_on": where, "frame_size": list(cfg.image_size)})
    vocab = cfg.vocab_size

    def tokenize(text):   # stand-in BPE ids (random base weights: the vocabulary does not matter)
        return [100 + zlib.crc32(wd.encode()) % (vocab - 100) for wd in text.split()]

    bb = MerlotBackbone(model, tokenize)
    # the inputs the loader makes for MERLOT (frames letterboxed at its grid, one per 5-s segment; 22,050 Hz)
    make = lambda name, n: synthetic_stimuli(name, n_windows=n, tr=s["tr"],  # noqa: E731
                                             max_words=s["max_words"], seed=6, spec=bb.stimulus_spec)
    _extraction(ctx, f"MERLOT Reserve {s['size']}", bb, make, s["ref_windows"], s["gpu_windows"], s["batch"],
                device)
