"""Fit stage: nested CV against an independent float64 reference, unit machinery, shards, resume, layout.

The fixture writes design.h5 / bold.h5 in align's documented layout (no other stage runs). Helpers here
(make_fit_fixture, reference_nested_cv, ...) are also used by tests/test_mpi.py.
"""
import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from brainalign.config import parse_config
from brainalign.errors import BrainAlignError, DataError
from brainalign.h5io import atomic_h5, is_complete, str_attr

RUN_LENGTHS = (24, 20, 22, 26)
SUBJECTS = ("01", "02")
N_FEATURES = 5
N_LAYERS = 2
ALPHAS = [0.1, 10.0, 1000.0]
MASK_SHAPE = (4, 4, 3)


# ---- the independent float64 reference -------------------------------------------------------------

def _ridge_r(Xtr, Ytr, Xte, Yte, alpha):
    """Ridge with intercept (centred by training means) fitted by np.linalg.solve; Pearson r per column."""
    mx, my = Xtr.mean(0), Ytr.mean(0)
    Xc = Xtr - mx
    W = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(Xc.shape[1]), Xc.T @ (Ytr - my))
    pred = (Xte - mx) @ W + my
    pc, yc = pred - pred.mean(0), Yte - Yte.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pc * yc).sum(0) / np.sqrt((pc ** 2).sum(0) * (yc ** 2).sum(0))


def _best_alpha_index(scores):
    """argmax over alphas (axis 0) with ties going to the largest alpha."""
    rev = np.nan_to_num(scores[::-1], nan=-np.inf)
    return scores.shape[0] - 1 - np.argmax(rev, axis=0)


def reference_nested_cv(X, Y, runs, alphas):
    """Outer leave-one-run-out; inner leave-one-training-run-out picks each voxel's alpha by mean inner r.

    X (n, p), Y (n, v), runs (n,) -> r, alpha float64 (n_folds, v); constant voxels NaN.
    """
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    folds = np.unique(runs)
    r_out = np.full((len(folds), Y.shape[1]), np.nan)
    a_out = np.full_like(r_out, np.nan)
    const = Y.std(0) == 0
    for k in folds:
        tr, te = runs != k, runs == k
        Xt, Yt, rt = X[tr], Y[tr], runs[tr]
        scores = np.array([np.mean([_ridge_r(Xt[rt != j], Yt[rt != j], Xt[rt == j], Yt[rt == j], a)
                                    for j in np.unique(rt)], axis=0) for a in alphas])
        best = _best_alpha_index(scores)
        for i, a in enumerate(alphas):
            sel = (best == i) & ~const
            if sel.any():
                r_out[k, sel] = _ridge_r(Xt, Yt[:, sel], X[te], Y[te][:, sel], a)
                a_out[k, sel] = a
    return r_out, a_out


# ---- fixture: design.h5 + bold.h5 in align's layout -------------------------------------------------

def _zscore_runs(a, runs):
    out = np.empty_like(a, dtype=np.float64)
    for k in np.unique(runs):
        x = a[runs == k]
        sd = x.std(0)
        out[runs == k] = np.where(sd > 0, (x - x.mean(0)) / np.where(sd > 0, sd, 1), 0)
    return out


def write_align_outputs(out: Path, runs, episodes, designs: dict, bold: dict, mask, labels, rois: dict, n_layers,
                        delays, affine=None, chunk=10):
    """design.h5 and bold.h5 in align's documented layout. designs: {feature set: (array, per_fold)} with arrays
    (L, n, p) or, per_fold, (K, L, n, p); bold: {subject: (n, V)}; rois: {id: name} of the labels (V,)."""
    lengths = np.bincount(runs).tolist()
    with atomic_h5(out / "design.h5", "align") as f:
        f.create_dataset("runs", data=runs)
        f.attrs["episodes"] = str_attr(episodes)
        f.attrs["folds"] = str_attr(episodes)
        f.attrs["layers"] = np.arange(n_layers, dtype=np.int64)
        f.attrs["delays"] = np.asarray(delays, np.int64)
        f.attrs["trim"] = 0
        f.attrs["tr"] = 1.49
        f.attrs["run_lengths"] = np.asarray(lengths, np.int64)
        f.attrs["feature_sets"] = str_attr(list(designs))
        g = f.create_group("design")
        for name, (X, per_fold) in designs.items():
            g.create_dataset(name, data=np.asarray(X, np.float32)).attrs["per_fold"] = per_fold
    with atomic_h5(out / "bold.h5", "align") as f:
        f.create_dataset("runs", data=runs)
        f.attrs["subjects"] = str_attr(list(bold))
        f.attrs["episodes"] = str_attr(episodes)
        f.attrs["run_lengths"] = np.asarray(lengths, np.int64)
        f.attrs["tr"] = 1.49
        f.create_dataset("mask", data=mask.astype(np.uint8)).attrs["affine"] = (np.eye(4) if affine is None
                                                                                 else affine)
        f.create_dataset("roi_labels", data=np.asarray(labels, np.int32))
        f.attrs["roi_ids"] = np.asarray(list(rois), np.int64)
        f.attrs["roi_names"] = str_attr(list(rois.values()))
        g = f.create_group("bold")
        for s, Y in bold.items():
            g.create_dataset(f"sub-{s}", data=Y, chunks=(len(runs), chunk))


