"""The fit's cost model (brainalign.cluster.cost) and the plan's estimates / cannot-fit checks
(brainalign.cluster.sizing). No SLURM: plans are built, never submitted (a refused submission stops before
anything reaches a scheduler)."""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from brainalign.cli import main as cli_main
from brainalign.cluster import cost
from brainalign.cluster.cost import DeviceRates, FitShape, Rates
from brainalign.cluster.plan import build_plan
from brainalign.cluster.profile import load_profile, parse_profile
from brainalign.cluster.submit import submit_study
from brainalign.config import parse_config
from brainalign.errors import ConfigError

from test_fit import _zscore_runs, write_align_outputs

# ---- counts against hand derivations ----------------------------------------------------------------------
# n 1000 TRs in K 5 outer folds of 200: n_tr 800, n_te 200; k 4 inner folds of n_val 200, n_in 600;
# p 100 <= every training set, so every rank r is 100; v 50 voxels in one chunk; A 3 alphas; 2 subjects.
HAND = FitShape(n=1000, p=100, v=50, subjects=2, designs=1, layers=1, K=5, alphas=3, chunk=50)


def test_fold_engine_counts_by_hand():
    c = cost.counts(HAND, "fold")
    # one subject's chunk, one outer fold (float32 GEMMs):
    #   per inner fold  U^T Y      2 r n_in w   = 2*100*600*50     = 6.0e6
    #                   A scores   A 2 n_val r w = 3*2*200*100*50  = 6.0e6      x 4 folds = 48e6
    #   refit U^T Y     2 r n_tr w = 2*100*800*50 = 8e6;  test predictions 2 n_te r w = 2*200*100*50 = 2e6
    assert c.chunk.gemm32 == pytest.approx(58e6)
    assert c.n_chunk == 5 * 2                         # outer folds x subjects x chunks
    # one outer fold's design work (float64): Gram 2 n_tr p^2 = 16e6; per inner fold downdate 2 n_val p^2 = 4e6,
    # U 2 n_in p r = 12e6, M 2 n_val p r = 4e6 (x 4 = 80e6); the refit's U 2 n_tr p r = 16e6, M 2 n_te p r = 4e6
    assert c.design.gemm64 == pytest.approx(116e6)
    assert c.design.eigh == pytest.approx(5 * 10 / 3 * 100 ** 3)      # k + 1 eigendecompositions of p x p
    assert c.n_design == 5
    # reads: the BOLD chunk (n x w float32) per outer fold and subject, X (n x p) per outer fold, /r back once
    assert c.bytes_read == pytest.approx(5 * 2 * 1000 * 50 * 4 + 5 * 1000 * 100 * 4 + 2 * 5 * 50 * 4)
    assert c.data_passes == 5                          # designs x layers x outer folds
    assert c.flops == pytest.approx(5 * (116e6 + 5 * 10 / 3 * 1e6) + 10 * 58e6)


def test_fold_engine_chunk_flops_match_the_solvers_own_count():
    """The count equals what FoldSolver reports for the GEMMs it runs (its flops_per_target, summed over the
    outer folds), on a real split with unequal folds rounded as the model assumes."""
    from brainalign.fitdata import fold_splits
    from brainalign.ridge import FoldSolver

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(5), 200)
    X = rng.standard_normal((1000, 100)).astype(np.float32)
    total = 0.0
    for fold in range(5):
        train, test, inner = fold_splits(groups, fold)
        s = FoldSolver(X[train], X[test], [1.0, 10.0, 100.0], inner, n_jobs=1)
        total += s.flops_per_target() * 50 * 2                      # 50 voxels, 2 subjects
    assert cost.counts(HAND, "fold").chunk.gemm32 * cost.counts(HAND, "fold").n_chunk == pytest.approx(total)


