"""configs/friends.yaml (the seed study on the real releases) validates against a tiny tree in the Algonauts 2025
layout, written here; its episodes are the published Friends seasons and its ROI set resolves to atlas labels."""
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import published as P  # noqa: E402

from brainalign.brain.runs import find_runs  # noqa: E402
from brainalign.brain.study import build_space  # noqa: E402
from brainalign.cli import main  # noqa: E402
from brainalign.config import load_config  # noqa: E402

# Friends splits per season with fMRI in the Algonauts 2025 release (stimuli/transcripts/friends/s1..s6)
PUBLISHED_PER_SEASON = {1: 48, 2: 48, 3: 50, 4: 48, 5: 48, 6: 50}
RUNS = ["s01e01a", "s01e01b", "s04e01a", "s05e20a"]          # sub-05 lacks s04e01a, sub-02 lacks s05e20a


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    data = tmp_path_factory.mktemp("friends") / "data"
    root = data / "algonauts_2025.competitors"
    names = P.schaefer_names(subregions=True)
    P.algonauts_tree(root, subjects=("01", "02", "03", "05"), runs=RUNS, n_trs=8, n_parcels=len(names),
                     missing=(("02", "s05e20a"), ("05", "s04e01a")), names=names)
    (data / "atlases").mkdir()
    P.write_schaefer_lut(data / "atlases" / "Schaefer2018_1000Parcels_7Networks_order.txt", names)
    return root


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A file as the MERLOT converter writes it (its format tag, config, weights and BPE vocabulary)."""
    import torch

    from brainalign.models.merlot.convert import FORMAT

    path = tmp_path_factory.mktemp("ckpt") / "merlot_reserve_base.pt"
    torch.save({"format": FORMAT, "config": {}, "state_dict": {"w": torch.zeros(2)}, "source": "test",
                "tokenizer_json": "{}"}, path)
    return path


def _overrides(root, checkpoint=None):
    """The tiny tree's root and runs (a subset of the 292, so ten outer folds cannot be formed)."""
    return (["--set", f"data.root={root}", "--set", f"data.episodes=[{', '.join(RUNS)}]",
             "--set", "align.outer_folds=null"]
            + (["--set", f"model.checkpoint={checkpoint}"] if checkpoint else []))


def test_friends_config_is_the_seed_study_on_the_published_release(repo_root):
    cfg = load_config(repo_root / "configs" / "friends.yaml")
    assert cfg.model.backbone == "merlot_reserve" and "base" in cfg.model.checkpoint
    eps = cfg.data.episodes
    assert all(re.fullmatch(r"s0[1-6]e\d\d[a-d]", e) for e in eps) and len(set(eps)) == len(eps)
    per_season = {s: sum(int(e[1:3]) == s for e in eps) for s in range(1, 7)}
    assert per_season == PUBLISHED_PER_SEASON
    assert cfg.data.bold.subjects == ["01", "02", "03", "05"] and cfg.data.bold.format == "hdf5"
    assert {"joint", "no_vision", "no_language", "crossmodal"} <= set(cfg.feature_sets)
    assert {c.name for c in cfg.stats.contrasts} >= {"vision_gain", "language_gain", "crossmodal_vs_0"}
    assert [g.name for g in cfg.data.bold.roi_groups][:2] == ["visual", "auditory_somatomotor"]


def test_friends_config_validates_against_the_published_layout(tree, converted, repo_root, capsys):
    path = str(repo_root / "configs" / "friends.yaml")
    assert main(["validate", path, *_overrides(tree, converted), "-v"]) == 0
    out = capsys.readouterr().out
    assert f"root: {tree}" in out                          # validate -v prints the resolved config
    assert out.strip().splitlines()[-1].startswith(f"config {path}: ok (")     # and the verdict last
    assert main(["validate", path, *_overrides(tree, converted), "--set",
                 "data.episodes=[s01e01a, s01e01b, s09e01a]"]) == 2
    assert "run s09e01a has no BOLD for any subject" in capsys.readouterr().err


def test_friends_roi_set_is_made_of_atlas_labels(tree, repo_root):
    cfg = load_config(repo_root / "configs" / "friends.yaml", {"data.root": str(tree), "data.episodes": RUNS,
                                                               "align.outer_folds": None})
    table = find_runs(cfg)
    assert table.of("05") == ["s01e01a", "s01e01b", "s05e20a"] and table.of("02") == ["s01e01a", "s01e01b", "s04e01a"]
    study = build_space(cfg, table, n_columns=32)
    names = P.schaefer_names(subregions=True)
    members = {study.names[g]: sorted(names[j] for j in np.flatnonzero(study.labels == g)) for g in study.names}
    assert members["angular_gyrus"] == ["7Networks_LH_Default_Par_1", "7Networks_RH_Default_Par_1"]
    assert members["inferior_frontal"] == ["7Networks_LH_Default_PFC_1", "7Networks_RH_Default_PFCv_1"]
    assert members["visual"] == ["7Networks_LH_Vis_1", "7Networks_RH_Vis_1"]
    assert study.space.kind == "parcels" and study.space.n == 32


def _one_line_error(capsys) -> str:
    """The error: one line 'brainalign VERB: error: ...' (log lines such as the missing-runs warning aside)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("brainalign ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_validate_and_submit_refuse_a_checkpoint_that_is_not_there_or_not_converted(tree, converted, repo_root,
                                                                                     tmp_path, capsys):
    """Issue 22: `validate` said "all present" without model.checkpoint; on a cluster the error came after the
    extraction array was queued. Now validate and submit --dry-run exit 2 in one line naming the key."""
    path = str(repo_root / "configs" / "friends.yaml")
    missing = repo_root / "checkpoints" / "merlot_reserve_base.pt"           # the config's own, not converted here
    assert not missing.exists()
    for verb in (["validate"], ["submit", "--dry-run", "--cluster", "local"]):
        assert main([*verb[:1], path, *verb[1:], *_overrides(tree)]) == 2
        err = _one_line_error(capsys)
        assert "model.checkpoint: MERLOT Reserve checkpoint not found: " in err and "merlot_reserve_base.pt" in err
    flax = tmp_path / "base"                                                # the official file, not converted
    from brainalign.models.merlot import flaxmsgpack

    flax.write_bytes(flaxmsgpack.serialize({"params": {"x": np.zeros(3, np.float32)}}))
    assert main(["validate", path, *_overrides(tree, flax)]) == 2
    err = _one_line_error(capsys)
    assert f"model.checkpoint: {flax} is not a converted MERLOT Reserve checkpoint" in err
    assert "python -m brainalign.models.merlot.convert" in err
    variant = ["--set", f"model.variants=[{{name: tvqa, checkpoint: {tmp_path / 'ft.pt'}}}]"]
    assert main(["validate", path, *_overrides(tree, converted), *variant]) == 2
    assert f"model.variants[0].checkpoint: MERLOT Reserve checkpoint not found: {tmp_path / 'ft.pt'}" in \
        _one_line_error(capsys)
    # a variant the pipeline's finetune stage writes is not checked (it comes later)
    later = ["--set", "pipeline=[finetune, extract, align, fit, stats, report]", "--set",
             f"model.variants=[{{name: tvqa, checkpoint: {tmp_path / 'out' / 'finetune' / 'model.pt'}}}]",
             "--set", f"output={tmp_path / 'out'}"]
    assert main(["validate", path, *_overrides(tree, converted), *later]) == 0
