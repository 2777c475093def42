"""Readers of the published CNeuroMod / Algonauts 2025 layouts, unit by unit, against references that are not
brainalign's: pandas + ast for the per-TR transcripts, nilearn's NiftiLabelsMasker for parcels written back into
the atlas, nibabel for masks, the float64 nested-CV reference of test_fit for subjects with missing runs."""
import ast
import json
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import published as P  # noqa: E402

from brainalign.brain.atlas import group_labels, network_of, read_label_names  # noqa: E402
from brainalign.brain.bids import choose_rescan, find_bold  # noqa: E402
from brainalign.brain.runs import find_runs  # noqa: E402
from brainalign.brain.space import MapSpace  # noqa: E402
from brainalign.brain.study import build_space  # noqa: E402
from brainalign.cli import main, parse_value  # noqa: E402
from brainalign.config import RoiGroupConfig, expand, parse_config  # noqa: E402
from brainalign.errors import ConfigError, DataError  # noqa: E402
from brainalign.stimuli.transcript import read_transcript  # noqa: E402
from brainalign.stimuli.windows import window_bounds, window_words  # noqa: E402


# ---- 1. Algonauts per-TR transcripts -----------------------------------------------------------------

def test_algonauts_transcript_read_as_published(tmp_path):
    """Words come back with their own onsets and durations, whatever chunk lists them (independent reading:
    pandas + ast.literal_eval, as the competition's development kit reads the files)."""
    import pandas as pd

    words = P.make_words(20, seed=3)
    path = P.write_algonauts_transcript(tmp_path / "friends_s01e01a.tsv", words, 20)
    got = read_transcript(path)                              # auto-detected from the header
    df = pd.read_csv(path, sep="\t")
    ref = [(w, o, d) for _, row in df.dropna(subset=["words_per_tr"]).iterrows()
           for w, o, d in zip(*(ast.literal_eval(row[c]) for c in ("words_per_tr", "onsets_per_tr",
                                                                   "durations_per_tr")))]
    assert len(df) == 20                                     # one row per 1.49 s chunk, empty ones included
    assert [(w.word, w.onset, w.duration) for w in got] == sorted(ref, key=lambda x: x[1])
    assert read_transcript(path, "algonauts") == got


def test_word_straddling_a_tr_boundary_goes_to_its_onsets_window(tmp_path):
    """'straddle' starts at 2.8 s in chunk 1 ([1.49, 2.98)) and ends at 3.1 s in chunk 2. The Algonauts file
    lists it in row 2 (its offset's chunk); brainalign's rule (onset) puts it in window 1, not window 2."""
    words = [("before", 0.5, 0.2), ("straddle", 2.8, 0.3), ("after", 3.2, 0.2)]
    path = P.write_algonauts_transcript(tmp_path / "t.tsv", words, 4)
    rows = path.read_text().splitlines()[1:]
    assert "'straddle'" in rows[2] and "'straddle'" not in rows[1]      # the file's rule: offset -> row 2
    got = read_transcript(path)
    assert [(w.word, w.onset) for w in got] == [("before", 0.5), ("straddle", 2.8), ("after", 3.2)]
    per_window = window_words(got, window_bounds(4, P.TR, P.TR))
    assert per_window == [["before"], ["straddle"], ["after"], []]       # ours: onset -> window 1
    # the other direction: a word wholly inside chunk 2 is in window 2 under both rules
    assert "'after'" in rows[2] and "after" in per_window[2]


@pytest.mark.parametrize("row, message", [
    ("x\t['a', 'b']\t[1.0]\t[0.1]", r"line 2: 2 words but 1 onsets and 1 durations"),
    ("x\t['a']\t[1.0\t[0.1]", r"line 2: column onsets_per_tr is not a Python list literal"),
    ("x\t['a']\t[-1.0]\t[0.1]", r"line 2 word 1: negative onset"),
    ("x\t'a'\t1.0\t0.1", r"line 2: column words_per_tr is not a list"),
])
def test_algonauts_transcript_errors_name_line_and_column(tmp_path, row, message):
    p = tmp_path / "bad.tsv"
    p.write_text("text_per_tr\twords_per_tr\tonsets_per_tr\tdurations_per_tr\n" + row + "\n")
    with pytest.raises(DataError, match=message) as e:
        read_transcript(p)
    assert "\n" not in str(e.value)


# ---- 2. parcels with an atlas, maps into the atlas ---------------------------------------------------

