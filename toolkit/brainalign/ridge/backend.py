"""A tiny array-namespace shim so the ridge core is written once for numpy, torch and cupy.

The core (``brainalign.ridge.solver``) uses Python operators (``@``, ``*``, slicing, ``.T``,
``.sum(0)``) that all three libraries share, plus the handful of methods below where their
APIs differ. Decompositions run in float64; GEMMs in the solver's working dtype.

``get_backend("auto")`` stays on numpy unless a GPU works here AND measured evidence (``gpu_evidence.py``,
written from a ``bench/gpu_check.py`` run on that GPU model) shows a GPU backend faster; see
:func:`auto_choice`. Nothing here imports torch or cupy unless that backend is asked for or probed.
cupy is found by its import name, whatever wheel provides it (cupy-cuda12x, cupy-cuda13x, ...).
"""
from __future__ import annotations

import functools
import logging

import numpy as np

from ..errors import ConfigError
from ..provenance import cupy_distribution

log = logging.getLogger("brainalign.ridge")

BACKENDS = ("numpy", "torch", "cupy", "auto")


class NumpyBackend:
    """numpy on the CPU (the tested reference)."""

    name = "numpy"
    device = "cpu"

    def __init__(self):
        self.xp = np

    # --- conversion -------------------------------------------------------------------------
    def dtype(self, name):
        """Native dtype object for 'float32' / 'float64' / 'int64' / 'bool'."""
        return np.dtype(name)

    def asarray(self, a, dtype="float32"):
        """numpy (or native) array -> native array of ``dtype``, C-contiguous (copies only if needed)."""
        return np.ascontiguousarray(a, dtype=self.dtype(dtype))

    def to_numpy(self, a):
        return np.asarray(a)

    def is_native(self, a):
        """True if ``a`` is already this backend's array type (on its device)."""
        return isinstance(a, np.ndarray)

    def copy_in(self, a, dtype="float32"):
        """A fresh, writable, C-contiguous native copy of ``a`` (numpy or native) in ``dtype``:
        the solver modifies it in place, so it never aliases the caller's array."""
        return np.array(a, dtype=self.dtype(dtype), order="C", copy=True)

    def is_floating(self, a):
        return np.issubdtype(a.dtype, np.floating)

    def zero_invalid(self, a, valid):
        """Set the columns of ``a`` (n, v) where ``valid`` (v,) is False to 0, in place (no host sync)."""
        a[:, ~valid] = 0
        return a

    def cast(self, a, dtype):
        return a.astype(self.dtype(dtype), copy=False)

    def index(self, idx):
        """Integer index array usable for row gathers on this backend."""
        return np.asarray(idx, dtype=np.int64)

    # --- creation ---------------------------------------------------------------------------
    def zeros(self, shape, dtype="float32"):
        return np.zeros(shape, dtype=self.dtype(dtype))

    def full(self, shape, value, dtype="float32"):
        return np.full(shape, value, dtype=self.dtype(dtype))

    # --- linear algebra (float64 in, float64 out) ------------------------------------------
    def eigh(self, a):
        """Eigenvalues ascending and eigenvectors of a symmetric matrix."""
        return np.linalg.eigh(a)

    def svd(self, a):
        """Thin SVD: U (n, k), s (k,) descending, Vt (k, p)."""
        return np.linalg.svd(a, full_matrices=False)

    # --- elementwise / reductions -----------------------------------------------------------
    def sqrt(self, a):
        return np.sqrt(a)

    def isfinite(self, a):
        return np.isfinite(a)

    def where(self, cond, a, b):
        return np.where(cond, a, b)

    def all0(self, a):
        return a.all(0)

    def amax0(self, a):
        return a.max(0)

    def amin0(self, a):
        return a.min(0)

    def take_cols(self, a, idx):
        """a[idx, arange(v)]: per-column gather, idx (v,) integer -> (v,)."""
        return np.take_along_axis(a, idx[None, :], 0)[0]

    def gather_rows(self, a, idx):
        """a[:, j] rows chosen per column: a (r, m), idx (v,) -> (r, v) with out[:, j] = a[:, idx[j]]."""
        return a[:, idx]

    def colsums2(self, p, y):
        """Column sums of p*p and p*y: p (k, n, v) stacked predictions, y (n, v) -> ((k, v), (k, v)).

        This is the per-alpha scoring pass; the cupy backend fuses both sums into one kernel.
        """
        return np.einsum("kij,kij->kj", p, p), np.einsum("kij,ij->kj", p, y)

    def colsumsq(self, a):
        return np.einsum("ij,ij->j", a, a)

    def mean0_64(self, a):
        """Column means accumulated in float64 -> float64 (v,)."""
        return a.mean(0, dtype=np.float64)

    def sync(self):
        pass


