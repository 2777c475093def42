"""`brainalign submit`: plan construction, profiles, sbatch rendering, job tasks, and a real submission
through the single-node SLURM cluster (array extraction, srun MPI fit, afterok chain, checkpoint/requeue).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from brainalign.cli import main as cli_main
from brainalign.config import load_config
from brainalign.cluster.plan import BIN, build_plan
from brainalign.cluster.profile import load_profile, mem_gb, parse_profile, time_minutes
from brainalign.cluster.submit import CheckpointableStageTask, JobFailed, StageFailed, StageTask, submit_study
from brainalign.errors import ConfigError

from slurm_fixture import slurm_cluster  # noqa: F401  (session fixture, reference counted)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"

PROFILE = {
    "name": "t",
    "account": "acct",
    "partition": "cpu",
    "mpi": "pmi2",
    "sbatch_args": ["--mail-type=FAIL"],
    "defaults": {"time": "00:30:00", "mem": "2G", "cpus_per_task": 2},
    "stages": {
        "extract": {"episodes_per_task": 3, "gpus": 1, "partition": "gpu", "array_parallelism": 8,
                    "time": "1-02:00"},
        "fit": {"nodes": 2, "tasks_per_node": 3, "mem": "500M", "sbatch_args": ["--exclusive"]},
    },
}


def write_profile(tmp_path, data, name="p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def demo_plan(tmp_path, profile=PROFILE, cluster="slurm", force=False, **over):
    cfg = load_config(DEMO, over or None)
    prof = parse_profile(profile, "p.yaml")
    return cfg, build_plan(cfg, prof, cluster, config_path=tmp_path / "sub" / "config.yaml",
                           folder=tmp_path / "sub", force=force, cwd=tmp_path, git_commit="abc123")


# ---- plan --------------------------------------------------------------------------------------------

def test_plan_jobs_array_mpi_and_afterok_chain(tmp_path):
    cfg, plan = demo_plan(tmp_path)
    names = [j.name for j in plan.jobs]
    assert names == ["simulate", "extract", "align", "fit", "stats", "mlm", "report"]
    # each job waits for the jobs whose outputs it reads (align: the BOLD simulate wrote and the features;
    # mlm: only the stimuli and checkpoint simulate wrote, so not for stats; report: fit, stats and mlm)
    assert [j.after for j in plan.jobs] == [[], ["simulate"], ["simulate", "extract"], ["simulate", "align"],
                                            ["simulate", "align", "fit"], ["simulate"],
                                            ["simulate", "fit", "stats", "mlm"]]
    conf = str(tmp_path / "sub" / "config.yaml")
    prefix = [sys.executable, str(BIN)]

    ex = plan.job("extract")
    eps = cfg.data.episodes                       # 4 episodes, 3 per task -> 2 array tasks
    assert len(ex.tasks) == -(-len(eps) // 3) == 2 and ex.is_array
    assert ex.episodes == [eps[:3], eps[3:]]
    assert ex.tasks[0] == [prefix + ["extract", conf, "--episodes", *eps[:3]]]
    assert ex.tasks[1] == [prefix + ["extract", conf, "--episodes", eps[3]]]
    assert ex.gpus == 1 and ex.resources.partition == "gpu" and ex.array_parallelism == 2
    assert ex.time_min() == 26 * 60

    al = plan.job("align")                        # assemble features.h5 (never forced), then align
    assert al.tasks == [[prefix + ["extract", conf], prefix + ["align", conf]]]

    fit = plan.job("fit")
    assert (fit.ranks, fit.nodes, fit.mpi, fit.launcher) == (6, 2, "pmi2", "srun")
    assert fit.tasks == [[prefix + ["fit", conf]]]
    assert fit.resources.mem == "500M" and fit.resources.cpus_per_task == 2   # stage over defaults
    assert fit.resources.sbatch_args == ["--mail-type=FAIL", "--exclusive"]
    assert fit.sbatch_options() == {"mail-type": "FAIL", "exclusive": True}
    assert fit.env == {"OMP_NUM_THREADS": "2"}
    for j in plan.jobs:
        assert j.resources.partition == ("gpu" if j.name == "extract" else "cpu")
    assert plan.job("stats").tasks == [[prefix + ["stats", conf]]]
    assert any("model.device is cpu" in n for n in plan.notes)   # GPUs asked, config on CPU

    d = json.loads(plan.to_json())
    assert [j["name"] for j in d["jobs"]] == names
    assert d["jobs"][1]["commands"][0] == [shlex.join(prefix + ["extract", conf, "--episodes", *eps[:3]])]


def test_plan_force_and_pipeline_without_simulate(tmp_path):
    _, plan = demo_plan(tmp_path, force=True, pipeline=["extract", "align", "fit"])
    assert [j.name for j in plan.jobs] == ["extract", "align", "fit"]
    assert plan.jobs[0].after == []
    assert all(t[0][-1] == "--force" for t in plan.job("extract").tasks)
    extract_cmd, align_cmd = plan.job("align").tasks[0]
    assert "--force" not in extract_cmd and align_cmd[-1] == "--force"   # re-assemble, never re-extract


def test_plan_resume_skips_complete_extraction_shards(tmp_path, monkeypatch):
    import brainalign.extract as extract

    cfg = load_config(DEMO, {"pipeline": ["extract", "align"]})
    eps = cfg.data.episodes
    seen = []

    def status(c, ep):
        seen.append((Path.cwd(), ep))
        return "complete" if ep in eps[:3] else "missing"

    monkeypatch.setattr(extract, "shard_status", status)
    prof = parse_profile({"stages": {"extract": {"episodes_per_task": 2}}}, "p.yaml")
    plan = build_plan(cfg, prof, "slurm", config_path=tmp_path / "c.yaml", folder=tmp_path, cwd=tmp_path)
    assert plan.job("extract").episodes == [[eps[3]]]
    assert seen == [(tmp_path, e) for e in eps] and Path.cwd() != tmp_path   # looked up in the job's cwd
    assert any("3 of 4 episode shards are current" in n for n in plan.notes)
    monkeypatch.setattr(extract, "shard_status", lambda c, ep: "complete")
    plan = build_plan(cfg, prof, "slurm", config_path=tmp_path / "c.yaml", folder=tmp_path, cwd=tmp_path)
    assert [j.name for j in plan.jobs] == ["align"] and plan.jobs[0].after == []
    assert [c[-2] for c in plan.jobs[0].tasks[0]] == ["extract", "align"]   # features.h5 still assembled
    plan = build_plan(cfg, prof, "slurm", config_path=tmp_path / "c.yaml", folder=tmp_path, cwd=tmp_path,
                      force=True)
    assert len(plan.job("extract").tasks) == 2                       # --force redoes every shard


def test_plan_container_wrapping(tmp_path):
    prof = dict(PROFILE, container={"image": "/img/ba.sif", "binds": ["/datasets:/datasets:ro"],
                                    "exec_args": ["--cleanenv"]})
    cfg, plan = demo_plan(tmp_path, prof)
    conf = str(tmp_path / "sub" / "config.yaml")
    for j in plan.jobs:
        for task in j.tasks:
            for c in task:
                assert c[:2] == ["apptainer", "exec"]
                i = c.index("/img/ba.sif")
                assert c[i + 1:i + 3] == ["python3", str(BIN)] and conf in c[i + 3:]
                binds = [c[k + 1] for k, a in enumerate(c[:i]) if a == "--bind"]
                assert str(ROOT) in binds and "/datasets:/datasets:ro" in binds
                assert str(tmp_path) in binds       # the working dir (data root and output are under it)
                assert "--cleanenv" in c[:i] and "BRAINALIGN_GIT_COMMIT=abc123" in c[:i]
                assert ("--nv" in c[:i]) == (j.name == "extract")   # GPUs only for extraction
    text = plan.describe()
    assert "BA_GPU   = apptainer exec --nv" in text and "$ $BA_GPU extract $CONFIG --episodes" in text


def test_plan_local_cluster_runs_fit_under_mpiexec(tmp_path):
    _, plan = demo_plan(tmp_path, cluster="local")
    fit = plan.job("fit")
    assert fit.launcher == "mpiexec" and fit.ranks == 3 and fit.nodes == 1   # one machine: tasks_per_node
    cmd = fit.tasks[0][0]
    assert Path(cmd[0]).name == "mpiexec" and cmd[1:3] == ["-n", "3"] and cmd[-2:][0] == "fit"
    assert any("1 node" in n for n in plan.notes)


def test_dry_run_cli_prints_plan(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli_main(["submit", str(DEMO), "--dry-run", "--profile", str(write_profile(tmp_path, PROFILE))])
    out = capsys.readouterr().out
    assert rc == 0
    assert "[2] extract  array of 2 tasks (3 episodes each, at most 2 at once)" in out
    assert "[4] fit      MPI job: 6 ranks = 2 node(s) x 3 tasks (srun --mpi=pmi2)" in out
    assert "after: simulate (afterok), align (afterok)\n" in out and "gpus/node 1  partition gpu" in out
    assert "each rank: $ $BA fit $CONFIG" in out
    assert not (tmp_path / "results").exists()     # a dry run writes nothing


# ---- profiles -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, key", [
    ({"stages": {"fit": {"task_per_node": 2}}}, "stages.fit.task_per_node: unknown key"),
    ({"stages": {"fit": {"tasks_per_node": "two"}}}, "stages.fit.tasks_per_node: expected an integer, got 'two'"),
    ({"partitoin": "x"}, "partitoin: unknown key"),
    ({"defaults": {"time": "soon"}}, "defaults.time: expected a SLURM time"),
    ({"stages": {"extract": {"mem": "lots"}}}, "stages.extract.mem: expected memory like 8G"),
    ({"sbatch_args": ["exclusive"]}, "sbatch_args[0]: expected a long sbatch option"),
    ({"mpi": "openmpi"}, "mpi: expected one of 'pmi2', 'pmix', 'none'"),
    ({"stages": {"extract": {"episodes_per_task": 0}}}, "stages.extract.episodes_per_task: must be at least 1"),
    ({"container": {"binds": ["a:b:c:d"]}}, "container.binds[0]: expected SRC[:DST[:OPTS]]"),
])
def test_bad_profile_is_one_line_naming_the_key(tmp_path, data, key):
    path = write_profile(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_profile(str(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"profile {path}: ") and key in msg


def test_bad_profile_cli_exit_2(tmp_path, capsys):
    path = write_profile(tmp_path, {"stages": {"fit": {"task_per_node": 2}}})
    rc = cli_main(["submit", str(DEMO), "--dry-run", "--profile", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "stages.fit.task_per_node: unknown key" in err[0]


def test_profile_lookup_and_shipped_profiles():
    assert load_profile(None).name == "local" and load_profile("example-gpu").container.image
    with pytest.raises(ConfigError, match="cluster profile not found: nope .*example-gpu"):
        load_profile("nope")


def test_time_and_mem_parsing():
    assert [time_minutes(t) for t in ("90", "01:30:00", "10:30", "1-00", "2-01:00:30")] == [90, 90, 11, 1440, 2941]
    assert mem_gb("8G") == 8 and mem_gb("512M") == 0.5 and mem_gb("1T") == 1024 and mem_gb("2048") == 2


# ---- submitit / sbatch rendering ----------------------------------------------------------------------

def test_submitit_sbatch_parameters(tmp_path, monkeypatch):
    import submitit
    from submitit.slurm.slurm import _make_sbatch_string

    from brainalign.cluster.submit import _executor

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # no srun needed
    _, plan = demo_plan(tmp_path)
    fit = _make_sbatch_string(command="CMD", folder=tmp_path, **_executor(plan, plan.job("fit"), "afterok:41").parameters)
    for line in ("#SBATCH --dependency=afterok:41", "#SBATCH --kill-on-invalid-dep=yes", "#SBATCH --nodes=2",
                 "#SBATCH --ntasks-per-node=3", "#SBATCH --mem=500M", "#SBATCH --account=acct",
                 "#SBATCH --partition=cpu", "#SBATCH --exclusive", "#SBATCH --requeue", "#SBATCH --time=30",
                 "#SBATCH --mail-type=FAIL", "#SBATCH --cpus-per-task=2"):
        assert line in fit.splitlines(), line
    assert "--mpi=pmi2 CMD" in fit
    ex = _executor(plan, plan.job("extract"), "afterok:40")
    ex.parameters["map_count"] = 2
    arr = _make_sbatch_string(command="CMD", folder=tmp_path, **ex.parameters)
    assert "#SBATCH --array=0-1%2" in arr and "#SBATCH --gpus-per-node=1" in arr
    assert "#SBATCH --partition=gpu" in arr and "#SBATCH --time=1560" in arr


def test_emit_sbatch_scripts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(DEMO)
    out = tmp_path / "sb"
    submit_study(cfg, cluster="slurm", profile=str(write_profile(tmp_path, PROFILE)), emit_sbatch=str(out))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["01-simulate.sbatch", "02-extract.sbatch", "03-align.sbatch", "04-fit.sbatch",
                     "05-stats.sbatch", "06-mlm.sbatch", "07-report.sbatch", "config.yaml", "logs", "plan.json",
                     "plan.txt",
                     "submit.sh"]
    assert (out / "config.yaml").read_text() == cfg.text
    for p in out.glob("*.s*"):
        assert subprocess.run(["bash", "-n", str(p)], capture_output=True).returncode == 0, p
        assert not re.search(r"@[A-Z_]+@", p.read_text()), p     # every template placeholder filled
    ex = (out / "02-extract.sbatch").read_text()
    assert "#SBATCH --array=0-1%2" in ex and "#SBATCH --signal=B:USR2@120" in ex and "#SBATCH --requeue" in ex
    assert f"extract {out / 'config.yaml'} --episodes {' '.join(cfg.data.episodes[:3])}" in ex
    assert "    1)  # s01e02b" in ex
    fit = (out / "04-fit.sbatch").read_text()
    assert f"step srun --mpi=pmi2 -n 6 --ntasks-per-node 3 {sys.executable} {BIN} fit" in fit
    sub = (out / "submit.sh").read_text()
    assert 'extract=$(submit extract 02-extract.sbatch "$simulate")' in sub
    assert 'mlm=$(submit mlm 06-mlm.sbatch "$simulate")' in sub
    assert 'report=$(submit report 07-report.sbatch "$simulate:$fit:$stats:$mlm")' in sub


# ---- job tasks -----------------------------------------------------------------------------------------

def test_stage_task_runs_commands_in_order_and_fails_loudly(tmp_path, monkeypatch):
    log = tmp_path / "log.txt"
    py = [sys.executable, "-c"]
    write = "import os,sys; open(sys.argv[1],'a').write(os.environ['OMP_NUM_THREADS'] + ' ' + sys.argv[2] + '\\n')"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    t = StageTask("j", [py + [write, str(log), "a"], py + [write, str(log), "b"]], str(tmp_path),
                  {"OMP_NUM_THREADS": "3"})
    res = t()
    assert log.read_text() == "3 a\n3 b\n" and res["job"] == "j"
    monkeypatch.setenv("OMP_NUM_THREADS", "7")          # the user's own setting wins
    t()
    assert log.read_text().splitlines()[-1] == "7 b"
    bad = StageTask("k", [py + ["import sys; sys.exit(3)", "align"], py + [write, str(log), "never"]],
                    str(tmp_path))
    with pytest.raises(StageFailed, match=r"job k: `brainalign align` exited with status 3"):
        bad()
    assert "never" not in log.read_text()
    killed = StageTask("m", [py + ["import os, signal; os.kill(os.getpid(), signal.SIGTERM)", "fit"]], str(tmp_path))
    killed.signal_grace_s = 0.2          # (SLURM would requeue or kill the job within the grace period)
    with pytest.raises(StageFailed, match=r"`brainalign fit` exited with status -15 \(killed by SIGTERM\)"):
        killed()


def test_checkpoint_resubmits_same_commands_without_force(tmp_path):
    t = CheckpointableStageTask("fit", [["x", "fit", "c.yaml", "--force"]], str(tmp_path), {"A": "1"})
    d = t.checkpoint()
    again = d.function
    assert isinstance(again, CheckpointableStageTask)
    assert again.commands == [["x", "fit", "c.yaml"]] and again.cwd == str(tmp_path) and again.env == {"A": "1"}


# ---- running: local executor and the real SLURM cluster -----------------------------------------------

SMALL = {
    "name": "small",
    "pipeline": ["simulate", "extract", "align", "fit", "stats", "report"],
    "data": {"episodes": ["s01e01a", "s01e01b", "s01e02a"], "bold": {"subjects": ["01", "02"]}},
    "simulate": {"trs_per_run": 30, "grid": [8, 8, 6], "roi_voxels": 10, "n_null_rois": 1},
    "model": {"conditions": ["joint", "no_vision", "no_language"], "tiny": {"hidden": 16, "layers": 2, "heads": 2}},
    "align": {"delays": [1, 2], "trim": 1,
              "residuals": [{"name": "crossmodal", "target": "joint", "predictors": ["no_vision", "no_language"]}]},
    "fit": {"alphas": [1.0, 100.0, 10000.0]},
    "stats": {"contrasts": [{"name": "vision_gain", "a": "joint", "b": "no_vision"},
                            {"name": "crossmodal_vs_0", "a": "crossmodal"}]},
}


def small_config(tmp_path, tag, **over) -> Path:
    data = json.loads(json.dumps(SMALL))
    data["output"] = str(tmp_path / tag / "results")
    data["data"]["root"] = str(tmp_path / tag / "data")
    data.update(over)
    path = tmp_path / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_local_cluster_failure_reports_job_and_log(tmp_path, monkeypatch, capsys):
    """align without features: the local executor's job fails; the error names it and shows its stderr."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(small_config(tmp_path, "fail", pipeline=["align", "fit"]))
    with pytest.raises(JobFailed, match=r"job align \(\d+\) FAILED; log: .*_log\.err") as e:
        submit_study(cfg, cluster="local", profile="local")
    assert e.value.exit_code == 1
    err = capsys.readouterr().err
    assert "features file" in err and "not found" in err          # the stage's own one-line error, from the log
    rec = json.loads(next((tmp_path / "fail" / "results" / "submit").glob("*/jobs.json")).read_text())
    assert [(j["name"], j["state"]) for j in rec["jobs"]] == [("align", "FAILED")]


