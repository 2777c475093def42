"""The shared ridge core's GPU-facing paths, tested on the CPU (numpy and torch-CPU run the same core);
the tests that need a real GPU skip cleanly without one (bench/gpu_check.py is the full GPU check)."""
import shutil
import subprocess
import sys

import numpy as np
import pytest

from brainalign.errors import ConfigError, DataError
from brainalign.ridge import FoldSolver, get_backend, kfold_splits, score_stream
from brainalign.ridge import backend as bk
from brainalign.ridge import solver as solver_mod
from brainalign.ridge.backend import NumpyBackend, cupy_works, torch_cuda_works
from brainalign.ridge.nested import prefetched
from test_ridge import make_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ALPHAS = np.logspace(-1, 4, 6)


def _solver(X, tr, te, backend="numpy", **kw):
    return FoldSolver(X[tr], X[te], ALPHAS, kfold_splits(tr.size, 4), backend=backend, n_jobs=1, **kw)


# ---- host-resident streaming: one block per fold, rows selected where the solver computes -----------

@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
def test_score_rows_equals_score_chunk_and_leaves_y_alone(backend):
    X, Y = make_data(120, 14, 40, seed=21)
    Y = Y.astype(np.float32)
    Y[:, 3] = 7.0                                   # constant: NaN, never a crash
    Y[5, 4] = np.nan
    rng = np.random.default_rng(2)
    perm = rng.permutation(120)
    tr, te = np.sort(perm[:96]), np.sort(perm[96:])  # scattered rows: the gather path
    solver = _solver(X, tr, te, backend)
    before = Y.copy()
    ref = solver.score_chunk(Y[tr], Y[te])
    got = solver.score_rows(Y, tr, te)
    np.testing.assert_array_equal(Y, before)        # the caller's block is never modified
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a, b, atol=1e-7)
    assert np.isnan(got.r[[3, 4]]).all() and np.isfinite(np.delete(got.r, [3, 4])).all()
    contiguous = _solver(X, np.arange(96), np.arange(96, 120), backend)   # slices: no gather at all
    a = contiguous.score_chunk(Y[:96], Y[96:])
    b = contiguous.score_rows(Y, np.arange(96), np.arange(96, 120))
    np.testing.assert_allclose(a.r, b.r, atol=1e-7)


def test_native_tensors_are_scored_in_place_on_their_device():
    torch = pytest.importorskip("torch")
    X, Y = make_data(100, 10, 30, seed=22)
    Y = Y.astype(np.float32)
    tr, te = np.arange(80), np.arange(80, 100)
    ref = _solver(X, tr, te).score_chunk(Y[tr], Y[te])
    solver = _solver(X, tr, te, "torch-cpu")
    Yt = torch.from_numpy(Y.copy())
    got = solver.score_rows(Yt, tr, te)
    torch.testing.assert_close(Yt, torch.from_numpy(Y))            # not centred in place
    np.testing.assert_allclose(got.r, ref.r, atol=2e-6)
    np.testing.assert_array_equal(got.best_alpha, ref.best_alpha)
    chunk = solver.score_chunk(Yt[:80], Yt[80:])
    np.testing.assert_allclose(chunk.r, ref.r, atol=2e-6)
    with pytest.raises(DataError, match=r"Y_train: expected floating-point values, got dtype torch.int64"):
        solver.score_chunk(Yt[:80].long(), Yt[80:])
    with pytest.raises(DataError, match=r"score_rows: 80 train / 19 test rows given, solver expects 80 / 20"):
        solver.score_rows(Yt, tr, te[:-1])
    with pytest.raises(DataError, match=r"score_rows: test_rows out of range \[0, 100\) \(min 81, max 100\)"):
        solver.score_rows(Yt, tr, te + 1)


def test_score_stream_prefetch_equals_plain_loop_and_stops_cleanly():
    X, Y = make_data(90, 12, 130, seed=23)
    Y = Y.astype(np.float32)
    tr, te = np.arange(70), np.arange(70, 90)
    solver = _solver(X, tr, te)
    plain = score_stream(solver, Y, tr, te, chunk=32, prefetch=False)
    fetched = score_stream(solver, Y, tr, te, chunk=32)
    for a, b in zip(plain, fetched):
        np.testing.assert_array_equal(a, b)
    ref = solver.score_chunk(Y[tr], Y[te])
    np.testing.assert_allclose(fetched.r, ref.r, atol=1e-6)

    assert list(prefetched(iter(range(5)))) == [0, 1, 2, 3, 4]
    assert list(prefetched([])) == []

    def failing():
        yield 1
        raise OSError("disk went away")

    got = []
    with pytest.raises(OSError, match="disk went away"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1]
    for _item in prefetched(iter(range(100))):       # an early break neither hangs nor leaks a thread
        break


