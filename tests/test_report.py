"""The report stage: figures, index.html with tables, links and provenance; errors on bad inputs."""
import html
import struct
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_stats import ROI_NAMES, make_config, make_scores  # noqa: E402

from brainalign import h5io  # noqa: E402
from brainalign.errors import ConfigError, DataError  # noqa: E402
from brainalign.report import load_report_data, run_report  # noqa: E402
from brainalign.stats import run_stats  # noqa: E402

CONTRASTS = [{"name": "joint-vs-novision", "a": "joint", "b": "no_vision"},
             {"name": "joint-vs-zero", "a": "joint", "b": None}]
PNGS = ["roi_bars.png", "layer_curves.png", "map_mean-r_joint.png", "map_contrast-joint-vs-novision_t.png",
        "map_contrast-joint-vs-zero_t.png",
        # nilearn glass brains of the contrasts with significant voxels
        "glass_contrast-joint-vs-novision_t.png", "glass_contrast-joint-vs-zero_t.png",
        # the same maps on the fsaverage5 surface, and the per-subject maps (issue 23)
        "surf_mean-r_joint.png", "surf_contrast-joint-vs-novision_t.png", "surf_contrast-joint-vs-zero_t.png",
        "subjects_mean-r_joint.png"]


def png_size(path):
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep")
    make_scores(out, seed=1, config_text="name: fit-config\nfit: {alphas: [1, 10]}\n")
    cfg = make_config(out, contrasts=CONTRASTS, report={"title": "Vision & language <test>"})
    run_stats(cfg)
    return cfg, run_report(cfg)


def test_report_writes_all_figures(report):
    cfg, rep = report
    assert rep == Path(cfg.output) / "report"
    assert sorted(p.name for p in rep.glob("*.png")) == sorted(PNGS)
    from matplotlib.image import imread
    for name in PNGS:
        w, h = png_size(rep / name)
        assert 400 <= w <= 4000 and 250 <= h <= 4000, (name, w, h)
        img = imread(rep / name)
        assert img[..., :3].std() > 0.02, f"{name} looks blank"
    assert not list(rep.glob(".*tmp*")), "temporary files left behind"


def test_index_html_links_tables_and_provenance(report):
    cfg, rep = report
    text = (rep / "index.html").read_text()
    assert html.escape(cfg.report.title) in text and "<test>" not in text
    for name in PNGS:
        assert f'src="{name}"' in text
    for href in ("../roi_stats.csv", "../stats.h5", "../scores.h5",
                 "../maps/group/group_contrast-joint-vs-novision_stat-t_bold.nii.gz",
                 "../maps/group/group_feat-joint_stat-r_bold.nii.gz"):
        assert f'href="{href}"' in text, href
        assert (rep / href).resolve().is_file(), href
    out = Path(cfg.output)
    for fname in ("scores.h5", "stats.h5"):
        with h5io.open_h5(out / fname) as f:
            for key in ("git_commit", "created", "host", "brainalign_version", "version_numpy"):
                assert html.escape(str(f.attrs[key])) in text, (fname, key)
            assert html.escape(f.attrs["config"]) in text, fname
    assert "name: fit-config" in text                       # the fit stage's config, not only ours
    # the ROI table: every significant (layer, ROI) cell of stats.h5 is highlighted, at the report layer
    # and once more in the all-layers table
    data = load_report_data(cfg)
    with h5py.File(out / "stats.h5", "r") as f:
        sig = np.stack([f[f"roi/{c['name']}/significant"][()] for c in CONTRASTS])   # (C, L, R)
        t = f["roi/joint-vs-novision/t"][data.layer_index, ROI_NAMES.index("planted")]
    assert text.count("<tr class=sig>") == sig.sum() + sig[:, data.layer_index].sum()
    assert f"<td>{t:.3g}</td>" in text


def test_report_layer_choice(report, tmp_path):
    """Default: the last layer, a rule independent of the displayed contrasts (the fixture's joint r and
    joint − no_vision difference both peak at the last layer, so pick a fixture where they do not)."""
    cfg, _ = report
    data = load_report_data(cfg)
    assert data.layer_index == 2 and "the last layer" in data.layer_how and "independent" in data.layer_how
    text = (Path(cfg.output) / "report" / "index.html").read_text()
    assert html.escape(data.layer_how) in text
    sel = tmp_path / "sel"
    make_scores(sel, seed=2)
    with h5py.File(sel / "scores.h5", "a") as f:             # joint best at layer 0 (where no contrast is)
        r = f["r_mean"][()]
        r[:, 0, 0] += 0.3
        r[:, 1:, 0] += 0.3
        f["r_mean"][...] = r
    c_sel = make_config(sel, contrasts=CONTRASTS)
    run_stats(c_sel)
    assert load_report_data(c_sel).layer_index == 2          # not the layer of the best joint r
    make_scores(tmp_path, seed=1)
    c2 = make_config(tmp_path, contrasts=CONTRASTS, report={"layer": 1})
    run_stats(c2)
    assert load_report_data(c2).layer_index == 1
    assert load_report_data(c2).layer_how == "fixed in the config: report.layer"
    with pytest.raises(ConfigError, match=r"report\.layer: 7 is not a layer in .*scores\.h5 \(layers: 0, 1, 2\)"):
        load_report_data(make_config(tmp_path, contrasts=CONTRASTS, report={"layer": 7}))