def make_fit_fixture(out: Path, seed=0, n_folds=len(RUN_LENGTHS)):
    """Write OUTPUT/design.h5 and OUTPUT/bold.h5; returns a dict of the arrays written."""
    rng = np.random.default_rng(seed)
    lengths = RUN_LENGTHS[:n_folds]
    runs = np.concatenate([np.full(n, i, np.int32) for i, n in enumerate(lengths)])
    n = len(runs)
    episodes = [f"s01e{i + 1:02d}a" for i in range(n_folds)]
    joint = np.stack([_zscore_runs(rng.normal(size=(n, N_FEATURES)), runs) for _ in range(N_LAYERS)])
    resid = np.stack([np.stack([_zscore_runs(rng.normal(size=(n, N_FEATURES)), runs) for _ in range(N_LAYERS)])
                      for _ in range(n_folds)])
    mask = np.zeros(MASK_SHAPE, bool)
    mask.flat[rng.choice(mask.size, 37, replace=False)] = True
    n_vox = int(mask.sum())
    bold = {}
    for s in SUBJECTS:
        W = rng.normal(size=(N_FEATURES, n_vox)) * rng.uniform(0, 1, n_vox)
        Y = joint[-1] @ W + rng.normal(size=(n, n_vox)) * 2
        Y = _zscore_runs(Y, runs)
        Y[:, 3] = 0.0                                   # a constant voxel: NaN r and alpha
        bold[s] = Y.astype(np.float32)
    write_align_outputs(out, runs, episodes, {"joint": (joint, 0), "crossmodal": (resid, 1)}, bold, mask,
                        (np.arange(n_vox) % 3).astype(np.int32), {1: "A1", 2: "V1"}, N_LAYERS, [1],
                        affine=np.diag([3.0, 3.0, 3.0, 1.0]), chunk=10)
    return {"runs": runs, "joint": joint, "crossmodal": resid, "bold": bold, "episodes": episodes,
            "n_vox": n_vox}


def fit_config_data(out: Path, chunk_voxels=10, alphas=ALPHAS, n_folds=len(RUN_LENGTHS)):
    return {
        "name": "fit-test", "output": str(out),
        "data": {"episodes": [f"s01e{i + 1:02d}a" for i in range(n_folds)], "bold": {"subjects": list(SUBJECTS)}},
        "model": {"conditions": ["joint", "no_vision"]},
        "align": {"residuals": [{"name": "crossmodal", "target": "joint", "predictors": ["no_vision"]}]},
        "fit": {"alphas": list(alphas), "chunk_voxels": chunk_voxels, "feature_sets": ["joint", "crossmodal"],
                "write_maps": False},
    }


def fit_config(out: Path, **kw):
    data = fit_config_data(out, **kw)
    return parse_config(data, text=yaml.safe_dump(data, sort_keys=False))


def read_scores(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("r", "alpha", "r_mean")}


def assert_scores_equal(a, b, atol=1e-6):
    for k in ("r", "alpha", "r_mean"):
        np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, equal_nan=True, err_msg=k)


@pytest.fixture
def fixture_dir(tmp_path):
    out = tmp_path / "out"
    data = make_fit_fixture(out)
    return out, data


# ---- tests -----------------------------------------------------------------------------------------

