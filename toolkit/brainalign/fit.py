"""Fit stage: voxel-wise ridge encoding models with nested cross-validation.

Outer folds leave one run (or one group of runs, align.outer_folds) out; inside each outer training set the
inner folds leave one training run (group) out
and pick every voxel's alpha by mean inner-fold Pearson r; the model refit on the whole outer training set
with that alpha is scored on the held-out run (Pearson r). The design is shared by all subjects, so the
X-only work (decompositions) of one (feature set, layer, fold) unit serves every subject and voxel chunk.
A subject that lacks some runs (``data.missing_runs: skip``; bold.h5 ``/bold/sub-XX`` attr ``runs_present``) is
fitted on the rows of the runs it has, with its own solver per fold (one per distinct set of runs); in a fold
whose held-out runs it lacks its r is NaN, so its fold-mean r averages the folds it has.

A *unit* is (feature set, layer, outer fold, voxel chunk); it is the piece of work a process or an MPI
rank takes. Units of one (feature set, layer, voxel chunk) form a scheduling group (``Unit.xkey``): the worker
holding it reads the chunk of every subject's BOLD once, accumulates the per-fold sufficient statistics
(:mod:`brainalign.ridge.suffstats`) and scores every outer fold from them, so the BOLD is read once per
(feature set, layer) instead of once per (feature set, layer, outer fold); the X-only eigendecompositions of
a (feature set, layer) are shared by all its chunks. Partition (banded ridge) units keep one group per
(subset model, layer, outer fold) and their own solver. ``run_fit`` runs unchanged in one process or under ``mpiexec -n N`` / ``srun -n N``: ranks draw
units dynamically (brainalign.sharding.scheduler), write their results to per-rank shard files
(brainalign.sharding.shards) and rank 0 assembles ``scores.h5`` whose ``/r`` and ``/alpha`` are HDF5 virtual
datasets over the shards. A killed job resumes from the shards it left; results never depend on the
number of ranks.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from .errors import BrainAlignError, DataError
from .h5io import atomic_h5, open_h5, read_str_attr, str_attr
from .interrupt import Interrupted
from .launch import this_task
from .log import get_logger, progress
from .fitdata import FitInputs, Unit, fold_splits
from .paths import SCORES, subject_map
from .partition import band_weights, heldout_r2, write_partitions

log = get_logger("fit")

SHARD_SECONDS = 60.0          # a rank writes a shard part at least this often (and every 256 units, and at the end)


class SolverCache:
    """The FoldSolvers of the most recent design matrix (Unit.xkey): consecutive units of a rank share them.

    One solver per set of rows: all rows (subjects with every run), and one per distinct subset of runs that
    a subject with missing runs has. ``get(unit, rows)`` returns (solver, train, test) with train/test indexing
    those rows, or (None, ...) when the subject lacks the fold's held-out runs or has < 2 training groups."""

    def __init__(self, inp: FitInputs, cfg):
        self.inp, self.cfg = inp, cfg
        self.key, self.solvers, self.builds, self.build_s = None, {}, 0, 0.0
        self.engines = EngineCache(inp, cfg)       # the statistics engine's state (units with by_chunk)

    def get(self, unit: Unit, rows=None):
        """(solver, train rows, test rows) for ``unit`` on ``rows`` (None: all); built once per xkey and rows."""
        if unit.xkey != self.key:
            self.key, self.solvers = unit.xkey, {}      # free the previous design's solvers first
        pattern = None if rows is None else rows.tobytes()
        if pattern not in self.solvers:
            from .ridge import FoldSolver

            t0 = time.perf_counter()
            groups = self.inp.groups if rows is None else self.inp.groups[rows]
            train, test, inner = fold_splits(groups, unit.fold)
            if not len(test) or len(inner) < 2:
                self.solvers[pattern] = (None, train, test)
            else:
                X = self.inp.X(unit) if rows is None else self.inp.X(unit)[rows]
                alphas = np.asarray(self.cfg.fit.alphas, np.float64)
                if self.inp.is_partition(unit):
                    solver = _banded_solver(self.inp, unit, X, train, test, inner, alphas, self.cfg.fit.backend)
                else:
                    solver = FoldSolver(X[train], X[test], alphas, inner, backend=self.cfg.fit.backend,
                                        n_jobs=_cores_per_rank())
                self.solvers[pattern] = (solver, train, test)
                self.builds += 1
                self.build_s += time.perf_counter() - t0
        return self.solvers[pattern]


