"""brainalign mlm: mask selection, per-word metrics, bootstrap CIs, the tiny model's masked-word head,
conditions, files (mlm.h5 / mlm.csv), resume and errors."""
import csv
import dataclasses
import math

import h5py
import numpy as np
import pytest
import torch

from brainalign import mlm
from brainalign.config import Config, MlmConfig, TinyModelConfig, WindowsConfig
from brainalign.errors import ConfigError
from brainalign.h5io import read_str_attr
from brainalign.models import get_backbone
from brainalign.models.registry import Backbone
from brainalign.models.synthetic import synthetic_stimuli
from brainalign.models.tiny import MASK, TinyMultimodal, token_ids
from conftest import placeholder_stimuli

N_WINDOWS = {"e1": 9, "e2": 7, "e3": 6}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def cfg(tmp_path):
    c = Config()
    c.output = str(tmp_path / "out")
    c.data.root = str(tmp_path / "data")
    c.data.episodes = list(N_WINDOWS)
    c.data.bold.tr = 1.0
    c.model.tiny = TinyModelConfig(hidden=32, layers=2, heads=4, vocab=512, patch=8, n_mels=16)
    c.model.batch_size = 4
    c.windows = WindowsConfig(context=2.0, frames=2, image_size=32, audio_rate=8000)
    c.mlm = MlmConfig(conditions=["joint", "no_vision", "language_only"], mask_fraction=0.3, bootstrap=200, seed=3)
    c.text = "name: mlm-test\n"
    placeholder_stimuli(c)          # the loader is faked; the stage key fingerprints the files
    return c


def synth(episode):
    return synthetic_stimuli(episode, n_windows=N_WINDOWS[episode], tr=1.0, frames=2, image_size=32,
                             audio_rate=8000, context=2.0, seed=int(episode[1:]))


@pytest.fixture
def loads(monkeypatch):
    calls = []

    def fake(cfg, episode):
        calls.append(episode)
        return synth(episode)

    monkeypatch.setattr("brainalign.stimuli.windows.load_episode_stimuli", fake)
    return calls


# ---- masking ---------------------------------------------------------------------------------------------

def test_choose_masks_counts_and_determinism():
    words = [[], ["a"], ["a", "b"], list("abcdefghij"), list("abc")]
    m = mlm.choose_masks(words, 0.3, mlm.episode_rng(0, "ep"))
    assert [len(x) for x in m] == [0, 1, 1, 3, 1]               # max(1, round(0.3 n)); none for no words
    for x, w in zip(m, words):
        assert x == sorted(set(x)) and all(0 <= i < len(w) for i in x)
    assert m == mlm.choose_masks(words, 0.3, mlm.episode_rng(0, "ep"))
    many = [list("abcdefghij")] * 20
    a = mlm.choose_masks(many, 0.3, mlm.episode_rng(0, "ep"))
    assert a != mlm.choose_masks(many, 0.3, mlm.episode_rng(1, "ep"))
    assert a != mlm.choose_masks(many, 0.3, mlm.episode_rng(0, "other"))
    assert [len(x) for x in mlm.choose_masks(many, 1.0, mlm.episode_rng(0, "ep"))] == [10] * 20


# ---- metrics ---------------------------------------------------------------------------------------------

def test_word_metrics_hand_computed():
    lg = torch.tensor([[0.0, 3.0, 1.0, 2.0, 2.5, -1.0, 0.5]])
    lse = math.log(sum(math.exp(v) for v in lg[0].tolist()))
    t1, t5, loss = mlm.word_metrics(lg, torch.tensor([3]))      # two logits above: rank 2
    assert (t1, t5) == (False, True) and loss == pytest.approx(lse - 2.0)
    assert mlm.word_metrics(lg, torch.tensor([1]))[:2] == (True, True)
    assert mlm.word_metrics(lg, torch.tensor([5]))[:2] == (False, False)          # rank 6
    assert mlm.word_metrics(lg, torch.tensor([6]))[:2] == (False, True)           # rank 4
    two = torch.cat([lg, lg])                                     # a word of two sub-tokens
    t1, t5, loss = mlm.word_metrics(two, torch.tensor([1, 3]))
    assert (t1, t5) == (False, True) and loss == pytest.approx((lse - 3.0) + (lse - 2.0))
    assert mlm.word_metrics(two, torch.tensor([1, 1]))[:2] == (True, True)
    tie = torch.tensor([[1.0, 1.0, 0.0]])                         # ties count in the word's favour
    assert mlm.word_metrics(tie, torch.tensor([1]))[0] is True


