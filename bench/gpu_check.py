#!/usr/bin/env python3
"""One prepared GPU check of brainalign: ridge on cupy and torch-CUDA, the fused CuPy kernel, and CUDA
extraction (tiny and MERLOT Reserve, bf16 autocast), each against the numpy/CPU float32 reference run
in the same invocation. Writes ``gpu_check.json`` (everything measured), ``gpu_check.md`` (a readable
summary) and ``gpu_check.log`` (each section's stderr tail) to OUTDIR.

    PYTHONPATH=toolkit python3 bench/gpu_check.py OUTDIR            # full sizes, < 6 minutes
    PYTHONPATH=toolkit python3 bench/gpu_check.py OUTDIR --quick    # small sizes (CPU test, ~20 s)
    ... --sections ridge_numpy,ridge_cupy                           # a subset (names: --list)

Needs only numpy, scipy, h5py, torch, threadpoolctl, pyyaml, tqdm (and cupy for its sections): what a
GPU node with a CUDA torch and a CuPy wheel has; no network, nothing installed.

Every section runs in its own Python process with its own time budget (killed when it overruns; what
it had measured so far is kept), so a crash, a hang or an out-of-memory in one section is reported
and the others still run; the budgets add up to ``--total-budget`` (330 s). Without a GPU, the CPU
reference parts run and every GPU part is reported as skipped with the reason (no CUDA device, the
cupy import error). Exit status: 0 if no check failed (skips are not failures), 1 otherwise.

Figures are measured, never assumed: a GPU's float32/TF32 GEMM rate is measured in the same run and
every ridge rate is reported as a fraction of it. Nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: name -> (budget in seconds, backend the section cannot run without: None, "cupy" or "torch-cuda")
SECTIONS = {
    "env": (15, None),
    "gemm": (15, None),
    "ridge_numpy": (45, None),
    "ridge_cupy": (45, "cupy"),               # the first cupy section: NVRTC compiles its kernels (warm-up)
    "ridge_torch": (40, "torch-cuda"),
    "kernels": (15, "cupy"),
    "stream_numpy": (25, None),
    "stream_cupy": (35, "cupy"),
    "stream_torch": (35, "torch-cuda"),
    "extract_tiny": (20, None),
    "extract_merlot": (40, None),
}
TOTAL_BUDGET = sum(b for b, _ in SECTIONS.values())      # 330 s: the script ends well inside 6 minutes
STATUSES = ("ok", "failed", "skipped", "timeout", "error")


# ------------------------------------------------------------------------------------ child side
def run_child(section: str, workdir: Path, mode: str, result: Path) -> int:
    """Run one section in this process, saving its record to ``result`` after every step."""
    sys.path.insert(0, str(HERE))
    import gpu_check_sections as S

    rec = {"section": section, "status": "running", "checks": [], "measurements": {}, "skipped": {}}

    def save():
        tmp = result.with_suffix(".tmp")
        tmp.write_text(json.dumps(S.clean(rec), indent=1))
        os.replace(tmp, result)

    ctx = S.Context(mode=mode, workdir=workdir, rec=rec, save=save)
    t0 = time.perf_counter()
    save()
    try:
        getattr(S, f"section_{section}")(ctx)
        failed = [c["name"] for c in rec["checks"] if not c["ok"]]
        if failed:
            rec["status"] = "failed"
        elif not rec["checks"] and not rec["measurements"] and rec["skipped"]:
            rec["status"] = "skipped"
            rec["reason"] = "; ".join(f"{k}: {v}" for k, v in rec["skipped"].items())
        else:
            rec["status"] = "ok"
    except S.Skip as why:
        rec["status"], rec["reason"] = "skipped", str(why)
    except Exception as err:  # reported, never hidden: the driver goes on with the next section
        import traceback

        rec["status"], rec["reason"] = "error", f"{type(err).__name__}: {err}"
        rec["traceback"] = traceback.format_exc()[-4000:]
    rec["wall_s"] = round(time.perf_counter() - t0, 3)
    save()
    return 0


# ------------------------------------------------------------------------------------ driver side
def _spawn(section, workdir, mode, budget, log):
    """Run a section in a fresh interpreter with a hard time limit; return its record."""
    result = workdir / f"{section}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", section, "--workdir", str(workdir),
           "--mode", mode, "--result", str(result)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "toolkit")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("CUPY_CACHE_DIR", str(workdir / "cupy-kernels"))   # writable; shared by the sections
    t0 = time.perf_counter()
    timed_out = False
    with open(workdir / f"{section}.stderr", "w+") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = proc.wait()
        err.seek(0)
        tail = err.read()[-3000:]
    wall = time.perf_counter() - t0
    log.write(f"==== {section} (rc {rc}, {wall:.1f} s{', TIMED OUT' if timed_out else ''})\n{tail}\n")
    try:
        rec = json.loads(result.read_text())
    except (OSError, ValueError):
        rec = {"section": section, "checks": [], "measurements": {}, "skipped": {}}
    if timed_out:
        rec["status"], rec["reason"] = "timeout", f"killed at its {budget:.0f} s budget (measured so far kept)"
    elif rec.get("status") in (None, "running"):
        last = tail.strip().splitlines()[-1:] or [f"exit status {rc}"]
        rec["status"], rec["reason"] = "error", f"the section's process died (rc {rc}): {last[0][:300]}"
    rec["wall_s"] = round(wall, 3)
    rec["budget_s"] = budget
    return rec


def _kill_group(proc):
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)       # the section and anything it started
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_all(outdir: Path, mode: str, sections: list[str], total_budget: float) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    scale = total_budget / TOTAL_BUDGET
    t0 = time.perf_counter()
    report = {"script": "bench/gpu_check.py", "mode": mode,
              "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "sections": {}}
    try:
        with open(outdir / "gpu_check.log", "w") as log:
            env = _spawn("env", workdir, mode, SECTIONS["env"][0] * scale, log)
            report["sections"]["env"] = env
            usable = env.get("measurements", {}).get("usable", {})
            for name in sections:
                if name == "env":
                    continue
                budget, needs = SECTIONS[name]
                left = total_budget - (time.perf_counter() - t0)
                if needs is not None and not usable.get(needs, {}).get("ok", False):
                    why = usable.get(needs, {}).get("reason") or env.get("reason") or "the env probe did not run"
                    report["sections"][name] = {"section": name, "status": "skipped", "reason": why,
                                                "checks": [], "measurements": {}, "skipped": {needs: why}}
                    continue
                if left < 3:
                    report["sections"][name] = {"section": name, "status": "skipped", "checks": [],
                                                "measurements": {}, "skipped": {},
                                                "reason": f"the total budget of {total_budget:.0f} s was spent"}
                    continue
                report["sections"][name] = _spawn(name, workdir, mode, min(budget * scale, left), log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["total_wall_s"] = round(time.perf_counter() - t0, 2)
    sys.path.insert(0, str(HERE))
    import gpu_check_report

    report["summary"] = gpu_check_report.summarize(report)
    gpu_check_report.write(report, outdir)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", nargs="?", type=Path, help="folder for gpu_check.json / .md / .log")
    ap.add_argument("--quick", action="store_true", help="small sizes (a CPU smoke run; GPU figures not representative)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset (env always runs)")
    ap.add_argument("--total-budget", type=float, default=TOTAL_BUDGET,
                    help=f"seconds for all sections together (default {TOTAL_BUDGET}; each gets its share)")
    ap.add_argument("--list", action="store_true", help="print the sections and their budgets")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args.child, args.workdir, args.mode, args.result)
    if args.list:
        for name, (budget, needs) in SECTIONS.items():
            print(f"{name:15s} {budget:4d} s  {'needs ' + needs if needs else 'CPU reference / any machine'}")
        return 0
    if args.outdir is None:
        ap.error("OUTDIR is required")
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    names = [s for s in SECTIONS if s in names]       # always in dependency order (gemm, references first)
    if not math.isfinite(args.total_budget) or args.total_budget <= 0:
        ap.error("--total-budget must be a positive number of seconds")
    report = run_all(args.outdir, "quick" if args.quick else "full", names, args.total_budget)
    print((args.outdir / "gpu_check.md").read_text())
    return 0 if not report["summary"]["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