def test_fdr_family_is_printed_under_every_figure_and_table(report):
    """Every figure caption and every table's paragraph says what BH spans (or that nothing is tested)."""
    import re

    cfg, rep = report
    text = (rep / "index.html").read_text()
    family = "across layers × ROIs within each test (stats.fdr_family: contrast)"   # the default
    caps = re.findall(r"<figcaption>(.*?)</figcaption>", text, flags=re.S)
    assert len(caps) == len(PNGS)
    for cap in caps:
        assert "stats.fdr_family: contrast" in html.unescape(cap) or "no test" in cap, cap
    assert html.unescape(text).count(family) >= 3            # header, ROI table, captions
    results = text[:text.index("<h2>Files</h2>")]          # result tables (provenance tables follow)
    parts = results.split("<table>")
    assert len(parts) >= 3, "no result tables"
    for before in parts[:-1]:                                 # the text just above each table
        before = html.unescape(before[-800:])
        assert "stats.fdr_family" in before or "No significance test" in before or "all layers" in before, before
    with h5py.File(Path(cfg.output) / "stats.h5", "r") as f:
        assert f.attrs["fdr_family"] == "contrast" and family.split(" (")[0] in f.attrs["fdr"]


def test_missing_stats_names_the_file(tmp_path):
    make_scores(tmp_path)
    with pytest.raises(DataError, match=f"stats file not found: {tmp_path / 'stats.h5'}"):
        run_report(make_config(tmp_path))
    assert not (tmp_path / "report" / "index.html").exists()


def test_stale_stats_is_rejected(tmp_path):
    make_scores(tmp_path)
    cfg = make_config(tmp_path, contrasts=CONTRASTS)
    run_stats(cfg)
    make_scores(tmp_path, n_subjects=4)                  # scores.h5 rewritten after stats ran
    with pytest.raises(DataError, match=r"stats file .*stats\.h5: attr subjects differs"):
        run_report(cfg)


def test_report_without_contrasts(tmp_path):
    make_scores(tmp_path)
    cfg = make_config(tmp_path, contrasts=[])
    run_stats(cfg)
    rep = run_report(cfg)
    assert sorted(p.name for p in rep.glob("*.png")) == ["layer_curves.png", "map_mean-r_joint.png",
                                                         "roi_bars.png", "subjects_mean-r_joint.png",
                                                         "surf_mean-r_joint.png"]
    assert "No contrasts" in (rep / "index.html").read_text()


def test_report_without_rois(tmp_path):
    make_scores(tmp_path, rois=False)
    cfg = make_config(tmp_path, contrasts=CONTRASTS)
    run_stats(cfg)
    rep = run_report(cfg)
    assert sorted(p.name for p in rep.glob("*.png")) == sorted(PNGS[2:])
    assert html.escape("the last layer (report.layer is null)") in (rep / "index.html").read_text()


def test_report_shows_noise_ceiling_and_permutation_counts(tmp_path):
    from test_ceiling import write_bold

    arrays = make_scores(tmp_path, seed=1)
    write_bold(tmp_path, arrays["mask"])
    V = int(arrays["mask"].sum())
    sig = np.zeros((5, 2, V), np.uint8)
    sig[:, 0, :7] = 1
    sig[3, 1, :2] = 1
    csig = np.zeros((5, V), np.uint8)
    csig[2, :4] = 1
    with h5io.atomic_h5(tmp_path / "permutation.h5", "permutation") as g:     # permutation.h5 layout
        g.attrs["subjects"] = h5io.str_attr([f"{i + 1:02d}" for i in range(5)])
        g.attrs["feature_sets"] = h5io.str_attr(["joint", "no_vision"])
        g.attrs["contrasts"] = h5io.str_attr(["jv"])
        g.attrs["layer"], g.attrs["n_perm"], g.attrs["q"] = 2, 999, 0.05
        g.create_dataset("r/significant", data=sig)
        g.create_dataset("contrast/jv/significant", data=csig)
        g["contrast/jv"].attrs["a"], g["contrast/jv"].attrs["b"] = "joint", "no_vision"
    cfg = make_config(tmp_path, contrasts=CONTRASTS)
    run_stats(cfg)
    rep = run_report(cfg)
    assert (rep / "map_noise-ceiling.png").is_file()
    text = (rep / "index.html").read_text()
    assert "Noise-normalised alignment" in text and 'href="../roi_scores.csv"' in text
    data = load_report_data(cfg)
    with h5py.File(tmp_path / "stats.h5", "r") as f:
        rn = f["noise_ceiling/roi_normalised"][:, 0, data.layer_index, 0]
        rc = f["noise_ceiling/roi_ceiling"][:, 0]
    assert f"<td>{rc.mean():.3g} ± {rc.std(ddof=1) / np.sqrt(5):.2g}</td>" in text
    assert f"<td>{rn.mean():.3g} ± {rn.std(ddof=1) / np.sqrt(5):.2g}</td>" in text
    assert "Per-subject permutation tests, layer 2" in text and "999 permutations" in text
    assert "Tested with: within-run circular shifts of the BOLD" in text      # a file without a null description
    assert "<tr><td class=l>sub-04</td><td>7</td><td>2</td><td>0</td></tr>" in text
    assert "<tr><td class=l>sub-03</td><td>7</td><td>0</td><td>4</td></tr>" in text