def test_nested_cv_matches_float64_reference(fixture_dir):
    from brainalign.fit import run_fit

    out, data = fixture_dir
    path = run_fit(fit_config(out))
    s = read_scores(path)
    S, F, L, K, V = s["r"].shape
    assert (S, F, L, K, V) == (2, 2, N_LAYERS, len(RUN_LENGTHS), data["n_vox"])
    for si, sub in enumerate(SUBJECTS):
        for fi, fs in enumerate(("joint", "crossmodal")):
            for li in range(N_LAYERS):
                for k in range(K):
                    X = data[fs][li] if fs == "joint" else data[fs][k, li]
                    r_ref, a_ref = reference_nested_cv(X, data["bold"][sub], data["runs"], ALPHAS)
                    np.testing.assert_allclose(s["r"][si, fi, li, k], r_ref[k], atol=2e-4, equal_nan=True)
                    np.testing.assert_array_equal(s["alpha"][si, fi, li, k], a_ref[k].astype(np.float32))
    assert np.isnan(s["r"][:, :, :, :, 3]).all() and np.isnan(s["alpha"][:, :, :, :, 3]).all()
    assert np.isfinite(np.delete(s["r"], 3, axis=-1)).all()
    # the planted effect (last joint layer) is found: held-out r clearly positive on average
    assert np.nanmean(s["r_mean"][:, 0, -1]) > 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)              # all-NaN constant voxel
        np.testing.assert_allclose(s["r_mean"], np.nanmean(s["r"], axis=3), atol=1e-6, equal_nan=True)


def test_scores_layout_virtual_relative_and_attrs(fixture_dir):
    from brainalign.fit import run_fit

    out, data = fixture_dir
    path = run_fit(fit_config(out))
    assert is_complete(path)
    with h5py.File(path, "r") as f:
        for name in ("r", "alpha"):
            ds = f[name]
            assert ds.is_virtual and ds.dtype == np.float32
            assert ds.shape == (2, 2, N_LAYERS, len(RUN_LENGTHS), data["n_vox"])
            files = {m.file_name for m in ds.virtual_sources()}
            assert files and all(not os.path.isabs(p) and p.startswith("fit_shards/") for p in files)
        assert f["r_mean"].dtype == np.float32 and not f["r_mean"].is_virtual
        assert f["r_mean"].shape == (2, 2, N_LAYERS, data["n_vox"])
        assert f["mask"].shape == MASK_SHAPE and f["mask"].attrs["affine"].shape == (4, 4)
        assert f["roi_labels"].shape == (data["n_vox"],)
        for key in ("subjects", "feature_sets", "layers", "folds", "alphas", "backend", "roi_ids", "roi_names",
                    "stage_key", "stage_record", "config", "git_commit", "brainalign_complete"):
            assert key in f.attrs, key
        assert [x.decode() if isinstance(x, bytes) else x for x in f.attrs["folds"]] == data["episodes"]
        assert list(f.attrs["alphas"]) == ALPHAS
    # the virtual datasets resolve relative to scores.h5, wherever the reader's cwd is
    moved = out.parent / "moved"
    out.rename(moved)
    cwd = os.getcwd()
    try:
        os.chdir("/")
        with h5py.File(moved / "scores.h5", "r") as f:
            assert np.isfinite(f["r"][0, 0, 0, 0, :3]).all()
    finally:
        os.chdir(cwd)


def test_chunking_does_not_change_results(tmp_path):
    from brainalign.fit import run_fit

    a, b = tmp_path / "a", tmp_path / "b"
    make_fit_fixture(a)
    make_fit_fixture(b)
    assert_scores_equal(read_scores(run_fit(fit_config(a, chunk_voxels=10))),
                        read_scores(run_fit(fit_config(b, chunk_voxels=37))), atol=1e-5)