def test_bootstrap_matches_direct_numpy_percentile_bootstrap():
    rng = np.random.default_rng(0)
    a = (rng.random(57) < 0.6).astype(float)
    b = (rng.random(57) < 0.4).astype(float)
    boot = mlm.bootstrap_means(np.stack([a, b]), 300, [7, 0], max_elements=500)      # chunked draws
    idx = np.random.default_rng([7, 0]).integers(0, 57, size=(300, 57))
    np.testing.assert_allclose(boot, np.stack([a[idx].mean(1), b[idx].mean(1)]), rtol=0, atol=1e-12)
    scores = {c: {"top1": v, "top5": v, "loss": 1 - v} for c, v in (("joint", a), ("no_vision", b))}
    rows = mlm.summarize(scores, ["joint", "no_vision"], "joint", 300, [7, 0], "all")
    assert [r["condition"] for r in rows] == ["joint", "no_vision", "joint-no_vision"]
    draws = np.random.default_rng([7, 0]).integers(0, 57, size=(300, 57))
    ref = {"joint": a[draws].mean(1), "no_vision": b[draws].mean(1)}
    ref["joint-no_vision"] = ref["joint"] - ref["no_vision"]
    point = {"joint": a.mean(), "no_vision": b.mean(), "joint-no_vision": a.mean() - b.mean()}
    for r in rows:
        lo, hi = np.percentile(ref[r["condition"]], [2.5, 97.5])
        assert r["n_words"] == 57 and r["top1"] == pytest.approx(point[r["condition"]])
        assert (r["top1_ci_low"], r["top1_ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    d = ref["joint-no_vision"]
    assert rows[2]["p_top1"] == pytest.approx(min(1, 2 * min((d <= 0).mean(), (d >= 0).mean())))
    assert np.isnan(rows[0]["p_top1"])
    none = mlm.summarize(scores, ["joint", "no_vision"], "joint", 0, 0, "all")      # bootstrap: 0
    assert np.isnan(none[0]["top1_ci_low"]) and none[0]["top1"] == pytest.approx(a.mean())


# ---- the tiny backbone's head -------------------------------------------------------------------------

def test_tiny_head_matches_direct_forward_and_hides_the_word(cfg):
    bb = get_backbone(cfg.model, cfg.windows)
    s = synth("e1")
    idx = [i for i in range(s.n_windows) if len(s.words[i]) >= 2][:3]
    masked = [[0, 1]] + [[len(s.words[i]) - 1] for i in idx[1:]]
    res = bb.masked_word_logits(s, np.array(idx), "joint", masked)
    for b, i in enumerate(idx):                           # reference: one window at a time, by hand
        ids = torch.tensor([token_ids(s.words[i], 512)])
        target = ids[0, masked[b]].clone()
        ids[0, masked[b]] = MASK
        out = bb.module(frames=torch.from_numpy(s.frames[i: i + 1]), ids=ids,
                        wave=torch.from_numpy(s.audio[i: i + 1]), sample_rate=8000)
        n_vis = 2 * (32 // 8) ** 2
        ref = bb.module.token_logits(out.hidden[-1, 0, 1 + n_vis + torch.tensor(masked[b])])
        for j, (lg, tg) in enumerate(res[b]):
            torch.testing.assert_close(lg[0], ref[j], atol=1e-4, rtol=1e-4)
            assert tg.tolist() == [int(target[j])]
    # the masked word itself cannot influence its prediction
    words = [list(w) for w in s.words]
    words[idx[0]][0] = "zebra"
    alt = bb.masked_word_logits(_with_words(s, words), np.array(idx[:1]), "joint", masked[:1])
    torch.testing.assert_close(alt[0][0][0], res[0][0][0])
    assert alt[0][0][1] != res[0][0][1]


def _with_words(s, words):
    return dataclasses.replace(s, words=words)


def test_no_vision_gets_no_frames(cfg, monkeypatch):
    bb = get_backbone(cfg.model, cfg.windows)
    seen = []
    orig = TinyMultimodal.forward

    def spy(self, frames=None, ids=None, wave=None, sample_rate=None, batch=None):
        seen.append((frames is not None, ids is not None, wave is not None))
        return orig(self, frames=frames, ids=ids, wave=wave, sample_rate=sample_rate, batch=batch)

    monkeypatch.setattr(TinyMultimodal, "forward", spy)
    s = synth("e1")
    masks = mlm.choose_masks(s.words, 0.3, mlm.episode_rng(0, "e1"))
    head = mlm.masked_word_head(bb)
    for cond, want in (("no_vision", (False, True, True)), ("joint", (True, True, True)),
                       ("language_only", (False, True, False))):
        seen.clear()
        mlm.evaluate_episode(head, s, [cond], masks, batch_size=4)
        assert seen and set(seen) == {want}
    # and its scores do not depend on the frames
    other = _with_words(synthetic_stimuli("e1", n_windows=9, tr=1.0, frames=2, image_size=32, audio_rate=8000,
                                          context=2.0, seed=99), s.words)
    other.audio = s.audio
    a = mlm.evaluate_episode(head, s, ["no_vision", "joint"], masks, 4)
    b = mlm.evaluate_episode(head, other, ["no_vision", "joint"], masks, 4)
    np.testing.assert_array_equal(a["no_vision"]["loss"], b["no_vision"]["loss"])
    assert not np.array_equal(a["joint"]["loss"], b["joint"]["loss"])


# ---- the stage ---------------------------------------------------------------------------------------

class Oracle(Backbone):
    """A backbone whose head 'cheats': the true word gets the highest logit (vision off: a wrong guess)."""
    name = "oracle"
    n_layers, hidden = 1, 4

    def __init__(self):
        self.calls = []

    def encode(self, stimuli, index, condition):  # pragma: no cover - not used by mlm
        raise AssertionError

    def masked_word_logits(self, stimuli, idx, condition, masked):
        self.calls.append(condition)
        out = []
        for i, ws in zip(idx, masked):
            row = []
            for w in ws:
                t = token_ids([stimuli.words[i][w]], 50)[0]
                lg = torch.zeros(1, 50)
                lg[0, t if condition == "joint" else (t + 1) % 50] = 20.0
                row.append((lg, torch.tensor([t])))
            out.append(row)
        return out


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_oracle_backbone_scores_one(cfg, loads):
    cfg.mlm.conditions = ["joint", "no_vision"]
    path = mlm.run_mlm(cfg, backbone=Oracle())
    rows = {(r["condition"], r["episode"]): r for r in read_csv(cfg.out / "mlm.csv")}
    assert float(rows[("joint", "all")]["top1"]) == 1.0
    assert float(rows[("joint", "all")]["loss"]) < 1e-6
    assert float(rows[("no_vision", "all")]["top1"]) == 0.0
    d = rows[("joint-no_vision", "all")]
    assert float(d["top1"]) == 1.0 and float(d["top1_ci_low"]) == 1.0 and float(d["p_top1"]) == 0.0
    with h5py.File(path, "r") as f:
        assert f["joint/correct_top1"][()].all() and not f["no_vision/correct_top1"][()].any()


def test_run_mlm_files_resume_and_determinism(cfg, loads, tmp_path):
    path = mlm.run_mlm(cfg)
    assert path == cfg.out / "mlm.h5" and loads == list(N_WINDOWS)
    conds = cfg.mlm.conditions
    with h5py.File(path, "r") as f:
        n = int(f.attrs["n_words"])
        assert read_str_attr(f, "conditions") == conds and read_str_attr(f, "episodes") == list(N_WINDOWS)
        assert f.attrs["reference"] == "joint" and f.attrs["backbone"] == "tiny" and f.attrs["bootstrap"] == 200
        for name, dt in (("episode_index", np.int32), ("window_index", np.int32), ("word_index", np.int32),
                         ("n_tokens", np.int32)):
            assert f[name].shape == (n,) and f[name].dtype == dt
        assert (f["n_tokens"][()] == 1).all()
        words = [w.decode() for w in f["word"][()]]
        ep, win, wi = f["episode_index"][()], f["window_index"][()], f["word_index"][()]
        per = {}
        for c in conds:
            assert f[f"{c}/correct_top1"].dtype == np.uint8 and f[f"{c}/loss"].dtype == np.float32
            per[c] = {k: f[f"{c}/{k}"][()] for k in ("correct_top1", "correct_top5", "loss")}
            assert (per[c]["correct_top5"] >= per[c]["correct_top1"]).all()
            assert f[c].attrs["top1"] == pytest.approx(per[c]["correct_top1"].mean())
            assert f[c].attrs["loss"] == pytest.approx(per[c]["loss"].mean(), rel=1e-5)
        assert "difference/joint-no_vision" in f and "difference/joint-language_only" in f
        summary = f["summary"][()]
        assert len(summary) == (len(N_WINDOWS) + 1) * (2 * len(conds) - 1)
    # the masked words are the ones choose_masks picks from the stimuli
    for e, name in enumerate(N_WINDOWS):
        s = synth(name)
        masks = mlm.choose_masks(s.words, 0.3, mlm.episode_rng(3, name))
        want = [(i, w) for i, m in enumerate(masks) for w in m]
        got = [(int(a), int(b)) for a, b in zip(win[ep == e], wi[ep == e])]
        assert got == want
        assert [words[k] for k in np.flatnonzero(ep == e)] == [s.words[i][w] for i, w in want]
    rows = read_csv(cfg.out / "mlm.csv")
    assert list(rows[0]) == mlm.CSV_COLUMNS and len(rows) == len(summary)
    for r in rows:
        if r["condition"] in conds:
            sel = ep == list(N_WINDOWS).index(r["episode"]) if r["episode"] != "all" else slice(None)
            x = per[r["condition"]]
            assert int(r["n_words"]) == len(x["loss"][sel])
            assert float(r["top1"]) == pytest.approx(x["correct_top1"][sel].mean(), abs=1e-6)
            assert float(r["top5"]) == pytest.approx(x["correct_top5"][sel].mean(), abs=1e-6)
            assert float(r["top1_ci_low"]) <= float(r["top1"]) <= float(r["top1_ci_high"])
    # resume: a complete file for the same settings is kept; --force and changed settings redo it
    mtime = path.stat().st_mtime_ns
    assert mlm.run_mlm(cfg) == path and path.stat().st_mtime_ns == mtime and len(loads) == 3
    mlm.run_mlm(cfg, force=True)
    assert len(loads) == 6
    with h5py.File(path, "r") as f:                     # deterministic: same numbers the second time
        for c in conds:
            np.testing.assert_array_equal(f[f"{c}/loss"][()], per[c]["loss"])
    cfg.mlm.seed = 4
    mlm.run_mlm(cfg)
    assert len(loads) == 9


def test_errors(cfg, loads):
    cfg.mlm.conditions = ["joint", "no_language"]
    with pytest.raises(ConfigError, match=r"mlm.conditions\[1\]: condition 'no_language' removes the words"):
        mlm.run_mlm(cfg)
    cfg.mlm.conditions = ["joint", "silent"]
    with pytest.raises(ConfigError, match=r"mlm.conditions\[1\]: unknown condition 'silent'"):
        mlm.run_mlm(cfg)
    cfg.mlm.conditions = ["joint"]
    cfg.mlm.mask_fraction = 0.0
    with pytest.raises(ConfigError, match=r"mlm.mask_fraction: must lie in \(0, 1\], got 0.0"):
        mlm.run_mlm(cfg)
    cfg.mlm.mask_fraction = 0.2

    class NoHead(Oracle):
        name = "headless"
        masked_word_logits = None

    with pytest.raises(ConfigError, match="backbone 'headless' has no language-model head"):
        mlm.run_mlm(cfg, backbone=NoHead())
    assert loads == []


def simulated_episodes(tmp_path, trs: int, tr: float, mlm_cfg: MlmConfig) -> Config:
    """A config over 3 episodes whose mp4 + wav + TSV simulate wrote (no BOLD)."""
    from brainalign.simulate import write_episode_stimuli

    c = Config()
    c.data.root, c.output = str(tmp_path / "data"), str(tmp_path / "out")
    c.data.episodes, c.data.bold.tr = ["a", "b", "c"], tr
    c.simulate.trs_per_run, c.simulate.frame_size, c.simulate.audio_rate, c.simulate.fps = trs, 32, 8000, 4.0
    c.model.tiny = TinyModelConfig(hidden=32, layers=2, heads=4, vocab=512, patch=8, n_mels=16)
    c.windows = WindowsConfig(context=None, frames=2, image_size=32, audio_rate=8000)
    c.mlm = mlm_cfg
    for i, e in enumerate(c.data.episodes):
        write_episode_stimuli(c, e, i)
    return c


def test_run_mlm_on_simulated_files(tmp_path):
    """The real stimulus loader (mp4 + wav + TSV written by simulate) feeds the stage end to end."""
    c = simulated_episodes(tmp_path, 12, 1.0, MlmConfig(bootstrap=100))
    path = mlm.run_mlm(c)
    with h5py.File(path, "r") as f:
        n = int(f.attrs["n_words"])
        assert n > 0 and f["joint/loss"].shape == (n,) and np.isfinite(f["no_vision/loss"][()]).all()
        assert sorted(set(f["episode_index"][()].tolist())) == [0, 1, 2]
    rows = read_csv(c.out / "mlm.csv")
    assert [(r["condition"], r["episode"]) for r in rows[-3:]] == [("joint", "all"), ("no_vision", "all"),
                                                                  ("joint-no_vision", "all")]


class ColourOracle(Oracle):
    """Right under joint exactly for the colour words (what the frames predict), wrong otherwise."""

    def masked_word_logits(self, stimuli, idx, condition, masked):
        from brainalign.sim.stimuli import COLOURS

        out = []
        for i, ws in zip(idx, masked):
            row = []
            for w in ws:
                word = stimuli.words[i][w]
                t = token_ids([word], 50)[0]
                lg = torch.zeros(1, 50)
                lg[0, t if condition == "joint" and word in COLOURS else (t + 1) % 50] = 20.0
                row.append((lg, torch.tensor([t])))
            out.append(row)
        return out


def test_word_classes_from_the_transcript_column(tmp_path):
    """mlm.word_class_column: every masked word gets its transcript row's class; rows per class; errors."""
    from brainalign.errors import DataError
    from brainalign.sim.stimuli import COLOURS

    c = simulated_episodes(tmp_path, 40, 1.5, MlmConfig(conditions=["joint", "no_vision"], mask_fraction=1.0,
                                                        bootstrap=200, word_class_column="word_class"))
    path = mlm.run_mlm(c, backbone=ColourOracle())
    with h5py.File(path, "r") as f:
        words = [w.decode() for w in f["word"][()]]
        classes = [w.decode() for w in f["word_class"][()]]
        assert read_str_attr(f, "word_classes") == ["frame_predictable", "other"]
    assert classes == ["frame_predictable" if w in COLOURS else "other" for w in words]   # the simulation's rule
    n_colour = sum(w in COLOURS for w in words)
    assert 0 < n_colour < len(words)
    rows = {(r["condition"], r["episode"], r["word_class"]): r for r in read_csv(c.out / "mlm.csv")}
    fp, other = rows[("joint", "all", "frame_predictable")], rows[("joint", "all", "other")]
    assert int(fp["n_words"]) == n_colour and int(other["n_words"]) == len(words) - n_colour
    assert float(fp["top1"]) == 1.0 and float(other["top1"]) == 0.0
    assert float(rows[("joint", "all", "all")]["top1"]) == pytest.approx(n_colour / len(words), abs=1e-6)
    d_fp, d_other = rows[("joint-no_vision", "all", "frame_predictable")], rows[("joint-no_vision", "all", "other")]
    assert float(d_fp["top1"]) == 1.0 and float(d_fp["top1_ci_low"]) == 1.0
    assert float(d_other["top1"]) == 0.0 and float(d_other["top1_ci_high"]) == 0.0
    per_ep = sum(int(rows[("joint", e, "frame_predictable")]["n_words"]) for e in c.data.episodes
                 if ("joint", e, "frame_predictable") in rows)
    assert per_ep == n_colour
    c.mlm.word_class_column = "speaker"
    with pytest.raises(DataError, match=r"transcript .*a\.tsv line 1: missing column\(s\) speaker"):
        mlm.run_mlm(c, backbone=ColourOracle(), force=True)
    c.mlm.word_class_column = "word_class"
    c.data.stimuli.transcript = "{root}/stimuli/{episode}.srt"
    for e in c.data.episodes:
        (tmp_path / "data" / "stimuli" / f"{e}.srt").write_text("1\n00:00:00,500 --> 00:00:01,000\nhey\n")
    with pytest.raises(ConfigError, match=r"mlm.word_class_column: needs .tsv transcripts"):
        mlm.run_mlm(c, backbone=ColourOracle(), force=True)