def test_stats_engine_counts_by_hand():
    c = cost.counts(HAND, "stats")
    # atoms = the 5 folds; 5 outer + 20 inner training sets, every validation set (200 rows) > r = 100: the
    # "gram" form. Per subject chunk, float64: the one pass X_a^T Y_a over all rows 2 n p w = 10e6; per set
    # the projections V^T C_T, V^T C_S 4 r p w = 2e6 (x 25 = 50e6); the numerators 2 A r w = 30,000 per
    # inner set (x 20) and 2 r w = 10,000 per outer set (x 5)
    assert c.chunk.gemm64 == pytest.approx(10e6 + 50e6 + 20 * 30_000 + 5 * 10_000)
    # float32: sum(P^2) = b^T H b per alpha, 2 r^2 w = 1e6; inner 20 sets x 3 alphas, outer 5 x 1 alpha
    assert c.chunk.gemm32 == pytest.approx(65e6)
    # design: atom Grams 2 n p^2 = 20e6, per set H = V^T G_S V 2 p^2 r + 2 p r^2 = 4e6 (x 25)
    assert c.design.gemm64 == pytest.approx(20e6 + 100e6)
    assert c.design.eigh == pytest.approx(25 * 10 / 3 * 100 ** 3)     # one eigh per training set
    assert c.n_chunk == 2 and c.n_design == 1 and c.data_passes == 1
    assert c.bytes_read == pytest.approx(2 * 1000 * 50 * 4 + 1000 * 100 * 4 + 2 * 5 * 50 * 4)


def test_stats_engine_counts_match_the_engines_own_count():
    """The statistics engine's own count (NestedEngine.flops_per_voxel: multiply-adds of the stats pass, the
    projections and the scoring products) x 2 flops x voxels, plus the per-alpha numerators it leaves out."""
    from brainalign.fitdata import fold_splits
    from brainalign.ridge import NestedEngine

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(5), 200)
    X = rng.standard_normal((1000, 100)).astype(np.float32)
    splits = [fold_splits(groups, k) for k in range(5)]
    eng = NestedEngine(X, [(tr, te) for tr, te, _ in splits], [inner for _, _, inner in splits], [1.0, 10.0, 100.0],
                       n_jobs=1)
    stats_pass, proj, score = eng.flops_per_voxel()
    c = cost.counts(HAND, "stats")
    numerators = (20 * 2 * 3 * 100 + 5 * 2 * 100) * 50
    assert c.chunk.gemm64 + c.chunk.gemm32 == pytest.approx(2 * (stats_pass + proj + score) * 50 + numerators)


def _gemm_only_rates(gflops=1.0):
    """Rates where only float32 GEMMs cost time (1 GFLOP/s), everything else is free."""
    fast = 1e9
    return Rates(machine="test", cpu=DeviceRates(gemm32_gflops=gflops, gemm64_gflops=fast, eigh_gflops=fast,
                                                 elem_gbps=fast), read_gbps=fast, rss_base_mib=100.0, startup_s=0.0,
                 efficiency={"fold": dict(cost.NO_OVERHEAD), "stats": dict(cost.NO_OVERHEAD)})


def test_estimate_wall_time_is_counts_over_rates_and_ranks():
    r = _gemm_only_rates()
    one = cost.estimate(HAND, ranks=1, rates=r, engine="fold")
    assert one.wall_s == pytest.approx(10 * 58e6 / 1e9, rel=1e-6)      # 10 chunk instances at 1 GFLOP/s
    two = cost.estimate(HAND, ranks=2, rates=r, engine="fold")
    assert two.wall_s == pytest.approx(one.wall_s / 2, rel=1e-6)
    four_cores = cost.estimate(HAND, ranks=1, cores_per_rank=4, rates=r, engine="fold")
    assert four_cores.wall_s == pytest.approx(one.wall_s / 4, rel=1e-6)
    assert one.mem_rank_bytes > 100 * 2 ** 20                         # base RSS + the arrays
    gpu = cost.estimate(HAND, ranks=1, gpu=True, rates=r, engine="fold")
    assert gpu.wall_s < one.wall_s and "ASSUMED" in gpu.assumed