class TorchBackend:
    """torch on CPU or CUDA. Matches numpy to float32 precision."""

    name = "torch"

    def __init__(self, device=None):
        import torch

        self.torch = torch
        self.xp = torch
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = str(device)
        self._dtypes = {"float32": torch.float32, "float64": torch.float64,
                        "int64": torch.int64, "bool": torch.bool}

    def dtype(self, name):
        return self._dtypes[str(np.dtype(name))]

    def asarray(self, a, dtype="float32"):
        t = self.torch
        if isinstance(a, t.Tensor):
            return a.to(device=self.device, dtype=self.dtype(dtype)).contiguous()
        arr = np.ascontiguousarray(a, dtype=np.dtype(dtype))
        return t.from_numpy(arr).to(self.device)

    def to_numpy(self, a):
        if isinstance(a, self.torch.Tensor):
            return a.detach().cpu().numpy()
        return np.asarray(a)

    def is_native(self, a):
        return isinstance(a, self.torch.Tensor)

    def copy_in(self, a, dtype="float32"):
        t = self.torch
        if isinstance(a, t.Tensor):
            return a.to(device=self.device, dtype=self.dtype(dtype), copy=True).contiguous()
        out = t.from_numpy(np.ascontiguousarray(a, dtype=np.dtype(dtype)))
        # from_numpy shares the caller's memory: copy (the move to CUDA copies anyway)
        return out.to(self.device) if self.device != "cpu" else out.clone()

    def is_floating(self, a):
        return a.dtype.is_floating_point

    def zero_invalid(self, a, valid):
        # masked_fill_ broadcasts the mask on the device; boolean indexing would call nonzero()
        # and wait for the GPU to learn how many columns there are.
        return a.masked_fill_(~valid[None, :], 0)

    def cast(self, a, dtype):
        return a.to(self.dtype(dtype))

    def index(self, idx):
        return self.torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.device)

    def zeros(self, shape, dtype="float32"):
        return self.torch.zeros(shape, dtype=self.dtype(dtype), device=self.device)

    def full(self, shape, value, dtype="float32"):
        return self.torch.full(shape, value, dtype=self.dtype(dtype), device=self.device)

    def eigh(self, a):
        return self.torch.linalg.eigh(a)

    def svd(self, a):
        return self.torch.linalg.svd(a, full_matrices=False)

    def sqrt(self, a):
        return self.torch.sqrt(a)

    def isfinite(self, a):
        return self.torch.isfinite(a)

    def where(self, cond, a, b):
        # torch.where takes a Python scalar for either branch. Turning one into a device tensor
        # (torch.as_tensor(x, device="cuda")) would be a host-to-device copy that blocks the host
        # until the GPU has drained its queue: a host sync inside the per-alpha loop.
        t = self.torch
        if not isinstance(a, t.Tensor) and not isinstance(b, t.Tensor):
            a = t.full_like(cond, a, dtype=t.float64)
        return t.where(cond, a, b)

    def all0(self, a):
        return a.all(0)

    def amax0(self, a):
        return a.amax(0)

    def amin0(self, a):
        return a.amin(0)

    def take_cols(self, a, idx):
        return self.torch.take_along_dim(a, idx[None, :], 0)[0]

    def gather_rows(self, a, idx):
        return a[:, idx]

    def colsums2(self, p, y):
        vd = self.torch.linalg.vecdot
        return vd(p, p, dim=1), vd(p, y[None], dim=1)

    def colsumsq(self, a):
        return self.torch.linalg.vecdot(a, a, dim=0)

    def mean0_64(self, a):
        return a.mean(0, dtype=self.torch.float64)

    def sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()


