"""The single-node SLURM cluster of slurm/local/: srun, sbatch, arrays, submitit, MPI over srun.

Real daemons (munged, slurmctld, slurmd) started by slurm/local/start.sh; skipped when not root
(fails under CI=true instead). About 30 s after the one-time apt install (~11 s).
"""
from __future__ import annotations

import operator
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_fixture import START, STOP, slurm_cluster  # noqa: F401  (fixture, reference counted)


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):  # noqa: F811
    """The cluster with SLURM_CONF/PATH in os.environ (submitit calls sbatch through it)."""
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    return slurm_cluster


def _pids(cluster) -> dict[str, int]:
    return {name: int((cluster.dir / "run" / f"{name}.pid").read_text()) for name in ("munged", "slurmctld", "slurmd")}


def _procs_using(d: Path) -> list[int]:
    """Pids of processes whose command line or environment mentions directory d."""
    key = str(d).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if key in (proc / "cmdline").read_bytes() or key in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_node_idle_and_start_is_idempotent(slurm_cluster):  # noqa: F811
    out = slurm_cluster.run(["sinfo", "-h", "-N", "-o", "%N %T %c"]).stdout.split()
    assert out[0] == "localhost" and out[1] in ("idle", "mixed", "allocated")
    assert int(out[2]) == os.cpu_count()
    before = _pids(slurm_cluster)
    again = subprocess.run(["bash", str(START), str(slurm_cluster.dir)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"export SLURM_CONF='{slurm_cluster.conf}'"
    assert "already running" in again.stderr
    assert _pids(slurm_cluster) == before  # nothing restarted
    env_sh = (slurm_cluster.dir / "env.sh").read_text()
    assert f"export SLURM_CONF='{slurm_cluster.conf}'" in env_sh


def test_srun_two_tasks(slurm_cluster):  # noqa: F811
    out = slurm_cluster.run(["srun", "-n", "2", "bash", "-c", 'echo "$SLURM_PROCID $(hostname)"']).stdout
    lines = sorted(out.split("\n")[:-1])
    assert lines == [f"0 {socket.gethostname()}", f"1 {socket.gethostname()}"]


def test_sbatch_wrap_waits_and_reports_exit_code(slurm_cluster, tmp_path):  # noqa: F811
    ok = slurm_cluster.run(["sbatch", "--wait", "-o", str(tmp_path / "ok.out"), "--wrap", "echo job $SLURM_JOB_ID"])
    job_id = ok.stdout.split()[-1]
    assert (tmp_path / "ok.out").read_text() == f"job {job_id}\n"
    bad = slurm_cluster.run(["sbatch", "--wait", "-o", str(tmp_path / "bad.out"), "--wrap", "exit 3"], check=False)
    assert bad.returncode == 3


def test_sbatch_array(slurm_cluster, tmp_path):  # noqa: F811
    slurm_cluster.run(["sbatch", "--wait", "--array=0-1", "-o", str(tmp_path / "%a.out"),
                       "--wrap", "echo task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.out", "1.out"]
    assert (tmp_path / "0.out").read_text() == "task 0 of 2\n"
    assert (tmp_path / "1.out").read_text() == "task 1 of 2\n"


def test_mpi_over_srun_pmi2(slurm_cluster):  # noqa: F811
    code = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
            "print(c.Get_rank(), c.Get_size(), c.allreduce(c.Get_rank() + 1), flush=True)")
    out = slurm_cluster.run(["srun", "-n", "2", "--mpi=pmi2", sys.executable, "-c", code], timeout=120).stdout
    rows = sorted(tuple(map(int, line.split())) for line in out.split("\n") if line.strip())
    assert rows == [(0, 2, 3), (1, 2, 3)]  # two ranks of one world, and they talked (1 + 2)


def test_submitit_submit_and_map_array(slurm_env, tmp_path):
    submitit = pytest.importorskip("submitit")
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    assert ex.cluster == "slurm"
    ex.update_parameters(timeout_min=5, cpus_per_task=1)
    job = ex.submit(os.getenv, "SLURM_JOB_ID")  # os.getenv: pickled by reference, runs in the job
    assert job.result() == job.job_id  # ran inside its own SLURM job
    jobs = ex.map_array(operator.mul, [2, 3], [5, 7])
    assert [j.result() for j in jobs] == [10, 21]
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1  # one array job


class _CountStarts:
    """Checkpointable job: counts its starts in a file; the first start waits to be preempted."""

    def __call__(self, counter: str) -> tuple[int, str]:
        path = Path(counter)
        starts = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(starts))
        if starts == 1:
            time.sleep(300)
        return starts, os.environ.get("SLURM_RESTART_COUNT", "")

    def checkpoint(self, counter: str):
        import submitit

        return submitit.helpers.DelayedSubmission(self, counter)


def test_submitit_checkpoint_requeue(slurm_env, tmp_path):
    submitit = pytest.importorskip("submitit")
    cloudpickle = pytest.importorskip("cloudpickle")
    # The job's interpreter cannot import this test module: pickle its classes by value.
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
        ex.update_parameters(timeout_min=5, cpus_per_task=1)
        counter = tmp_path / "starts"
        job = ex.submit(_CountStarts(), str(counter))
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    deadline = time.monotonic() + 60
    while not counter.exists():
        assert time.monotonic() < deadline, "the checkpointable job never started"
        time.sleep(0.2)
    time.sleep(1.0)  # let the job's signal handlers settle
    job._interrupt()  # SIGUSR2 as on preemption: checkpoint + requeue (slurm.conf cred_expire=10 s)
    assert job.result() == (2, "1")  # second start, after one requeue


def test_second_cluster_and_stop(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    d = Path("/tmp") / f"brainalign-slurm-stoptest-{os.getpid()}"
    d.mkdir(mode=0o755)
    try:
        up = subprocess.run(["bash", str(START), str(d)], capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr
        env = {**os.environ, "SLURM_CONF": str(d / "slurm.conf")}
        assert subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip() == "idle"
        pids = [int((d / "run" / f"{n}.pid").read_text()) for n in ("munged", "slurmctld", "slurmd")]
        assert set(pids) <= set(_procs_using(d))  # (+ slurmctld's helper slurmscriptd)
    finally:
        down = subprocess.run(["bash", str(STOP), str(d)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not d.exists()
    assert _procs_using(d) == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_stop_refuses_foreign_directory(tmp_path):
    (tmp_path / "precious").write_text("x")
    proc = subprocess.run(["bash", str(STOP), str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "no .brainalign-slurm marker" in proc.stderr
    assert (tmp_path / "precious").exists()


def test_start_rejects_untraversable_dir(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    target = locked / "cluster"
    proc = subprocess.run(["bash", str(START), str(target)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"directory {locked} (mode 700) is not world-executable" in proc.stderr
    assert not (target / "run" / "munged.pid").exists()


def test_failed_start_prints_logs_and_stops_its_daemons():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    d = Path("/tmp") / f"brainalign-slurm-failtest-{os.getpid()}"
    d.mkdir(mode=0o755)
    try:
        env = {**os.environ, "SLURM_LOCAL_WAIT_S": "0"}  # no time to become idle: a bring-up failure
        proc = subprocess.run(["bash", str(START), str(d)], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 1
        assert proc.stdout == ""  # nothing to `eval`
        assert f"----- {d}/log/slurmctld.log" in proc.stderr and f"----- {d}/log/slurmd.log" in proc.stderr
        assert "error: node localhost not idle after 0 s" in proc.stderr
        assert (d / "log" / "slurmctld.log").exists()  # DIR kept for the post-mortem
        assert not list((d / "run").glob("*.pid"))
        assert _procs_using(d) == []  # every daemon it started was stopped
    finally:
        subprocess.run(["bash", str(STOP), str(d)], capture_output=True, timeout=120)
    assert not d.exists()


def test_fixture_skips_without_root_but_fails_under_ci(monkeypatch):
    import slurm_fixture

    monkeypatch.setattr(slurm_fixture.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        slurm_fixture._start()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: the local SLURM cluster must run here, but .*needs root"):
        slurm_fixture._start()