def test_slurm_time_format():
    assert cost.slurm_time(59) == "00:01:00"
    assert cost.slurm_time(3 * 3600 + 1) == "03:01:00"
    assert cost.slurm_time(86400 + 7200) == "1-02:00:00"


def test_bytes_read_match_what_the_fit_reads(tmp_path, monkeypatch):
    """The model's bytes read equal the bytes the fit stage actually pulls through h5py (counted at
    Dataset.__getitem__), on a fixture big enough that the few small metadata reads do not matter."""
    from brainalign.fit import run_fit

    out = tmp_path / "out"
    cfg, shape = _study(out, n_vox=600, chunk=200)
    got = []
    orig = h5py.Dataset.__getitem__

    def counting(self, key):
        val = orig(self, key)
        got.append(np.asarray(val).nbytes)
        return val

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    monkeypatch.setenv("BRAINALIGN_MPI", "off")
    run_fit(cfg, force=True)
    model = sum(cost.counts(s).bytes_read for s in shape)              # the engine fit runs (cost.ENGINE)
    assert sum(got) == pytest.approx(model, rel=0.05)


# ---- plans: estimates, SLURM time/mem, cannot-fit ----------------------------------------------------------

RUNS = (60, 50, 70, 60)
P = 12


def _study(out: Path, n_vox=120, chunk=40, backend="numpy", seed=0):
    """design.h5 / bold.h5 (2 feature sets of P features, 2 layers, 4 runs, 2 subjects) and its config."""
    rng = np.random.default_rng(seed)
    runs = np.concatenate([np.full(n, i, np.int32) for i, n in enumerate(RUNS)])
    n = len(runs)
    eps = [f"s01e{i + 1:02d}a" for i in range(len(RUNS))]
    X = np.stack([_zscore_runs(rng.normal(size=(n, P)), runs) for _ in range(2)])
    side = math.ceil(n_vox ** (1 / 3)) + 1
    mask = np.zeros((side, side, side), bool)
    mask.flat[:n_vox] = True
    bold = {s: _zscore_runs(rng.normal(size=(n, n_vox)), runs).astype(np.float32) for s in ("01", "02")}
    out.mkdir(parents=True, exist_ok=True)
    write_align_outputs(out, runs, eps, {"joint": (X, 0), "no_vision": (X[::-1].copy(), 0)}, bold, mask,
                        np.zeros(n_vox, np.int32), {}, 2, [1], chunk=chunk)
    data = {"name": "cost-test", "output": str(out),
            "data": {"episodes": eps, "bold": {"subjects": ["01", "02"]}},
            "model": {"conditions": ["joint", "no_vision"], "device": "cpu"},
            "fit": {"alphas": [1.0, 100.0], "chunk_voxels": chunk, "feature_sets": ["joint", "no_vision"],
                    "write_maps": False, "backend": backend}}
    cfg = parse_config(data, text=yaml.safe_dump(data, sort_keys=False))
    shape = [FitShape(n=n, p=P, v=n_vox, subjects=2, designs=2, layers=2, K=4, alphas=2, chunk=chunk)]
    return cfg, shape


def _plan(tmp_path, profile: dict, backend="numpy", pipeline=("fit",), cluster="slurm"):
    out = tmp_path / "out"
    cfg, shape = _study(out, backend=backend)
    cfg.pipeline.stages = list(pipeline)
    prof = parse_profile(profile, "p.yaml")
    plan = build_plan(cfg, prof, cluster, config_path=tmp_path / "sub" / "config.yaml", folder=tmp_path / "sub",
                      force=True, cwd=tmp_path, git_commit="abc")
    return cfg, shape, plan


FIT = {"nodes": 1, "tasks_per_node": 2, "cpus_per_task": 1}