class CupyBackend(NumpyBackend):
    """cupy on an NVIDIA GPU, with fused scoring kernels (``brainalign.ridge.cuda_kernels``)."""

    name = "cupy"
    device = "cuda"

    def __init__(self):
        import cupy

        from . import cuda_kernels

        self.cp = cupy
        self.xp = cupy
        self._k = cuda_kernels
        cupy.cuda.runtime.getDeviceCount()  # raises without a working driver

    def asarray(self, a, dtype="float32"):
        return self.cp.ascontiguousarray(self.cp.asarray(a, dtype=np.dtype(dtype)))

    def to_numpy(self, a):
        if isinstance(a, self.cp.ndarray):
            return self.cp.asnumpy(a)
        return np.asarray(a)

    def is_native(self, a):
        return isinstance(a, self.cp.ndarray)

    def copy_in(self, a, dtype="float32"):
        return self.cp.array(a, dtype=np.dtype(dtype), order="C", copy=True)

    def zero_invalid(self, a, valid):
        self.cp.copyto(a, 0, where=~valid[None, :])   # boolean indexing would sync (nonzero)
        return a

    def index(self, idx):
        return self.cp.asarray(np.asarray(idx, dtype=np.int64))

    def zeros(self, shape, dtype="float32"):
        return self.cp.zeros(shape, dtype=np.dtype(dtype))

    def full(self, shape, value, dtype="float32"):
        return self.cp.full(shape, value, dtype=np.dtype(dtype))

    def eigh(self, a):
        return self.cp.linalg.eigh(a)

    def svd(self, a):
        return self.cp.linalg.svd(a, full_matrices=False)

    def sqrt(self, a):
        return self.cp.sqrt(a)

    def isfinite(self, a):
        return self.cp.isfinite(a)

    def where(self, cond, a, b):
        return self.cp.where(cond, a, b)

    def take_cols(self, a, idx):
        return self.cp.take_along_axis(a, idx[None, :], 0)[0]

    def colsums2(self, p, y):
        return self._k.colsums2(p, y)

    def colsumsq(self, a):
        return self._k.colsumsq(a)

    def sync(self):
        self.cp.cuda.Device().synchronize()


@functools.lru_cache(maxsize=None)
def cupy_status():
    """(usable, reason): cupy imports AND a kernel really runs on a GPU. Never raises; ``reason``
    says what failed (the import error text, no device, the driver's error) or names the GPU."""
    try:
        import cupy
    except Exception as err:  # ImportError, or a wheel built for another CUDA failing to load
        return False, f"cupy import error: {type(err).__name__}: {err}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:
        return False, f"no CUDA device for cupy {cupy.__version__}: {type(err).__name__}: {err}"
    if n < 1:
        return False, f"no CUDA device for cupy {cupy.__version__} (0 devices)"
    try:
        x = cupy.arange(4, dtype=cupy.float32)
        ok = float((x * x).sum().get()) == 14.0
    except Exception as err:
        return False, f"cupy {cupy.__version__} cannot run a kernel: {type(err).__name__}: {err}"
    if not ok:  # pragma: no cover - a broken device
        return False, f"cupy {cupy.__version__} computed a wrong result on the GPU"
    return True, f"cupy {cupy.__version__} ({cupy_distribution() or 'cupy'}) on {cupy_device_name()}"


def cupy_works():
    """True only if cupy imports AND a kernel really runs on a GPU (never raises)."""
    return cupy_status()[0]


