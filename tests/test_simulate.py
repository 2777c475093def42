"""The demo's generative model against independent references (scipy, nilearn, hand-built arrays), and the
dataset on disk read back through the real readers."""
import ast
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from brainalign.brain import find_bold, load_mask, load_rois, read_bold_run
from brainalign.config import parse_config
from brainalign.errors import ConfigError
from brainalign.sim import bold as simbold
from brainalign.sim import latents as lat
from brainalign.sim.stimuli import (COLOURS, CUE, FRAME_PREDICTABLE, OTHER, VOCAB, Scene, grammar, make_episode,
                                    word_sequence)
from brainalign.simulate import simulate
from brainalign.stimuli import load_episode_stimuli, read_audio, read_transcript, video_info
from brainalign.stimuli.transcript import read_tsv

EPISODES = ["s01e01a", "s01e01b", "s01e02a"]
ANALYSIS = ("align", "fit", "ridge", "stats", "extract", "mlm", "ceiling", "contrasts", "fdr", "permutation",
            "residuals", "partition", "report", "findings")


ATLAS = {"mask": "{root}/derivatives/atlas/space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz",
         "rois": "{root}/derivatives/atlas/space-MNI152NLin2009cAsym_desc-rois_dseg.nii.gz",
         "roi_names": "{root}/derivatives/atlas/desc-rois_dseg.tsv"}


def tiny_cfg(root, **sim):
    return parse_config({
        "data": {"root": str(root), "episodes": EPISODES, "bold": {"subjects": ["01", "02", "03"], "tr": 1.5, **ATLAS}},
        "simulate": {"trs_per_run": 30, "grid": [9, 9, 7], "fps": 4.0, "frame_size": 32, "audio_rate": 8000,
                     "roi_voxels": 8, "n_null_rois": 2, **sim},
        "model": {"tiny": {"hidden": 8, "layers": 2, "heads": 2, "vocab": 256, "patch": 8}},
        "windows": {"image_size": 32, "audio_rate": 8000},
        "finetune": {"n_train": 4, "n_val": 2},
    })


# ---- haemodynamics and latents ------------------------------------------------------------------------

def test_double_gamma_hrf_matches_scipy_and_nilearn():
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf, spm_hrf
    from scipy.stats import gamma

    for dt in (0.125, 0.1):
        h = lat.double_gamma_hrf(dt)
        t = np.arange(len(h)) * dt
        ref = gamma.pdf(t, 6) - gamma.pdf(t, 16) / 6
        np.testing.assert_allclose(h, ref / (ref.sum() * dt), atol=1e-12)
        assert h.sum() * dt == pytest.approx(1.0)
        assert t[np.argmax(h)] == pytest.approx(5.0, abs=dt)           # peak at (shape - 1) * scale
        assert 15.0 < t[np.argmin(h)] < 16.5 and h.min() < 0                # undershoot after the g(16) mode
        nl = spm_hrf(1.0, oversampling=int(round(1 / dt)), time_length=32.0)
        n = min(len(nl), len(h))
        assert np.corrcoef(nl[:n], h[:n])[0, 1] > 0.995
        assert np.corrcoef(glover_hrf(1.0, oversampling=int(round(1 / dt)), time_length=32.0)[:n], h[:n])[0, 1] > 0.95


def test_tr_regressors_are_the_hrf_sampled_at_tr_middles():
    fps, tr, n_trs = 8.0, 1.5, 40
    n = int(n_trs * tr * fps)
    x = np.zeros((n, 2))
    x[16, 0] = 1.0                                          # an impulse at t = 2 s
    x[:, 1] = 1.0                                           # sustained input
    got = lat.tr_regressors(x, fps, tr, n_trs)
    from scipy.stats import gamma

    t_mid = (np.arange(n_trs) + 0.5) * tr
    h = lambda t: np.where(t > 0, gamma.pdf(t, 6) - gamma.pdf(t, 16) / 6, 0.0)      # noqa: E731
    dt = 1 / fps
    norm = (gamma.pdf(np.arange(0, 32 + dt / 2, dt), 6) - gamma.pdf(np.arange(0, 32 + dt / 2, dt), 16) / 6).sum() * dt
    np.testing.assert_allclose(got[:, 0], h(t_mid - 2.0) * dt / norm, atol=2e-3 * h(5.0) * dt / norm)
    assert got[-1, 1] == pytest.approx(1.0, abs=1e-6)            # unit integral: a sustained input settles at 1


