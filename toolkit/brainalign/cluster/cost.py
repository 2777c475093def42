"""The fit's cost model: wall time, peak memory and bytes read of ``brainalign fit`` for a study shape.

One model, used by ``brainalign submit`` (estimates in the plan, SLURM ``time``/``mem`` where the profile
leaves them out, the cannot-fit checks), by ``python -m brainalign.cluster.cost`` (the sizing calculator
behind the README's *Sizing*) and checked by ``bench/cost_model.py`` (``make bench``), which also measures
the machine rates it uses and rewrites them in ``rates.json`` next to this file.

**Shape** (:class:`FitShape`): n TRs per subject, p features per design (hidden size x FIR delays), v voxels,
S subjects, D designs (feature sets + partition subset models) x L layers, K outer folds of equal size (runs
grouped, ``align.outer_folds``), k = K - 1 inner folds (leave one training fold out), A alphas, voxel
chunks of w = ``fit.chunk_voxels``. Per outer fold the training set has n_tr = n (K-1)/K rows and the test
n_te = n/K; per inner fold n_val = n_tr/k validation and n_in = n_tr - n_val training rows; r = min(p, rows)
is the rank of a decomposition.

**Counts** (:func:`counts`, one function per engine; ``ENGINE`` is the one ``brainalign fit`` runs) split
the work into *phases*, each a sum of operation kinds:

``design``  X-only work of one design: float64 GEMMs (Gram matrices, factors), eigendecompositions
            (``eigh`` of an m x m matrix counted as EIGH_FLOPS(m) = 10/3 m^3 flops: tridiagonalisation
            4/3 m^3 + back-transformation 2 m^3), memory-bound passes over X, and X read from design.h5.
``chunk``   the per-voxel work of one subject's chunk: float32 GEMMs, memory-bound passes over Y and
            the predictions (bytes touched), the chunk read from bold.h5.

Engine ``fold`` (the engine before issue 20, :class:`brainalign.ridge.FoldSolver` per outer fold): per
(design, outer fold) the design phase factorises k + 1 training sets (Gram 2 n_tr p^2 + per inner fold the
downdate 2 n_val p^2, eigh(p), U = Xc V: 2 n_in p r, M = X_val V: 2 n_val p r; dual form with the n_in x n_in
kernel when p > n_in); per (design, outer fold, subject, chunk) the chunk phase reads n w values and does
per inner fold U^T Y (2 r n_in w) + A scoring GEMMs (2 A n_val r w), then the refit (2 r n_tr w) and the test
predictions (2 n_te r w) -- K (k + A) n p w multiply-adds per design, and the BOLD read K times.

Engine ``stats`` (issue 20, :class:`brainalign.ridge.suffstats.NestedEngine`; its docstring's counts x 2):
atoms = the K outer folds; per design the atom Grams (2 n p^2), then per training set -- K outer (n_tr rows,
validated on n_te) and K k inner (n_in rows, validated on n_val) -- one eigh(p) and the validation set's Gram
in the eigenbasis H = V^T G_S V (2 p^2 r + 2 p r^2; the rows M = X_S V, 2 n_S p r, when n_S <= r); per
(design, subject, chunk) ONE pass over Y for the atom cross-products (2 n p w, float64), then per training
set the projections V^T C_T, V^T C_S (4 r p w, float64) and per alpha the sum of squared predictions from
H (2 r^2 w, float32; 2 n_S r w in the rows form) plus the numerators (2 A r w). The BOLD is read once per
design.

**Time** of one rank with c cores: sum over phases of gemm32 / R32 + gemm64 / R64 + eigh / Re + elem / Rm,
divided by c (inner folds run in parallel, one BLAS thread each), plus bytes read / Rread:
``t = e_compute (gemm + eigh seconds) + e_elem (pass seconds) + read + o_design`` per design instance and the
same with ``o_chunk`` per chunk instance. The R's are this machine's measured single-core rates
(:class:`Rates`: float32/float64 GEMM at the fit's shapes, eigh, memory-bound passes, HDF5 read, all in CPU
seconds); the two factors e and the two fixed overheads o are fitted by ``bench/cost_model.py`` on
calibration shapes (non-negative least squares on the relative error) and the model is then checked on
held-out shapes. **Memory** of one rank: the resident baseline of a fit process
plus the design phase's resident arrays plus one chunk's working set (the peak of the two phases' live
arrays, counted array by array). **Data read**: X once per (design, outer fold) and rank that builds it, the
BOLD chunk per (design, outer fold, subject, chunk) for engine ``fold``; once per (design, subject, chunk)
for ``stats``.

**GPU** (``backend: cupy`` / ``torch`` with a GPU): the same counts at the GPU's rates: an *assumed* float32
GEMM rate (the H100's published 67 TFLOP/s FP32 x 0.5 efficiency, see ``rates.json`` ``gpu``), float64 GEMM
and eigh rates, HBM bandwidth for the passes, and PCIe for moving each chunk to the device. These are
assumptions, labelled so wherever they are printed, until ``bench/gpu_check.py`` runs on a GPU.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

RATES_FILE = Path(__file__).with_name("rates.json")
ENGINE = "stats"          # the engine `brainalign fit` runs (counts() below); "fold": the engine before issue 20
# fitted by bench/cost_model.py: factors on the compute (GEMM + eigh) and memory-bound seconds, and the fixed
# seconds of one design instance (solver build: Python, checks, X read set-up) and of one chunk instance
# and peak memory = base + mem x the counted arrays + mem_mib (allocator slack, lazily imported modules)
PHASE_TERMS = ("compute", "elem", "design_s", "chunk_s", "mem", "mem_mib")
NO_OVERHEAD = {"compute": 1.0, "elem": 1.0, "design_s": 0.0, "chunk_s": 0.0, "mem": 1.0, "mem_mib": 0.0}
GiB = 2.0 ** 30


def eigh_flops(m: float) -> float:
    """Flops of a symmetric eigendecomposition with vectors of an m x m matrix (convention of this model)."""
    return 10.0 / 3.0 * float(m) ** 3


# ---- shapes ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitShape:
    """A study as the fit sees it (see the module docstring for the symbols)."""

    n: int                      # TRs per subject (all runs, after trimming)
    p: int                      # features per design (hidden x delays)
    v: int                      # voxels / parcels per subject
    subjects: int = 1
    designs: int = 1            # feature sets (+ partition subset models)
    layers: int = 1
    K: int = 10                 # outer folds
    k: Optional[int] = None     # inner folds (None: K - 1, leave one training fold out)
    alphas: int = 10
    chunk: int = 4096           # fit.chunk_voxels

    @property
    def inner(self) -> int:
        return self.K - 1 if self.k is None else self.k

    def rows(self) -> tuple[float, float, float, float]:
        """(n_te, n_tr, n_val, n_in): rows of an outer test fold, an outer training set, an inner validation
        fold and an inner training set (equal folds)."""
        n_te = self.n / self.K
        n_tr = self.n - n_te
        n_val = n_tr / self.inner
        return n_te, n_tr, n_val, n_tr - n_val

    @property
    def chunks(self) -> int:
        return math.ceil(self.v / self.chunk)

    @property
    def width(self) -> int:
        return min(self.chunk, self.v)

    def describe(self) -> str:
        return (f"n {self.n:,} TRs x p {self.p:,} features x v {self.v:,} voxels, {self.subjects} subject(s), "
                f"{self.designs} design(s) x {self.layers} layer(s), K {self.K} outer / k {self.inner} inner folds, "
                f"{self.alphas} alphas, chunks of {self.chunk:,}")


# ---- rates ---------------------------------------------------------------------------------------------

@dataclass
class DeviceRates:
    """Single-core (CPU) or single-device (GPU) rates, in GFLOP/s and GB/s."""

    gemm32_gflops: float = 50.0
    gemm64_gflops: float = 25.0
    eigh_gflops: float = 10.0       # EIGH_FLOPS(m) per second, m ~ p
    elem_gbps: float = 5.0          # memory-bound passes (bytes touched per second)
    h2d_gbps: float = 0.0           # host -> device copies (GPU only; 0: none)
    note: str = ""


@dataclass
class Rates:
    """Measured machine rates + fitted efficiency factors (``rates.json``, rewritten by bench/cost_model.py)."""

    machine: str = "unmeasured defaults"
    measured: str = ""
    cpu: DeviceRates = field(default_factory=DeviceRates)
    gpu: DeviceRates = field(default_factory=lambda: DeviceRates(
        gemm32_gflops=33_500.0, gemm64_gflops=33_500.0, eigh_gflops=250.0, elem_gbps=1_675.0, h2d_gbps=25.0,
        note="ASSUMED, not measured: H100 SXM published 67 TFLOP/s FP32 and FP64-tensor x 0.5; "
             "eigh 0.25 TFLOP/s-equivalent (cuSOLVER syevd, p ~ 3k); HBM3 3.35 TB/s x 0.5; PCIe 5 x16 25 GB/s"))
    read_gbps: float = 1.0           # HDF5 read bandwidth of one process
    rss_base_mib: float = 150.0      # resident memory of a fit process before any data
    startup_s: float = 3.0           # process start, imports, scores.h5 assembly
    efficiency: dict = field(default_factory=dict)   # {engine: {PHASE_TERMS}}: fitted on the engine fit ran then

    @classmethod
    def load(cls, path: Optional[Path] = None) -> "Rates":
        path = Path(path or RATES_FILE)
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        r = cls(**{k: v for k, v in data.items() if k not in ("cpu", "gpu", "efficiency", "engine")})
        r.cpu = DeviceRates(**data.get("cpu", {}))
        r.gpu = DeviceRates(**data.get("gpu", {})) if "gpu" in data else r.gpu
        eff = data.get("efficiency", {})
        if "compute" in eff:                        # one engine's factors (older files)
            eff = {data.get("engine", "fold"): eff}
        r.efficiency = {e: {**NO_OVERHEAD, **{k: v for k, v in f.items() if k in PHASE_TERMS}} for e, f in eff.items()}
        return r

    def factors(self, engine: str) -> dict:
        """The fitted factors of ``engine``; an engine never calibrated on this machine borrows those of one
        that was (the same kinds of operations), else none."""
        if engine in self.efficiency:
            return self.efficiency[engine]
        return next(iter(self.efficiency.values()), dict(NO_OVERHEAD))

    def save(self, path: Optional[Path] = None):
        Path(path or RATES_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")


def gpu_rates(rep: dict, assumed: DeviceRates) -> DeviceRates:
    """The GPU rates measured by bench/gpu_check.py (its gpu_check.json, as a dict): float32 GEMM (cuBLAS
    via torch or cupy, non-TF32), device copy bandwidth (the passes), host-to-device copies; float64 GEMM and
    eigh, which it does not measure, stay assumed (and the note says which are which)."""
    gemm = rep.get("sections", {}).get("gemm", {}).get("measurements", {})
    f32 = [gemm[k]["tflops"] for k in ("torch_float32", "cupy_float32") if k in gemm]
    if not f32:
        raise ValueError("gpu_check.json: no GPU float32 GEMM measurement (was the gemm section skipped?)")
    out = dataclasses.replace(assumed, gemm32_gflops=max(f32) * 1e3)
    measured = ["float32 GEMM"]
    if "device_copy" in gemm:
        out.elem_gbps, measured = gemm["device_copy"]["gb_per_s"], measured + ["device copies"]
    if "h2d_pageable" in gemm:
        out.h2d_gbps, measured = gemm["h2d_pageable"]["gb_per_s"], measured + ["host-to-device copies"]
    out.note = (f"{', '.join(measured)} measured by bench/gpu_check.py ({rep.get('started', '?')}); "
                f"float64 GEMM and eigh still ASSUMED: {assumed.note}")
    return out


# ---- counts --------------------------------------------------------------------------------------------

@dataclass
class Phase:
    """Operation counts of one phase instance (float64/32 GEMM flops, eigh flops, bytes touched/read)."""

    gemm32: float = 0.0
    gemm64: float = 0.0
    eigh: float = 0.0
    elem: float = 0.0        # bytes touched by memory-bound passes
    read: float = 0.0        # bytes read from HDF5
    mem: float = 0.0         # peak bytes of the phase's live arrays
    resident: float = 0.0    # bytes the phase keeps alive while the next phase runs

    def __add__(self, o: "Phase") -> "Phase":
        return Phase(*(getattr(self, f.name) + getattr(o, f.name) for f in dataclasses.fields(self)))

    def scaled(self, s: float) -> "Phase":
        return Phase(*(getattr(self, f.name) * s for f in dataclasses.fields(self)))


@dataclass
class Counts:
    """Counts of a whole fit: ``design`` x ``n_design`` + ``chunk`` x ``n_chunk`` (+ per-unit overheads)."""

    engine: str
    design: Phase
    n_design: int            # design-phase instances (each one unit of X-only work)
    chunk: Phase
    n_chunk: int             # chunk-phase instances (subject x voxel chunk x design [x outer fold])
    units: int               # work units the scheduler hands out (shard entries)
    data_passes: int         # how many times the whole BOLD is read
    groups_per_design: int = 1   # scheduling groups sharing one design instance: each rank that takes one builds it
    chunk_live: int = 1          # chunk-phase states alive at once (stats: every subject's statistics of a group)
    assembly_read: float = 0.0   # rank 0 reads /r back for /r_mean (S x D x L x K x v float32)

    @property
    def bold_bytes_read(self) -> float:
        return self.chunk.read * self.n_chunk

    @property
    def bytes_read(self) -> float:
        return self.bold_bytes_read + self.design.read * self.n_design + self.assembly_read

    @property
    def flops(self) -> float:
        d, c = self.design, self.chunk
        return (d.gemm32 + d.gemm64 + d.eigh) * self.n_design + (c.gemm32 + c.gemm64 + c.eigh) * self.n_chunk


def _fold_engine(s: FitShape, cores: int = 1) -> Counts:
    """Counts of the per-outer-fold FoldSolver engine (the engine before issue 20)."""
    n, p, K, k, A, w = s.n, s.p, s.K, s.inner, s.alphas, s.width
    n_te, n_tr, n_val, n_in = s.rows()
    f32, f64 = 4, 8
    d = Phase(read=n * p * f32)
    par = min(cores, k + 1)                      # factorisations alive at once (one per core)
    gram = p <= n_tr
    if gram:
        d.gemm64 += 2 * n_tr * p * p             # S_all = X^T X
    fold_live = []
    for m_tr, m_ev in [(n_in, n_val)] * k + [(n_tr, n_te)]:
        r = min(p, m_tr)
        if p <= m_tr:
            if gram and m_tr == n_in:
                d.gemm64 += 2 * m_ev * p * p     # downdate S_all - X_val^T X_val
            d.eigh += eigh_flops(p)
            d.gemm64 += 2 * m_tr * p * r         # U = Xc V / s
            trans = (2 * m_tr * p + 2 * p * p) * f64
        else:                                    # dual: kernel Xc Xc^T, eigh(n_in), V = Xc^T U / s
            d.gemm64 += 2 * m_tr * m_tr * p * 2
            d.eigh += eigh_flops(m_tr)
            trans = (2 * m_tr * p + 2 * m_tr * m_tr) * f64
        d.gemm64 += 2 * m_ev * p * r             # M = X_eval V
        d.elem += (4 * m_tr * p + 3 * m_ev * p) * f64 + (m_tr + m_ev) * r * (f64 + f32)
        fold_live.append(((m_tr + m_ev) * r * f32 + A * r * f32 * 2, trans))
    kept = sum(a for a, _ in fold_live)
    trans = max(t for _, t in fold_live) * par
    base = n * p * f32 + n_tr * p * f64 + (p * p * f64 if gram else 0)
    d.mem = base + kept + trans
    d.resident = kept + n * p * f32
    # chunk: one subject, one voxel chunk, one outer fold
    c = Phase(read=n * w * f32)
    r_in, r_tr = min(p, n_in), min(p, n_tr)
    c.gemm32 = k * (2 * r_in * n_in * w + 2 * A * n_val * r_in * w) + 2 * r_tr * n_tr * w + 2 * n_te * r_tr * w
    # passes: copy-in + isfinite/max/min + centre + sums of the training rows; per fold: colsum, Yv copy,
    # centred copy, colsumsq; per alpha the predictions written by the GEMM and read twice (P^2, P*Y) + Y_val
    c.elem = (n_tr * w * f32 * 7 + n_te * w * f32 * 6
              + k * (n_val * w * f32 * 5 + A * (n_val * w * f32 * 4 + n_val * r_in * f32 * 2)))
    group = 48 * 2 ** 20
    per_fold = (2 * A * w * f64 + r_in * w * f32 + 2 * n_val * w * f32
                + min(group, A * n_val * w * f32) + min(group, A * n_val * r_in * f32))
    c.mem = n * w * f32 * 2 + n_tr * w * f32 + min(cores, k) * per_fold + A * w * f64 * 2
    return Counts("fold", d, s.designs * s.layers * K, c, s.designs * s.layers * K * s.subjects * s.chunks,
                  s.designs * s.layers * K * s.chunks, s.designs * s.layers * K)


def _stats_engine(s: FitShape, cores: int = 1) -> Counts:
    """Counts of the sufficient-statistics engine (issue 20, brainalign.ridge.suffstats.NestedEngine: its
    docstring's operation counts, x 2 for flops). Atoms = the K outer folds (leave one fold out, nested)."""
    n, p, K, k, A, w = s.n, s.p, s.K, s.inner, s.alphas, s.width
    n_te, n_tr, n_val, n_in = s.rows()
    f32, f64 = 4, 8
    F = K                                        # atoms
    sets = [(n_tr, n_te, 1, 1)] * K + [(n_in, n_val, A, 2)] * (K * k)   # (n_T, n_S, alphas scored, atoms summed)
    d = Phase(read=n * p * f32)
    d.gemm64 = 2 * n * p * p                     # per-atom Grams X_a^T X_a
    d.elem = n * p * (f32 + 3 * f64)             # X64 = X - mean
    resident = n * p * f64 + F * p * p * f64
    c = Phase(read=n * w * f32)
    c.gemm64 = 2 * n * p * w                     # C_a = X_a^T Y_a: the one pass over Y
    c.elem = n * w * (f32 + 5 * f64)             # finite/min/max, Y0, Ya = Y - shift, sums
    trans = 0.0
    for n_T, n_S, a_s, summed in sets:
        r = min(p, n_T)
        gram = n_S > r
        if p <= n_T:
            d.eigh += eigh_flops(p)
            d.elem += F * p * p * f64            # G_T = sum of atom Grams
        else:                                    # the kernel of the rows
            d.gemm64 += 2 * n_T * n_T * p + 2 * n_T * p * r
            d.eigh += eigh_flops(n_T)
        d.gemm64 += (2 * p * p * r + 2 * p * r * r) if gram else 2 * n_S * p * r    # H = V^T G_S V, or M
        resident += p * r * f64 + (r * r if gram else n_S * r) * f32 + 3 * A * r * f64
        trans = max(trans, 3 * p * p * f64 + (n_T * p * f64 if p > n_T else 0))
        # per chunk: C_T and C_S from the atom sums, Z = V^T C_T and q = V^T C_S (float64)
        c.gemm64 += 2 * 2 * r * p * w + (2 * a_s * r * w if a_s > 1 else 2 * r * w)   # + numerators
        c.elem += (summed + 1) * p * w * f64 * 2 + 4 * r * w * f64
        c.gemm32 += a_s * (2 * r * r * w if gram else 2 * n_S * r * w)                # each alpha's sum(P^2)
        # per alpha: b = Z d_a in the working dtype (read + write), the einsum over b and Q b (or M b), sums
        c.elem += a_s * (r * w * f32 * 2 + (r * w if gram else n_S * w) * f32 * 2 + w * f64 * 4)
    d.resident = resident
    d.mem = resident + n * p * f32 + min(cores, len(sets)) * trans
    par = min(cores, k)
    c.mem = (n * w * f32 * 2 + n * w * f64 / F * min(cores, F) + F * p * w * f64 + p * w * f64
             + par * (2 * p * w * f64 + 2 * p * w * f64 + 3 * A * w * f64 + 3 * p * w * f64))
    n_designs = s.designs * s.layers
    c.resident = F * p * w * f64 + 3 * F * w * f64                  # one subject's chunk statistics, kept
    return Counts("stats", d, n_designs, c, n_designs * s.subjects * s.chunks, n_designs * s.chunks * K, n_designs,
                  groups_per_design=s.chunks, chunk_live=s.subjects)


ENGINES = {"fold": _fold_engine, "stats": _stats_engine}


def counts(shape: FitShape, engine: Optional[str] = None, cores: int = 1) -> Counts:
    """The operation counts of ``brainalign fit`` on ``shape`` (``engine``: ENGINE by default)."""
    name = engine or ENGINE
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
    c = ENGINES[name](shape, max(1, int(cores)))
    c.assembly_read = 4.0 * shape.subjects * shape.designs * shape.layers * shape.K * shape.v
    return c


# ---- time and memory -------------------------------------------------------------------------------------

def _compute_s(ph: Phase, dev: DeviceRates, h2d: bool = False) -> tuple[float, float]:
    """(GEMM + eigh seconds, memory-bound seconds) of one phase instance on one core / device."""
    g = ph.gemm32 / (dev.gemm32_gflops * 1e9) + ph.gemm64 / (dev.gemm64_gflops * 1e9) + ph.eigh / (
        dev.eigh_gflops * 1e9)
    m = ph.elem / (dev.elem_gbps * 1e9)
    if h2d and dev.h2d_gbps:
        m += ph.read / (dev.h2d_gbps * 1e9)
    return g, m


@dataclass
class Estimate:
    """The model's answer for one fit job."""

    shape: FitShape
    engine: str
    ranks: int
    cores_per_rank: int
    gpu: bool
    wall_s: float                # the job's wall time (all ranks working, plus startup)
    cpu_s: float                 # rank-seconds of work (busy time summed over ranks)
    mem_rank_bytes: float        # peak resident memory of one rank
    bytes_read: float            # bytes read from HDF5, all ranks together
    flops: float
    units: int
    data_passes: int
    design_s: float              # one design-phase instance on one rank
    chunk_s: float               # one chunk-phase instance on one rank
    assumed: str = ""            # what is assumed rather than measured (GPU rates, read bandwidth)

    @property
    def mem_rank_gib(self) -> float:
        return self.mem_rank_bytes / GiB

    def core_hours(self) -> float:
        return self.cpu_s * self.cores_per_rank / 3600.0

    def line(self) -> str:
        return (f"{fmt_time(self.wall_s)} wall on {self.ranks} rank(s) x {self.cores_per_rank} core(s)"
                f"{' + 1 GPU each' if self.gpu else ''}, {self.mem_rank_gib:.1f} GiB per rank, "
                f"{fmt_bytes(self.bytes_read)} read ({self.data_passes} pass{'es' if self.data_passes > 1 else ''} "
                f"over the BOLD), {fmt_flops(self.flops)}, engine {self.engine}")


def estimate(shape: FitShape, ranks: int = 1, cores_per_rank: int = 1, gpu: bool = False,
             rates: Optional[Rates] = None, engine: Optional[str] = None,
             read_gbps: Optional[float] = None) -> Estimate:
    """Wall time, memory per rank and bytes read of the fit of ``shape`` on ``ranks`` ranks.

    ``gpu``: every rank drives one GPU at ``rates.gpu`` (assumed unless measured). ``read_gbps``: the
    filesystem bandwidth one rank reads at (default: the measured ``rates.read_gbps``)."""
    rates = rates or Rates.load()
    ranks, cores = max(1, int(ranks)), max(1, int(cores_per_rank))
    cnt = counts(shape, engine, cores=1 if gpu else cores)
    eff = rates.factors(cnt.engine)
    dev = rates.gpu if gpu else rates.cpu
    par = 1 if gpu else cores
    dg, dm = _compute_s(cnt.design, dev)
    cg, cm = _compute_s(cnt.chunk, dev, h2d=gpu)
    rbw = (read_gbps or rates.read_gbps) * 1e9
    design_s = (eff["compute"] * dg + eff["elem"] * dm) / par + cnt.design.read / rbw + eff["design_s"]
    chunk_s = (eff["compute"] * cg + eff["elem"] * cm) / par + cnt.chunk.read / rbw + eff["chunk_s"]
    # each rank builds the design of the scheduling groups it takes (brainalign.sharding.scheduler): the fold
    # engine's group is one (design, outer fold), built once; the statistics engine's groups are the voxel
    # chunks of one (feature set, layer), which the ranks take side by side, each building that design
    builds = cnt.n_design * min(ranks, cnt.groups_per_design)
    work = builds * design_s + cnt.n_chunk * chunk_s
    wall = work / ranks + rates.startup_s
    wall = max(wall, design_s + chunk_s * shape.subjects + rates.startup_s)   # at least one whole unit
    arrays = max(cnt.design.mem, cnt.design.resident + cnt.chunk.mem + (cnt.chunk_live - 1) * cnt.chunk.resident)
    mem = (rates.rss_base_mib + eff["mem_mib"]) * 2 ** 20 + eff["mem"] * arrays
    read = builds * cnt.design.read + cnt.bold_bytes_read + cnt.assembly_read
    wall += cnt.assembly_read / rbw
    assumed = []
    if gpu:
        assumed.append(f"GPU rates {dev.note or 'assumed'}")
    if read_gbps:
        assumed.append(f"read bandwidth {read_gbps:g} GB/s per rank")
    return Estimate(shape, cnt.engine, ranks, cores, gpu, wall, work, mem, read, cnt.flops, cnt.units,
                    cnt.data_passes, design_s, chunk_s, "; ".join(assumed))


# ---- formatting ------------------------------------------------------------------------------------------

def fmt_time(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    if s < 72 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def fmt_flops(f: float) -> str:
    for unit, size in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if f >= size:
            return f"{f / size:.3g} {unit}"
    return f"{f / 1e6:.3g} MFLOP"


def fmt_bytes(b: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b:.0f} B"


def slurm_time(seconds: float) -> str:
    """A SLURM time string (D-HH:MM:SS) for ``seconds``, rounded up to whole minutes."""
    m = max(1, math.ceil(seconds / 60))
    d, m = divmod(m, 1440)
    h, m = divmod(m, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


# ---- the sizing calculator --------------------------------------------------------------------------------

def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m brainalign.cluster.cost",
                                 description="Project the fit's wall time, memory and data read for a study shape.")
    ap.add_argument("--n", type=int, required=True, help="TRs per subject")
    ap.add_argument("--p", type=int, required=True, help="features per design (hidden x delays)")
    ap.add_argument("--v", type=int, required=True, help="voxels (or parcels) per subject")
    ap.add_argument("--subjects", type=int, default=1)
    ap.add_argument("--designs", type=int, default=1, help="feature sets (+ partition models)")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--K", type=int, default=10, help="outer folds")
    ap.add_argument("--k", type=int, default=None, help="inner folds (default K-1)")
    ap.add_argument("--alphas", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--ranks-per-node", type=int, default=1)
    ap.add_argument("--cores-per-rank", type=int, default=1)
    ap.add_argument("--gpu", action="store_true", help="one GPU per rank at the (assumed) GPU rates")
    ap.add_argument("--read-gbps", type=float, default=None, help="read bandwidth per rank (GB/s)")
    ap.add_argument("--engine", choices=sorted(ENGINES), default=None)
    ap.add_argument("--rates", default=None, help=f"rates file (default {RATES_FILE})")
    a = ap.parse_args(argv)
    shape = FitShape(a.n, a.p, a.v, a.subjects, a.designs, a.layers, a.K, a.k, a.alphas, a.chunk)
    rates = Rates.load(a.rates)
    e = estimate(shape, a.nodes * a.ranks_per_node, a.cores_per_rank, a.gpu, rates, a.engine, a.read_gbps)
    print(shape.describe())
    print(f"rates: {rates.machine} ({rates.measured or 'not measured'})")
    print(e.line())
    work = (f"{e.cpu_s / 3600:,.0f} GPU-hours" if e.gpu else
            f"{e.cpu_s / 3600:,.0f} rank-hours = {e.core_hours():,.0f} core-hours")
    print(f"work {work}; {e.units:,} units; "
          f"one design {fmt_time(e.design_s)}, one subject chunk {fmt_time(e.chunk_s)}")
    if e.assumed:
        print(f"assumed: {e.assumed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
