"""Stage keys: every stage is skipped exactly while what it reads (config values, upstream outputs, input
files) is unchanged, re-run when any of it changed, and says which (brainalign.stagekeys / brainalign.stagetable).

One small study (simulate -> report, 3 runs x 30 TRs, 2 subjects) is run once; each test works on a copy
(copied with mtimes kept, so the copy's stage keys are the original's) and checks which stages' files were
rewritten after a change.
"""
import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml

from brainalign.cli import main
from brainalign.config import parse_config
from brainalign.paths import ATLAS_PATHS
from test_submit import SMALL as SUBMIT_SMALL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(json.loads(json.dumps(SUBMIT_SMALL)), name="keys", report={"title": "keys test"})   # 3 runs x 30 TRs
SMALL["data"]["bold"].update(rois=ATLAS_PATHS["rois"], roi_names=ATLAS_PATHS["roi_names"])   # mask: the runs' masks

# which stage wrote which output file (relative to OUTPUT)
STAGE_OF = (("features", "extract"), ("design.h5", "align"), ("bold.h5", "align"), ("scores.h5", "fit"),
            ("fit_shards", "fit"), ("maps/sub-", "fit"), ("stats.h5", "stats"), ("roi_stats.csv", "stats"),
            ("roi_scores.csv", "stats"), ("maps/group", "stats"), ("report", "report"))


def write_config(path: Path, root: Path, results: Path, extra_text="", **over):
    data = json.loads(json.dumps(SMALL))
    data["data"]["root"], data["output"] = str(root), str(results)
    for k, v in over.items():
        data[k] = v
    path.write_text(yaml.safe_dump(data, sort_keys=False) + extra_text)
    return path


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    base = tmp_path_factory.mktemp("keys")
    cfg = write_config(base / "c.yaml", base / "data", base / "results")
    assert main(["run", str(cfg)]) == 0
    return base


@pytest.fixture
def study(baseline, tmp_path):
    """A copy of the baseline study (data and results, mtimes kept) with its own config."""
    for d in ("data", "results"):
        shutil.copytree(baseline / d, tmp_path / d, copy_function=shutil.copy2)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "data", tmp_path / "results")
    return tmp_path, cfg


def stamps(results: Path) -> dict:
    return {p.relative_to(results).as_posix(): p.stat().st_mtime_ns for p in results.rglob("*")
            if p.is_file() and "submit" not in p.parts}


def rerun_stages(before: dict, after: dict) -> set:
    """The stages whose files were rewritten, added or removed."""
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    return {next(s for prefix, s in STAGE_OF if k.startswith(prefix)) for k in changed}


def run(cfg, *args):
    return main(["run", str(cfg), *args])


@pytest.fixture
def encoded(monkeypatch):
    """Spy on the backbone: (episode, [conditions]) of every encode_stimuli call."""
    import brainalign.extract as extract

    calls, real = [], extract.encode_stimuli

    def spy(backbone, stimuli, conditions, layers, batch_size, **kw):
        calls.append((stimuli.episode, list(conditions)))
        return real(backbone, stimuli, conditions, layers, batch_size, **kw)

    monkeypatch.setattr(extract, "encode_stimuli", spy)
    return calls


def roi_rows(results):
    with open(results / "roi_stats.csv") as f:
        return list(csv.DictReader(f))


# ---- the table: which stage's key a config change touches ----------------------------------------------