def test_fit_estimate_sets_slurm_time_and_mem_unless_the_profile_does(tmp_path, monkeypatch):
    rates = _gemm_only_rates(gflops=1e-4)        # slow enough that the estimate is minutes, not seconds
    monkeypatch.setattr(Rates, "load", classmethod(lambda cls, path=None: rates))
    cfg, shape, plan = _plan(tmp_path, {"defaults": {"time": "00:10:00", "mem": "1G"}, "stages": {"fit": FIT}})
    job = plan.job("fit")
    est = cost.estimate(shape[0], ranks=2, cores_per_rank=1, rates=rates)
    # 1.5 x the estimate + 5 min, whole minutes; memory per node = 1.25 x 2 ranks x the rank's peak
    assert job.time_min() == math.ceil((1.5 * est.wall_s + 300) / 60)
    assert job.resources.mem == f"{math.ceil(1.25 * 2 * est.mem_rank_bytes / 2 ** 30)}G"
    assert job.sized == ["time", "mem"]
    text = plan.describe()
    assert "(from the estimate: time, mem)" in text and "      estimate: " in text
    assert "on 2 rank(s) x 1 core(s)" in text and "read (4 passes over the BOLD)" in text      # once per (feature set, layer)
    # the profile's own stages.fit keys win
    _, _, plan2 = _plan(tmp_path / "b", {"stages": {"fit": {**FIT, "time": "07:00:00", "mem": "3G"}}})
    job2 = plan2.job("fit")
    assert job2.resources.time == "07:00:00" and job2.resources.mem == "3G" and job2.sized == []
    assert " wall on 2 rank(s) x 1 core(s)" in job2.estimate


def test_no_estimate_before_align_and_for_unmodelled_stages(tmp_path):
    from brainalign.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")   # align has not run here
    prof = parse_profile({"stages": {"fit": FIT}}, "p.yaml")
    plan = build_plan(cfg, prof, "slurm", config_path=tmp_path / "c.yaml", folder=tmp_path, force=True,
                      cwd=tmp_path, git_commit="abc")
    fit = plan.job("fit")
    assert fit.estimate.startswith("none: design.h5 and bold.h5 not written yet (align)")
    assert fit.resources.time == "01:00:00" and fit.sized == []     # the built-in default stays
    assert plan.job("stats").estimate.startswith("none: only the fit is modelled")


def test_cannot_fit_memory(tmp_path):
    profile = {"partitions": [{"name": "", "mem": "50M", "cpus": 2}], "stages": {"fit": FIT}}
    _, _, plan = _plan(tmp_path, profile)
    (line,) = plan.job("fit").problems
    assert "GiB per rank x 2 ranks per node" in line and "above the 0.0488 GiB of a node in partition (default)" \
        in line
    assert "CANNOT FIT: fit: needs" in plan.describe()


def test_cannot_fit_cuda_config_without_gpus(tmp_path):
    _, _, plan = _plan(tmp_path, {"stages": {"fit": FIT}}, backend="cupy")
    assert plan.job("fit").problems == ["fit: fit.backend: cupy needs a GPU but the profile gives this job none "
                                        "(stages.fit.gpus: 0)"]
    # on this machine (--cluster local) the machine's own GPUs serve: no line
    _, _, plan = _plan(tmp_path / "local", {"stages": {"fit": FIT}}, backend="cupy", cluster="local")
    assert plan.job("fit").problems == []
    # GPUs asked of a partition described without any
    _, _, plan = _plan(tmp_path / "b", {"partitions": [{"name": "cpu", "gpus": 0}], "partition": "cpu",
                                        "stages": {"fit": {**FIT, "gpus": 1}}}, backend="cupy")
    assert plan.job("fit").problems == ["fit: asks for 1 GPU(s) per node but partition cpu has none "
                                        "(profile partitions)"]