def test_rerun_skips_and_a_failed_fit_resumes_from_its_shards(fixture_dir, monkeypatch):
    from brainalign import fit

    out, _ = fixture_dir
    monkeypatch.setenv("BRAINALIGN_SHARD_SECONDS", "0")                # one shard part per unit
    real_compute = fit.compute_unit
    calls = []

    def crash_after_40(inp, u, cache):
        if len(calls) == 40:
            raise RuntimeError("node lost")
        calls.append(u)
        return real_compute(inp, u, cache)

    monkeypatch.setattr(fit, "compute_unit", crash_after_40)
    cfg = fit_config(out)
    with pytest.raises(RuntimeError, match="node lost"):
        fit.run_fit(cfg)
    assert not (out / "scores.h5").exists()
    parts = list((out / "fit_shards").glob("e*.h5"))
    assert len(parts) == 1 and is_complete(parts[0])                   # 40 parts merged into one
    with h5py.File(parts[0], "r") as f:
        assert f["units"].shape == (40, 4)
    calls.clear()
    monkeypatch.setattr(fit, "compute_unit", lambda inp, u, c: calls.append(u) or real_compute(inp, u, c))
    s = read_scores(fit.run_fit(cfg))
    assert len(calls) == 24 and not {u.key for u in calls} & {tuple(k) for k in h5py.File(parts[0])["units"][()]}
    ref = out.parent / "ref"
    make_fit_fixture(ref)
    assert_scores_equal(s, read_scores(fit.run_fit(fit_config(ref))), atol=0)
    # complete for this config: the same call computes nothing
    monkeypatch.setattr(fit, "compute_unit", lambda *a, **k: pytest.fail("recomputed a finished fit"))
    fit.run_fit(cfg)
    # a complete scores.h5 whose shards vanished is not trusted
    for p in (out / "fit_shards").glob("e*.h5"):
        p.unlink()
    monkeypatch.setattr(fit, "compute_unit", real_compute)
    assert_scores_equal(read_scores(fit.run_fit(cfg)), s, atol=0)


def test_stale_shards_of_another_config_are_ignored(fixture_dir):
    from brainalign.sharding.shards import scan_shards
    from brainalign.fit import run_fit

    out, _ = fixture_dir
    run_fit(fit_config(out, alphas=[1.0, 2.0]))          # another config: other alphas, other results
    stale = sorted((out / "fit_shards").glob("*.h5"))
    assert stale
    stale_r = read_scores(out / "scores.h5")["r"]
    # keep a stale copy under a name a current shard would not take, to prove it is skipped, not overwritten
    (out / "fit_shards" / stale[0].name).rename(out / "fit_shards" / "e0009-rank-0000-part-00000.h5")
    cfg = fit_config(out)
    s = read_scores(run_fit(cfg))
    ref_dir = out.parent / "ref"
    make_fit_fixture(ref_dir)
    assert_scores_equal(s, read_scores(run_fit(fit_config(ref_dir))), atol=0)
    assert not np.allclose(np.nan_to_num(s["r"]), np.nan_to_num(stale_r))
    with h5py.File(out / "scores.h5", "r") as f:
        files = {m.file_name for m in f["r"].virtual_sources()}
    assert not any("e0009" in p or "e0001" in p for p in files)
    assert not list((out / "fit_shards").glob("e0009-*"))         # stale shards were removed
    with h5py.File(out / "scores.h5", "r") as f:
        key = f.attrs["stage_key"]                                 # the shards carry the fit's stage key
    assert len(scan_shards(out / "fit_shards", {"stage_key": key}).entries) == 64


def test_partial_and_temp_shards_are_ignored(fixture_dir):
    from brainalign.fit import run_fit

    out, _ = fixture_dir
    d = out / "fit_shards"
    d.mkdir(parents=True)
    with h5py.File(d / "e0001-rank-0000-part-00000.h5", "w") as f:   # looks like a shard, no marker
        f["units"] = np.zeros((1, 4), np.int32)
    (d / ".e0001-rank-0001-part-00000.h5.tmp-123").write_bytes(b"\x89HDF partial")
    (d / "e0001-rank-0002-part-00000.h5").write_bytes(b"truncated garbage")
    s = read_scores(run_fit(fit_config(out)))
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".") or p.name.startswith("e0001")) == []
    assert np.isfinite(np.delete(s["r"], 3, axis=-1)).all()


def test_missing_and_bad_inputs_give_one_line_errors(fixture_dir):
    from brainalign.fit import run_fit

    out, _ = fixture_dir
    with h5py.File(out / "design.h5", "a") as f:
        X = f["design/joint"][()]
        X[1, 5, 2] = np.nan
        f["design/joint"][...] = X
    with pytest.raises(DataError, match="design for joint layer 1 has non-finite values"):
        run_fit(fit_config(out))
    assert not (out / "scores.h5").exists()
    (out / "bold.h5").unlink()
    with pytest.raises(DataError, match=r"BOLD file \(run align\) not found: .*bold.h5"):
        run_fit(fit_config(out))