@pytest.mark.parametrize("override, stages", [
    ({"report": {"title": "other"}}, {"report"}),
    ({"stats": {"q": 0.01}}, {"stats", "permutation"}),
    ({"stats": {"contrasts": [{"name": "x", "a": "joint", "b": None}]}}, {"stats", "permutation"}),
    ({"stats": {"permutations": 100}}, {"permutation"}),
    ({"stats": {"fdr_family": "all"}}, {"stats", "permutation"}),
    ({"fit": {"partitions": [{"name": "p", "bands": ["joint", "no_vision"]}]}}, {"fit"}),
    ({"align": {"delays": [1]}}, {"align"}),
    ({"fit": {"alphas": [1.0]}}, {"fit"}),
    ({"fit": {"backend": "torch", "chunk_voxels": 7}}, set()),        # same numbers: execution settings
    ({"model": {"device": "cuda", "batch_size": 3}}, set()),
    ({"windows": {"resample": "average"}}, {"align", "simulate"}),   # resampling happens in align
    ({"windows": {"frames": 3}}, {"simulate", "extract", "finetune", "mlm"}),
    ({"data": {"bold": {"confounds": "minimal"}}}, {"align"}),
    ({"data": {"missing_runs": "error", "bold": {"rescans": "first"}}}, {"align"}),
    ({"data": {"bold": {"subjects": ["01"]}}}, {"align", "simulate"}),
    ({"data": {"root": "elsewhere"}, "output": "other", "name": "renamed"}, {"report"}),   # files count, not paths
    ({"model": {"seed": 3}}, {"simulate", "extract", "finetune", "mlm"}),
    ({"model": {"tiny": {"hidden": 32}}}, {"simulate", "extract", "finetune", "mlm"}),
    ({"model": {"backbone": "hf", "tiny": {"hidden": 32}}}, {"simulate", "extract", "finetune", "mlm"}),
    ({"mlm": {"seed": 5}}, {"mlm"}),
    ({"finetune": {"lr": 0.5, "device": "cuda"}}, {"finetune"}),
    ({"finetune": {"n_train": 10}}, {"simulate"}),
])
def test_declared_reads_pick_the_stages_a_change_touches(override, stages):
    """Expected sets derived by hand from what each stage module reads (README 'Resuming and caching')."""
    from brainalign.stagetable import STAGES

    def values(data):
        cfg = parse_config(data, text="")
        return {s: spec.values(cfg) for s, spec in STAGES.items()}

    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(dict(a.get(k) or {}), v) if isinstance(v, dict) else v
        return a

    base = json.loads(json.dumps(SMALL))
    a, b = values(base), values(merge(json.loads(json.dumps(base)), override))
    assert {s for s in STAGES if a[s] != b[s]} == stages


def test_the_stage_table_gives_verbs_order_and_functions():
    """One table: the CLI's stage verbs, a config's known pipeline entries and the stage functions come from
    brainalign.stagetable; the stats verb runs permutation (when on) before stats."""
    import inspect

    from brainalign.cli import VERBS
    from brainalign.config import STAGES as CONFIG_STAGES
    from brainalign.pipeline import stage_function
    from brainalign.stagetable import ORDER, STAGES, VERBS as STAGE_VERBS, stages_of

    assert STAGE_VERBS == CONFIG_STAGES and set(STAGE_VERBS) <= set(VERBS) and ORDER == tuple(STAGES)
    for spec in STAGES.values():
        params = inspect.signature(stage_function(spec)).parameters
        assert next(iter(params)) == "cfg" and params["force"].default is False, spec.name
        assert spec.verb_of in STAGE_VERBS and bool(spec.help) == (spec.verb_of == spec.name)
    on, off = (parse_config({"stats": {"permutations": n}}, text="") for n in (99, 0))
    assert [s.name for s in stages_of(on, "stats")] == ["permutation", "stats"]
    assert [s.name for s in stages_of(off, "stats")] == ["stats"]


def test_hf_backbone_ignores_the_tiny_section():
    from brainalign.stagetable import STAGES

    cfg = parse_config({"model": {"backbone": "hf"}}, text="")
    vals = STAGES["extract"].values(cfg)
    assert "model.backbone" in vals and not any(k.startswith("model.tiny") for k in vals)
    assert "model.tiny.hidden" in STAGES["extract"].values(parse_config({}, text=""))


# ---- behaviour on a real (small) study -----------------------------------------------------------------

