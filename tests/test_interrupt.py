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
from test_mpi import _cmd, _env, _setup

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


@pytest.mark.parametrize("ranks,sig", [(1, signal.SIGTERM), (2, signal.SIGUSR1), (2, signal.SIGINT)])
def test_fit_signal_keeps_finished_units_and_resumes(tmp_path, reference, ranks, sig):
    """Units buffered for 60 s (the default flush interval) survive the signal on every rank."""
    out, cfg = _setup(tmp_path, "sig")
    argv = _cmd(ranks, cfg) if ranks > 1 else [sys.executable, str(cfg.parent / "driver.py"), "fit", str(cfg)]
    proc, err = _start(argv, tmp_path, BRAINALIGN_TEST_SLOW_UNIT=0.1, BRAINALIGN_SHARD_SECONDS=600,
                       BRAINALIGN_LOG="DEBUG")                    # the per-unit lines are DEBUG
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


# ---- extract and permutation: the signal sent to this process while the stage runs -------------------

def _kill_self_when(cond):
    """A hook that sends SIGTERM to this very process once ``cond()`` holds (the handler raises at once)."""
    def hook(*a, **kw):
        if cond():
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


def test_extract_signal_keeps_finished_episodes_and_conditions(tmp_path, monkeypatch):
    """SIGTERM in episode e2 after its first condition: e1's shard and e2's first condition are kept; the re-run
    encodes only the rest and gives the features of an uninterrupted run."""
    import brainalign.extract as extract
    from brainalign.models.synthetic import synthetic_stimuli
    from test_extract import N_WINDOWS, cfg as extract_cfg

    def fake(cfg, episode, *a):
        return synthetic_stimuli(episode, n_windows=N_WINDOWS[episode], tr=1.0, frames=2, image_size=32,
                                 audio_rate=8000, context=2.0, seed=int(episode[1:]))

    monkeypatch.setattr("brainalign.stimuli.windows.load_episode_stimuli", fake)
    ref_cfg = extract_cfg.__wrapped__(tmp_path / "ref")
    ref = extract.run_extract(ref_cfg)
    cfg = extract_cfg.__wrapped__(tmp_path / "sig")
    from brainalign.models import get_backbone

    cls = type(get_backbone(cfg.model, cfg.windows))
    real_encode_windows = cls.encode

    def encode(self, stimuli, part, condition):
        if stimuli.episode == "e2" and condition == "no_vision":     # e2's second condition starts
            os.kill(os.getpid(), signal.SIGTERM)
        return real_encode_windows(self, stimuli, part, condition)

    monkeypatch.setattr(cls, "encode", encode)
    with pytest.raises(Interrupted) as e:
        with on_signals():
            extract.run_extract(cfg)
    shards = cfg.out / "features"
    assert str(e.value) == (f"interrupted by SIGTERM: 1 episode(s) finished in this run are in {shards}; episode e2: "
                            f"1 of 3 feature sets saved to {shards / 'e2.h5'}; a re-run extracts only the rest")
    assert e.value.exit_code == 143
    with h5py.File(shards / "e2.h5", "r") as f:
        assert sorted(k for k in f if k != "windows") == ["joint"]
    assert not (shards / "e3.h5").exists() and not (cfg.out / "features.h5").exists()
    monkeypatch.setattr(cls, "encode", real_encode_windows)
    encoded = []
    real_encode = extract.encode_stimuli
    monkeypatch.setattr(extract, "encode_stimuli", lambda bb, st, conds, *a, **kw: (
        encoded.append((st.episode, list(conds))), real_encode(bb, st, conds, *a, **kw))[1])
    out = extract.run_extract(cfg)
    assert encoded == [("e2", ["no_vision", "language_only"]), ("e3", ["joint", "no_vision", "language_only"])]
    with h5py.File(out, "r") as a, h5py.File(ref, "r") as b:
        for c in cfg.all_conditions:
            for ep in N_WINDOWS:
                np.testing.assert_array_equal(a[f"{c}/{ep}"][()], b[f"{c}/{ep}"][()])


def test_permutation_signal_keeps_finished_subjects(tmp_path, monkeypatch):
    import brainalign.permutation as permutation
    from brainalign.fit import run_fit
    from test_permutation import _config

    cfgs = {}
    for name in ("ref", "sig"):
        out = tmp_path / name / "out"
        make_fit_fixture(out, seed=3)
        cfgs[name] = _config(out, permutations=49, permutation_seed=7)
        run_fit(cfgs[name])
    ref = permutation.run_permutation(cfgs["ref"])
    calls = []
    real = permutation.draw_shifts

    def draw(*a, **kw):
        calls.append(1)
        if len(calls) == 2:                                  # the second subject starts
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(permutation, "draw_shifts", draw)
    cfg = cfgs["sig"]
    with pytest.raises(Interrupted) as e:
        with on_signals():
            permutation.run_permutation(cfg)
    parts = cfg.out / "permutation_parts"
    assert str(e.value) == (f"interrupted by SIGTERM: 1 subject(s) finished in this run saved in {parts}; a re-run "
                            "computes only the rest")
    assert [p.name for p in parts.iterdir()] == ["sub-01.h5"] and not (cfg.out / "permutation.h5").exists()
    calls.clear()
    path = permutation.run_permutation(cfg)
    assert len(calls) == 1                                   # only sub-02 was computed
    assert not parts.exists()
    with h5py.File(path, "r") as a, h5py.File(ref, "r") as b:
        for k in ("r/observed", "r/p", "r/q", "contrast/j-vs-x/p", "shifts"):
            np.testing.assert_array_equal(a[k][()], b[k][()])