def test_vision_latents_hand_computed():
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    frames[0] = (255, 0, 0)
    frames[1, :2] = (0, 0, 255)
    frames[2] = (255, 255, 255)
    scene = Scene(np.array([0, 2, 4]), np.array([1.0, 0.5, 1.0]), np.array([0.0, -0.5, 0.0]),
                  np.array([0.0, 0.0, 0.0]), np.array([0, 1, 2]))
    v = lat.vision_latents(frames, scene)
    assert list(lat.VISION_LATENTS) == ["luminance", "red_green", "blue_yellow", "area", "centroid_y",
                                        "centroid_x", "motion"]
    np.testing.assert_allclose(v[0, :3], [0.299, 1.0, -0.5])
    np.testing.assert_allclose(v[1, :3], [0.114 / 2, 0.0, 0.5])
    np.testing.assert_allclose(v[2, :3], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(v[:, 3:6], [[1, 0, 0], [0.5, -0.5, 0], [1, 0, 0]])
    np.testing.assert_allclose(v[:, 6], [0.0, (8 * 2 + 8 * 1) / 48, (8 * 2 + 8 * 3) / 48])


def test_language_latents_are_boxcars_of_the_spoken_words():
    sem = {w: np.arange(4.0) + k for k, w in enumerate(["red", "look", "coffee"])}
    words = [("look", 0.5, 0.25, OTHER), ("red", 0.75, 0.3, FRAME_PREDICTABLE), ("coffee", 2.0, 0.1, OTHER)]
    x, s = lat.language_latents(words, 4.0, 12, sem)
    rate = np.zeros(12)
    rate[[2, 3, 4, 8]] = 1                                   # samples k/4 s inside [onset, onset + duration)
    np.testing.assert_array_equal(x[:, 0], rate)
    np.testing.assert_allclose(x[3, 1], (3 - 4) / 2)        # "red": 3 letters
    np.testing.assert_allclose(s[2], sem["look"])
    np.testing.assert_allclose(s[3], sem["red"])
    np.testing.assert_allclose(s[8], sem["coffee"])
    assert not s[[0, 1, 5, 6, 7, 9, 10, 11]].any()


def test_interaction_is_bilinear_and_orthogonal_to_the_main_effects():
    rng = np.random.default_rng(0)
    vision = [rng.standard_normal((300, 7)) for _ in range(3)]
    language = [rng.standard_normal((300, 6)) for _ in range(3)]
    sem = [rng.standard_normal((300, 4)) * (rng.random((300, 1)) < 0.5) for _ in range(3)]
    forms = lat.interaction_forms(0)
    got = lat.interaction_latents(vision, language, sem, forms)
    # the bilinear products by explicit loops, then the main effects projected out with scikit-learn
    from sklearn.linear_model import LinearRegression

    raw = np.concatenate([[[s[t] @ forms[k] @ v[t] for k in range(3)] for t in range(300)]
                          for s, v in zip(sem, vision)])
    main = np.concatenate([np.concatenate([v, g], 1) for v, g in zip(vision, language)])
    res = raw - LinearRegression().fit(main, raw).predict(main)
    ref = (res - res.mean(0)) / res.std(0)
    np.testing.assert_allclose(np.concatenate(got), ref, atol=1e-9)
    c = np.corrcoef(np.concatenate(got).T, main.T)[:3, 3:]
    assert np.abs(c).max() < 1e-9                            # no linear trace of either modality


def test_window_means_average_each_tr_window():
    x = np.arange(20, dtype=float)[:, None]                  # frame k at k / 4 s
    np.testing.assert_allclose(lat.window_means(x, 4.0, 1.5, 3)[:, 0], [2.5, 8.5, 14.5])  # frames 0-5, 6-11, 12-17


# ---- stimuli ------------------------------------------------------------------------------------------

def test_mentions_name_the_colour_on_screen_and_follow_the_cue():
    succ = grammar(0)
    ep = make_episode(60, 1.5, 8.0, 32, 8000, np.random.default_rng(3), succ)
    names = list(COLOURS)
    mentions = [i for i, w in enumerate(ep.words) if w[3] == FRAME_PREDICTABLE]
    assert len(mentions) >= 3
    for i in mentions:
        word, onset = ep.words[i][0], ep.words[i][1]
        assert ep.words[i - 1][0] == CUE and word in COLOURS
        frame = ep.frames[int(onset * 8.0)].astype(float)
        # the backdrop (the most common pixel colour) is a dimmed version of the named colour
        px, counts = np.unique(frame.reshape(-1, 3), axis=0, return_counts=True)
        bg = px[np.argmax(counts)]
        palette = np.array([COLOURS[n] for n in names], float)
        cos = palette @ bg / (np.linalg.norm(palette, axis=1) * np.linalg.norm(bg))
        assert names[int(np.argmax(cos))] == word
    others = [w for w in ep.words if w[3] == OTHER]
    assert all(w[0] in VOCAB or w[0] == CUE for w in others)
    # grammar: a VOCAB word is mostly one of its predecessor's two successors
    seq = [VOCAB.index(w[0]) for w in ep.words if w[0] in VOCAB]
    follows = np.mean([b in succ[a] for a, b in zip(seq, seq[1:])])
    assert 0.7 < follows < 0.95


def test_word_sequence_is_deterministic_and_ends_in_time():
    scene = Scene(np.zeros(400, int), np.zeros(400), np.zeros(400), np.zeros(400), np.zeros(400, int))
    a = word_sequence(50.0, np.random.default_rng(1), scene, 8.0, grammar(0))
    assert a == word_sequence(50.0, np.random.default_rng(1), scene, 8.0, grammar(0))
    assert all(o + d <= 50.0 - 0.3 for _, o, d, _ in a) and 1.4 < len(a) / 50 < 2.6


# ---- BOLD -------------------------------------------------------------------------------------------

def test_ar1_noise_equals_a_scipy_filter():
    from scipy.signal import lfilter

    out = simbold.ar1_noise(500, 3, np.random.default_rng(5), 0.35)
    e = np.random.default_rng(5).standard_normal((500, 3))
    k = np.sqrt(1 - 0.35 ** 2)
    ref = np.vstack([e[:1], lfilter([k], [1, -0.35], e[1:], axis=0, zi=0.35 * e[:1])[0]])
    np.testing.assert_allclose(out, ref, atol=1e-12)
    long = simbold.ar1_noise(40000, 1, np.random.default_rng(6))[:, 0]
    assert long.var() == pytest.approx(1.0, abs=0.05)
    assert np.corrcoef(long[1:], long[:-1])[0, 1] == pytest.approx(simbold.AR1, abs=0.02)


def test_response_scale_gives_the_planted_correlation_exactly():
    rng = np.random.default_rng(2)
    S = rng.standard_normal((300, 4)) + 3
    P = 0.5 * rng.standard_normal((300, 4)) + 0.2 * S                 # correlated with S
    N = rng.standard_normal((300, 4)) - 0.3 * S + 1                    # and the noise too
    r = np.array([0.1, 0.3, 0.5, 0.7])
    a = simbold.response_scale(S, S + P, N, r)
    got = [np.corrcoef(S[:, j], a[j] * (S[:, j] + P[:, j]) + N[:, j])[0, 1] for j in range(4)]
    np.testing.assert_allclose(got, r, atol=1e-10)
    assert (a > 0).all()
    with pytest.raises(ConfigError, match="simulate.effect_r"):
        simbold.response_scale(S, S + 10 * P, N, r)


def test_synthesize_subject_shared_and_specific_parts():
    rng = np.random.default_rng(0)
    regs = {"vision": [rng.standard_normal((120, 5)) for _ in range(3)]}
    rois = {"vision": np.arange(0, 30), "null_1": np.arange(30, 50)}
    w = rng.standard_normal((5, 30))
    target = np.full(60, np.nan)
    target[:30] = np.linspace(0.3, 0.5, 30)
    subs = [simbold.synthesize_subject(regs, {"vision": w}, {"vision": np.random.default_rng(10 + s).standard_normal((5, 30))},
                                       target, rois, 60, 0.25, np.random.default_rng(s)) for s in range(2)]
    for out in subs:
        b = np.concatenate(out.bold).astype(float)
        assert b.shape == (360, 60) and np.all(b > 300)
        np.testing.assert_allclose(out.ceiling[:30], target[:30], atol=1e-4)   # exact up to float32 BOLD
        assert np.isnan(out.ceiling[30:]).all()
        sh = np.concatenate(out.shared)
        assert not sh[:, 30:].any()                                      # noise only outside planted ROIs
        np.testing.assert_allclose([np.corrcoef(sh[:, v], b[:, v])[0, 1] for v in range(30)], out.ceiling[:30],
                                   atol=1e-6)
        sd = (b - b.mean(0)).std(0)
        base = b.mean(0)
        assert np.all((sd[30:] / base[30:] > 0.005) & (sd[30:] / base[30:] < 0.02))   # noise ~1 % of baseline
    # the shared response is the same time course in both subjects (up to each voxel's BOLD scale)
    s0, s1 = np.concatenate(subs[0].shared), np.concatenate(subs[1].shared)
    assert min(abs(np.corrcoef(s0[:, v], s1[:, v])[0, 1]) for v in range(30)) > 0.999
    # the subject-specific part differs: the stimulus-driven BOLD of two subjects is not the same
    b0, b1 = (np.concatenate(s.bold).astype(float) for s in subs)
    assert np.median([np.corrcoef(b0[:, v], b1[:, v])[0, 1] for v in range(30)]) < 0.5
    again = simbold.synthesize_subject(regs, {"vision": w}, {"vision": np.random.default_rng(10).standard_normal((5, 30))},
                                       target, rois, 60, 0.25, np.random.default_rng(0))
    np.testing.assert_array_equal(again.bold[1], subs[0].bold[1])


# ---- the stage: independence, the dataset on disk, errors --------------------------------------------

def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or ""), [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def test_simulate_imports_no_analysis_code(repo_root, tmp_path):
    pkg = repo_root / "toolkit" / "brainalign"
    files = [pkg / "simulate.py"] + sorted((pkg / "sim").glob("*.py"))
    for f in files:
        for mod, names in _imports(f):
            parts = mod.lstrip(".").split(".")
            hit = [p for p in parts + names if p in ANALYSIS]
            assert not hit, f"{f.name} imports {mod} {names}"
    # and at run time: nothing of the analysis is even loaded by a whole simulate (pretraining included)
    import yaml

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "d"), "episodes": EPISODES,
                                                 "bold": {"subjects": ["01", "02"], "tr": 1.5, **ATLAS}},
                                        "simulate": {"trs_per_run": 20, "grid": [8, 8, 6], "fps": 4.0,
                                                     "frame_size": 32, "audio_rate": 8000, "roi_voxels": 6,
                                                     "pretrain_steps": 2},
                                        "model": {"tiny": {"hidden": 8, "layers": 1, "heads": 2, "vocab": 64,
                                                           "patch": 16}},
                                        "windows": {"image_size": 32, "audio_rate": 8000},
                                        "finetune": {"n_train": 2, "n_val": 1}}))
    code = f"""
import os, sys, threading
import brainalign
from brainalign.config import load_config
from brainalign.simulate import simulate
from brainalign.provenance import provenance
cfg = load_config({str(cfg_path)!r})
provenance(None, "x")              # bookkeeping every stage shares (it asks ridge.backend for the cupy version)
root, before, calls = os.path.dirname(brainalign.__file__), set(sys.modules), set()
def under_provenance(frame):
    while frame is not None:
        if frame.f_code.co_filename == os.path.join(root, "provenance.py"):
            return True
        frame = frame.f_back
    return False
def profile(frame, event, arg):                      # every Python function call, in any thread
    f = frame.f_code.co_filename
    if event == "call" and f.startswith(root + os.sep):
        top = os.path.relpath(f, root).split(os.sep)[0].removesuffix(".py")
        if top in {ANALYSIS!r} and not under_provenance(frame):
            calls.add(os.path.relpath(f, root) + ":" + frame.f_code.co_name)
sys.setprofile(profile)
threading.setprofile(profile)
simulate(cfg)
sys.setprofile(None)
new = sorted(m for m in set(sys.modules) - before if m.startswith("brainalign.") and m.split(".")[1] in {ANALYSIS!r})
print(sorted(calls), new)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root,
                         env={"PYTHONPATH": str(repo_root / "toolkit"), "PATH": "/usr/bin:/bin",
                              "BRAINALIGN_PROGRESS": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[] []"         # no analysis function called, none imported
    assert (tmp_path / "d" / "model" / "tiny-pretrained.pt").is_file()


def test_simulate_layout_truth_and_readers(tmp_path):
    cfg = tiny_cfg(tmp_path / "demo")
    root = simulate(cfg)
    assert root == tmp_path / "demo" and (root / ".complete").is_file()
    b = cfg.data.bold
    bids = cfg.path(b.dir)
    desc = json.loads((bids / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    mask = load_mask(cfg.path(b.mask))
    assert mask.shape == (9, 9, 7)
    np.testing.assert_allclose(np.diag(mask.affine)[:3], [4, 4, 4])
    labels, names = load_rois(cfg.path(b.rois), cfg.path(b.roi_names), mask)
    assert names == {1: "language", 2: "vision", 3: "interaction", 4: "null_1", 5: "null_2"}
    assert np.bincount(labels, minlength=6)[1:].tolist() == [8] * 5
    sessions = {"s01e01a": "001", "s01e01b": "001", "s01e02a": "002"}
    for sub in ("01", "02"):
        for ep, ses in sessions.items():
            p = find_bold(bids, sub, ep, b.space)
            assert p.relative_to(bids).as_posix() == (f"sub-{sub}/ses-{ses}/func/sub-{sub}_ses-{ses}_task-{ep}_"
                                                      f"space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
            img = nib.load(str(p))
            assert img.shape == (9, 9, 7, 30) and img.get_data_dtype() == np.float32
            assert img.header.get_zooms()[3] == pytest.approx(1.5)
            assert json.loads(p.with_name(p.name.replace(".nii.gz", ".json")).read_text())["RepetitionTime"] == 1.5
            x = read_bold_run(p, mask, tr=1.5)
            assert 300 < x.mean() < 1300 and (x.std(0) > 0).all()
    truth = json.loads((root / "truth.json").read_text())
    rois = {r["name"]: r for r in truth["rois"]}
    assert rois["language"]["driver"] == "language" and rois["vision"]["driver"] == "vision"
    assert rois["interaction"]["driver"] == "interaction"
    assert rois["language"]["expect"] == [{"a": "joint", "b": "no_language", "direction": "a > b"}]
    assert rois["vision"]["expect_null"][0]["a"] == "residual" and rois["null_1"]["expect_null"] == "all"
    assert rois["null_1"]["driver"] is None and rois["null_1"]["expect"] == []
    lo, hi = truth["generative_model"]["effect_r"]
    for n in ("language", "vision", "interaction"):
        assert lo <= rois[n]["mean_target_ceiling"] <= hi
        assert set(rois[n]["planted_ceiling"]) == {"01", "02", "03"}
    assert truth["model"] is None                                   # pretrain_steps 0: no checkpoint
    marker = json.loads((root / ".complete").read_text())          # the stage key, written last
    assert marker["stage_key"] == truth["stage_key"] == marker["stage_record"]["key"]
    words = truth["words"]
    assert words["column"] == "word_class" and words["frame_predictable_words"] == list(COLOURS)
    # stimuli through the readers used for real data; the transcript carries the word classes
    ep = "s01e01b"
    dur, fps, has_audio = video_info(root / "stimuli" / f"{ep}.mp4")
    assert dur == pytest.approx(30 * 1.5 + 0.5) and fps == 4.0 and has_audio
    st = load_episode_stimuli(cfg, ep)
    assert st.n_windows == 30 and st.frames.shape == (30, 2, 32, 32, 3) and st.frames.std() > 10
    tsv = root / "stimuli" / f"{ep}.tsv"
    spoken, classes = read_transcript(tsv), read_tsv(tsv, word_column="word_class")
    assert [w.onset for w in spoken] == [c.onset for c in classes]
    assert {c.word for c in classes} <= {FRAME_PREDICTABLE, OTHER}
    assert all((w.word in COLOURS) == (c.word == FRAME_PREDICTABLE) for w, c in zip(spoken, classes))
    assert sum(truth["words"]["counts"][ep].values()) == len(spoken)
    a_wav, a_mp4 = read_audio(root / "stimuli" / f"{ep}.wav", 8000), read_audio(root / "stimuli" / f"{ep}.mp4", 8000)
    n = min(len(a_wav), len(a_mp4))
    assert abs(len(a_wav) - len(a_mp4)) < 800 and np.corrcoef(a_wav[:n], a_mp4[:n])[0, 1] > 0.95


def test_pretraining_writes_a_loadable_deterministic_checkpoint(tmp_path):
    import torch

    from brainalign.models import get_backbone

    cfg = tiny_cfg(tmp_path / "a", pretrain_steps=30)
    simulate(cfg)
    truth = json.loads((tmp_path / "a" / "truth.json").read_text())
    ck = tmp_path / "a" / "model" / "tiny-pretrained.pt"
    assert truth["model"]["checkpoint"] == str(ck) and truth["model"]["steps"] == 30
    assert truth["model"]["loss_last"] < truth["model"]["loss_first"]
    cfg2 = tiny_cfg(tmp_path / "b", pretrain_steps=30)
    simulate(cfg2)
    a = torch.load(ck, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model" / "tiny-pretrained.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)                  # seeded: bit-identical
    fresh = get_backbone(cfg.model, cfg.windows).module.state_dict()
    assert not torch.equal(fresh["tok_embed.weight"], a["tok_embed.weight"])      # it did train
    # `{root}` in model.checkpoint points the analysis at it
    c = parse_config({"data": {"root": str(tmp_path / "a")}, "model": {"checkpoint": "{root}/model/tiny-pretrained.pt",
                                                                       "tiny": {"hidden": 8, "layers": 2, "heads": 2,
                                                                                "vocab": 256, "patch": 8}},
                      "windows": {"image_size": 32, "audio_rate": 8000}})
    assert c.model.checkpoint == str(ck)
    loaded = get_backbone(c.model, c.windows).module.state_dict()
    assert torch.equal(loaded["tok_embed.weight"], a["tok_embed.weight"])


def test_simulate_is_skipped_when_complete_and_redone_on_change(tmp_path):
    cfg = tiny_cfg(tmp_path / "demo")
    root = simulate(cfg)
    bold = find_bold(cfg.path(cfg.data.bold.dir), "01", "s01e01a", cfg.data.bold.space)
    stamp = bold.stat().st_mtime_ns
    simulate(cfg)
    assert bold.stat().st_mtime_ns == stamp
    cfg.simulate.seed = 1
    simulate(cfg)
    assert bold.stat().st_mtime_ns != stamp and json.loads((root / "truth.json").read_text())["seed"] == 1
    assert not list(root.rglob(".*.tmp-*"))


@pytest.mark.parametrize("over, message", [
    ({"roi_voxels": 200}, r"simulate.roi_voxels: 5 ROIs of 200 voxels do not fit"),
    ({"frame_size": 31}, r"simulate.frame_size: must be even"),
    ({"effect_r": [0.5, 0.2]}, r"simulate.effect_r: needs \[lo, hi\] with 0 < lo <= hi < 1"),
    ({"effect_r": [0.9, 0.95]}, r"simulate.effect_r: a planted r this high"),
    ({"subject_share": -1.0}, r"simulate.subject_share: must be >= 0"),
    ({"pretrain_steps": -3}, r"simulate.pretrain_steps: must be >= 0"),
])
def test_simulate_config_errors(tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        simulate(tiny_cfg(tmp_path / "a", **over))
    assert not (tmp_path / "a" / ".complete").exists()


def test_pretraining_needs_the_tiny_backbone(tmp_path):
    cfg = tiny_cfg(tmp_path / "a", pretrain_steps=2, trs_per_run=12)
    cfg.model.backbone = "hf"
    with pytest.raises(ConfigError, match=r"simulate.pretrain_steps: pretrains the tiny demo model"):
        simulate(cfg)