def test_parcel_map_matches_nilearn_inverse_transform(tmp_path):
    """Column j = the atlas's j-th smallest label (nilearn's NiftiLabelsMasker order, which the Algonauts
    development kit uses to plot parcels); labels here are not contiguous."""
    from nilearn.maskers import NiftiLabelsMasker

    atlas = P.parcellation((6, 7, 5), 9).astype(np.int16)
    atlas = np.where(atlas > 0, atlas * 3 + 1, 0).astype(np.int16)        # labels 4, 7, ..., 28
    img = nib.Nifti1Image(atlas, P.AFFINE)
    space = MapSpace.parcels_of(atlas, P.AFFINE, 9)
    values = np.random.default_rng(0).standard_normal((9, 2)).astype(np.float32)
    ref = NiftiLabelsMasker(img).fit().inverse_transform(values.T).get_fdata()
    vol = space.volume(values)
    inside = atlas > 0
    np.testing.assert_allclose(vol[inside], ref[inside], rtol=1e-6)
    assert np.isnan(vol[~inside]).all()
    path = space.write_map(tmp_path / "m_bold.nii.gz", values)
    back = nib.load(str(path))
    assert back.shape == atlas.shape + (2,)
    np.testing.assert_allclose(back.affine, P.AFFINE)
    with pytest.raises(DataError, match=r"has 9 parcels .* but the BOLD has 1000 parcel columns"):
        MapSpace.parcels_of(atlas, P.AFFINE, 1000, where="parcellation x.nii.gz")


def test_parcel_space_survives_stage_files(tmp_path):
    atlas = P.parcellation((5, 5, 5), 6)
    space = MapSpace.parcels_of(atlas, P.AFFINE, 6)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        space.to_h5(f)
    with h5py.File(tmp_path / "a.h5") as f:
        back = MapSpace.from_h5(f)
        assert f["mask"].shape == (6, 1, 1) and f["mask"].attrs["volumetric"] == 0
    assert back.kind == "parcels" and back.n == 6
    np.testing.assert_array_equal(back.atlas, atlas)
    np.testing.assert_array_equal(back.volume(np.arange(6.0)), space.volume(np.arange(6.0)))


def test_label_names_from_dseg_tsv_lut_and_labels_list(tmp_path):
    names = P.schaefer_names(1)
    lut = P.write_schaefer_lut(tmp_path / "Schaefer2018_14Parcels_7Networks_order.txt", names)
    assert read_label_names(lut) == dict(enumerate(names, start=1))
    tsv = tmp_path / "tpl-X_atlas-S_dseg.tsv"
    tsv.write_text("index\tname\tcolor\n" + "".join(f"{i}\t{n}\t#ffffff\n" for i, n in enumerate(names, start=1)))
    assert read_label_names(tsv) == dict(enumerate(names, start=1))
    lst = tmp_path / "labels.txt"
    lst.write_text("Background\n" + "\n".join(names) + "\n")           # nilearn's atlas.labels
    assert read_label_names(lst) == {0: "Background", **dict(enumerate(names, start=1))}


def test_roi_groups_networks_and_patterns():
    names = dict(enumerate(P.schaefer_names(2, subregions=False), start=1))
    of, groups = group_labels(names, "networks")
    assert list(groups.values()) == list(P.NETWORKS)
    assert all(groups[of[k]] == n.split("_")[2] for k, n in names.items())
    assert network_of("7Networks_RH_SalVentAttn_Med_2") == "SalVentAttn" and network_of("V1") is None
    sub = dict(enumerate(P.schaefer_names(subregions=True), start=1))
    of, groups = group_labels(sub, [RoiGroupConfig("AG", ["7Networks_*_Default_Par_*"]),
                                    RoiGroupConfig("visual", ["7Networks_*_Vis_*", "3"])])
    assert groups == {1: "AG", 2: "visual"}
    assert sorted(k for k, g in of.items() if g == 1) == [13, 29]
    assert sorted(k for k, g in of.items() if g == 2) == [1, 3, 17]
    with pytest.raises(ConfigError, match=r"roi_groups\[0\].labels: 'nope\*' matches no atlas label"):
        group_labels(sub, [RoiGroupConfig("x", ["nope*"])])
    with pytest.raises(ConfigError, match=r"roi_groups\[1\].labels: label 1 \(7Networks_LH_Vis_1\) is already in ROI"):
        group_labels(sub, [RoiGroupConfig("a", ["*Vis*"]), RoiGroupConfig("b", ["1"])])
    with pytest.raises(ConfigError, match=r"networks needs Schaefer/Yeo label names .* label 1 is named 'V1'"):
        group_labels({1: "V1"}, "networks")