class EngineCache:
    """Statistics-engine state of a worker: the NestedEngines of the most recent (feature set, layer), and
    every subject's chunk statistics of the most recent (feature set, layer, voxel chunk).

    A design shared by all outer folds gets one engine per set of rows (all rows, and one per distinct subset
    of runs a subject with missing runs has); a per-fold design (residual features) one engine per outer fold.
    ``fold(unit, s)`` returns (engine, fold index in the engine, ChunkStats) or None when subject ``s`` lacks
    the fold's held-out runs or has < 2 training groups. Reading a chunk and its statistics pass count as a
    build (the scheduler weighs them against a unit when it steals)."""

    def __init__(self, inp: FitInputs, cfg):
        self.inp, self.cfg = inp, cfg
        self.dkey, self.engines, self.ckey, self.stats = None, {}, None, {}
        self.builds, self.build_s = 0, 0.0

    def _engines(self, unit: Unit, rows):
        """{outer fold: (engine, index)} for the rows of one subject (None: all rows)."""
        pattern = None if rows is None else rows.tobytes()
        if pattern in self.engines:
            return self.engines[pattern]
        from .ridge import NestedEngine

        inp = self.inp
        groups = inp.groups if rows is None else inp.groups[rows]
        alphas = np.asarray(self.cfg.fit.alphas, np.float64)
        fs = inp.feature_sets[unit.fs]
        kw = dict(backend=self.cfg.fit.backend, n_jobs=_cores_per_rank())
        usable = {}
        for k in range(len(inp.folds)):
            train, test, inner = fold_splits(groups, k)
            if len(test) and len(inner) >= 2:
                usable[k] = ((train, test), inner)
        table = {}
        if inp.per_fold(fs):
            for k, (split, inner) in usable.items():
                X = inp.X_of(fs, unit.layer, k)
                table[k] = (NestedEngine(X if rows is None else X[rows], [split], [inner], alphas, **kw), 0)
        elif usable:
            X = inp.X_of(fs, unit.layer, 0)
            eng = NestedEngine(X if rows is None else X[rows], [v[0] for v in usable.values()],
                               [v[1] for v in usable.values()], alphas, **kw)
            table = {k: (eng, i) for i, k in enumerate(usable)}
        self.engines[pattern] = table
        return table

    def fold(self, unit: Unit, s: str):
        inp = self.inp
        if (unit.fs, unit.layer) != self.dkey:
            self.dkey, self.engines, self.ckey, self.stats = (unit.fs, unit.layer), {}, None, {}
        if unit.xkey != self.ckey:
            self.ckey, self.stats = unit.xkey, {}
        if s not in self.stats:
            t0 = time.perf_counter()
            table = self._engines(unit, inp.rows[s])
            stats = {}
            if table:
                a, b = inp.chunks[unit.chunk]
                Y = inp.bold["bold"][f"sub-{s}"][:, a:b]          # the one read of this chunk for this design
                for eng, _ in table.values():
                    if id(eng) not in stats:
                        stats[id(eng)] = eng.chunk_stats(Y)
            self.stats[s] = stats
            self.builds += 1
            self.build_s += time.perf_counter() - t0
        entry = self._engines(unit, inp.rows[s]).get(unit.fold)
        if entry is None:
            return None
        eng, kk = entry
        return eng, kk, self.stats[s][id(eng)]


def _banded_solver(inp: FitInputs, unit: Unit, X, train, test, inner, alphas, backend):
    """BandedSolver of a partition unit: one band per feature set of its subset model, inner criterion R²."""
    from .ridge import BandedSolver

    model = inp.model(unit)
    sizes = [inp.design["design"][b].shape[-1] for b in model.feature_sets]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return BandedSolver(X[train], X[test], labels, band_weights(len(sizes), model.n_iter), alphas, inner,
                        backend=backend, scoring="r2", n_jobs=_cores_per_rank())