# ---- memory: the stacked scoring buffers are bounded by the batch and the rank, never by n_alphas ---

class _RecordingBackend(NumpyBackend):
    """numpy, remembering the largest buffer the scoring loop asks for."""

    def __init__(self):
        super().__init__()
        self.biggest = 0

    def zeros(self, shape, dtype="float32"):
        out = super().zeros(shape, dtype)
        self.biggest = max(self.biggest, out.nbytes)
        return out


def test_scaled_map_buffer_is_bounded_with_many_alphas_and_a_wide_design(monkeypatch):
    X, Y = make_data(400, 300, 8, seed=24)
    alphas = np.logspace(-2, 6, 40)
    tr, te = np.arange(400), None
    ref = FoldSolver(X, None, alphas, kfold_splits(400, 5), n_jobs=1).fit_chunk(Y, want_coef=False)
    monkeypatch.setattr(solver_mod, "_GROUP_BYTES", 2**20)
    rec = _RecordingBackend()
    got = FoldSolver(X, te, alphas, kfold_splits(400, 5), backend=rec, n_jobs=1).fit_chunk(Y, want_coef=False)
    # 40 alphas x 80 validation rows x rank 300 x 4 bytes = 3.8 MB if every alpha were stacked at once
    assert 0 < rec.biggest <= 2**20
    np.testing.assert_allclose(got.cv_scores, ref.cv_scores, atol=1e-6)
    np.testing.assert_array_equal(got.best_alpha, ref.best_alpha)
    assert tr.size == 400


# ---- backend: auto picks a GPU only on measured evidence; cupy found whatever wheel provides it ------

def _fake_gpu(monkeypatch, cupy=True, torch=False, name="NVIDIA H200"):
    monkeypatch.setattr(bk, "cupy_status", lambda: (cupy, "fake cupy" if cupy else "cupy import error: fake"))
    monkeypatch.setattr(bk, "torch_cuda_status", lambda: (torch, "fake torch" if torch else "no CUDA device: fake"))
    monkeypatch.setattr(bk, "_gpu_name", lambda backend: name)


def _record(**kw):
    return {"backend": "cupy", "gpu": "NVIDIA H200", "speedup": 4.0, "date": "2031-01-01",
            "source": "bench/gpu_check.py report, abc123", **kw}


def test_auto_stays_on_numpy_without_measured_evidence(monkeypatch):
    _fake_gpu(monkeypatch, cupy=False)
    name, why = bk.auto_choice(evidence=[_record()])
    assert name == "numpy" and why.startswith("no usable GPU (cupy import error: fake; no CUDA device: fake)")
    _fake_gpu(monkeypatch, cupy=True)
    name, why = bk.auto_choice()                      # the shipped evidence: nothing measured yet
    assert name == "numpy" and "NVIDIA H200" in why and "no measured evidence" in why
    for rec in ([_record(speedup=0.8)], [_record(gpu="NVIDIA A100-SXM4-80GB")], [_record(backend="torch-cuda")]):
        assert bk.auto_choice(evidence=rec)[0] == "numpy", rec


def test_auto_picks_the_fastest_measured_gpu_backend(monkeypatch):
    _fake_gpu(monkeypatch, cupy=True, torch=True)
    name, why = bk.auto_choice(evidence=[_record(speedup=3.0), _record(backend="torch-cuda", speedup=5.5)])
    assert name == "torch-cuda"
    assert why == "torch-cuda measured 5.5x faster than numpy on NVIDIA H200 (2031-01-01, bench/gpu_check.py report, abc123)"
    assert bk.auto_choice(evidence=[_record(speedup=3.0)])[0] == "cupy"


def test_shipped_gpu_evidence_records_are_complete():
    from brainalign.ridge.gpu_evidence import MEASURED

    for rec in MEASURED:
        assert set(rec) == {"backend", "gpu", "speedup", "date", "source"}, rec
        assert rec["backend"] in ("cupy", "torch-cuda") and float(rec["speedup"]) > 0
        assert "gpu_check" in rec["source"]


