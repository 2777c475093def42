"""The embedded demo dataset: BOLD synthesis against independent references, and the on-disk layout."""
import json

import nibabel as nib
import numpy as np
import pytest

from brainalign.brain import find_bold, load_mask, load_rois, read_bold_run
from brainalign.config import parse_config
from brainalign.errors import ConfigError
from brainalign.simulate import (SIM_CONDITIONS, crossmodal_residual, planted_drivers, scale_for_r, simulate,
                                 spm_hrf, synthesize_bold)
from brainalign.stimuli import load_episode_stimuli, read_audio, read_transcript, video_info

EPISODES = ["s01e01a", "s01e01b", "s01e02a"]


def random_features(episodes, n_windows, hidden=6, n_layers=2, seed=0):
    rng = np.random.default_rng(seed)
    return {ep: {c: rng.normal(size=(n_layers, n_windows, hidden)).astype(np.float32) for c in SIM_CONDITIONS}
            for ep in episodes}


def tiny_cfg(root, **sim):
    return parse_config({
        "data": {"root": str(root), "episodes": EPISODES, "bold": {
            "subjects": ["01", "02"], "tr": 1.5,
            "mask": "{root}/derivatives/atlas/space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz",
            "rois": "{root}/derivatives/atlas/space-MNI152NLin2009cAsym_desc-rois_dseg.nii.gz",
            "roi_names": "{root}/derivatives/atlas/desc-rois_dseg.tsv"}},
        "simulate": {"trs_per_run": 30, "grid": [9, 9, 7], "fps": 4.0, "frame_size": 32, "audio_rate": 8000,
                     "roi_voxels": 8, "n_null_rois": 2, **sim},
        "model": {"tiny": {"hidden": 8, "layers": 2, "heads": 2, "vocab": 256}},
        "windows": {"image_size": 32, "audio_rate": 8000},
    })


# ---- pieces against independent references ------------------------------------------------------

def test_spm_hrf_matches_spm_formula_and_nilearn():
    """SPM's spm_hrf: spm_Gpdf(u, 6, dt) - spm_Gpdf(u, 16, dt) / 6 on u = 0..32/dt, every 16th sample, sum 1."""
    from math import exp, gamma as G

    from nilearn.glm.first_level.hemodynamic_models import spm_hrf as nl_spm_hrf

    for tr in (1.49, 2.0):
        dt = tr / 16
        u = range(int(32 / dt) + 1)
        g = lambda x, h: dt ** h * x ** (h - 1) * exp(-dt * x) / G(h)  # noqa: E731  (spm_Gpdf)
        ref = np.array([g(k, 6) - g(k, 16) / 6 for k in u])[::16]
        ref /= ref.sum()
        got = spm_hrf(tr)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-12)
        nl = nl_spm_hrf(tr, oversampling=16, time_length=32.0)[::16]   # nilearn shifts by one microtime bin
        np.testing.assert_allclose(got[:len(nl)], nl / nl.sum(), atol=0.015)
        assert np.argmax(got) * tr == pytest.approx(5.0, abs=tr)


def test_scale_for_r_gives_the_exact_correlation():
    rng = np.random.default_rng(3)
    s, n = rng.normal(size=(200, 5)), rng.normal(size=(200, 5)) + 0.3 * rng.normal(size=(200, 1))
    r = np.array([0.05, 0.15, 0.3, 0.6, 0.9])
    n[:, 4] += 3 * s[:, 4]                # noise correlated with the signal: needs a negative a
    a = scale_for_r(s, n, r)
    got = [np.corrcoef(a[k] * s[:, k], a[k] * s[:, k] + n[:, k])[0, 1] for k in range(5)]
    np.testing.assert_allclose(got, r, atol=1e-10)
    assert (a[:4] > 0).all() and a[4] < 0


def test_crossmodal_residual_matches_sklearn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    lens = [20, 25, 15]
    preds = [[rng.normal(size=(T, 4)) for T in lens] for _ in range(3)]
    joint = [p0 @ rng.normal(size=(4, 5)) + 0.5 * rng.normal(size=(T, 5)) for p0, T in zip(preds[0], lens)]
    res = crossmodal_residual(joint, preds, alpha=2.0)
    assert [r.shape for r in res] == [(T, 5) for T in lens]
    X = np.concatenate([np.concatenate(p) for p in preds], axis=1)
    Y = np.concatenate(joint)
    ref = Y - Ridge(alpha=2.0).fit(X, Y).predict(X)
    np.testing.assert_allclose(np.concatenate(res), ref, atol=1e-10)
    few = [[rng.normal(size=(T, 30)) for T in lens] for _ in range(2)]
    with pytest.raises(ConfigError, match=r"crossmodal residual is zero: 60 TRs .* 60 predictor columns"):
        crossmodal_residual(joint, few, alpha=1e-12)