def _cores_per_rank():
    """Parallel inner-fold workers for this rank: OMP_NUM_THREADS when the launcher set it (cores / ranks on
    the node), else every core this process may use (a single process)."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return None


def compute_unit(inp: FitInputs, unit: Unit, cache: SolverCache):
    """Nested-CV ridge for one unit (every subject, one voxel chunk).

    Returns (r, alpha): float32 arrays (n_subjects, stop - start) of held-out Pearson r (a partition unit:
    held-out R²) and chosen alpha.
    """
    a, b = inp.chunks[unit.chunk]
    r = np.full((len(inp.subjects), b - a), np.nan, np.float32)
    alpha = np.full_like(r, np.nan)
    partition = inp.is_partition(unit)
    if unit.by_chunk and not partition:        # the statistics engine (one read per group)
        engines = cache.engines
        for si, s in enumerate(inp.subjects):
            got = engines.fold(unit, s)
            if got is None:                    # this subject lacks the fold's held-out run(s): NaN
                continue
            eng, kk, st = got
            _, best = eng.inner_scores(st, kk)
            r[si] = eng.outer_r(st, kk, best)
            ok = best >= 0
            alpha[si, ok] = eng.alphas[best[ok]]
        return r, alpha
    for si, s in enumerate(inp.subjects):
        solver, train, test = cache.get(unit, inp.rows[s])
        if solver is None:                 # this subject lacks the fold's held-out run(s): NaN
            continue
        Y = inp.bold["bold"][f"sub-{s}"][:, a:b]
        if partition:                            # held-out R² of the banded model (brainalign.partition)
            res = solver.fit_chunk(Y[train])
            r[si] = heldout_r2(Y[test], solver.predict(res))
        else:
            res = solver.score_rows(Y, train, test)     # one upload per chunk; rows picked on the device
            r[si] = res.r
        alpha[si] = res.best_alpha
    return r, alpha


def write_scores_header(f, inp: FitInputs, cfg):
    """The attrs, ``/mask`` and ``/roi_labels`` of scores.h5 (layout documented in docs/file-layouts.md)."""
    f.attrs["subjects"] = str_attr(inp.subjects)
    f.attrs["feature_sets"] = str_attr(inp.feature_sets)
    f.attrs["layers"] = np.asarray(inp.layers, np.int64)
    f.attrs["folds"] = str_attr(inp.folds)
    f.attrs["alphas"] = np.asarray(cfg.fit.alphas, np.float64)
    f.attrs["backend"] = cfg.fit.backend
    if cfg.fit.backend == "auto":
        from .ridge.backend import auto_choice

        f.attrs["backend_resolved"], f.attrs["backend_reason"] = auto_choice()
    f.attrs["partitions"] = str_attr([p[0] for p in inp.partitions])
    f.attrs["partition_models"] = str_attr([m.name for m in inp.models])
    f.attrs["roi_ids"] = inp.bold.attrs["roi_ids"]
    f.attrs["roi_names"] = inp.bold.attrs["roi_names"]
    f.attrs["runs_present"] = json.dumps({s: inp.present[s].tolist() for s in inp.subjects})
    from .brain.space import MapSpace

    MapSpace.copy_h5(inp.bold, f)          # /mask (+ /atlas or /cifti): maps need no input file
    f.create_dataset("roi_labels", data=inp.bold["roi_labels"][()])


def write_r_mean(f):
    """``r_mean`` = NaN-aware mean of ``r`` over outer folds (all-NaN voxels stay NaN), one (S, F, L) at a time."""
    import warnings

    r = f["r"]
    S, F, L, K, V = r.shape
    out = f.create_dataset("r_mean", shape=(S, F, L, V), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # mean of an all-NaN (constant) voxel
        for s in range(S):
            for fi in range(F):
                for li in range(L):
                    out[s, fi, li] = np.nanmean(r[s, fi, li], axis=0)


def write_maps(cfg, scores_path):
    """Per subject and feature set a map of fold-mean r, last axis = layer, under OUTPUT/maps/sub-XX/: 4D NIfTI
    on the mask grid (voxels) or the parcellation (parcels, every voxel of a parcel holding its r), or a CIFTI-2
    dscalar with one map per layer (grayordinates). Nothing for parcel data without an atlas."""
    from .brain.space import MapSpace

    paths = []
    with open_h5(scores_path, "scores file") as f:
        space = MapSpace.from_h5(f, scores_path)
        if not space.has_maps:
            return paths
        subjects, fsets = read_str_attr(f, "subjects"), read_str_attr(f, "feature_sets")
        layers = [f"layer {int(x)}" for x in np.atleast_1d(f.attrs["layers"])]
        for si, s in enumerate(subjects):
            for fi, fs in enumerate(fsets):
                p = subject_map(cfg.out, s, fs, space)
                space.write_map(p, f["r_mean"][si, fi].T, names=layers, fill=0.0)   # (n_vox, n_layers)
                paths.append(p)
    return paths


# ---- scale-out: shards, resume, assembly -----------------------------------------------------------

def _shard_flush_seconds() -> float:
    """Seconds between a rank's shard parts: SHARD_SECONDS, or the env BRAINALIGN_SHARD_SECONDS (0: one part per
    unit). Not a config value: how often a rank writes does not change a result (and a stage key would count it)."""
    env = os.environ.get("BRAINALIGN_SHARD_SECONDS")
    return float(env) if env else SHARD_SECONDS


def prepare_shards(scores_path, shard_dir, attrs: dict, force: bool):
    """Rank 0 before any unit runs: drop the old scores file, stale/partial shards; -> (epoch, done keys)."""
    from .sharding.shards import remove, scan_shards

    if scores_path.exists():          # it is not current (else the fit was skipped)
        scores_path.unlink()          # first, so no complete-looking file ever points at removed shards
    for d in scores_path.parent.glob("maps/sub-*"):   # old maps never sit beside a new scores.h5
        shutil.rmtree(d, ignore_errors=True)
    scan = scan_shards(shard_dir, attrs)
    if force:
        remove(scan.files)
        scan.entries = {}
    if scan.stale:
        log.info("fit: removing %d stale shards of another config or geometry from %s", len(scan.stale), shard_dir)
    remove(scan.stale + scan.incomplete)
    shard_dir.mkdir(parents=True, exist_ok=True)
    return scan.max_epoch + 1, set(scan.entries)


def assemble_scores(cfg, inp: FitInputs, path, shard_dir, attrs: dict, key_attrs: dict):
    """Write ``scores.h5``: /r and /alpha virtual over the shards, /r_mean, /mask, /roi_labels, attrs."""
    from .sharding.shards import compact_all, scan_shards, virtual_dataset

    scan = scan_shards(shard_dir, attrs)
    if compact_all(scan, attrs, cfg.text):      # parts left by killed attempts: few files under the VDS
        scan = scan_shards(shard_dir, attrs)
    units = inp.units()
    missing = [u for u in units if u.key not in scan.entries]
    if missing:
        raise DataError(f"fit: {len(missing)} of {len(units)} units have no shard in {shard_dir} "
                        f"(first: {inp.describe(missing[0])}); run fit again to compute them")
    F = len(inp.feature_sets)
    entries = {u.key: scan.entries[u.key] for u in units if u.fs < F}
    shape = (len(inp.subjects), F, len(inp.layers), len(inp.folds), inp.n_vox)
    rel = os.path.relpath(shard_dir, path.parent)
    with atomic_h5(path, "fit", cfg.text, key_attrs) as f:
        write_scores_header(f, inp, cfg)
        for name in ("r", "alpha"):
            virtual_dataset(f, name, shape, entries, index=lambda k: k[:3], shard_dir=rel)
        write_r_mean(f)
        if inp.models:                           # variance partitioning: held-out R² of every subset model
            pe = {u.key: scan.entries[u.key] for u in units if u.fs >= F}
            pshape = (shape[0], len(inp.models)) + shape[2:]
            for target, source in (("partition/r2", "r"), ("partition/alpha", "alpha")):
                virtual_dataset(f, target, pshape, pe, index=lambda k: (k[0] - F,) + tuple(k[1:3]), shard_dir=rel,
                                source=source)
            write_partitions(f, inp.models)
    log.info("fit: assembled %s over %d shard files", path, len({e.file for e in entries.values()}))
    return path


def _on_root(comm, fn):
    """Run ``fn`` on rank 0 only and return its result on every rank; its exception is raised on every rank."""
    res, err = None, None
    if comm.rank == 0:
        try:
            res = ("ok", fn())
        except Exception as e:
            err, res = e, ("err", _portable(e))
    shared = comm.bcast(res, root=0)
    if shared[0] == "err":
        raise err if err is not None else shared[1]
    return shared[1]


def _on_all(comm, fn):
    """Run ``fn`` on every rank; if one fails, every rank raises (its own error, or one naming that rank)."""
    try:
        val, err = fn(), None
    except Exception as e:
        val, err = None, e
    errs = comm.allgather(None if err is None else f"{err}" if isinstance(err, BrainAlignError)
                          else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    for rank, e in enumerate(errs):
        if e:
            raise BrainAlignError(f"fit failed on rank {rank}: {e}")
    return val


def _portable(err):
    """An exception that survives pickling to other ranks (user errors keep their type and message)."""
    if isinstance(err, BrainAlignError):
        return type(err)(str(err))
    return BrainAlignError(f"fit failed on rank 0: {type(err).__name__}: {err}")


def _raise(err):
    if err is not None:
        raise err


def work(inp: FitInputs, cfg, source, writer):
    """Compute units from ``source`` until it is empty; results go to ``writer`` (a ShardWriter).

    Returns None, or the exception that stopped this worker (after telling ``source`` and saving the
    units already computed).
    """
    cache = SolverCache(inp, cfg)
    engines = cache.engines
    slow = float(os.environ.get("BRAINALIGN_TEST_SLOW_UNIT") or 0)   # test plumbing: make units slow
    t_wall, t_cpu, n_units = time.perf_counter(), time.process_time(), 0
    try:
        while (u := source.next()) is not None:
            n_units += 1
            t0, builds, build_s = time.perf_counter(), cache.builds + engines.builds, cache.build_s + engines.build_s
            r, alpha = compute_unit(inp, u, cache)
            if slow:
                time.sleep(slow)
            a, b = inp.chunks[u.chunk]
            writer.add(u.key, a, b, r, alpha)
            dt, db = time.perf_counter() - t0, cache.build_s + engines.build_s - build_s
            source.done(u, dt - db, db, cache.builds + engines.builds - builds)
            log.debug("unit %s done in %.2f s%s", inp.describe(u), dt, f" (solver built in {db:.2f} s)" if db else "")
        writer.close()
    except Interrupted:
        writer.flush()               # the units finished so far become a shard part (the next fit merges parts)
        raise
    except Exception as e:
        source.fail(str(e) if isinstance(e, BrainAlignError) else f"{type(e).__name__}: {e}")
        try:
            writer.close()           # keep what was computed
        except Exception:  # pragma: no cover
            pass
        return e
    log.info("rank done: %d units in %.1f s wall, %.1f s cpu; %d solver builds, %d shard parts", n_units,
             time.perf_counter() - t_wall, time.process_time() - t_cpu, cache.builds + engines.builds,
             len(writer.written))
    return None


def _warn_oversubscription(comm):
    local = this_task().per_node
    if comm.rank == 0 and local > 1 and not os.environ.get("OMP_NUM_THREADS"):
        log.warning("fit: %d ranks share this node and OMP_NUM_THREADS is unset: BLAS threads will oversubscribe "
                    "the cores (set OMP_NUM_THREADS to cores / ranks)", local)


def run_fit(cfg, force: bool = False):
    """The fit stage in this process, or as one rank of an MPI job (same command, same results)."""
    from .sharding.comm import world
    from .sharding.scheduler import Coordinator, LocalSource, RemoteSource, UnitScheduler
    from .sharding.shards import SHARD_DIR, ShardWriter
    from .stagecheck import stage_check

    comm = world(os.environ.get("BRAINALIGN_MPI") or "auto")
    path = cfg.out / SCORES
    key = _on_root(comm, lambda: stage_check(cfg, "fit", force))     # rank 0 decides, every rank uses its key
    if key.current:
        return path
    _warn_oversubscription(comm)
    inp = _on_all(comm, lambda: FitInputs(cfg))
    try:
        shard_dir = cfg.out / SHARD_DIR
        attrs = {"stage_key": key.key, "layout": inp.layout()}      # shards of another key or layout are stale
        epoch, done = _on_root(comm, lambda: prepare_shards(path, shard_dir, attrs, force))
        units = inp.units()
        pending = [u for u in units if u.key not in done]
        if comm.rank == 0:
            log.info("fit: %d units (feature sets %d x layers %d x folds %d x voxel chunks %d), %d subjects x %d "
                     "voxels, backend %s; %d done in shards, %d to compute on %d rank(s)", len(units),
                     len(inp.feature_sets), len(inp.layers), len(inp.folds), len(inp.chunks), len(inp.subjects),
                     inp.n_vox, cfg.fit.backend, len(units) - len(pending), len(pending), comm.size)
        writer = ShardWriter(shard_dir, epoch, comm.rank, len(inp.subjects), inp.chunk_width, attrs, cfg.text,
                             flush_s=_shard_flush_seconds())
        coordinator = bar = None
        if comm.rank == 0:
            bar = progress(total=len(pending), desc="fit units", unit="unit")
            scheduler = UnitScheduler(pending, on_done=bar.update)
            source = LocalSource(scheduler)
            if comm.size > 1:
                coordinator = Coordinator(comm, scheduler)
                coordinator.start()
        else:
            source = RemoteSource(comm)
        try:
            err = work(inp, cfg, source, writer)
        except Interrupted as e:
            who = f"rank {comm.rank}/{comm.size}" if comm.size > 1 else "this run"
            e.kept = (f"{writer.n_units} unit(s) finished by {who} saved in {shard_dir} "
                      f"({len(units) - len(pending)} of {len(units)} were there before); a re-run computes only "
                      "the rest")
            raise
        if coordinator is not None:
            coordinator.join()
        if bar is not None:
            bar.close()
        _on_all(comm, lambda: _raise(err))
        _on_root(comm, lambda: assemble_scores(cfg, inp, path, shard_dir, attrs, key.attrs))
    finally:
        inp.close()
    if cfg.fit.write_maps:
        _on_root(comm, lambda: write_maps(cfg, path))
    return path