def _fake_distribution(root, dist, version):
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "top_level.txt").write_text("cupy\ncupy_backends\ncupyx\n")


@pytest.mark.parametrize("dist", ["cupy-cuda12x", "cupy-cuda13x"])
def test_cupy_is_found_whichever_wheel_provides_it(tmp_path, monkeypatch, dist):
    from brainalign import provenance

    _fake_distribution(tmp_path, dist, "14.2.0")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert bk.cupy_distribution() == dist
    provenance.package_versions.cache_clear()
    try:
        assert provenance.package_versions()["cupy"] == f"14.2.0 ({dist})"
    finally:
        provenance.package_versions.cache_clear()


def test_unusable_cupy_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)    # what a machine without the wheel sees
    bk.cupy_status.cache_clear()
    try:
        ok, why = bk.cupy_status()
        assert not ok and why.startswith("cupy import error: ModuleNotFoundError: import of cupy halted")
        with pytest.raises(ConfigError, match=r"ridge backend 'cupy' is not usable here: cupy import error"):
            get_backend("cupy")
    finally:
        bk.cupy_status.cache_clear()
    if not torch_cuda_works():
        with pytest.raises(ConfigError, match=r"ridge backend 'torch-cuda': no CUDA device for torch"):
            get_backend("torch-cuda")


# ---- the fused CUDA kernel: its source compiles where nvcc exists; it runs where a GPU exists -------

@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_fused_kernel_source_compiles_with_nvcc(tmp_path):
    from brainalign.ridge.cuda_kernels import SOURCE

    src = tmp_path / "colsums2.cu"
    src.write_text(SOURCE)
    out = subprocess.run(["nvcc", "-ptx", "-arch=compute_75", "--std=c++11", "-o", str(tmp_path / "k.ptx"), str(src)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    assert ".visible .entry colsums2_f32(" in ptx and ".visible .entry colsums2_f64(" in ptx


@pytest.mark.skipif(not cupy_works(), reason="cupy needs a working GPU")
def test_fused_kernel_matches_plain_arrays_on_gpu():  # pragma: no cover - runs only on a GPU machine
    import cupy

    from brainalign.ridge.cuda_kernels import colsums2, colsums2_reference, colsumsq

    rng = np.random.default_rng(3)
    for k, n, v in ((1, 7, 5), (3, 97, 1000), (6, 480, 4133)):
        P = cupy.asarray(rng.standard_normal((k, n, v), dtype=np.float32))
        Y = cupy.asarray(rng.standard_normal((n, v), dtype=np.float32))
        for got, want in zip(colsums2(P, Y), colsums2_reference(P, Y)):
            np.testing.assert_allclose(cupy.asnumpy(got), cupy.asnumpy(want), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(cupy.asnumpy(colsumsq(Y)), cupy.asnumpy((Y.astype(np.float64) ** 2).sum(0)),
                                   rtol=1e-12)


@pytest.mark.skipif(not cupy_works(), reason="cupy needs a working GPU")
def test_cupy_device_resident_targets_match_numpy():  # pragma: no cover - runs only on a GPU machine
    import cupy

    X, Y = make_data(150, 40, 300, seed=5)
    tr, te = np.arange(120), np.arange(120, 150)
    ref = _solver(X, tr, te).score_rows(Y, tr, te)
    got = _solver(X, tr, te, "cupy").score_rows(cupy.asarray(Y, dtype=cupy.float32), tr, te)
    np.testing.assert_allclose(got.r, ref.r, atol=5e-6)


@pytest.mark.skipif(not torch_cuda_works(), reason="torch sees no CUDA device")
def test_torch_cuda_backend_matches_numpy():  # pragma: no cover - runs only on a GPU machine
    X, Y = make_data(150, 40, 300, seed=5)
    tr, te = np.arange(120), np.arange(120, 150)
    ref = _solver(X, tr, te).score_chunk(Y[tr], Y[te])
    got = _solver(X, tr, te, "torch-cuda").score_chunk(Y[tr], Y[te])
    np.testing.assert_allclose(got.cv_scores, ref.cv_scores, atol=5e-6)
    np.testing.assert_allclose(got.r, ref.r, atol=5e-6)
