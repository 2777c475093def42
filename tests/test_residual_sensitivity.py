"""The residual method finds the demo's planted interaction when the features carry it (issue 13, item 4).

The tiny demo model does not carry the interaction of what is said and what is on screen, so the demo's
interaction ROI comes out "not found" (the report says so). This test shows that it is the model, not the
method or the simulation: on the same simulated BOLD, features constructed from the simulation's own
stimulus latents (window means, no HRF: the FIR delays have to find it) with a known content,

    joint       = [vision, language, interaction] latents, randomly mixed, + noise
    no_audio    = [vision, language, noise]   (a "joint" model WITHOUT the interaction: the control)
    no_vision   = [language, noise]           no_language = [vision, noise]

go through the real align -> fit -> stats stages. The residual of joint given (no_vision, no_language) must
be significant (> 0) in the interaction ROI, not in the ROIs one modality drives, and several times weaker
everywhere else; the control's residual must not find the interaction ROI.

Not asserted, and worth knowing: the control's cross-fitted residual is significant (mean Δz ~0.05) in the
vision and language ROIs here. A cross-fitted (out-of-sample) regression's error is linear in the
predictors, so a residual of features that add nothing still carries a little of the predictors' signal;
with a small true residual (3 of 16 dimensions) it is enough for a group effect.
"""
import csv

import numpy as np
import pytest

from brainalign.config import parse_config
from brainalign.pipeline import run_pipeline
from brainalign.sim import latents as lat
from brainalign.simulate import episode_of, simulate
from feature_files import write_features_h5

EPISODES = ["e1", "e2", "e3", "e4"]
HIDDEN = 16
TRS = 90


def oracle_features(cfg, seed=0):
    """{condition: per episode float32 (1, TRS, HIDDEN)} built from the simulation's latents."""
    episodes = [episode_of(cfg, i) for i in range(len(EPISODES))]
    fams = lat.stimulus_latents(episodes, cfg.simulate.seed)
    tr = cfg.data.bold.tr
    win = {k: [lat.window_means(x, e.fps, tr, TRS) for x, e in zip(runs, episodes)] for k, runs in fams.items()}
    rng = np.random.default_rng([seed, 21])
    content = {"joint": ["vision", "language", "interaction"], "no_audio": ["vision", "language"],
               "no_vision": ["language"], "no_language": ["vision"]}
    out = {}
    for cond, parts in content.items():
        mix = np.linalg.qr(rng.standard_normal((HIDDEN, HIDDEN)))[0]
        runs = []
        for i in range(len(EPISODES)):
            x = np.concatenate([win[p][i] for p in parts], axis=1)
            x = np.concatenate([x, rng.standard_normal((TRS, HIDDEN - x.shape[1]))], axis=1)
            runs.append((x @ mix + 0.1 * rng.standard_normal((TRS, HIDDEN)))[None].astype(np.float32))
        out[cond] = runs
    return out


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oracle")
    data = {"output": str(tmp / "out"), "pipeline": ["align", "fit", "stats"],
            "data": {"root": str(tmp / "data"), "episodes": EPISODES,
                     "bold": {"subjects": ["01", "02", "03", "04", "05"],
                              "mask": "{root}/derivatives/atlas/space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz",
                              "rois": "{root}/derivatives/atlas/space-MNI152NLin2009cAsym_desc-rois_dseg.nii.gz",
                              "roi_names": "{root}/derivatives/atlas/desc-rois_dseg.tsv"}},
            "simulate": {"trs_per_run": TRS, "grid": [11, 11, 8], "fps": 4.0, "frame_size": 32,
                         "audio_rate": 8000, "roi_voxels": 20, "n_null_rois": 2},
            "model": {"conditions": ["joint", "no_vision", "no_language", "no_audio"]},
            "finetune": {"n_train": 2, "n_val": 1},
            "align": {"trim": 2, "residuals": [
                {"name": "crossmodal", "target": "joint", "predictors": ["no_vision", "no_language"]},
                {"name": "control", "target": "no_audio", "predictors": ["no_vision", "no_language"]}]},
            "fit": {"write_maps": False},
            "stats": {"noise_ceiling": "none", "contrasts": [
                {"name": "crossmodal_vs_0", "a": "crossmodal"}, {"name": "control_vs_0", "a": "control"},
                {"name": "vision_gain", "a": "joint", "b": "no_vision"},
                {"name": "language_gain", "a": "joint", "b": "no_language"}]}}
    cfg = parse_config(data, text=str(data))
    simulate(cfg)
    write_features_h5(cfg.out / "features.h5", oracle_features(cfg), EPISODES, cfg.data.bold.tr, "oracle")
    run_pipeline(cfg)
    with open(cfg.out / "roi_stats.csv") as fh:
        return {(r["contrast"], r["roi"]): r for r in csv.DictReader(fh)}


def sig(row):
    return row["significant"] in ("1", "True", "true")


def test_residual_finds_the_planted_interaction_when_the_features_carry_it(oracle_run):
    row = oracle_run[("crossmodal_vs_0", "interaction")]
    assert sig(row) and float(row["mean_dz"]) > 0.1, row
    for roi in ("language", "vision"):                  # driven by one modality: the residual is not significant
        assert not sig(oracle_run[("crossmodal_vs_0", roi)]), roi
    for roi in ("language", "vision", "null_1", "null_2"):     # and far weaker than where the interaction is
        assert float(oracle_run[("crossmodal_vs_0", roi)]["mean_dz"]) < 0.25 * float(row["mean_dz"]), roi


def test_residual_of_features_without_the_interaction_does_not_find_it(oracle_run):
    row = oracle_run[("control_vs_0", "interaction")]
    assert not sig(row) and float(row["mean_dz"]) < 0.02, row


def test_oracle_features_find_the_unimodal_rois_too(oracle_run):
    assert sig(oracle_run[("vision_gain", "vision")]) and float(oracle_run[("vision_gain", "vision")]["mean_dz"]) > 0
    assert sig(oracle_run[("language_gain", "language")])
    assert float(oracle_run[("language_gain", "language")]["mean_dz"]) > 0
