"""A tiny array-namespace shim so the ridge core is written once for numpy, torch and cupy.

The core (``brainalign.ridge.solver``) uses Python operators (``@``, ``*``, slicing, ``.T``,
``.sum(0)``) that all three libraries share, plus the handful of methods below where their
APIs differ. Decompositions run in float64; GEMMs in the solver's working dtype.

``get_backend("auto")`` picks cupy when a GPU really works, else torch on CUDA, else numpy.
Nothing here imports torch or cupy unless that backend is asked for.
"""
from __future__ import annotations

import functools

import numpy as np

from ..errors import ConfigError

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
        t = self.torch
        if not isinstance(a, t.Tensor):
            a = t.as_tensor(a, device=self.device)
        if not isinstance(b, t.Tensor):
            b = t.as_tensor(b, device=self.device)
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
def cupy_works():
    """True only if cupy imports AND a kernel really runs on a GPU (never raises)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False
        x = cupy.arange(4, dtype=cupy.float32)
        return float((x * x).sum().get()) == 14.0
    except Exception:
        return False


@functools.lru_cache(maxsize=None)
def torch_cuda_works():
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def get_backend(name="numpy"):
    """Backend object by name: 'numpy', 'torch' (CUDA if available, else CPU), 'torch-cpu',
    'torch-cuda', 'cupy' or 'auto' (cupy if a GPU works, else torch-cuda, else numpy).

    An existing backend object is returned unchanged.
    """
    if not isinstance(name, str):
        return name
    key = name.lower()
    if key == "auto":
        if cupy_works():
            return CupyBackend()
        if torch_cuda_works():
            return TorchBackend("cuda")
        return NumpyBackend()
    if key == "numpy":
        return NumpyBackend()
    if key in ("torch", "torch-cpu", "torch-cuda"):
        try:
            import torch  # noqa: F401
        except ImportError as err:  # pragma: no cover - torch is a dependency
            raise ConfigError(f"ridge backend {name!r}: torch is not installed ({err})") from None
        device = {"torch": None, "torch-cpu": "cpu", "torch-cuda": "cuda"}[key]
        if device == "cuda" and not torch_cuda_works():
            raise ConfigError(f"ridge backend {name!r}: torch sees no CUDA device")
        return TorchBackend(device)
    if key == "cupy":
        if not cupy_works():
            raise ConfigError("ridge backend 'cupy': cupy is not installed or no GPU works here; "
                              "use backend='auto' or 'numpy'")
        return CupyBackend()
    raise ConfigError(f"ridge backend {name!r} unknown; choose one of {', '.join(BACKENDS)}, "
                      "torch-cpu, torch-cuda")