# ---- 3. fMRIPrep without a study mask ------------------------------------------------------------------

@pytest.fixture(scope="module")
def fmriprep(tmp_path_factory):
    root = tmp_path_factory.mktemp("cneuromod")
    bold, masks = P.fmriprep_tree(root, n_trs=12)
    return root, bold, masks


def test_default_mask_is_the_intersection_of_run_masks(fmriprep, caplog):
    root, bold, masks = fmriprep
    cfg = parse_config(P.fmriprep_config(root, root / "out"))
    assert cfg.data.bold.mask is None
    table = find_runs(cfg)
    with caplog.at_level("INFO", logger="brainalign.brain"):
        study = build_space(cfg, table)
    used = [m for (s, run, ses), m in masks.items() if not (s == "02" and run == "s01e02a" and ses != "041")]
    expect = np.logical_and.reduce([nib.load(str(r.mask_path)).get_fdata() > 0 for _, r in table.items()])
    np.testing.assert_array_equal(study.space.mask, expect)
    np.testing.assert_array_equal(expect, np.logical_and.reduce(used))
    assert expect.sum() < min(m.sum() for m in used)
    assert "mask: intersection of the fMRIPrep brain masks of 6 runs of 2 subjects" in caplog.text
    assert study.names == {1: "left_inferior", 2: "right_inferior", 3: "left_superior", 4: "right_superior"}


def test_subject_mask_template_and_roi_names_null(fmriprep):
    """``{subject}`` in data.bold.mask (was KeyError: 'subject', exit 1) and roi_names: null (was a TypeError)."""
    root, _, masks = fmriprep
    for s in ("01", "02"):
        P.save_nifti(root / f"masks/sub-{s}_space-{P.SPACE}_desc-brain_mask.nii.gz",
                     masks[(s, "s01e01a", "003")].astype(np.uint8))
    data = P.fmriprep_config(root, root / "out", **{
        "data.bold.mask": f"{{root}}/masks/sub-{{subject}}_space-{P.SPACE}_desc-brain_mask.nii.gz",
        "data.bold.roi_names": None})
    cfg = parse_config(data)
    study = build_space(cfg, find_runs(cfg))
    np.testing.assert_array_equal(study.space.mask, masks[("01", "s01e01a", "003")] & masks[("02", "s01e01a", "003")])
    assert study.names == {1: "1", 2: "2", 3: "3", 4: "4"}                  # named by label
    assert main(["validate", _dump(root / "v.yaml", data)]) == 0


def test_rescan_policies(fmriprep):
    root, _, _ = fmriprep
    d = root / "friends.fmriprep"
    assert "ses-041" in str(find_bold(d, "02", "s01e02a", P.SPACE, rescans="last"))
    assert "ses-004" in str(find_bold(d, "02", "s01e02a", P.SPACE, rescans="first"))
    assert "ses-004" in str(find_bold(d, "02", "s01e02a", P.SPACE, rescans="last", session="004"))
    with pytest.raises(DataError, match=r"several BOLD runs .*ses-004.*ses-041.* \(a re-scan: set data.bold.rescans"):
        find_bold(d, "02", "s01e02a", P.SPACE, rescans="error")
    with pytest.raises(DataError, match=r"rescan_sessions asks for ses-009"):
        find_bold(d, "02", "s01e02a", P.SPACE, rescans="last", session="009")
    # two viewings of one movie segment are not re-scans
    with pytest.raises(DataError, match=r"several datasets: ses-001_task-figures01_run-1, ses-002_task-figures01_run-2$"):
        choose_rescan(["ses-001_task-figures01_run-1", "ses-002_task-figures01_run-2"], "datasets", "last")
    cfg = parse_config(P.fmriprep_config(root, root / "out", **{
        "data.bold.rescan_sessions": [{"subject": "02", "run": "s01e02a", "session": "004"}]}))
    assert "ses-004" in str(find_runs(cfg).found[("02", "s01e02a")].path)


