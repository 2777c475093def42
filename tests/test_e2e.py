"""End to end on the demo (configs/demo.yaml, the same data `make demo` makes): what the generative model
planted (truth.json, written without any analysis code) against what the pipeline finds.

* item 2: the ISC noise ceiling recovers the planted one (the shared response's r with each subject's BOLD);
* item 3: the planted contrasts are significant where planted, in the planted direction; the residual contrast
  is not significant in the ROIs driven by one modality only; nothing is significant in the null ROIs;
* item 4: the report states, in words, whether the planted interaction was found (it is not, for the tiny
  model: the seed study's finding) — tests/test_residual_sensitivity.py shows the method finds it in features
  that carry it;
* item 5: mlm shows joint > no_vision top-1 with a CI excluding 0 on the frame-predictable words, and no such
  gain on the other words.
"""
import csv
import json
from html import escape

import h5py
import numpy as np
import pytest
import yaml

from brainalign.cli import main
from brainalign.h5io import is_complete

CEILING_TOL = 0.05          # |ISC ceiling - planted ceiling|, ROI mean over voxels and subjects
NULL_CEILING_MAX = 0.15     # the SB-corrected ISC of pure noise is small but positive (clipped at 0)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, repo_root):
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = yaml.safe_load((repo_root / "configs" / "demo.yaml").read_text())
    cfg["output"] = str(tmp / "results")
    cfg["data"]["root"] = str(tmp / "data")
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["run", str(path)]) == 0
    truth = json.loads((tmp / "data" / "truth.json").read_text())
    with open(tmp / "results" / "roi_stats.csv") as f:
        rows = list(csv.DictReader(f))
    findings = json.loads((tmp / "results" / "report" / "findings.json").read_text())
    return cfg, tmp, truth, rows, findings


def _cell(rows, contrast, roi, layer):
    (row,) = [r for r in rows if r["contrast"] == contrast and r["roi"] == roi and int(r["layer"]) == layer]
    return float(row["mean_dz"]), float(row["q"]), row["significant"] in ("1", "True", "true")


def test_outputs_complete_with_provenance(demo_run):
    cfg, tmp, *_ = demo_run
    out = cfg["output"]
    for name in ("features.h5", "design.h5", "bold.h5", "scores.h5", "stats.h5", "mlm.h5"):
        assert is_complete(f"{out}/{name}"), name
        with h5py.File(f"{out}/{name}") as f:
            for key in ("config", "git_commit", "version_numpy", "version_torch", "version_h5py", "host", "created"):
                assert key in f.attrs, (name, key)
            assert "crossmodal" in f.attrs["config"]
    with h5py.File(f"{out}/scores.h5") as f:
        S, F, L, K, V = f["r"].shape
        assert (S, F, K) == (5, 4, 4)
        assert f["r_mean"].shape == (S, F, L, V)
    with h5py.File(f"{out}/features.h5") as f:            # extracted with the model simulate pretrained
        assert f.attrs["backbone"] == "tiny"
    assert (tmp / "data" / "model" / "tiny-pretrained.pt").is_file()
    assert (tmp / "results" / "report" / "index.html").exists()
    assert list((tmp / "results" / "maps").rglob("*.nii.gz"))


def test_noise_ceiling_recovers_the_planted_one(demo_run):
    cfg, tmp, truth, *_ = demo_run
    with h5py.File(tmp / "results" / "stats.h5") as f:
        names = [x.decode() if isinstance(x, bytes) else str(x) for x in f.attrs["roi_names"]]
        assert f["noise_ceiling"].attrs["method"] == "isc"
        est = f["noise_ceiling/roi_ceiling"][()]                      # (S, R)
    for roi in truth["rois"]:
        got = float(np.mean(est[:, names.index(roi["name"])]))
        if roi["planted_ceiling"]:
            planted = float(np.mean(list(roi["planted_ceiling"].values())))
            assert planted == pytest.approx(roi["mean_target_ceiling"], abs=1e-3)   # exact by construction
            assert abs(got - planted) <= CEILING_TOL, (roi["name"], got, planted)
        else:
            assert got <= NULL_CEILING_MAX, (roi["name"], got)