def test_planted_drivers_are_z_scored_per_run_and_use_the_layer():
    feats = random_features(EPISODES, 40, hidden=5)
    d = planted_drivers(feats, layer=0)
    assert set(d) == {"language", "vision", "crossmodal"}
    for runs in d.values():
        assert len(runs) == 3
        for x in runs:
            np.testing.assert_allclose(x.mean(0), 0, atol=1e-10)
            np.testing.assert_allclose(x.std(0), 1, atol=1e-10)
    lang = feats["s01e01b"]["language_only"][0].astype(float)
    np.testing.assert_allclose(d["language"][1], (lang - lang.mean(0)) / lang.std(0), atol=1e-6)
    with pytest.raises(ConfigError, match=r"simulate.layer: 2 is out of range for a model with 2 layers"):
        planted_drivers(feats, layer=2)


def test_synthesize_bold_plants_the_requested_r():
    feats = random_features(EPISODES, 50, hidden=6)
    drivers = planted_drivers(feats, layer=-1)
    rois = {"language": np.arange(0, 10), "vision": np.arange(10, 20), "crossmodal": np.arange(20, 30),
            "null_1": np.arange(30, 40)}
    out = synthesize_bold(drivers, rois, 60, 1.5, [0.15, 0.3], np.random.default_rng(7))
    assert len(out.bold) == 3 and out.bold[0].shape == (50, 60) and out.bold[0].dtype == np.float32
    sig, bold = np.concatenate(out.signal), np.concatenate(out.bold).astype(np.float64)
    planted = np.arange(30)
    r = np.array([np.corrcoef(sig[:, v], bold[:, v])[0, 1] for v in planted])
    assert ((r >= 0.15 - 1e-4) & (r <= 0.3 + 1e-4)).all()
    np.testing.assert_allclose(r, out.target_r[planted], atol=1e-4)         # float32 storage of the BOLD
    assert np.isnan(out.target_r[30:]).all() and (sig[:, 30:] == 0).all()  # null ROI and outside: noise only
    # the planted signal is the HRF-convolved driver: regress it on the lagged driver, near-perfect fit
    x = drivers["vision"][0]
    hrf = spm_hrf(1.5)
    conv = np.stack([np.convolve(x[:, k], hrf)[:50] for k in range(6)], 1)
    beta, res, *_ = np.linalg.lstsq(conv, out.signal[0][:, 12], rcond=None)
    assert res[0] < 1e-16 * 50 + 1e-12 * (out.signal[0][:, 12] ** 2).sum()
    # deterministic per seed, different across seeds
    again = synthesize_bold(drivers, rois, 60, 1.5, [0.15, 0.3], np.random.default_rng(7))
    np.testing.assert_array_equal(again.bold[1], out.bold[1])
    other = synthesize_bold(drivers, rois, 60, 1.5, [0.15, 0.3], np.random.default_rng(8))
    assert not np.allclose(other.bold[1], out.bold[1])
    with pytest.raises(ConfigError, match=r"simulate.effect_r: needs 0 < lo <= hi < 1"):
        synthesize_bold(drivers, rois, 60, 1.5, [0.3, 0.1], np.random.default_rng(7))


# ---- the dataset on disk --------------------------------------------------------------------------