def test_unknown_mpi_mode_and_singleton_under_launcher(monkeypatch):
    from brainalign.sharding.comm import LocalComm, launcher_size, world

    for key in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "PMIX_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert launcher_size() is None and isinstance(world("auto"), LocalComm)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert isinstance(world("auto"), LocalComm)
    assert isinstance(world("off"), LocalComm)
    with pytest.raises(BrainAlignError, match=r"BRAINALIGN_MPI \(fit.mpi\): expected one of auto, on, off"):
        world("sometimes")


def test_scheduler_keeps_design_affinity_and_steals_at_the_end():
    from brainalign.sharding.scheduler import UnitScheduler
    from brainalign.fit import Unit

    units = [Unit(f, 0, k, c) for f in range(2) for k in range(3) for c in range(4)]
    s = UnitScheduler(units)
    got = {0: [], 1: []}
    order = [0, 1] * 12
    for w in order:
        u = s.next(w)
        if u is not None:
            got[w].append(u)
    assert s.next(0) is None and s.next(1) is None
    assert sorted(got[0] + got[1]) == sorted(units)                       # each unit exactly once
    for w, us in got.items():                                             # few switches of design matrix
        switches = sum(a.xkey != b.xkey for a, b in zip(us, us[1:]))
        assert switches <= 3, (w, [u.key for u in us])
    # stealing is cost-aware: a group's pending units must outweigh a second solver build
    s3 = UnitScheduler([Unit(0, 0, 0, c) for c in range(4)])
    assert s3.next("a") == Unit(0, 0, 0, 0)
    s3.done(1, unit_s=1.0, build_s=10.0, builds=1)          # build 10 s, unit 1 s: 3 pending are not worth it
    assert s3.next("b") is None and s3.next("a") == Unit(0, 0, 0, 1)
    s4 = UnitScheduler([Unit(0, 0, 0, c) for c in range(4)])
    s4.next("a")
    s4.done(1, unit_s=5.0, build_s=1.0, builds=1)           # cheap build: the second worker joins
    assert s4.next("b") == Unit(0, 0, 0, 1)
    s2 = UnitScheduler(units)
    s2.fail("rank 1: boom")
    assert s2.next(0) is None and s2.error == "rank 1: boom"


def test_shard_writer_parts_are_atomic_and_complete(tmp_path):
    from brainalign.sharding.shards import ShardWriter, scan_shards

    w = ShardWriter(tmp_path, epoch=3, rank=1, n_subjects=2, width=4, attrs={"stage_key": "abc", "layout": "L"},
                    flush_s=3600, max_units=2)
    w.add((0, 0, 0, 0), 0, 4, np.ones((2, 4)), np.full((2, 4), 10))
    assert not list(tmp_path.glob("*.h5"))                                # buffered, nothing written yet
    w.add((0, 0, 0, 1), 4, 6, np.zeros((2, 2)), np.ones((2, 2)))          # max_units reached: one part
    w.add((0, 0, 1, 0), 0, 4, np.ones((2, 4)) * 2, np.ones((2, 4)))
    w.flush()
    names = sorted(p.name for p in tmp_path.glob("*.h5"))
    assert names == ["e0003-rank-0001-part-00000.h5", "e0003-rank-0001-part-00001.h5"]
    assert all(is_complete(tmp_path / n) for n in names)
    with h5py.File(tmp_path / names[0], "r") as f:
        assert f["r"].shape == (2, 2, 4) and np.isnan(f["r"][1, :, 2:]).all()
        assert f["voxels"][1].tolist() == [4, 6] and f.attrs["stage_key"] == "abc"
    assert len(scan_shards(tmp_path, {"stage_key": "xyz"}).stale) == 2
    w.close()                                                             # merges the rank's parts
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["e0003-rank-0001-part-00002.h5"]
    scan = scan_shards(tmp_path, {"stage_key": "abc", "layout": "L"})
    assert set(scan.entries) == {(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0)} and scan.max_epoch == 3
    with h5py.File(tmp_path / "e0003-rank-0001-part-00002.h5", "r") as f:
        np.testing.assert_array_equal(f["r"][2, :, :4], 2.0)
        np.testing.assert_array_equal(f["alpha"][1, :, :2], 1.0)
        assert np.isnan(f["r"][1, :, 2:]).all() and f["units"][1].tolist() == [0, 0, 0, 1]
