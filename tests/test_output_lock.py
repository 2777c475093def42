"""One run per output folder: a second run/stage on the same output exits 2 in one line naming the holder
(host, pid, start); `status` says a run is in progress; dead holders (same host) and holders without a
heartbeat (another host) are stale; the jobs of one submission (one token) are one holder."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from brainalign.cli import main
from brainalign.pipeline.lock import LOCK_DIR, OutputLock, OutputLocked, holders
from test_mpi import _env, _setup

HOLD = """
import sys, time
sys.path.insert(0, {toolkit!r})
from brainalign.pipeline.lock import OutputLock
OutputLock(sys.argv[1], "fit").acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process that holds ``tmp_path/out``'s lock (env of the test, plus ``token``)."""
    procs = []

    def start(out, token=None):
        script = tmp_path / "hold.py"
        script.write_text(HOLD.format(toolkit=str(__import__("brainalign").__path__[0].rsplit("/", 1)[0])))
        env = dict(os.environ)
        env.pop("BRAINALIGN_LOCK_TOKEN", None)
        if token:
            env["BRAINALIGN_LOCK_TOKEN"] = token
        p = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True, env=env)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_second_run_is_refused_in_one_line_and_status_says_so(tmp_path, holder, capsys):
    out, cfg = _setup(tmp_path, "locked")
    p = holder(out)
    assert main(["fit", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.fullmatch(rf"brainalign fit: error: {re.escape(str(out))} is in use by `brainalign fit` on host "
                        rf"{re.escape(socket.gethostname())}, pid {p.pid}, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d "
                        r"\(one run per output folder at a time\)", err[0]), err[0]
    assert not (out / "scores.h5").exists() and not (out / "fit_shards").exists()
    assert main(["status", str(cfg), "--stages", "fit"]) == 0
    assert f"a run is in progress on this output: `brainalign fit` on host {socket.gethostname()}, pid {p.pid}" \
        in capsys.readouterr().out
    # the holder dies without cleaning up (kill -9): its entry is stale and the next run goes ahead
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert holders(out) == []
    assert main(["fit", str(cfg)]) == 0
    assert (out / "scores.h5").exists()
    assert not (out / LOCK_DIR).exists()                       # released at the end


def test_two_real_runs_at_once(tmp_path):
    """The campaign's case: two `fit` of one config at the same time; the second stops at once, in one line."""
    out, cfg = _setup(tmp_path, "two")
    argv = [sys.executable, str(cfg.parent / "driver.py"), "fit", str(cfg)]
    first = subprocess.Popen(argv, env=_env(BRAINALIGN_TEST_SLOW_UNIT=0.05), stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True)
    try:
        t0 = time.monotonic()
        while not holders(out) and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        second = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"brainalign fit: error: {out} is in use by `brainalign fit` on host {socket.gethostname()}, pid "
            f"{first.pid}, since " + second.stderr.split(", since ")[1].strip()]
        assert first.wait(timeout=120) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_jobs_of_one_submission_share_the_lock(tmp_path, holder, monkeypatch):
    out = tmp_path / "out"
    holder(out, token="submit-abc")
    monkeypatch.setenv("BRAINALIGN_LOCK_TOKEN", "submit-abc")
    with OutputLock(out, "extract"):                           # an array task beside its sibling
        assert len(holders(out)) == 2
    monkeypatch.setenv("BRAINALIGN_LOCK_TOKEN", "submit-other")
    with pytest.raises(OutputLocked, match="is in use by `brainalign fit`"):
        OutputLock(out, "extract").acquire()


def _entry(out, host, pid, age_s, **kw):
    d = out / LOCK_DIR
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{host}-{pid}.json"
    p.write_text(json.dumps(dict({"host": host, "pid": pid, "verb": "run", "started": time.time() - age_s}, **kw)))
    os.utime(p, (time.time() - age_s, time.time() - age_s))
    return p


def test_stale_entries(tmp_path, caplog):
    out = tmp_path / "out"
    # another host: live while its heartbeat is fresh (the message says how to clear a dead one) ...
    fresh = _entry(out, "node17", 4242, age_s=5)
    with pytest.raises(OutputLocked, match=r"`brainalign run` on host node17, pid 4242, .*if that run is gone, "
                                           rf"delete {re.escape(str(fresh))}"):
        OutputLock(out, "fit").acquire()
    # ... stale after BRAINALIGN_LOCK_STALE_S without one
    os.utime(fresh, (time.time() - 900, time.time() - 900))
    # this host: a pid that is another process now (recorded start time differs) is stale too
    _entry(out, socket.gethostname(), os.getppid(), age_s=0, proc_start="1")
    with OutputLock(out, "fit") as lock:
        assert [e["pid"] for e in holders(out)] == [os.getpid()] and lock.path.exists()
    assert "removing a stale lock entry" in caplog.text and "no heartbeat for 900 s" in caplog.text
    assert f"pid {os.getppid()} is another process now" in caplog.text


def test_locked_output_ends_an_mpi_job_at_once(tmp_path, holder):
    """Rank 0 finds the lock held; the other ranks (which follow rank 0's lock) must not wait for it forever."""
    from test_mpi import _cmd

    out, cfg = _setup(tmp_path, "mpilocked")
    p = holder(out)
    t0 = time.monotonic()
    r = subprocess.run(_cmd(2, cfg), env=_env(), capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t0 < 60
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"brainalign fit: error: {out} is in use by `brainalign fit` on host {socket.gethostname()}, pid " \
           f"{p.pid}" in r.stderr
    assert not (out / "fit_shards").exists()


def test_the_jobs_of_a_submission_carry_its_token(tmp_path):
    """Every job of one `submit` (submitit tasks and the emitted sbatch scripts) gets the plan's token."""
    from brainalign.cluster.sbatch import render_job
    from brainalign.cluster.submit import _tasks
    from test_submit import demo_plan

    _, plan = demo_plan(tmp_path)
    assert plan.token.startswith("submit-")
    for job in plan.jobs:
        assert {t.env["BRAINALIGN_LOCK_TOKEN"] for t in _tasks(plan, job)} == {plan.token}
        assert f"export BRAINALIGN_LOCK_TOKEN=${{BRAINALIGN_LOCK_TOKEN:-{plan.token}}}" in render_job(plan, job)
    assert demo_plan(tmp_path)[1].token != plan.token                     # one token per submission


def test_a_stage_that_saved_its_work_on_sigterm_is_a_stopped_job(tmp_path):
    """submitit stops the child with SIGTERM after its requeue: exit 143 means stopped, not failed."""
    from brainalign.cluster.submit import StageFailed, StageTask

    task = StageTask("fit", [[sys.executable, "-c", "import sys; sys.exit(143)", "fit"]], str(tmp_path))
    task.signal_grace_s = 0.2
    with pytest.raises(StageFailed, match=r"`brainalign fit` exited with status 143 \(stopped by SIGTERM\)"):
        task()