@functools.lru_cache(maxsize=None)
def torch_cuda_status():
    """(usable, reason) for torch on CUDA; never raises."""
    try:
        import torch
    except Exception as err:  # pragma: no cover - torch is a dependency
        return False, f"torch import error: {type(err).__name__}: {err}"
    try:
        if not torch.cuda.is_available():
            return False, (f"no CUDA device for torch {torch.__version__} (built for CUDA "
                           f"{torch.version.cuda or 'none: a CPU-only build'})")
        return True, f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}"
    except Exception as err:
        return False, f"torch {torch.__version__} cannot use CUDA: {type(err).__name__}: {err}"


def torch_cuda_works():
    return torch_cuda_status()[0]


def cupy_device_name(index=0):
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _gpu_name(backend):
    if backend == "cupy":
        return cupy_device_name()
    import torch

    return torch.cuda.get_device_name(0)


def auto_choice(evidence=None):
    """(backend name, reason) that ``backend="auto"`` resolves to.

    A GPU backend is chosen only where it works here AND a measured record in
    :data:`brainalign.ridge.gpu_evidence.MEASURED` (or ``evidence``) for this GPU model shows it
    faster than numpy (``speedup > 1``); among several, the fastest. Otherwise numpy, and the
    reason says why (no GPU, or no measurement for this GPU).
    """
    if evidence is None:
        from .gpu_evidence import MEASURED as evidence
    probes = {"cupy": cupy_status, "torch-cuda": torch_cuda_status}
    usable = {name: probe() for name, probe in probes.items()}
    if not any(ok for ok, _ in usable.values()):
        return "numpy", "no usable GPU (" + "; ".join(why for _, why in usable.values()) + ")"
    names = {}
    for name, (ok, _) in usable.items():
        if ok:
            try:
                names[name] = _gpu_name(name)
            except Exception:  # pragma: no cover - a device that vanished after the probe
                continue
    best = None
    for rec in evidence:
        name = rec["backend"]
        if name in names and rec["gpu"] == names[name] and float(rec["speedup"]) > 1.0:
            if best is None or float(rec["speedup"]) > float(best["speedup"]):
                best = rec
    if best is not None:
        return best["backend"], (f"{best['backend']} measured {float(best['speedup']):.1f}x faster than numpy "
                                 f"on {best['gpu']} ({best['date']}, {best['source']})")
    gpus = ", ".join(sorted(set(names.values())))
    return "numpy", (f"a GPU works here ({gpus}) but no measured evidence shows a GPU ridge backend faster "
                     "than numpy on it (brainalign/ridge/gpu_evidence.py; run bench/gpu_check.py)")


@functools.lru_cache(maxsize=None)
def _auto_logged():
    name, reason = auto_choice()
    log.info("ridge backend auto -> %s: %s", name, reason)
    return name


def get_backend(name="numpy"):
    """Backend object by name: 'numpy', 'torch' (CUDA if available, else CPU), 'torch-cpu',
    'torch-cuda', 'cupy' or 'auto' (see :func:`auto_choice`: numpy unless a GPU backend was
    measured faster on this GPU model).

    An existing backend object is returned unchanged.
    """
    if not isinstance(name, str):
        return name
    key = name.lower()
    if key == "auto":
        key = _auto_logged()
    if key == "numpy":
        return NumpyBackend()
    if key in ("torch", "torch-cpu", "torch-cuda"):
        try:
            import torch  # noqa: F401
        except ImportError as err:  # pragma: no cover - torch is a dependency
            raise ConfigError(f"ridge backend {name!r}: torch is not installed ({err})") from None
        device = {"torch": None, "torch-cpu": "cpu", "torch-cuda": "cuda"}[key]
        if device == "cuda" and not torch_cuda_works():
            raise ConfigError(f"ridge backend {name!r}: {torch_cuda_status()[1]}")
        return TorchBackend(device)
    if key == "cupy":
        ok, why = cupy_status()
        if not ok:
            raise ConfigError(f"ridge backend 'cupy' is not usable here: {why}; use backend='auto' or 'numpy'")
        return CupyBackend()
    raise ConfigError(f"ridge backend {name!r} unknown; choose one of {', '.join(BACKENDS)}, "
                      "torch-cpu, torch-cuda")