def test_unchanged_and_yaml_comment_rerun_nothing(study, capsys, caplog):
    root, cfg = study
    results = root / "results"
    before = stamps(results)
    with h5py.File(results / "scores.h5") as f:
        key = f.attrs["stage_key"]
        rec = json.loads(f.attrs["stage_record"])
        shards = {m.file_name for m in f["r"].virtual_sources()}
    assert rec["key"] == key and rec["upstream"].keys() == {"align"} and rec["fingerprint"] == "mtime"
    for name in shards:                                          # fit shards carry the same key
        with h5py.File(results / name) as s:
            assert s.attrs["stage_key"] == key
    cfg.write_text(cfg.read_text() + "# a comment, and the keys in another order\n")
    assert main(["status", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "everything is current" in out and out.count(" current ") == 6
    caplog.set_level("INFO", logger="brainalign")
    assert run(cfg) == 0
    assert rerun_stages(before, stamps(results)) == set()
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().endswith("skipping")]
    assert {m.split(":")[0] for m in skipped} == {"simulate", "extract", "align", "fit", "stats", "report"}


def test_report_change_reruns_only_the_report(study):
    root, cfg = study
    before = stamps(root / "results")
    assert run(cfg, "--set", "report.title=Another title") == 0
    assert rerun_stages(before, stamps(root / "results")) == {"report"}
    assert "Another title" in (root / "results" / "report" / "index.html").read_text()


def test_stats_change_reruns_stats_and_report(study, caplog):
    root, cfg = study
    before = stamps(root / "results")
    caplog.set_level("INFO", logger="brainalign")
    assert run(cfg, "--set", "stats.q=0.01") == 0
    assert rerun_stages(before, stamps(root / "results")) == {"stats", "report"}
    assert any("stats.q changed (0.05 -> 0.01); re-running stats" in r.getMessage() for r in caplog.records)
    with h5py.File(root / "results" / "stats.h5") as g:
        assert g.attrs["q"] == 0.01


def test_new_contrast_does_not_refit(study):
    root, cfg = study
    before = stamps(root / "results")
    contrasts = SMALL["stats"]["contrasts"] + [{"name": "language_gain", "a": "joint", "b": "no_language"}]
    write_config(cfg, root / "data", root / "results", stats={"contrasts": contrasts})
    assert run(cfg) == 0
    assert rerun_stages(before, stamps(root / "results")) == {"stats", "report"}
    assert {r["contrast"] for r in roi_rows(root / "results")} == {"vision_gain", "crossmodal_vs_0", "language_gain"}


def test_new_condition_extracts_only_that_condition(study, encoded):
    root, cfg = study
    results = root / "results"
    with h5py.File(results / "features" / "s01e01b.h5") as f:
        old = {c: f[c][()] for c in SMALL["model"]["conditions"]}
    model = dict(SMALL["model"], conditions=SMALL["model"]["conditions"] + ["no_audio"])
    write_config(cfg, root / "data", results, model=model)
    assert run(cfg) == 0
    assert sorted(encoded) == [(ep, ["no_audio"]) for ep in SMALL["data"]["episodes"]]
    with h5py.File(results / "features" / "s01e01b.h5") as f:
        for c, x in old.items():                      # the other conditions were kept, bit for bit
            np.testing.assert_array_equal(f[c][()], x)
        assert f["no_audio"].shape == x.shape
    with h5py.File(results / "scores.h5") as f:
        assert "no_audio" in [s.decode() if isinstance(s, bytes) else s for s in f.attrs["feature_sets"]]


def _cut_bold(root, subject, task, n):
    """Replace a BOLD run by a copy without its last ``n`` volumes (a valid NIfTI, other size)."""
    (path,) = (root / "data" / "derivatives" / "fmriprep").glob(f"sub-{subject}/*/func/*task-{task}_*_bold.nii.gz")
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(data[..., :-n], img.affine, img.header), path)
    return path, data.shape[-1]


