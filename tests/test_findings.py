"""Planted vs found (brainalign.findings): verdicts from a hand-written truth and hand-made stats, in words."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from brainalign import findings
from brainalign.config import parse_config
from brainalign.report import ContrastStats

ROIS = ["language", "vision", "interaction", "null_1"]
RESIDUAL = {"a": "residual", "target": "joint", "without": ["vision", "language"]}


def truth():
    return {"rois": [
        {"name": "language", "responds_to": "what is said", "planted_ceiling": {"01": 0.4, "02": 0.5},
         "expect": [{"a": "joint", "b": "no_language", "direction": "a > b"}], "expect_null": [RESIDUAL]},
        {"name": "vision", "responds_to": "what is on screen", "planted_ceiling": {"01": 0.3, "02": 0.3},
         "expect": [{"a": "joint", "b": "no_vision", "direction": "a > b"}], "expect_null": [RESIDUAL]},
        {"name": "interaction", "responds_to": "the interaction", "planted_ceiling": {"01": 0.4, "02": 0.4},
         "expect": [{**RESIDUAL, "direction": "a > 0", "requires": "joint features that carry the interaction"}],
         "expect_null": []},
        {"name": "null_1", "responds_to": "nothing", "planted_ceiling": None, "expect": [], "expect_null": "all"}],
        "words": {"column": "word_class", "frame_predictable": "frame_predictable", "other": "other",
                  "rule": "'look <colour>'"}}


def contrast(name, a, b, mean, q):
    """ContrastStats over 2 layers x 4 ROIs; layer 1 holds ``mean`` and ``q`` per ROI (layer 0 the opposite)."""
    mean, q = np.asarray(mean, float), np.asarray(q, float)
    roi = {"mean": np.stack([-mean, mean]), "q": np.stack([1 - q, q]), "significant": np.stack([q > 2, q <= 0.05])}
    roi.update({k: np.zeros((2, 4)) for k in ("t", "p", "ci_low", "ci_high", "cohen_d", "n_subjects")})
    return ContrastStats(name, a, b, roi, np.zeros(1), np.zeros(1))


@pytest.fixture
def setup(tmp_path):
    cfg = parse_config({"output": str(tmp_path / "out"), "data": {"root": str(tmp_path)},
                        "align": {"residuals": [{"name": "crossmodal", "target": "joint",
                                                 "predictors": ["no_vision", "no_language"]},
                                                {"name": "only_lang", "target": "joint", "predictors": ["no_vision"]}]},
                        "stats": {"contrasts": [{"name": "x", "a": "joint"}]}})
    data = SimpleNamespace(meta=SimpleNamespace(roi_names=ROIS, layers=[0, 3]), layer_index=1, contrasts=[
        contrast("vision_gain", "joint", "no_vision", [-0.05, 0.2, 0.0, 0.001], [0.01, 0.001, 0.9, 0.8]),
        contrast("language_gain", "joint", "no_language", [0.1, -0.01, 0.0, 0.0], [0.3, 0.5, 0.9, 0.04]),
        contrast("crossmodal_vs_0", "crossmodal", None, [0.0, 0.01, 0.004, 0.0], [0.9, 0.6, 0.4, 0.9]),
        contrast("only_lang_vs_0", "only_lang", None, [0.0, 0.0, 0.3, 0.0], [0.9, 0.9, 0.001, 0.9])],
        ceiling={"roi_ceiling": np.array([[0.41, 0.31, 0.39, 0.05], [0.47, 0.29, 0.41, 0.07]])})
    return cfg, data


def test_residual_specs_match_only_a_residual_without_both_modalities(setup):
    cfg, data = setup
    by = {c.name: c for c in data.contrasts}
    assert findings.matches(RESIDUAL, by["crossmodal_vs_0"], cfg)
    assert not findings.matches(RESIDUAL, by["only_lang_vs_0"], cfg)          # predictors keep language
    assert not findings.matches(RESIDUAL, by["vision_gain"], cfg)
    assert findings.matches({"a": "joint", "b": "no_vision"}, by["vision_gain"], cfg)
    assert not findings.matches({"a": "joint", "b": "no_language"}, by["vision_gain"], cfg)


def test_verdicts_at_the_report_layer(setup):
    cfg, data = setup
    got = {(f.roi, f.contrast): (f.expect, f.verdict) for f in findings.roi_findings(truth(), data, cfg)}
    assert got[("vision", "vision_gain")] == ("positive", "found")
    assert got[("language", "language_gain")] == ("positive", "not found")          # q 0.3 at layer 1
    assert got[("interaction", "crossmodal_vs_0")] == ("positive", "not found")
    assert got[("language", "crossmodal_vs_0")] == ("null", "null")
    assert got[("vision", "crossmodal_vs_0")] == ("null", "null")
    assert got[("null_1", "language_gain")] == ("null", "false positive")            # q 0.04
    assert got[("null_1", "vision_gain")] == ("null", "null")
    assert got[("language", "vision_gain")] == ("none", "unplanted")                 # significant, negative
    assert got[("interaction", "only_lang_vs_0")] == ("none", "unplanted")
    assert got[("vision", "language_gain")] == ("none", None)


def test_sentences_say_what_was_and_was_not_found(setup, tmp_path):
    cfg, data = setup
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlm.csv").write_text(
        "condition,episode,word_class,n_words,top1,top1_ci_low,top1_ci_high\n"
        "joint-no_vision,all,all,100,0.05,0.0,0.1\n"
        "joint-no_vision,all,frame_predictable,20,0.6,0.4,0.8\n"
        "joint-no_vision,all,other,80,-0.01,-0.04,0.02\n"
        "joint-no_vision,e1,frame_predictable,5,0.6,0.2,1.0\n")
    (tmp_path / "truth.json").write_text(json.dumps(truth()))
    section = findings.build(cfg, data)
    text = "\n".join(section["sentences"])
    assert section["layer"] == 3 and text.startswith("All ROI statements at the report layer 3.")
    assert "Planted and found: vision responds to what is on screen; joint vs no_vision (vision_gain)" in text
    assert "Planted but not found: language responds to what is said" in text
    assert ("Planted but not found: interaction responds to the interaction, but crossmodal vs 0 (crossmodal_vs_0) "
            "in interaction is not significant") in text and "Dong & Toneva (2023)" in text
    assert "False positive: joint vs no_language (language_gain) in null_1" in text
    assert "crossmodal_vs_0 is not significant in language, vision (ROIs driven by one modality only)" in text
    assert "Not planted, found: joint < no_vision in language" in text
    assert "language planted 0.45, estimated 0.44" in text
    assert ("the 20 words the frames predict ('look <colour>'): top-1 joint − no_vision = 0.6 [0.4, 0.8] (95 % "
            "bootstrap CI); vision helps predict them") in text
    assert "the 80 other words: top-1 joint − no_vision = -0.01 [-0.04, 0.02]; no gain, the CI includes 0" in text
    assert [m["word_class"] for m in section["mlm"]] == ["frame_predictable", "other"]
    html = findings.to_html(section)
    assert "<h2>Planted vs found</h2>" in html and "False positive" in html
    # real data: no truth.json, no section
    (tmp_path / "truth.json").unlink()
    assert findings.build(cfg, data) is None and findings.to_html(None) == ""
