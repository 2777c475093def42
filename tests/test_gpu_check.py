"""bench/gpu_check.py on a CPU-only machine: it runs its CPU reference parts at small sizes, reports every
GPU part as skipped with the reason, keeps sections independent (an error or a timeout in one is
reported and the rest run), and the GPU sections' own logic runs here with CPU stand-ins."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from brainalign.ridge.backend import cupy_status, torch_cuda_status

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))
import gpu_check  # noqa: E402
import gpu_check_report  # noqa: E402
import gpu_check_sections as S  # noqa: E402

# what the GPU machine lacks (its image has numpy, scipy, h5py, torch, cupy, threadpoolctl, pyyaml, ...):
# the script must not need any of these
ABSENT_THERE = ("nibabel", "submitit", "av", "nilearn", "himalaya", "sklearn", "spython", "pytest")
GPU_SECTIONS = {"ridge_cupy": "cupy", "ridge_torch": "torch-cuda", "kernels": "cupy",
                "stream_cupy": "cupy", "stream_torch": "torch-cuda"}


def _blocker(tmp_path):
    """A sitecustomize that makes the GPU machine's missing packages unimportable."""
    d = tmp_path / "block"
    d.mkdir()
    (d / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys
        class _Absent:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {ABSENT_THERE!r}:
                    raise ImportError(f"{{name}} is not installed on the GPU machine")
        sys.meta_path.insert(0, _Absent())
    """))
    return d


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_blocker(tmp)), str(REPO / "toolkit")]),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), str(out), "--quick"], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)   # a hang guard; the run takes ~15 s
    return proc, out


def test_quick_run_writes_a_complete_report_and_says_why_gpu_parts_were_skipped(quick_report):
    proc, out = quick_report
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    rep = json.loads((out / "gpu_check.json").read_text())
    assert rep["mode"] == "quick" and list(rep["sections"]) == list(gpu_check.SECTIONS)
    assert rep["total_wall_s"] < gpu_check.TOTAL_BUDGET
    for name, sec in rep["sections"].items():
        assert sec["status"] in gpu_check.STATUSES, name
        assert {"checks", "measurements", "skipped"} <= set(sec), name
    usable = rep["sections"]["env"]["measurements"]["usable"]
    here = {"cupy": cupy_status(), "torch-cuda": torch_cuda_status()}
    assert {k: (v["ok"], v["reason"]) for k, v in usable.items()} == here
    for name, backend in GPU_SECTIONS.items():
        sec = rep["sections"][name]
        if here[backend][0]:
            assert sec["status"] == "ok", (name, sec.get("reason"))
        else:
            assert sec["status"] == "skipped" and sec["reason"] == here[backend][1]
            assert sec["reason"].startswith(("cupy import error", "no CUDA device"))
    for name in ("gemm", "ridge_numpy", "stream_numpy", "extract_tiny", "extract_merlot"):
        assert rep["sections"][name]["status"] == "ok", (name, rep["sections"][name].get("reason"))
    ref = rep["sections"]["ridge_numpy"]["measurements"]
    assert set(ref) == {"p<n", "p>n", "RidgeCV", "nested_cv"} and ref["p<n"]["score_s"] > 0
    for name in ("extract_tiny", "extract_merlot"):
        sec = rep["sections"][name]
        assert sec["measurements"]["cpu_reference_float32"]["windows_per_s"] > 0
        if not here["torch-cuda"][0]:
            assert sec["skipped"] == {"cuda": here["torch-cuda"][1]} and not sec["checks"]
    summary = rep["summary"]
    assert summary["failed"] == [] and summary["evidence"] == []      # quick figures are never evidence
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# brainalign GPU check") and "Quick mode: small sizes" in md
    for name, sec in rep["sections"].items():
        assert f"### {name}: {sec['status']}" in md
    if not here["cupy"][0]:
        assert f"- skipped ridge_cupy: {here['cupy'][1]}" in md
    assert "auto` stays on numpy" in md
    assert proc.stdout.strip() == md.strip()


def test_a_failing_or_overrunning_section_is_reported_and_does_not_stop_the_others(tmp_path):
    with open(tmp_path / "log", "w") as log:
        broken = gpu_check._spawn("no_such_section", tmp_path, "quick", 60, log)
        slow = gpu_check._spawn("extract_merlot", tmp_path, "quick", 0.5, log)
        after = gpu_check._spawn("gemm", tmp_path, "quick", 60, log)
    assert broken["status"] == "error" and "section_no_such_section" in broken["reason"]
    assert slow["status"] == "timeout" and slow["reason"] == "killed at its 0 s budget (measured so far kept)"
    assert slow["wall_s"] < 10
    assert after["status"] == "ok" and after["measurements"]["numpy_float32"]["tflops"] > 0
    summary = gpu_check_report.summarize({"mode": "full", "started": "2031-01-01T00:00:00+00:00",
                                          "sections": {"a": broken, "b": slow, "c": after}})
    assert [f.split(":")[0] for f in summary["failed"]] == ["a", "b"] and summary["evidence"] == []


def _ctx(tmp_path, name, sizes=None):
    rec = {"section": name, "status": "running", "checks": [], "measurements": {}, "skipped": {}}

    def save():
        (tmp_path / f"{name}.json").write_text(json.dumps(S.clean(rec)))

    ctx = S.Context(mode="quick", workdir=tmp_path, rec=rec, save=save)
    if sizes:
        ctx.sizes = {**ctx.sizes, **sizes}
    return ctx


SMALL = {"cases": {"p<n": (160, 12, 60), "p>n": (50, 80, 60)}, "ridgecv": (160, 12, 40),
         "nested": (90, 8, 50, 3, 3), "stream": {"n": 120, "p": 10, "v": 900, "ref_v": 300, "outer": 2,
                                                 "inner": 3, "batches": (128, 512)}}


def test_gpu_sections_logic_runs_with_a_cpu_stand_in(tmp_path):
    """The ridge and streamed sections' comparison code, run with torch-CPU in the GPU's place."""
    S.section_ridge_numpy(_ctx(tmp_path, "ridge_numpy", SMALL))
    gpu = _ctx(tmp_path, "ridge_torch", SMALL)
    S._ridge_gpu(gpu, "torch-cpu")
    names = [c["name"] for c in gpu.rec["checks"]]
    for label in ("FoldSolver p<n", "FoldSolver p>n", "RidgeCV", "nested_cv fold 0", "nested_cv fold 2"):
        assert f"{label}: alphas identical to numpy (rounding-level ties excepted)" in names
        assert f"{label}: max |dr| <= 0.0001" in names
    assert all(c["ok"] for c in gpu.rec["checks"]), [c for c in gpu.rec["checks"] if not c["ok"]]
    assert gpu.rec["measurements"]["p>n"]["speedup_vs_numpy"] > 0 and gpu.rec["skipped"] == {}

    S.section_stream_numpy(_ctx(tmp_path, "stream_numpy", SMALL))
    st = _ctx(tmp_path, "stream_torch", SMALL)
    S._stream_gpu(st, "torch-cpu")
    assert all(c["ok"] for c in st.rec["checks"]) and len(st.rec["checks"]) == 2 * 3 + 1
    m = st.rec["measurements"]
    assert m["full"]["finite_r"] == 2 * (900 - 2) and set(m["one_fold_sweep"]) == {
        "targets_batch=128", "targets_batch=128 no-prefetch", "targets_batch=512"}


def test_extraction_section_compares_precisions_with_a_cpu_stand_in(tmp_path):
    ctx = _ctx(tmp_path, "extract_tiny", {"tiny": {"windows": 6, "batch": 3}})
    S.section_extract_tiny(ctx, device="cpu")
    assert [c["name"] for c in ctx.rec["checks"]] == [
        "tiny CPU float32: per-layer relative L2 error <= 0.005",
        "tiny CPU bfloat16: per-layer relative L2 error <= 0.05",
        "tiny CPU bf16: per-layer feature correlation >= 0.99"]
    assert all(c["ok"] for c in ctx.rec["checks"])
    assert ctx.rec["measurements"]["cpu_float32"]["errors"]["rel_l2"] == [0.0] * 4   # same device, same math


def test_comparison_flags_mismatches_and_counts_near_ties(tmp_path):
    ctx = _ctx(tmp_path, "cmp")
    r = np.array([0.5, 0.2, np.nan, 0.1], np.float32)
    alpha = np.array([10.0, 100.0, np.nan, 1.0], np.float32)
    cv = np.zeros((S.ALPHAS.size, 4))
    cv[:, 0] = np.linspace(0.1, 0.2, S.ALPHAS.size)
    cv[2, 0] = cv[3, 0] - 2e-7                     # voxel 0: alphas 3 and 2 tie within rounding
    cv[:, 1] = np.linspace(0.3, 0.1, S.ALPHAS.size)  # voxel 1: alpha 0 clearly best
    got_cv = cv.copy()
    got_cv[2, 0] += 4e-7                           # the other backend's rounding moved the tie
    got_alpha = alpha.copy()
    got_alpha[0] = np.float32(S.ALPHAS[2])
    alpha[0] = np.float32(S.ALPHAS[3])
    out = S.compare(ctx, "tie", r, alpha, r, got_alpha, cv, got_cv)
    res = {c["name"]: c for c in ctx.rec["checks"]}
    assert res["tie: same NaN targets as numpy"]["ok"] and out == {"max_abs_dcv": pytest.approx(4e-7),
                                                                    "alpha_mismatches": 1}
    tie = res["tie: alphas identical to numpy (rounding-level ties excepted)"]
    assert tie["ok"] and tie["value"] == 0 and tie["note"] == "1 alpha(s) differ; 1 are rounding-level ties (cv gap <= 9e-07)"
    got_alpha[1] = np.float32(S.ALPHAS[5])         # voxel 1: a real disagreement
    S.compare(ctx, "real", r, alpha, r + np.float32(2e-4) * np.array([0, 1, 0, 0], np.float32), got_alpha, cv, got_cv)
    res = {c["name"]: c for c in ctx.rec["checks"]}
    real = res["real: alphas identical to numpy (rounding-level ties excepted)"]
    assert not real["ok"] and real["value"] == 1
    dr = res["real: max |dr| <= 0.0001"]
    assert not dr["ok"] and dr["value"] == pytest.approx(2e-4, rel=1e-3)
    S.compare(ctx, "nan", r, alpha, np.where(np.arange(4) == 1, np.nan, r), alpha)
    assert not ctx.rec["checks"][-3]["ok"] and ctx.rec["checks"][-3]["value"] == 1     # NaN where numpy has r


def test_evidence_is_proposed_only_from_full_runs_that_passed():
    env = {"measurements": {"gpu": {"name": "NVIDIA H200"}, "host": {"git_commit": "abc"}}}
    ok = {"status": "ok", "measurements": {"subset": {"speedup_vs_numpy": 7.345}}, "checks": []}
    rep = {"mode": "full", "started": "2031-02-03T04:05:06+00:00",
           "sections": {"env": env, "stream_cupy": ok, "stream_torch": {**ok, "status": "failed"}}}
    assert gpu_check_report.evidence(rep) == [{"backend": "cupy", "gpu": "NVIDIA H200", "speedup": 7.34,
                                              "date": "2031-02-03", "source": "bench/gpu_check.py report, abc"}]
    assert gpu_check_report.evidence({**rep, "mode": "quick"}) == []
    from brainalign.ridge.backend import auto_choice

    assert set(gpu_check_report.evidence(rep)[0]) == {"backend", "gpu", "speedup", "date", "source"}
    assert auto_choice(evidence=gpu_check_report.evidence(rep))[0] in ("numpy", "cupy")


def test_cli_rejects_unknown_sections(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), str(tmp_path), "--sections", "ridge_cupy,nope"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown section(s) nope" in proc.stderr
    assert not any(tmp_path.iterdir())
