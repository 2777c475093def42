"""The fit under real MPI (mpiexec from this venv's MPICH wheel): 1 vs 2 vs 3 ranks, SIGKILL + resume.

Each run is ``mpiexec -n N python driver.py fit CONFIG`` where driver.py is the brainalign CLI (it only
installs the test stand-in FoldSolver while brainalign.ridge does not import yet).
"""
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h5py
import pytest
import yaml

from brainalign.h5io import is_complete
from test_fit import assert_scores_equal, fit_config, fit_config_data, make_fit_fixture, read_scores

MPIEXEC = Path(sys.executable).parent / "mpiexec"
TOOLKIT = Path(__file__).resolve().parents[1] / "toolkit"
TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(not MPIEXEC.exists(), reason="mpiexec (mpich wheel) not in this venv")

DRIVER = f"""
import sys
sys.path[:0] = [{str(TOOLKIT)!r}, {str(TESTS)!r}]
try:
    from brainalign.ridge import FoldSolver  # noqa: F401
except ImportError:
    import test_fit  # noqa: F401  (installs the FoldSolver stand-in)
from brainalign.cli import main
sys.exit(main())
"""


def _setup(tmp_path, name):
    out = tmp_path / name
    make_fit_fixture(out)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(fit_config_data(out), sort_keys=False))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return out, cfg


def _env(tag="", **extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               BRAINALIGN_PROGRESS="0", BRAINALIGN_TEST_TAG=tag)
    for k in ("BRAINALIGN_TEST_SLOW_UNIT", "BRAINALIGN_SHARD_SECONDS"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _cmd(n, cfg):
    return [str(MPIEXEC), "-n", str(n), sys.executable, str(cfg.parent / "driver.py"), "fit", str(cfg)]


def _run(n, cfg, timeout=120, **env):
    p = subprocess.run(_cmd(n, cfg), env=_env(**env), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _shard_ranks(out):
    return {int(p.name.split("-")[2]) for p in (out / "fit_shards").glob("e*.h5")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Single-process fit (no MPI) of the shared fixture."""
    from brainalign.fit import run_fit

    out = tmp_path_factory.mktemp("ref") / "out"
    make_fit_fixture(out)
    return read_scores(run_fit(fit_config(out)))


@pytest.mark.parametrize("n", [2, 3])
def test_ranks_give_identical_results(tmp_path, reference, n):
    out, cfg = _setup(tmp_path, f"n{n}")
    p = _run(n, cfg, BRAINALIGN_TEST_SLOW_UNIT=0.03, BRAINALIGN_LOG="DEBUG")     # per-unit lines are DEBUG
    assert_scores_equal(read_scores(out / "scores.h5"), reference)
    assert _shard_ranks(out) == set(range(n))              # every rank computed units
    assert f"rank 1/{n}" in p.stderr and "unit joint layer" in p.stderr
    with h5py.File(out / "scores.h5", "r") as f:
        assert f["r"].is_virtual and f["alpha"].is_virtual
        assert all(not os.path.isabs(m.file_name) for m in f["r"].virtual_sources())
        assert f.attrs["mpi_size"] == str(n)
    # the same command again finds the complete output and computes nothing
    again = _run(n, cfg)
    assert "is current (stage key" in again.stderr and "skipping" in again.stderr and "unit joint" not in again.stderr


def _wait_for_shards(out, proc, n_min, timeout=60):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if len(list((out / "fit_shards").glob("e*.h5"))) >= n_min:
            return
        if proc.poll() is not None:
            pytest.fail(f"fit ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    pytest.fail("no shards appeared")


def _pids_with_tag(tag, rank=None):
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"BRAINALIGN_TEST_TAG={tag}".encode() in env and (rank is None or f"PMI_RANK={rank}".encode() in env):
            if (d / "cmdline").read_bytes().find(b"driver.py") >= 0:
                pids.append(int(d.name))
    return pids


def _assert_interrupted_state(out):
    """After a kill: no scores.h5 that looks complete; every file that looks like a shard is complete."""
    assert not is_complete(out / "scores.h5")
    for p in (out / "fit_shards").glob("e*.h5"):
        assert is_complete(p), p


def _resume_and_compare(out, cfg, reference, n=2):
    p = _run(n, cfg)
    m = re.search(r"(\d+) done in shards, (\d+) to compute", p.stderr)
    assert m and int(m.group(1)) >= 6 and int(m.group(2)) > 0, p.stderr[-2000:]   # really interrupted
    assert_scores_equal(read_scores(out / "scores.h5"), reference)
    with h5py.File(out / "scores.h5", "r") as f:
        epochs = {Path(m.file_name).name[:5] for m in f["r"].virtual_sources()}
    assert "e0001" in epochs, "units finished before the kill were recomputed instead of reused"


def test_resume_after_sigkill_of_the_whole_job(tmp_path, reference):
    out, cfg = _setup(tmp_path, "killjob")
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(_cmd(2, cfg), env=_env(tag, BRAINALIGN_TEST_SLOW_UNIT=0.15, BRAINALIGN_SHARD_SECONDS=0),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_shards(out, proc, 6)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for pid in _pids_with_tag(tag):         # ranks in another process group would survive killpg
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    _assert_interrupted_state(out)
    _resume_and_compare(out, cfg, reference)


def test_resume_after_sigkill_of_one_rank(tmp_path, reference):
    out, cfg = _setup(tmp_path, "killrank")
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(_cmd(2, cfg), env=_env(tag, BRAINALIGN_TEST_SLOW_UNIT=0.15, BRAINALIGN_SHARD_SECONDS=0),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_shards(out, proc, 6)
        victims = _pids_with_tag(tag, rank=1)
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
        rc = proc.wait(timeout=60)           # the launcher tears the job down; it must not hang or succeed
        assert rc != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _assert_interrupted_state(out)
    _resume_and_compare(out, cfg, reference)


def test_srun_without_mpi_plugin_is_refused(tmp_path):
    """srun -n 2 without a PMI plugin starts singletons: each would redo the whole fit; say so and stop."""
    out, cfg = _setup(tmp_path, "singleton")
    env = _env(SLURM_STEP_NUM_TASKS=2, SLURM_PROCID=0)
    p = subprocess.run([sys.executable, str(cfg.parent / "driver.py"), "fit", str(cfg)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "launched as one of 2 tasks but MPI sees a single process" in p.stderr
    assert not (out / "fit_shards").exists()


def test_bad_input_on_one_rank_stops_every_rank_with_one_line(tmp_path):
    """A unit that fails (non-finite design) on any rank ends the job: no hang, exit 2, no scores.h5."""
    out, cfg = _setup(tmp_path, "bad")
    with h5py.File(out / "design.h5", "a") as f:
        X = f["design/crossmodal"][()]
        X[2, 1, 0, 0] = float("nan")                  # only fold 2 of layer 1: a few units, mid-run
        f["design/crossmodal"][...] = X
    p = subprocess.run(_cmd(2, cfg), env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    # one error line per rank (lines of two ranks may interleave on the shared stderr)
    assert p.stderr.count("brainalign fit: error:") == 2
    assert p.stderr.count("design for crossmodal layer 1 has non-finite values") == 2
    assert "Traceback" not in p.stderr
    assert not (out / "scores.h5").exists()
    assert list((out / "fit_shards").glob("e*.h5"))              # finished units were kept for the rerun
