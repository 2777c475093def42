"""End to end on a small demo: the planted ROI contrasts are recovered; null ROIs are not significant."""
import csv
import json

import h5py
import pytest
import yaml

from brainalign.cli import main
from brainalign.h5io import is_complete


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, repo_root):
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = yaml.safe_load((repo_root / "configs" / "demo.yaml").read_text())
    cfg["output"] = str(tmp / "results")
    cfg["data"]["root"] = str(tmp / "data")
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["run", str(path)]) == 0
    return cfg, tmp


def _rows(out):
    with open(f"{out}/roi_stats.csv") as f:
        return list(csv.DictReader(f))


def test_outputs_complete_with_provenance(demo_run):
    cfg, tmp = demo_run
    out = cfg["output"]
    for name in ("features.h5", "design.h5", "bold.h5", "scores.h5", "stats.h5"):
        assert is_complete(f"{out}/{name}"), name
        with h5py.File(f"{out}/{name}") as f:
            for key in ("config", "git_commit", "version_numpy", "version_torch", "version_h5py", "host", "created"):
                assert key in f.attrs, (name, key)
            assert "crossmodal" in f.attrs["config"]
    with h5py.File(f"{out}/scores.h5") as f:
        S, F, L, K, V = f["r"].shape
        assert (S, F, K) == (5, 4, 4)
        assert f["r_mean"].shape == (S, F, L, V)
    assert (tmp / "results" / "report" / "index.html").exists()
    assert list((tmp / "results" / "maps").rglob("*.nii.gz"))


def test_planted_contrasts_recovered(demo_run):
    cfg, tmp = demo_run
    truth = json.loads((tmp / "data" / "truth.json").read_text())
    rows = _rows(cfg["output"])
    layers = sorted({int(r["layer"]) for r in rows})
    planted_layer = layers[cfg["simulate"].get("layer", -1)] if isinstance(cfg["simulate"].get("layer", -1), int) else layers[-1]

    def get(contrast, roi, layer=planted_layer):
        (row,) = [r for r in rows if r["contrast"] == contrast and r["roi"] == roi and int(r["layer"]) == layer]
        return float(row["mean_dz"]), float(row["q"]), row["significant"] in ("1", "True", "true")

    expect = {"language": "language_gain", "vision": "vision_gain", "crossmodal": "crossmodal_vs_0"}
    for roi, contrast in expect.items():
        mean, q, sig = get(contrast, roi)
        assert sig and mean > 0, (roi, contrast, mean, q)
    null_rois = [name for name in truth_roi_names(truth) if name.startswith("null")]
    assert null_rois
    for roi in null_rois:
        for contrast in expect.values():
            mean, q, sig = get(contrast, roi)
            assert not sig, (roi, contrast, mean, q)


def truth_roi_names(truth):
    rois = truth.get("rois", truth)
    return list(rois) if isinstance(rois, dict) else [r["name"] for r in rois]


def test_resume_skips_complete_stages(demo_run, capsys):
    cfg, tmp = demo_run
    scores = tmp / "results" / "scores.h5"
    before = scores.stat().st_mtime_ns
    assert main(["run", str(tmp / "demo.yaml"), "--stages", "fit"]) == 0
    assert scores.stat().st_mtime_ns == before
