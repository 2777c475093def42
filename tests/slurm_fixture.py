"""A real single-node SLURM cluster for tests (slurm/local/start.sh and stop.sh).

Use it from tests/conftest.py::

    from slurm_fixture import slurm_cluster  # noqa: F401  (session-scoped fixture)

and in a test::

    def test_x(slurm_cluster, monkeypatch):
        for k, v in slurm_cluster.env.items():
            monkeypatch.setenv(k, v)      # submitit calls sbatch through os.environ
        slurm_cluster.run(["srun", "-n", "2", "hostname"])

The cluster is started once per process however many modules define the fixture (reference
counted) and stopped when the last user is done. Not root and SLURM not installable: the test is
skipped, except under CI (env CI=true), where every problem fails loudly.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START = REPO / "slurm" / "local" / "start.sh"
STOP = REPO / "slurm" / "local" / "stop.sh"
CLIENT_DIRS = ("/usr/bin", "/usr/local/bin")


@dataclass
class SlurmCluster:
    """A running cluster: `dir` holds its files, `conf` its slurm.conf, `env` what clients need."""

    dir: Path
    conf: Path
    env: dict[str, str] = field(default_factory=dict)

    def environ(self) -> dict[str, str]:
        """os.environ with this cluster's SLURM_CONF and PATH."""
        return {**os.environ, **self.env}

    def run(self, args: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run a client command (srun, sbatch, ...) against this cluster; text output captured."""
        proc = subprocess.run(args, env=self.environ(), capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _skip_or_fail(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"CI=true: the local SLURM cluster must run here, but {reason}", pytrace=False)
    pytest.skip(reason)


def _client_path() -> str:
    path = os.environ.get("PATH", "")
    parts = path.split(os.pathsep) if path else []
    for d in CLIENT_DIRS:
        if d not in parts:
            parts.append(d)
    return os.pathsep.join(parts)


_state: dict = {"cluster": None, "users": 0}


def _start() -> SlurmCluster:
    if os.geteuid() != 0:
        installed = shutil.which("slurmctld", path=_client_path() + ":/usr/sbin:/sbin") is not None
        _skip_or_fail("the local SLURM cluster needs root (slurmd runs jobs as their users)"
                      + ("" if installed else "; SLURM is not installed and cannot be installed without root"))
    if shutil.which("apt-get") is None and shutil.which("slurmctld", path="/usr/sbin:/usr/bin:/sbin") is None:
        _skip_or_fail("SLURM is not installed and there is no apt-get to install it")
    # Not under pytest's tmp_path: its directories are mode 700, and munged refuses a socket
    # below a directory that others cannot enter.
    d = Path(tempfile.mkdtemp(prefix="brainalign-slurm-"))
    d.chmod(0o755)
    proc = subprocess.run(["bash", str(START), str(d)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        subprocess.run(["bash", str(STOP), str(d)], capture_output=True, timeout=60)
        pytest.fail(f"slurm/local/start.sh failed ({proc.returncode}):\n{proc.stderr}", pytrace=False)
    conf = d / "slurm.conf"
    return SlurmCluster(dir=d, conf=conf, env={"SLURM_CONF": str(conf), "PATH": _client_path()})


@pytest.fixture(scope="session")
def slurm_cluster():
    """Session-scoped running single-node SLURM cluster (see module docstring)."""
    if _state["cluster"] is None:
        _state["cluster"] = _start()
    _state["users"] += 1
    try:
        yield _state["cluster"]
    finally:
        _state["users"] -= 1
        if _state["users"] == 0:
            cluster, _state["cluster"] = _state["cluster"], None
            proc = subprocess.run(["bash", str(STOP), str(cluster.dir)], capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"slurm/local/stop.sh failed ({proc.returncode}): {proc.stderr}")