def test_replaced_bold_reruns_align_and_after_never_extraction(study, baseline, encoded, caplog):
    root, cfg = study
    results = root / "results"
    before, old_rows = stamps(results), roi_rows(results)
    _, n_trs = _cut_bold(root, "01", "s01e01a", 2)
    caplog.set_level("INFO", logger="brainalign")
    assert run(cfg) == 0
    assert rerun_stages(before, stamps(results)) == {"align", "fit", "stats", "report"}
    assert encoded == []                                          # no extraction
    assert any(r.getMessage() == "align: bold sub-01 task-s01e01a changed (size); re-running align"
               for r in caplog.records)
    trim = SMALL["align"]["trim"]
    with h5py.File(results / "design.h5") as f:                   # the run is 2 TRs shorter now
        assert f.attrs["run_lengths"].tolist() == [n_trs - 2 - 2 * trim] + [n_trs - 2 * trim] * 2
    assert roi_rows(results) != old_rows                          # not the old numbers
    # the same as a fresh computation on the changed data, into an empty output directory
    fresh = write_config(root / "fresh.yaml", root / "data", root / "fresh")
    assert run(fresh, "--stages", "extract", "align", "fit", "stats") == 0
    with h5py.File(results / "scores.h5") as a, h5py.File(root / "fresh" / "scores.h5") as b:
        np.testing.assert_array_equal(a["r"][()], b["r"][()])
        assert a.attrs["stage_key"] == b.attrs["stage_key"]      # stage keys do not depend on paths
    assert roi_rows(results) == roi_rows(root / "fresh")


