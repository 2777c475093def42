"""Signals a cluster sends (SIGTERM before a requeue / at the time limit, SIGINT, SIGUSR1) during a stage:
finished units are saved, one line says what was kept, the exit status is 128 + signum, and the re-run
resumes to the same result as an uninterrupted run. The signals are sent for real to a running process
(1 process, and mpiexec with 2 ranks: MPICH's launcher forwards them to every rank, as SLURM signals
every task of a step)."""
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from brainalign.h5io import is_complete
from brainalign.interrupt import Interrupted, on_signals
from test_fit import assert_scores_equal, fit_config, make_fit_fixture, read_scores
from test_mpi import MPIEXEC, _cmd, _env, _setup

N_UNITS = 64           # the fit fixture: 2 feature sets x 2 layers x 4 folds x 4 voxel chunks


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from brainalign.fit import run_fit

    out = tmp_path_factory.mktemp("ref") / "out"
    make_fit_fixture(out)
    return read_scores(run_fit(fit_config(out)))


def _start(argv, tmp_path, **env):
    err = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(argv, env=_env(**env), stdout=subprocess.DEVNULL, stderr=err, text=True,
                            start_new_session=True)
    return proc, tmp_path / "stderr.txt"


def _wait_for(path, pattern, n, proc, timeout=90):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if len(re.findall(pattern, path.read_text())) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"ended before the signal: {path.read_text()[-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"never saw {n} x {pattern!r}")


def _finish(proc, timeout=60):
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _units_in_shards(out):
    n = 0
    for p in (out / "fit_shards").glob("e*.h5"):
        assert is_complete(p), p
        with h5py.File(p, "r") as f:
            n += len(f["units"])
    return n


@pytest.mark.parametrize("ranks,sig", [(1, signal.SIGTERM), (1, signal.SIGUSR1), (2, signal.SIGTERM),
                                       (2, signal.SIGINT)])
def test_fit_signal_keeps_finished_units_and_resumes(tmp_path, reference, ranks, sig):
    """Units buffered for 60 s (the default flush interval) survive the signal on every rank."""
    out, cfg = _setup(tmp_path, "sig")
    argv = _cmd(ranks, cfg) if ranks > 1 else [sys.executable, str(cfg.parent / "driver.py"), "fit", str(cfg)]
    proc, err = _start(argv, tmp_path, BRAINALIGN_TEST_SLOW_UNIT=0.1, BRAINALIGN_SHARD_SECONDS=600)
    _wait_for(err, r"unit \S+ layer \d+ fold \S+ voxels \d+:\d+ done", 6, proc)
    assert not list((out / "fit_shards").glob("e*.h5"))          # everything is still in the buffers
    os.kill(proc.pid, sig)                                        # mpiexec forwards it to every rank
    rc = _finish(proc)
    text = err.read_text()
    assert rc == 128 + sig, text[-2000:]
    lines = [ln for ln in text.splitlines() if ln.startswith("brainalign fit: ")]
    assert len(lines) == ranks, text[-2000:]                    # one line per process
    assert "Traceback" not in text
    kept = 0
    for ln in lines:
        m = re.fullmatch(rf"brainalign fit: fit interrupted by {sig.name}: (\d+) unit\(s\) finished by "
                         rf"(this run|rank \d/2) saved in {re.escape(str(out / 'fit_shards'))} \(0 of {N_UNITS} "
                         r"were there before\); a re-run computes only the rest", ln)
        assert m, ln
        kept += int(m.group(1))
    assert kept >= 6 and kept == _units_in_shards(out)
    assert not (out / "scores.h5").exists()
    again = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{kept} done in shards, {N_UNITS - kept} to compute" in again.stderr
    assert_scores_equal(read_scores(out / "scores.h5"), reference)


def test_on_signals_restores_handlers_and_calls_a_previous_python_handler():
    """submitit's own handler (installed before the stage) is called after the stage saved its work."""
    calls = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: calls.append(s))
    try:
        with pytest.raises(Interrupted) as e:
            with on_signals():
                os.kill(os.getpid(), signal.SIGUSR1)
                time.sleep(5)
        assert e.value.exit_code == 128 + signal.SIGUSR1
        assert calls == [signal.SIGUSR1]
        os.kill(os.getpid(), signal.SIGUSR1)                       # the previous handler is back
        assert calls == [signal.SIGUSR1] * 2
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_an_ignored_signal_stays_ignored():
    """submitit's StageTask starts stages with SIGUSR2 ignored; a stage started with SIGTERM ignored keeps it so."""
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, old)