def test_planted_contrasts_found_where_planted_and_nowhere_else(demo_run):
    cfg, tmp, truth, rows, findings = demo_run
    layer = findings["layer"]                                          # the report layer
    assert layer in {int(r["layer"]) for r in rows}
    rois = {r["name"]: r for r in truth["rois"]}
    expect = {"language": "language_gain", "vision": "vision_gain"}
    for roi, contrast in expect.items():
        mean, q, sig = _cell(rows, contrast, roi, layer)
        assert sig and mean > 0, (roi, contrast, mean, q)
        assert rois[roi]["expect"][0]["b"] == {"language_gain": "no_language", "vision_gain": "no_vision"}[contrast]
    # the residual (joint beyond both ablations) is not significant where one modality drives the ROI
    for roi in ("language", "vision"):
        assert rois[roi]["expect_null"][0]["a"] == "residual"
        for li in sorted({int(r["layer"]) for r in rows}):
            mean, q, sig = _cell(rows, "crossmodal_vs_0", roi, li)
            assert not sig, (roi, li, mean, q)
    null_rois = [n for n, r in rois.items() if r["expect_null"] == "all"]
    assert len(null_rois) == 2
    for roi in null_rois:
        for r in (r for r in rows if r["roi"] == roi):
            assert r["significant"] in ("0", "False", "false"), r


def test_report_says_what_was_planted_and_what_was_found(demo_run):
    cfg, tmp, truth, rows, findings = demo_run
    verdicts = {(f["roi"], f["contrast"]): f for f in findings["rois"]}
    assert verdicts[("vision", "vision_gain")]["verdict"] == "found"
    assert verdicts[("language", "language_gain")]["verdict"] == "found"
    cm = verdicts[("interaction", "crossmodal_vs_0")]
    mean, q, sig = _cell(rows, "crossmodal_vs_0", "interaction", findings["layer"])
    assert cm["expect"] == "positive" and cm["verdict"] == ("found" if sig and mean > 0 else "not found")
    html = (tmp / "results" / "report" / "index.html").read_text()
    assert "Planted vs found" in html
    for s in findings["sentences"]:
        assert escape(s) in html
    text = " ".join(findings["sentences"])
    if cm["verdict"] == "not found":          # the tiny model does not carry the interaction: said in words
        assert "Planted but not found: interaction responds to the interaction" in text
        assert "Dong & Toneva (2023)" in text and "pre-trained MERLOT Reserve" in text
    assert "Planted and found: vision responds to what is on screen" in text
    assert "no contrast is significant in null_1, null_2" in text
    assert "crossmodal_vs_0 is not significant in language, vision" in text


def test_mlm_vision_helps_on_the_frame_predictable_words_only(demo_run):
    cfg, tmp, truth, rows, findings = demo_run
    assert truth["words"]["frame_predictable_words"] and truth["words"]["column"] == "word_class"
    with open(tmp / "results" / "mlm.csv") as f:
        mlm = {(r["condition"], r["episode"], r["word_class"]): r for r in csv.DictReader(f)}
    fp = mlm[("joint-no_vision", "all", "frame_predictable")]
    other = mlm[("joint-no_vision", "all", "other")]
    assert int(fp["n_words"]) >= 20 and int(other["n_words"]) >= 200
    assert float(fp["top1"]) > 0 and float(fp["top1_ci_low"]) > 0, fp                  # a gain, CI excludes 0
    assert float(other["top1_ci_low"]) <= 0, other                                      # no such gain
    assert float(fp["top1_ci_low"]) > float(other["top1_ci_high"])
    m = {x["word_class"]: x for x in findings["mlm"]}
    assert m["frame_predictable"]["ci_excludes_0"] and m["frame_predictable"]["expect"] == "positive"
    assert "vision helps predict them" in " ".join(findings["sentences"])


def test_resume_skips_complete_stages(demo_run):
    cfg, tmp, *_ = demo_run
    scores = tmp / "results" / "scores.h5"
    before = scores.stat().st_mtime_ns
    assert main(["run", str(tmp / "demo.yaml"), "--stages", "fit"]) == 0
    assert scores.stat().st_mtime_ns == before
