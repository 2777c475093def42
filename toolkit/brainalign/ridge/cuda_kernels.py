"""Fused cupy kernels for the scoring pass (used only by the cupy backend; imported lazily).

After the GEMM ``P = (M * d_a) @ Z`` for one alpha, scoring needs ``sum_i P_ij^2`` and
``sum_i P_ij * Y_ij`` per column j. ``colsums2`` computes both in ONE read of P and Y (one thread
per column, rows walked in order so neighbouring threads read neighbouring addresses: coalesced;
float64 accumulators),
instead of materialising ``P * P`` and ``P * Y``. Nothing is compiled until first use, so importing
this module without a GPU is harmless.
"""
from __future__ import annotations

import functools

_SRC = r"""
template <typename T>
__device__ void colsums2_impl(const T* __restrict__ P, const T* __restrict__ Y,
                              T* __restrict__ pp, T* __restrict__ py,
                              const long long n, const long long v,
                              const long long ldp, const long long ldy) {
    long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= v) return;
    double a = 0, b = 0;  // accumulate in double: n can be thousands of rows
    for (long long i = 0; i < n; ++i) {
        double p = (double)P[i * ldp + j];
        a += p * p;
        b += p * (double)Y[i * ldy + j];
    }
    pp[j] = (T)a;
    py[j] = (T)b;
}
extern "C" __global__ void colsums2_f32(const float* P, const float* Y, float* pp, float* py,
                                        long long n, long long v, long long ldp, long long ldy) {
    colsums2_impl<float>(P, Y, pp, py, n, v, ldp, ldy);
}
extern "C" __global__ void colsums2_f64(const double* P, const double* Y, double* pp, double* py,
                                        long long n, long long v, long long ldp, long long ldy) {
    colsums2_impl<double>(P, Y, pp, py, n, v, ldp, ldy);
}
"""

_THREADS = 256


@functools.lru_cache(maxsize=None)
def _module():
    import cupy

    return cupy.RawModule(code=_SRC, options=("--std=c++11",),
                          name_expressions=None)


@functools.lru_cache(maxsize=None)
def _sumsq_kernel():
    import cupy

    return cupy.ReductionKernel("T x", "T y", "x * x", "a + b", "y = a", "0", "colsumsq")


def _row_major_ld(a):
    """Leading dimension (elements) of a 2-D row-major array with unit column stride."""
    if a.ndim != 2 or a.strides[1] != a.itemsize:
        raise ValueError("need a 2-D array with contiguous rows")
    return a.strides[0] // a.itemsize


def colsums2(P, Y):
    """Fused column sums for stacked predictions: P (k, n, v), Y (n, v) -> (sum P*P, sum P*Y),
    each (k, v); one kernel launch per stacked alpha, each reading P and Y once."""
    import cupy

    if P.ndim == 3:
        pairs = [colsums2_2d(P[i], Y) for i in range(P.shape[0])]
        return cupy.stack([a for a, _ in pairs]), cupy.stack([b for _, b in pairs])
    return colsums2_2d(P, Y)


def colsums2_2d(P, Y):
    """(sum(P*P, 0), sum(P*Y, 0)) for cupy arrays P, Y of equal shape (n, v), in one fused pass."""
    import cupy

    if P.shape != Y.shape or P.dtype != Y.dtype:
        raise ValueError(f"colsums2: shapes/dtypes differ {P.shape}/{P.dtype} vs {Y.shape}/{Y.dtype}")
    if P.strides[1] != P.itemsize:
        P = cupy.ascontiguousarray(P)
    if Y.strides[1] != Y.itemsize:
        Y = cupy.ascontiguousarray(Y)
    n, v = P.shape
    pp = cupy.empty(v, dtype=P.dtype)
    py = cupy.empty(v, dtype=P.dtype)
    name = "colsums2_f32" if P.dtype == cupy.float32 else "colsums2_f64"
    kern = _module().get_function(name)
    blocks = (v + _THREADS - 1) // _THREADS
    kern((blocks,), (_THREADS,), (P, Y, pp, py, cupy.int64(n), cupy.int64(v),
                                  cupy.int64(_row_major_ld(P)), cupy.int64(_row_major_ld(Y))))
    return pp, py


def colsumsq(A):
    """sum(A*A, 0) for a cupy array (n, v)."""
    return _sumsq_kernel()(A, axis=0)