def test_cannot_fit_walltime_and_real_submit_exits_2(tmp_path, monkeypatch, capsys):
    rates = _gemm_only_rates(gflops=1e-6)
    monkeypatch.setattr(Rates, "load", classmethod(lambda cls, path=None: rates))
    profile = {"partitions": [{"name": "short", "max_time": "00:30:00"}], "partition": "short",
               "stages": {"fit": FIT}}
    cfg, shape, plan = _plan(tmp_path, profile)
    (line,) = plan.job("fit").problems
    assert line.startswith("fit: estimated ") and "is beyond partition short's limit 00:30:00" in line
    # a time set by the profile beyond the limit is refused too
    _, _, plan2 = _plan(tmp_path / "b", {**profile, "stages": {"fit": {**FIT, "time": "02:00:00"}}})
    assert "fit: time 02:00:00 is beyond partition short's limit 00:30:00" in plan2.job("fit").problems
    # submitting for real: one line, exit 2, nothing submitted (refused before any scheduler call)
    import brainalign.cluster.submit as sub

    monkeypatch.setattr(sub, "_submit_slurm", lambda plan: pytest.fail("submitted"))
    monkeypatch.setattr(sub, "make_plan", lambda *a, **k: plan)
    with pytest.raises(ConfigError, match=r"^cannot submit: fit: estimated .* beyond partition short's limit"):
        submit_study(cfg, "slurm")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(cfg.text)
    prof_path = tmp_path / "p.yaml"
    prof_path.write_text(yaml.safe_dump(profile))
    monkeypatch.chdir(tmp_path)
    rc = cli_main(["submit", str(cfg_path), "--profile", str(prof_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot submit: fit: estimated" in err[0]
    # the dry run prints the line and exits 0
    rc = cli_main(["submit", str(cfg_path), "--profile", str(prof_path), "--dry-run"])
    assert rc == 0 and "CANNOT FIT: fit: estimated" in capsys.readouterr().out


def test_partition_specs_are_validated():
    with pytest.raises(ConfigError, match=r"partitions\[0\]\.mem: expected memory like 8G"):
        parse_profile({"partitions": [{"name": "x", "mem": "lots"}]}, "p.yaml")
    with pytest.raises(ConfigError, match=r"partitions\[1\]\.name: partition 'x' is described twice"):
        parse_profile({"partitions": [{"name": "x"}, {"name": "x"}]}, "p.yaml")
    assert load_profile("example-gpu").partition_spec("gpu").gpus >= 1


def test_sizing_calculator_prints_the_projection(capsys):
    rc = cost.main(["--n", "1000", "--p", "100", "--v", "50", "--subjects", "2", "--K", "5", "--alphas", "3",
                    "--chunk", "50", "--engine", "fold"])
    out = capsys.readouterr().out
    assert rc == 0 and "n 1,000 TRs x p 100 features x v 50 voxels" in out and "core-hours" in out


def test_gpu_rates_from_a_gpu_check_report():
    """bench/gpu_check.py's measurements replace the assumed GPU rates they cover; the rest stay assumed."""
    assumed = Rates().gpu
    rep = {"started": "2026-12-06T00:00:00+00:00", "sections": {"gemm": {"measurements": {
        "numpy_float32": {"tflops": 0.1}, "torch_float32": {"tflops": 48.0}, "cupy_float32": {"tflops": 51.0},
        "device_copy": {"gb_per_s": 2900.0}, "h2d_pageable": {"gb_per_s": 11.0}}}}}
    got = cost.gpu_rates(rep, assumed)
    assert got.gemm32_gflops == 51_000.0 and got.elem_gbps == 2900.0 and got.h2d_gbps == 11.0
    assert got.gemm64_gflops == assumed.gemm64_gflops and got.eigh_gflops == assumed.eigh_gflops
    assert got.note.startswith("float32 GEMM, device copies, host-to-device copies measured by bench/gpu_check.py")
    assert "float64 GEMM and eigh still ASSUMED" in got.note
    with pytest.raises(ValueError, match="no GPU float32 GEMM measurement"):
        cost.gpu_rates({"sections": {"gemm": {"measurements": {"numpy_float32": {"tflops": 0.1}}}}}, assumed)
