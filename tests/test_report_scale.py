"""The report at study scale (issue 23, item 2; issue 21, item 4): on a 1,000-parcel study every figure fits the
page (<= 2,400 px wide), the ROI table is sorted by effect with the full table a click away and sortable, every
contrast row shows its direction, every feature set is defined, maps are drawn over the MNI template and on the
fsaverage surface, and per-subject maps are shown with what they were tested with (permutation.h5's attrs).
Inputs: bench/report.py's synthetic scores.h5 (planted r) on a coarse Schaefer-like 1,000-parcel atlas, and
this checkout's stats stage."""
import re
import sys
from html import unescape
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

pytest.importorskip("nilearn")


def png_size(path):
    b = Path(path).read_bytes()[:24]
    assert b[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")


def write_permutation(out: Path, S, F, V, layer):
    """A complete permutation.h5 as the stats stage writes it, with the refitting null's own description."""
    from brainalign.h5io import atomic_h5, str_attr

    rng = np.random.default_rng(1)
    with atomic_h5(out / "permutation.h5", "permutation", "x: 1\n") as g:
        g.attrs["subjects"] = str_attr([f"{i + 1:02d}" for i in range(S)])
        g.attrs["feature_sets"] = str_attr(["joint", "no_vision", "no_language", "crossmodal"])
        g.attrs["contrasts"] = str_attr([])
        g.attrs["layer"], g.attrs["q"], g.attrs["n_perm"] = layer, 0.05, 200
        g.attrs["n_permutations"] = 200
        g.attrs["null"] = "refit"
        g.attrs["null_description"] = "every run's BOLD circularly shifted once and the fold models refitted"
        g.attrs["held_fixed"] = "each voxel's alpha from the real data"
        g.attrs["fdr"] = "Benjamini-Hochberg per subject across parcels"
        obs = rng.uniform(0, 0.2, (S, F, V)).astype(np.float32)
        sig = np.zeros((S, F, V), bool)
        for s in range(S):
            sig[s, :, : 100 * (s + 1)] = True                  # subject s: 100 (s + 1) significant parcels
        for k, a in (("observed", obs), ("p", np.full_like(obs, 0.5)), ("q", np.full_like(obs, 0.5)),
                     ("significant", sig)):
            g.create_dataset(f"r/{k}", data=a)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import report as bench

    from brainalign.config import load_config
    from brainalign.report import run_report
    from brainalign.stats import run_stats

    tmp = tmp_path_factory.mktemp("scale")
    out = tmp / "out"
    out.mkdir()
    bench.make_scores(out, 1000, grid=(40, 48, 40), layers=3)
    cfg = load_config(bench.write_config(tmp / "c.yaml", out))
    run_stats(cfg)
    write_permutation(out, 4, 4, 1000, 2)
    rep = run_report(cfg)
    return rep, (rep / "index.html").read_text()


def test_every_figure_fits_the_page(study):
    rep, _ = study
    pngs = sorted(rep.glob("*.png"))
    assert {"roi_bars.png", "layer_curves.png", "map_mean-r_joint.png", "surf_mean-r_joint.png",
            "subjects_mean-r_joint.png"} <= {p.name for p in pngs}
    for p in pngs:
        w, h = png_size(p)
        assert w <= 2400, (p.name, w, h)


def test_the_roi_table_is_sorted_by_effect_with_the_full_table_a_click_away(study):
    _, text = study
    section = text.split("<h2>ROI statistics")[1].split("<h2>")[0]
    shown, rest = section.split("<details>", 1)
    rows = re.findall(r"<tr[^>]*><td class=l>([^<]+)</td><td class=l>([^<]+)</td><td>\d+</td><td>\d+</td>"
                      r"<td class=(pos|neg)>([^<]+)</td><td class=l>([^<]+)</td>", shown)
    by_contrast = {}
    for contrast, _roi, cls, mean, direction in rows:
        by_contrast.setdefault(contrast, []).append((float(mean.replace("–", "nan")), cls, unescape(direction)))
    assert set(by_contrast) == {"vision_gain", "language_gain", "crossmodal_vs_0"}
    for contrast, vals in by_contrast.items():
        means = [m for m, _, _ in vals]
        assert len(means) == 20 and means == sorted(means, reverse=True), contrast     # largest effect first
        for m, cls, direction in vals:                                                # the sign, in words
            assert (cls == "pos") == (m > 0) and ((">" in direction) == (m > 0)), (m, cls, direction)
    assert "all 3000 rows at layer 2 (sortable)" in rest
    full = rest.split("</details>")[0]
    assert full.count("<tr") == 3000 + 1 and "class=sortable" in full
    assert "table.sortable th" in text and "addEventListener('click'" in text


def test_the_legend_defines_every_feature_set_and_contrast_sign(study):
    _, text = study
    legend = unescape(text.split("<h2>Legend</h2>")[1].split("<h2>")[0])
    assert "no_vision</b></td><td class=l>input condition: the model's hidden states with language, audio as " \
           "input (vision tokens removed" in legend
    assert "crossmodal</b></td><td class=l>residual: joint minus its ridge prediction from no_vision + " \
           "no_language (fitted on the training runs" in legend
    assert "vision_gain</b></td><td class=l>joint − no_vision: <span class=pos>+</span> where joint > no_vision" \
           in legend


def test_per_subject_maps_say_what_they_were_tested_with(study):
    rep, text = study
    w, h = png_size(rep / "subjects_mean-r_joint.png")
    assert h > w / 2                                          # one row per subject (4)
    cap = unescape(text.split('alt="subjects_mean-r_joint.png"></a><figcaption>')[1].split("</figcaption>")[0])
    assert "shown where the subject's own permutation test gives q ≤ 0.05" in cap
    assert "every run's BOLD circularly shifted once and the fold models refitted" in cap
    assert "200 permutations" in cap and "held fixed: each voxel's alpha from the real data" in cap
    perm = unescape(text.split("<h2>Per-subject permutation tests")[1].split("<h2>")[0])
    assert "held fixed: each voxel's alpha from the real data" in perm
    with h5py.File(rep.parent / "permutation.h5") as g:
        counts = g["r/significant"][:, 0].sum(-1).tolist()
    assert counts == [100, 200, 300, 400]
    for s, n in zip(("01", "02", "03", "04"), counts):
        assert re.search(rf"<tr><td class=l>sub-{s}</td><td>{n}</td>", text)
