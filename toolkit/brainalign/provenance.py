"""What produced a file: config, code version, package versions, container, host, SLURM/MPI ids."""
import datetime as _dt
import functools
import importlib.metadata as _md
import json
import os
import platform
import socket
import subprocess
import sys

from . import __version__
from .log import rank_info

_PACKAGES = ("numpy", "scipy", "torch", "h5py", "nibabel", "mpi4py", "cupy", "submitit", "av")


@functools.lru_cache(maxsize=1)
def git_commit():
    """The commit of the checkout this code runs from (env BRAINALIGN_GIT_COMMIT wins: containers set it)."""
    env = os.environ.get("BRAINALIGN_GIT_COMMIT")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def cupy_distribution():
    """Name of the installed distribution that provides the ``cupy`` module (``cupy-cuda12x``,
    ``cupy-cuda13x``, a source build's ``cupy``, ...) or None. Found from the module name, so any
    CuPy wheel works; nothing is imported."""
    try:
        names = _md.packages_distributions().get("cupy") or []
    except Exception:  # pragma: no cover - broken metadata
        names = []
    return sorted(set(names))[0] if names else None


@functools.lru_cache(maxsize=1)
def package_versions():
    """Installed versions of the packages that shape results; cupy as ``"14.2.0 (cupy-cuda13x)"``,
    whichever CuPy wheel provides the ``cupy`` module."""
    vers = {}
    for name in _PACKAGES:
        dist = cupy_distribution() if name == "cupy" else name
        if dist is None:
            continue
        try:
            vers[name] = _md.version(dist) + (f" ({dist})" if name == "cupy" and dist != "cupy" else "")
        except _md.PackageNotFoundError:
            continue
    return vers


def container_info():
    path = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    if not path:
        return {}
    return {"image": path, "digest": os.environ.get("BRAINALIGN_IMAGE_DIGEST", "unknown")}


def slurm_info():
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST",
            "SLURM_NTASKS", "SLURM_CLUSTER_NAME")
    return {k.lower(): os.environ[k] for k in keys if k in os.environ}


def provenance(config_text=None, stage=None, extra=None):
    """A flat dict of str values, suitable as HDF5 attributes or a JSON sidecar."""
    rank, size = rank_info()
    rec = {
        "brainalign_version": __version__,
        "git_commit": git_commit(),
        "stage": stage or "",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "command": " ".join(sys.argv),
        "mpi_rank": str(rank),
        "mpi_size": str(size),
        "packages": json.dumps(package_versions(), sort_keys=True),
        "container": json.dumps(container_info(), sort_keys=True),
        "slurm": json.dumps(slurm_info(), sort_keys=True),
    }
    for name, ver in package_versions().items():
        rec[f"version_{name}"] = ver
    if config_text is not None:
        rec["config"] = config_text
    for k, v in (extra or {}).items():
        rec[k] = v if isinstance(v, str) else json.dumps(v)
    return rec