# ---- 4. incomplete studies -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def algonauts(tmp_path_factory):
    root = tmp_path_factory.mktemp("algonauts")
    data = P.algonauts_tree(root, n_trs=12, movie10=("figures01_run-1", "figures01_run-2", "figures02_run-1"))
    return root, data


def test_missing_runs_skip_or_error(algonauts):
    root, _ = algonauts
    cfg = parse_config(P.algonauts_config(root, root / "out"))
    assert cfg.data.missing_runs == "skip"
    table = find_runs(cfg)
    assert table.of("02") == ["s01e01a", "s01e01b", "s02e01a"] and table.of("01") == cfg.data.episodes
    assert ("02", "s01e02a") in table.missing
    strict = parse_config(P.algonauts_config(root, root / "out", **{"data.missing_runs": "error"}))
    with pytest.raises(DataError, match=r"^1 run\(s\) missing \(data.missing_runs: error\); first: no dataset for "
                                        r"task-s01e02a in the BOLD HDF5 file\(s\) of sub-02"):
        find_runs(strict)
    nobody = parse_config(P.algonauts_config(root, root / "out", **{
        "data.episodes": ["s01e01a", "s01e01b", "s09e09a"]}))
    with pytest.raises(DataError, match=r"run s09e09a has no BOLD for any subject"):
        find_runs(nobody)


def test_fit_uses_the_runs_each_subject_has(tmp_path):
    """bold.h5 of a subject without run 1: its scores equal the float64 nested-CV reference on its own runs
    (leave-one-of-its-runs-out, inner folds over its training runs); in fold 1 it has no held-out data: NaN."""
    from test_fit import ALPHAS, fit_config, make_fit_fixture, reference_nested_cv

    from brainalign.fit import run_fit

    out = tmp_path / "out"
    data = make_fit_fixture(out)
    runs = data["runs"]
    keep = runs != 1
    with h5py.File(out / "bold.h5", "a") as f:
        del f["bold/sub-02"]
        ds = f.create_dataset("bold/sub-02", data=data["bold"]["02"][keep])
        ds.attrs["runs_present"] = np.array([0, 2, 3])
    path = run_fit(fit_config(out))
    with h5py.File(path) as f:
        r, alpha = f["r"][()], f["alpha"][()]
        assert json.loads(f.attrs["runs_present"]) == {"01": [0, 1, 2, 3], "02": [0, 2, 3]}
    for li in range(2):
        X = data["joint"][li]
        own_runs = np.unique(runs[keep], return_inverse=True)[1]             # its runs 0, 2, 3 -> folds 0, 1, 2
        r_ref, a_ref = reference_nested_cv(X[keep], data["bold"]["02"][keep], own_runs, ALPHAS)
        for k_ref, k in enumerate((0, 2, 3)):
            np.testing.assert_allclose(r[1, 0, li, k], r_ref[k_ref], atol=2e-4, equal_nan=True)
            np.testing.assert_array_equal(alpha[1, 0, li, k], a_ref[k_ref].astype(np.float32))
        assert np.isnan(r[1, :, li, 1]).all()
        r_full, _ = reference_nested_cv(X, data["bold"]["01"], runs, ALPHAS)   # sub-01 untouched
        np.testing.assert_allclose(r[0, 0, li], r_full, atol=2e-4, equal_nan=True)


# ---- 5. movie10-style runs ----------------------------------------------------------------------------

def test_movie10_runs_one_template_per_stream(algonauts):
    root, data = algonauts
    cfg = parse_config(_movie10(root))
    table = find_runs(cfg)
    assert table.found[("01", "figures01_run-2")].dataset == "ses-004_task-figures01_run-2"
    assert cfg.path(cfg.data.stimuli.video, episode="figures01_run-2") == \
        root / "stimuli/movies/movie10/figures/figures01.mkv"
    assert cfg.path(cfg.data.stimuli.transcript, episode="figures02_run-1") == \
        root / "stimuli/transcripts/movie10/figures/movie10_figures02.tsv"
    from brainalign.datafiles import data_files

    videos = [f.path.name for f in data_files(cfg, ["video"])]
    assert videos == ["figures01.mkv", "figures02.mkv"]                 # run-1 and run-2 share one movie