def _env(cluster):
    return {**os.environ, **cluster.env, "BRAINALIGN_PROGRESS": "0"}


def test_slurm_failure_cancels_dependents(slurm_cluster, tmp_path):  # noqa: F811
    cfg = small_config(tmp_path, "sfail", pipeline=["align", "fit", "stats"])
    p = subprocess.run([sys.executable, str(BIN), "submit", str(cfg), "--cluster", "slurm", "--wait"],
                       cwd=tmp_path, env=_env(slurm_cluster), capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("brainalign submit: error: job align (") and "FAILED; log:" in last
    assert "features file" in p.stderr                         # the failing stage's stderr tail
    rec = json.loads(next((tmp_path / "sfail" / "results" / "submit").glob("*/jobs.json")).read_text())
    assert [(j["name"], j["state"]) for j in rec["jobs"]] == [("align", "FAILED"), ("fit", "CANCELLED"),
                                                              ("stats", "CANCELLED")]
    ids = ",".join(j["job_id"] for j in rec["jobs"])
    q = slurm_cluster.run(["squeue", "-h", "-t", "PD,R", "-j", ids], check=False)
    assert q.stdout.strip() == ""                              # nothing left queued


def test_slurm_checkpoint_requeue_resumes(slurm_cluster, tmp_path, monkeypatch):  # noqa: F811
    """A job that reaches its time limit (submitit job._interrupt(timeout=True): USR2) is requeued by our
    checkpoint and its command runs again, without --force, to completion. (The preemption variant,
    SIGTERM then USR2, also works but races here: proctrack/linuxproc delivers the SIGTERM to every process
    of the step, sometimes to submitit's own `scontrol requeue` child.)"""
    import submitit

    for k, v in slurm_cluster.env.items():
        monkeypatch.setenv(k, v)
    marker = tmp_path / "runs.json"
    script = tmp_path / "resumable.py"
    script.write_text(
        "import json, os, sys, time\n"
        "m = sys.argv[1]\n"
        "runs = json.load(open(m)) if os.path.exists(m) else []\n"
        "runs.append({'argv': sys.argv[2:], 'restart': os.environ.get('SLURM_RESTART_COUNT', '0')})\n"
        "json.dump(runs, open(m, 'w'))\n"
        "time.sleep(120 if len(runs) == 1 else 0)\n")
    ex = submitit.SlurmExecutor(folder=tmp_path / "logs", max_num_timeout=2)
    ex.update_parameters(time=5, signal_delay_s=30, additional_parameters={"requeue": True, "mem": "100M"})
    job = ex.submit(CheckpointableStageTask("t", [[sys.executable, str(script), str(marker), "--force"]],
                                            str(tmp_path)))
    t0 = time.time()
    while not marker.exists() and time.time() - t0 < 60:
        time.sleep(0.3)
    assert marker.exists(), job.stderr()
    time.sleep(0.5)
    job._interrupt(timeout=True)
    res = job.result()
    runs = json.loads(marker.read_text())
    assert [r["argv"] for r in runs] == [["--force"], []]
    assert [r["restart"] for r in runs] == ["0", "1"] and res["slurm_job_id"] == job.job_id


def test_slurm_submit_matches_local_run(slurm_cluster, tmp_path):  # noqa: F811
    """The small study through `brainalign submit --cluster slurm --wait` (array extraction, srun MPI fit
    with 2 ranks, afterok chain) gives the scores of a local `brainalign run`, with SLURM ids in provenance."""
    env = _env(slurm_cluster)
    ref_cfg = small_config(tmp_path, "ref", pipeline=["simulate", "extract", "align", "fit"])
    # The SLURM jobs run with OMP_NUM_THREADS = their cpus_per_task (1 on the local profile); torch's CPU
    # kernels round differently with another thread count (~1e-5 in the simulated BOLD), so the local
    # reference runs with the same single thread. The ridge fit itself is thread-count independent.
    ref = subprocess.Popen([sys.executable, str(BIN), "run", str(ref_cfg)], cwd=tmp_path,
                           env={**env, "OMP_NUM_THREADS": "1"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cfg = small_config(tmp_path, "slurm")
    t0 = time.time()
    p = subprocess.run([sys.executable, str(BIN), "submit", str(cfg), "--cluster", "slurm", "--wait",
                        "--profile", "local"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    wall = time.time() - t0
    ref_out = ref.communicate(timeout=400)[0]
    assert p.returncode == 0, p.stdout + p.stderr[-4000:]
    assert ref.returncode == 0, ref_out[-4000:]
    print(f"submit --wait: {wall:.0f} s")
    assert "all 6 jobs COMPLETED" in p.stdout and "report: " in p.stdout

    out = tmp_path / "slurm" / "results"
    rec = json.loads(next((out / "submit").glob("*/jobs.json")).read_text())
    ids = {j["name"]: j["job_id"] for j in rec["jobs"]}
    assert [j["state"] for j in rec["jobs"]] == ["COMPLETED"] * 6 and len(rec["jobs"][1]["tasks"]) == 3

    with h5py.File(out / "scores.h5", "r") as a, h5py.File(tmp_path / "ref" / "results" / "scores.h5", "r") as b:
        ra, rb = a["r"][()], b["r"][()]
        assert ra.shape == rb.shape and np.isfinite(ra).mean() > 0.9
        np.testing.assert_array_equal(np.isnan(ra), np.isnan(rb))
        assert np.nanmax(np.abs(ra - rb)) < 1e-6
        np.testing.assert_array_equal(a["alpha"][()], b["alpha"][()])
        slurm = json.loads(a.attrs["slurm"])
        assert slurm["slurm_job_id"] == ids["fit"] and slurm["slurm_ntasks"] == "2"
        assert a.attrs["mpi_size"] == "2"
        assert json.loads(b.attrs["slurm"]) == {}
    shard = out / "features" / f"{SMALL['data']['episodes'][2]}.h5"
    with h5py.File(shard, "r") as f:
        s = json.loads(f.attrs["slurm"])
        assert s["slurm_array_job_id"] == ids["extract"] and s["slurm_array_task_id"] == "2"
    for name in ("stats.h5",):
        with h5py.File(out / name, "r") as f:
            assert json.loads(f.attrs["slurm"])["slurm_job_id"] == ids["stats"]
    assert (out / "report" / "index.html").is_file()


def test_debug_cluster_runs_plan_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(small_config(tmp_path, "dbg", pipeline=["simulate"]))
    submit_study(cfg, cluster="debug", profile="local")
    out = capsys.readouterr().out
    assert "simulate  COMPLETED" in out
    assert len(list((tmp_path / "dbg" / "data" / "stimuli").glob("*.mp4"))) == 3
    rec = json.loads(next((tmp_path / "dbg" / "results" / "submit").glob("*/jobs.json")).read_text())
    assert [(j["name"], j["state"]) for j in rec["jobs"]] == [("simulate", "COMPLETED")]


def test_sbatch_template_requeues_on_usr2(slurm_cluster, tmp_path):  # noqa: F811
    """The emitted job script traps USR2 (sent with --signal=B:USR2@S before the time limit), requeues
    itself and runs its command again."""
    from brainalign.cluster.sbatch import render_job

    cfg = load_config(small_config(tmp_path, "trap", pipeline=["simulate"]))
    plan = build_plan(cfg, load_profile("local"), "slurm", config_path=tmp_path / "c.yaml", folder=tmp_path / "sb",
                      cwd=tmp_path)
    job = plan.job("simulate")
    marker = tmp_path / "runs.txt"
    job.tasks = [[["bash", "-c", f'echo "run ${{SLURM_RESTART_COUNT:-0}}" >> {marker}; '
                   f'[ "${{SLURM_RESTART_COUNT:-0}}" -ge 1 ] || sleep 100']]]
    script = tmp_path / "job.sbatch"
    script.write_text(render_job(plan, job))
    (tmp_path / "sb" / "logs").mkdir(parents=True)
    jid = slurm_cluster.run(["sbatch", "--parsable", str(script)]).stdout.strip()
    t0 = time.time()
    while not marker.exists() and time.time() - t0 < 60:
        time.sleep(0.3)
    slurm_cluster.run(["scancel", "--batch", "--signal=USR2", jid])
    while marker.read_text().count("run") < 2 and time.time() - t0 < 90:
        time.sleep(0.5)
    assert marker.read_text() == "run 0\nrun 1\n"
    assert f"brainalign: requeued {jid}" in (tmp_path / "sb" / "logs" / f"simulate_{jid}.err").read_text()


def test_preflight_names_missing_image_and_sbatch(tmp_path, monkeypatch):
    from brainalign.errors import BrainAlignError

    monkeypatch.chdir(tmp_path)
    cfg = load_config(small_config(tmp_path, "pre", pipeline=["simulate"]))
    prof = write_profile(tmp_path, {"container": {"image": str(tmp_path / "missing.sif")}})
    with pytest.raises(ConfigError, match=rf"^profile {prof}: container.image: not found: .*missing.sif$"):
        submit_study(cfg, cluster="local", profile=str(prof))
    monkeypatch.setenv("PATH", str(tmp_path))          # no SLURM client commands
    with pytest.raises(BrainAlignError, match=r"--cluster slurm: `sbatch` not found on PATH"):
        submit_study(cfg, cluster="slurm", profile="local")
    assert not (tmp_path / "pre" / "results").exists()  # nothing written before the checks pass