def test_corrupt_bold_is_one_line_and_the_stale_results_say_so(study, capsys):
    root, cfg = study
    (path,) = (root / "data" / "derivatives" / "fmriprep").glob("sub-02/*/func/*task-s01e01b_*_bold.nii.gz")
    path.write_bytes(path.read_bytes()[:3000])                    # a byte-truncated copy
    capsys.readouterr()
    assert run(cfg) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error:" in line]) == 1 and str(path) in err[-1]
    assert main(["status", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "align     stale    bold sub-02 task-s01e01b changed (size)" in out
    assert "report    stale    upstream fit will re-run" in out


def test_deleted_or_truncated_outputs_are_detected(study, encoded, capsys):
    root, cfg = study
    results = root / "results"
    shard = sorted((results / "fit_shards").glob("*.h5"))[0]
    shard.unlink()
    feats = results / "features.h5"
    feats.write_bytes(feats.read_bytes()[:1000])
    assert main(["status", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"extract   stale    {feats} is incomplete or corrupt" in out
    assert "fit       stale    1 shard file(s) of" in out and "missing or incomplete" in out
    assert "align     current" in out and "stats     current" in out
    before = stamps(results)
    assert run(cfg) == 0
    assert encoded == []                                  # the shards are fine: features.h5 is only re-assembled
    changed = {k for k in stamps(results) if before.get(k) != stamps(results)[k]}
    assert "features.h5" in changed and not any(k.startswith("features/") for k in changed)
    assert rerun_stages(before, stamps(results)) == {"extract", "fit"}     # same keys: align and stats kept


def test_missing_input_file_is_one_line(study, capsys):
    root, cfg = study
    tsv = root / "data" / "stimuli" / "s01e01b.tsv"
    tsv.unlink()
    capsys.readouterr()
    assert run(cfg, "--stages", "extract", "align") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"brainalign run: error: data.stimuli.transcript: transcript s01e01b not found: {tsv}"


def test_force_recomputes(study):
    root, cfg = study
    before = stamps(root / "results")
    assert run(cfg, "--stages", "report", "--force") == 0
    assert rerun_stages(before, stamps(root / "results")) == {"report"}


def test_submit_plans_only_stale_stages(study, capsys, monkeypatch):
    root, cfg = study
    monkeypatch.chdir(root)
    assert main(["submit", str(cfg), "--dry-run", "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    assert "nothing to submit" in out and "align: " in out and "is current (stage key" in out
    assert main(["submit", str(cfg), "--dry-run", "--cluster", "local", "--set", "stats.q=0.02"]) == 0
    out = capsys.readouterr().out
    jobs = [line.split()[1] for line in out.splitlines() if line.startswith("[")]
    assert jobs == ["stats", "report"]
    assert "fit: " in out and "extract: " in out


def test_submit_plan_without_extract_in_the_pipeline(study, capsys, monkeypatch):
    """A pipeline that starts at align (features extracted earlier) plans from the stage keys too."""
    root, cfg = study
    monkeypatch.chdir(root)
    assert main(["submit", str(cfg), "--dry-run", "--cluster", "local", "--set", "pipeline=[align, fit, stats]"]) == 0
    out = capsys.readouterr().out
    assert "nothing to submit" in out and "align: " in out and "is current (stage key" in out


def test_verify_compares_content(study, capsys):
    """--verify: a replaced file with the same size and mtime is caught; a touched, identical file is not
    a change (in either mode, once the record holds content hashes)."""
    root, cfg = study
    results = root / "results"
    assert main(["extract", str(cfg), "--verify", "--force"]) == 0
    tsv = root / "data" / "stimuli" / "s01e02a.tsv"
    video = root / "data" / "stimuli" / "s01e01a.mp4"
    with h5py.File(results / "features" / "s01e02a.h5") as f:
        rec = json.loads(f["joint"].attrs["stage_record"])
    (fp,) = [i for i in rec["inputs"] if i["role"] == "transcript s01e02a"]
    assert fp["sha256"] == hashlib.sha256(tsv.read_bytes()).hexdigest()        # hashlib, independently
    st = tsv.stat()
    text = tsv.read_text()
    tsv.write_text(text[::-1])
    os.utime(tsv, ns=(st.st_atime_ns, st.st_mtime_ns))           # same size, same mtime, other bytes
    assert tsv.stat().st_size == st.st_size and tsv.read_text() != text
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))   # touched only
    capsys.readouterr()
    assert main(["status", str(cfg), "--stages", "extract"]) == 0
    assert "extract   current" in capsys.readouterr().out        # size + mtime cannot see it
    assert main(["status", str(cfg), "--stages", "extract", "--verify", "-v"]) == 0
    out = capsys.readouterr().out
    assert "3 of 9 units to redo: s01e02a/joint: transcript s01e02a changed (content)" in out
    assert "s01e01a" not in out.split("units to redo")[1]      # the touched video: same content


def test_long_records_fit_in_hdf5(tmp_path):
    """A record larger than an HDF5 object header (e.g. thousands of BOLD runs) is stored and read back."""
    from brainalign.h5io import atomic_h5
    from brainalign.stagekeys import read_record

    rec = {"stage": "align", "inputs": [{"role": f"bold sub-{i:02d} task-{j}", "name": "x" * 40, "stat": "1:2"}
                                         for i in range(6) for j in range(300)]}
    text = json.dumps(rec)
    assert len(text) > 64 * 1024
    with atomic_h5(tmp_path / "a.h5", "align", extra={"stage_key": "k", "stage_record": text}) as f:
        f.create_dataset("x", data=[1])
    stored = read_record(tmp_path / "a.h5")
    assert stored.status == "ok" and stored.key == "k" and stored.record == rec


# ---- content hashes recorded at run time; git-annex keys (issue 23, item 4) ---------------------------------

def _inputs_of(path, dataset=None):
    with h5py.File(path) as f:
        obj = f[dataset] if dataset else f
        return {fp["role"]: fp for fp in json.loads(obj.attrs["stage_record"])["inputs"]}


def _touch(path, seconds=3600):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def test_a_run_records_content_hashes_so_touched_inputs_change_nothing(study, encoded, capsys):
    """Default (mtime) mode: every stage that ran recorded its inputs' SHA-256 (checked against hashlib); a
    touch -- a copy, a `datalad get` that resets mtimes -- then re-hashes the file, finds it unchanged, and
    nothing re-runs; --verify confirms equality instead of saying `changed (mtime)`."""
    root, cfg = study
    results, data = root / "results", root / "data"
    video, tsv = data / "stimuli" / "s01e01a.mp4", data / "stimuli" / "s01e02a.tsv"
    (bold,) = (data / "derivatives" / "fmriprep").glob("sub-01/*/func/*task-s01e01a_*_bold.nii.gz")
    ext = _inputs_of(results / "features" / "s01e01a.h5", "joint")
    assert ext["video s01e01a"]["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert _inputs_of(results / "bold.h5")["bold sub-01 task-s01e01a"]["sha256"] == \
        hashlib.sha256(bold.read_bytes()).hexdigest()
    for p in (video, tsv, bold):
        _touch(p)
    before = stamps(results)
    capsys.readouterr()
    assert main(["status", str(cfg)]) == 0
    assert "everything is current" in capsys.readouterr().out
    assert main(["status", str(cfg), "--verify", "-v"]) == 0
    out = capsys.readouterr().out
    assert "everything is current" in out and "changed (mtime)" not in out
    assert run(cfg) == 0 and run(cfg, "--verify") == 0
    assert rerun_stages(before, stamps(results)) == set() and encoded == []
    # a real change of the same size is still a change, in the default mode too
    tsv.write_text(tsv.read_text()[::-1])
    assert main(["status", str(cfg), "--stages", "extract", "-v"]) == 0
    assert "s01e02a/joint: transcript s01e02a changed (content)" in capsys.readouterr().out


def _annex(path: Path, repo: Path, key_sha=None) -> Path:
    """Turn ``path`` into a git-annex (SHA256E backend) symlink as `git annex add` / `datalad get` leave it:
    the bytes under .git/annex/objects/<xx>/<yy>/<KEY>/<KEY>, the file a relative symlink whose target's
    name is the key SHA256E-s<size>--<sha256>.<ext>. ``key_sha`` names another hash (a corrupt object)."""
    data = path.read_bytes()
    sha = key_sha or hashlib.sha256(data).hexdigest()
    key = f"SHA256E-s{len(data)}--{sha}{''.join(path.suffixes)}"
    h = hashlib.md5(key.encode()).hexdigest()
    obj = repo / ".git" / "annex" / "objects" / h[:3] / h[3:6] / key / key
    obj.parent.mkdir(parents=True)
    obj.write_bytes(data)
    obj.chmod(0o444)
    path.unlink()
    path.symlink_to(os.path.relpath(obj, path.parent))
    return obj


def test_git_annex_keys_are_content_hashes_read_for_free(study, capsys, monkeypatch):
    """An annexed input (DataLad): its key is its SHA-256, recorded without reading the file; an unchanged
    file re-got with a new mtime is current; a key naming other content is a change (mtime mode), and
    --verify hashes the bytes and says in one line that they do not match the key."""
    import brainalign.stagekeys as K

    root, cfg = study
    data = root / "data"
    video = data / "stimuli" / "s01e01b.mp4"
    want = hashlib.sha256(video.read_bytes()).hexdigest()
    obj = _annex(video, data)
    _touch(obj)                                     # `datalad get` wrote the object now
    assert K.annex_sha256(video) == want and K.annex_sha256(obj) is None
    inp = K.Input("video s01e01b", video)
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    fp = K.fingerprint(inp)                          # mtime mode: the hash comes from the key
    monkeypatch.setattr("builtins.open", real_open)
    assert fp["sha256"] == want and not any(str(obj) in p or str(video) in p for p in opened)
    capsys.readouterr()
    assert main(["status", str(cfg), "--stages", "extract"]) == 0
    assert "extract   current" in capsys.readouterr().out
    assert main(["status", str(cfg), "--stages", "extract", "--verify"]) == 0
    assert "extract   current" in capsys.readouterr().out
    # a key that names other content: changed without reading the bytes; --verify: one line naming the file
    other = data / "stimuli" / "other.mp4"
    other.write_bytes(obj.read_bytes())
    bad = _annex(other, data, key_sha="0" * 64)
    video.unlink()
    video.symlink_to(os.path.relpath(bad, video.parent))
    assert main(["status", str(cfg), "--stages", "extract", "-v"]) == 0
    assert "video s01e01b changed (" in capsys.readouterr().out
    assert main(["status", str(cfg), "--stages", "extract", "--verify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "does not match its git-annex key" in err and bad.name in err


# ---- upstream outputs from elsewhere (issue 24 item 4) ----------------------------------------------

def test_stale_upstream_is_refused_in_one_line_unless_allowed(study, capsys, caplog):
    """The campaign's case: features.h5 made with other extraction settings (there windows.context; here
    model.layers, which simulate does not read), then `run --stages align fit stats`: before, exit 0 and r off
    by up to 0.78; now one line naming the stale upstream and the command that refreshes it."""
    root, cfg = study
    results = root / "results"
    data = yaml.safe_load(cfg.read_text())
    data["model"]["layers"] = [1]
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))      # the features on disk are from another config
    before = stamps(results)
    capsys.readouterr()
    assert run(cfg, "--stages", "align", "fit", "stats") == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert line.startswith(f"brainalign run: error: align: upstream extract output {results / 'features.h5'} is "
                           "stale (s01e01a/joint: model.layers changed (null -> [1])")
    assert line.endswith(f"refresh it with `brainalign extract {cfg}`, or pass --allow-stale to use it as it is")
    assert stamps(results) == before                              # nothing was touched
    # a stage further down names the whole chain to refresh
    assert main(["fit", str(cfg), "--force"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"refresh it with `brainalign run {cfg} --stages extract align`, or pass --allow-stale to use it as it is")
    caplog.set_level("WARNING", logger="brainalign")
    assert run(cfg, "--stages", "align", "--allow-stale") == 0      # current with the features it was made from
    assert "align: --allow-stale: using the stale upstream extract output" in caplog.text
    assert rerun_stages(before, stamps(results)) == set()


@pytest.mark.parametrize("dtype", ["int8", "str"])
def test_scores_of_the_wrong_type_are_refused(study, capsys, dtype):
    """A scores.h5 whose r_mean is int8 or strings: `stats --force` reported a vision effect of 8.28 (0.30)."""
    root, cfg = study
    path = root / "results" / "scores.h5"
    with h5py.File(path, "a") as f:
        shape = f["r_mean"].shape
        del f["r_mean"]
        data = np.ones(shape, np.int8) if dtype == "int8" else np.full(shape, "0.5", dtype=object)
        f.create_dataset("r_mean", data=data, dtype=h5py.string_dtype() if dtype == "str" else None)
    capsys.readouterr()
    assert main(["stats", str(cfg), "--force"]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    kind = "int8" if dtype == "int8" else "object"
    assert line == (f"brainalign stats: error: scores file {path}: /r_mean has dtype {kind}, expected floating "
                    "point (a file from elsewhere or edited by hand?)")


def test_stats_outputs_are_published_together(study, capsys, monkeypatch):
    """A stats run that cannot finish (here the disk fills while stats.h5 is written) leaves no new CSV or maps
    beside the old stats.h5: the old record goes first, so `status` says stats must run, and the error is one
    line naming the file."""
    import errno

    import brainalign.h5io as h5io

    root, cfg = study
    results = root / "results"
    data = yaml.safe_load(cfg.read_text())
    data["stats"]["q"] = 0.2
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    real = h5io.h5py.File

    def full(name, mode="r", *a, **kw):
        if "stats.h5" in str(name) and mode == "w":
            raise OSError(errno.ENOSPC, "No space left on device", str(name))
        return real(name, mode, *a, **kw)

    monkeypatch.setattr(h5io.h5py, "File", full)
    capsys.readouterr()
    assert main(["stats", str(cfg)]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert line.startswith(f"brainalign stats: error: no space left on the device writing {results / 'stats.h5'} (")
    monkeypatch.setattr(h5io.h5py, "File", real)
    assert not (results / "stats.h5").exists() and not list(results.glob(".stats.h5.tmp-*"))
    assert main(["status", str(cfg), "--stages", "stats"]) == 0
    assert "stats     missing" in capsys.readouterr().out