def test_simulate_layout_with_random_features(tmp_path):
    cfg = tiny_cfg(tmp_path / "demo")
    root = simulate(cfg, features=random_features(EPISODES, 30))
    assert root == tmp_path / "demo" and (root / ".complete").is_file()
    b = cfg.data.bold
    bids = cfg.path(b.dir)
    desc = json.loads((bids / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    mask = load_mask(cfg.path(b.mask))
    assert mask.shape == (9, 9, 7)
    np.testing.assert_allclose(np.diag(mask.affine)[:3], [4, 4, 4])
    labels, names = load_rois(cfg.path(b.rois), cfg.path(b.roi_names), mask)
    assert names == {1: "language", 2: "vision", 3: "crossmodal", 4: "null_1", 5: "null_2"}
    assert np.bincount(labels, minlength=6)[1:].tolist() == [8] * 5
    assert cfg.path(b.roi_names).read_text().splitlines()[0] == "index\tname"
    sessions = {"s01e01a": "001", "s01e01b": "001", "s01e02a": "002"}
    for sub in ("01", "02"):
        for ep, ses in sessions.items():
            p = find_bold(bids, sub, ep, b.space)
            assert p.relative_to(bids).as_posix() == (f"sub-{sub}/ses-{ses}/func/sub-{sub}_ses-{ses}_task-{ep}_"
                                                      f"space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
            img = nib.load(str(p))
            assert img.shape == (9, 9, 7, 30) and img.get_data_dtype() == np.float32
            assert img.header.get_zooms()[3] == pytest.approx(1.5)
            side = json.loads(p.with_name(p.name.replace(".nii.gz", ".json")).read_text())
            assert side["RepetitionTime"] == 1.5
            x = read_bold_run(p, mask, tr=1.5)
            assert 300 < x.mean() < 1300 and (x.std(0) > 0).all()
    truth = json.loads((root / "truth.json").read_text())
    rois = {r["name"]: r for r in truth["rois"]}
    assert rois["language"]["driver"] == "language_only" and rois["vision"]["driver"] == "vision_only"
    assert rois["language"]["expect"] == {"a": "joint", "b": "no_language", "direction": "a > b"}
    assert rois["vision"]["expect"]["b"] == "no_vision" and rois["crossmodal"]["expect"]["a"] == "residual"
    assert rois["null_1"]["driver"] is None and rois["null_1"]["expect"] is None
    lo, hi = truth["effect_r"]
    assert all(lo <= v <= hi for v in rois["crossmodal"]["mean_target_r"].values())
    assert truth["seed"] == 0 and truth["layer"] == -1 and rois["vision"]["n_voxels"] == 8
    # stimuli: same readers as for real data
    ep = "s01e01b"
    dur, fps, has_audio = video_info(root / "stimuli" / f"{ep}.mp4")
    assert dur == pytest.approx(30 * 1.5 + 0.5) and fps == 4.0 and has_audio
    st = load_episode_stimuli(cfg, ep)
    assert st.n_windows == 30 and st.frames.shape == (30, 2, 32, 32, 3)
    assert st.frames.std() > 10                                          # moving shapes, not a blank video
    words = read_transcript(root / "stimuli" / f"{ep}.tsv")
    assert 1.4 < len(words) / dur < 2.6
    a_wav, a_mp4 = read_audio(root / "stimuli" / f"{ep}.wav", 8000), read_audio(root / "stimuli" / f"{ep}.mp4", 8000)
    n = min(len(a_wav), len(a_mp4))
    assert abs(len(a_wav) - len(a_mp4)) < 800 and np.corrcoef(a_wav[:n], a_mp4[:n])[0, 1] > 0.95
    # vision varies over time, and the episodes differ
    assert np.abs(np.diff(st.frames.astype(float).mean((1, 2, 3, 4)))).max() > 1


def test_simulate_is_skipped_when_complete_and_redone_on_change(tmp_path):
    cfg = tiny_cfg(tmp_path / "demo")
    feats = random_features(EPISODES, 30)
    root = simulate(cfg, features=feats)
    bold = find_bold(cfg.path(cfg.data.bold.dir), "01", "s01e01a", cfg.data.bold.space)
    stamp = bold.stat().st_mtime_ns
    simulate(cfg, features=feats)
    assert bold.stat().st_mtime_ns == stamp
    cfg.simulate.seed = 1
    simulate(cfg, features=feats)
    assert bold.stat().st_mtime_ns != stamp and json.loads((root / "truth.json").read_text())["seed"] == 1
    assert not list(root.rglob(".*.tmp-*"))


def test_simulate_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"simulate.roi_voxels: 5 ROIs of 200 voxels do not fit"):
        simulate(tiny_cfg(tmp_path / "a", roi_voxels=200), features=random_features(EPISODES, 30))
    with pytest.raises(ConfigError, match=r"simulate.frame_size: must be even"):
        simulate(tiny_cfg(tmp_path / "b", frame_size=31), features=random_features(EPISODES, 30))
    assert not (tmp_path / "a" / ".complete").exists()


def test_simulate_with_the_demo_model(tmp_path):
    """End to end with the real extractor (tiny backbone): features feed the BOLD synthesis; layout and marker."""
    pytest.importorskip("brainalign.extract")
    cfg = tiny_cfg(tmp_path / "demo", trs_per_run=25)
    root = simulate(cfg)
    truth = json.loads((root / "truth.json").read_text())
    marker = json.loads((root / ".complete").read_text())          # the stage key, written last
    assert truth["model"] == "tiny" and marker["stage_key"] == truth["stage_key"] == marker["stage_record"]["key"]
    mask = load_mask(cfg.path(cfg.data.bold.mask))
    x = read_bold_run(find_bold(cfg.path(cfg.data.bold.dir), "01", "s01e02a", cfg.data.bold.space), mask, tr=1.5)
    assert x.shape == (25, mask.n_voxels)