def _movie10(root):
    return P.algonauts_config(root, root / "out-m10", **{
        "data.episodes": ["figures01_run-1", "figures01_run-2", "figures02_run-1"],
        "data.stimuli.video": "{root}/stimuli/movies/movie10/{movie}/{task}.mkv",
        "data.stimuli.transcript": "{root}/stimuli/transcripts/movie10/{movie}/movie10_{task}.tsv",
        "data.bold.dir": ("{root}/fmri/sub-{subject}/func/sub-{subject}_task-movie10_space-MNI152NLin2009cAsym_"
                          "atlas-Schaefer18_parcel-1000Par7Net_bold.h5")})


# ---- 7. config ergonomics ---------------------------------------------------------------------------

def _dump(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_unquoted_subject_numbers_are_refused_naming_the_key(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  bold:\n    subjects: [01, 02]\n")
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.bold.subjects[0]: 1 is a number" in err and '["01", "02"]' in err


def test_set_values_with_braces(tmp_path, algonauts, capsys):
    root, _ = algonauts
    assert parse_value("{root}/atlas/x.nii.gz") == "{root}/atlas/x.nii.gz"
    assert parse_value("{root}") == "{root}"
    assert parse_value("[1, 2]") == [1, 2] and parse_value("{a: 1}") == {"a": 1} and parse_value("null") is None
    cfg = _dump(tmp_path / "a.yaml", P.algonauts_config(root, tmp_path / "o"))
    rois = ("{root}/fmri/sub-{subject}/atlas/sub-{subject}_space-MNI152NLin2009cAsym_atlas-Schaefer18_"
            "parcel-1000Par7Net_desc-dseg_parcellation.nii.gz")
    assert main(["validate", cfg, "-v", "--set", f"data.bold.rois={rois}"]) == 0     # -v: the resolved config
    assert rois in capsys.readouterr().out


def test_validate_lists_the_first_missing_files(tmp_path, algonauts, capsys):
    root, _ = algonauts
    cfg = _dump(tmp_path / "a.yaml", P.algonauts_config(root, tmp_path / "o", **{
        "data.episodes": ["s01e01a", "s01e01b", "s01e02a", "s02e01a", "s03e01a"]}))
    assert main(["validate", cfg]) == 2           # s03e01a has no BOLD for any subject
    assert "run s03e01a has no BOLD for any subject" in capsys.readouterr().err
    cfg = _dump(tmp_path / "b.yaml", P.algonauts_config(root, tmp_path / "o", **{
        "data.stimuli.transcript": "{root}/stimuli/transcripts/friends/s{season}/friends_{episode}.json"}))
    assert main(["validate", cfg]) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if " brainalign." not in line]   # not logs
    assert len(lines) == 1
    err = lines[0]
    assert ("4 of 15 data files missing: data.stimuli.transcript: " + str(root)
            + "/stimuli/transcripts/friends/s1/friends_s01e01a.json; data.stimuli.transcript:") in err
    assert err.endswith(" ...")
    bad_group = _dump(tmp_path / "c.yaml", P.algonauts_config(root, tmp_path / "o", **{
        "data.bold.roi_groups": [{"name": "AG", "labels": ["7Networks_*_Default_Par_*"]}]}))
    assert main(["validate", bad_group]) == 2
    assert "data.bold.roi_groups[0].labels: '7Networks_*_Default_Par_*' matches no atlas label" in \
        capsys.readouterr().err


def test_season_and_run_placeholders():
    assert expand("{root}/s{season}/friends_{episode}.mkv", root="R", episode="s02e04b") == "R/s2/friends_s02e04b.mkv"
    assert expand("s{season:02d}", episode="s02e04b") == "s02"
    assert expand("{movie}/{task}_{run}", episode="life01_run-2") == "life/life01_2"
    with pytest.raises(ConfigError, match=r"data.stimuli.video: \{season\} in .* needs a Friends run name like "
                                          r"s01e02a; run 'bourne01' has none"):
        expand("s{season}", "data.stimuli.video", episode="bourne01")
    with pytest.raises(ConfigError, match=r"data.bold.mask: placeholder\(s\) \{episode\} in .* are not available"):
        parse_config({"data": {"bold": {"mask": "{root}/{episode}_mask.nii.gz"}}})
    with pytest.raises(ConfigError, match=r"data.stimuli.video: bad path template '\{root/x.mkv'"):
        parse_config({"data": {"stimuli": {"video": "{root/x.mkv"}}})
    with pytest.raises(ConfigError, match=r"data.bold.mask: hdf5 data has no voxel grid to mask"):
        parse_config({"data": {"bold": {"format": "hdf5", "mask": "m.nii.gz"}}})
