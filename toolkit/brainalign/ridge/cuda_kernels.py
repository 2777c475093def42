"""Fused cupy kernels for the scoring pass (used only by the cupy backend; imported lazily).

After the stacked GEMM ``P = [M d_a1; ...; M d_ak] @ Z`` for a group of k alphas, scoring needs
``sum_i P_aij^2`` and ``sum_i P_aij * Y_ij`` per alpha a and column j. ``colsums2`` computes both in
ONE read of P for all k alphas in ONE launch, instead of materialising ``P * P`` and ``P * Y``:

* grid ``(ceil(v / 32), k)``, blocks of 32 x 8 threads: a warp reads 32 neighbouring columns of one
  row (coalesced 128-byte loads), the 8 warps of a block walk interleaved rows, and a shared-memory
  step adds their 8 partial sums. So a batch of 4096 targets and 6 alphas runs ~800 blocks, enough
  to fill every SM (one thread per column, as first written, gave 16 blocks: a few SMs busy);
* float64 accumulators and float64 outputs (products of float32 are exact in float64).

``colsumsq`` is a ``cupy.ReductionKernel`` (sum of squares per column, float64 accumulation).
Nothing is compiled until first use, so importing this module without a GPU is harmless; the CUDA
source compiles with nvcc/NVRTC alone (tests/test_gpu_check.py compiles it where nvcc exists).
"""
from __future__ import annotations

import functools

#: CUDA C++ source of the fused kernel (also compiled on CPU machines with nvcc -ptx by the tests)
SOURCE = r"""
#define COLS 32
#define ROWS 8
template <typename T>
__device__ void colsums2_impl(const T* __restrict__ P, const T* __restrict__ Y,
                              double* __restrict__ pp, double* __restrict__ py,
                              const long long n, const long long v, const long long ldp,
                              const long long ldy, const long long sp) {
    __shared__ double sa[ROWS][COLS + 1];
    __shared__ double sb[ROWS][COLS + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const long long j = (long long)blockIdx.x * COLS + tx;
    const long long a = blockIdx.y;                 // alpha within the stacked group
    const T* Pa = P + a * sp;
    double s2 = 0.0, sy = 0.0;
    if (j < v) {
        for (long long i = ty; i < n; i += ROWS) {
            const double p = (double)Pa[i * ldp + j];
            s2 += p * p;
            sy += p * (double)Y[i * ldy + j];
        }
    }
    sa[ty][tx] = s2;
    sb[ty][tx] = sy;
    __syncthreads();                                // every thread reaches this (no early return)
    if (ty == 0 && j < v) {
        for (int r = 1; r < ROWS; ++r) {
            s2 += sa[r][tx];
            sy += sb[r][tx];
        }
        pp[a * v + j] = s2;
        py[a * v + j] = sy;
    }
}
extern "C" __global__ void colsums2_f32(const float* P, const float* Y, double* pp, double* py,
                                        long long n, long long v, long long ldp, long long ldy,
                                        long long sp) {
    colsums2_impl<float>(P, Y, pp, py, n, v, ldp, ldy, sp);
}
extern "C" __global__ void colsums2_f64(const double* P, const double* Y, double* pp, double* py,
                                        long long n, long long v, long long ldp, long long ldy,
                                        long long sp) {
    colsums2_impl<double>(P, Y, pp, py, n, v, ldp, ldy, sp);
}
"""

COLS, ROWS = 32, 8                      # must match the #defines above
_MAX_GRID_Y = 65535


@functools.lru_cache(maxsize=None)
def _module():
    import cupy

    return cupy.RawModule(code=SOURCE, options=("--std=c++11",))


@functools.lru_cache(maxsize=None)
def _sumsq_kernel():
    import cupy

    return cupy.ReductionKernel("T x", "float64 y", "(double)x * (double)x", "a + b", "y = a", "0",
                                "brainalign_colsumsq", reduce_type="double")


def _ld(a, axis):
    """Stride of ``axis`` in elements (the kernel needs unit column stride)."""
    return a.strides[axis] // a.itemsize


def colsums2(P, Y):
    """Fused column sums for stacked predictions: P (k, n, v) or (n, v), Y (n, v), same float dtype
    -> (sum_i P*P, sum_i P*Y) as float64 (k, v) (or (v,) for a 2-D P), in one kernel launch."""
    import cupy

    squeeze = P.ndim == 2
    if squeeze:
        P = P[None]
    if P.ndim != 3 or Y.ndim != 2 or P.shape[1:] != Y.shape or P.dtype != Y.dtype:
        raise ValueError(f"colsums2: need P (k, n, v) and Y (n, v) of one dtype, got {P.shape}/{P.dtype} "
                         f"and {Y.shape}/{Y.dtype}")
    if P.dtype not in (cupy.float32, cupy.float64):
        raise ValueError(f"colsums2: float32 or float64 only, got {P.dtype}")
    if P.strides[2] != P.itemsize or P.strides[1] % P.itemsize or P.strides[0] % P.itemsize:
        P = cupy.ascontiguousarray(P)
    if Y.strides[1] != Y.itemsize or Y.strides[0] % Y.itemsize:
        Y = cupy.ascontiguousarray(Y)
    k, n, v = P.shape
    pp = cupy.empty((k, v), dtype=cupy.float64)
    py = cupy.empty((k, v), dtype=cupy.float64)
    kern = _module().get_function("colsums2_f32" if P.dtype == cupy.float32 else "colsums2_f64")
    for a0 in range(0, k, _MAX_GRID_Y):          # grid.y is limited; k is a handful in practice
        kk = min(_MAX_GRID_Y, k - a0)
        Pa = P[a0:a0 + kk]
        grid = ((v + COLS - 1) // COLS, kk)
        kern(grid, (COLS, ROWS), (Pa, Y, pp[a0:a0 + kk], py[a0:a0 + kk], cupy.int64(n), cupy.int64(v),
                                  cupy.int64(_ld(Pa, 1)), cupy.int64(_ld(Y, 0)), cupy.int64(_ld(Pa, 0))))
    return (pp[0], py[0]) if squeeze else (pp, py)


def colsums2_reference(P, Y):
    """The plain-array equivalent of :func:`colsums2` (what the kernel replaces): float64 (k, v) each."""
    xp = _xp(P)
    P3 = P[None] if P.ndim == 2 else P
    P64 = P3.astype(xp.float64)
    Y64 = Y.astype(xp.float64)
    pp, py = (P64 * P64).sum(1), (P64 * Y64[None]).sum(1)
    return (pp[0], py[0]) if P.ndim == 2 else (pp, py)


def colsumsq(A):
    """sum(A*A, 0) for a cupy array (n, v), accumulated and returned in float64."""
    return _sumsq_kernel()(A, axis=0)


def _xp(a):
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy":
        import cupy

        return cupy
    import numpy

    return numpy
