"""Fine-tuning on TVQA-format QA: reader + validation, synthetic set, learning that needs both modalities,
resume after a kill, DDP (2 gloo processes) == 1 process, and extraction from the fine-tuned checkpoint."""
import json

import numpy as np
import pytest
import torch

from brainalign import finetune, tvqa
from brainalign.config import Config, TinyModelConfig, WindowsConfig
from brainalign.errors import ConfigError, DataError
from brainalign.models import get_backbone
from brainalign.models.synthetic import synthetic_stimuli
from brainalign.models.tiny import load_checkpoint, TinyMultimodal, TinySpec

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A synthetic TVQA set (shared by the tests; nobody writes into it)."""
    return tvqa.write_synthetic_tvqa(tmp_path_factory.mktemp("tvqa"), n_train=TRAIN_N, n_val=VAL_N, seed=0,
                                     size=SIZE)


TRAIN_N, VAL_N = 480, 120


def make_cfg(tmp_path, data, **ft):
    c = Config()
    c.output = str(tmp_path / "out")
    c.data.root = str(tmp_path)
    c.finetune.data = str(data)
    c.model.tiny = TinyModelConfig(hidden=32, layers=2, heads=2, vocab=512, patch=8, n_mels=16)
    c.windows = WindowsConfig(frames=2, image_size=SIZE, audio_rate=8000)
    c.finetune.batch_size = 16
    c.finetune.lr = 3e-3
    c.finetune.warmup_steps = 10
    for k, v in ft.items():
        setattr(c.finetune, k, v)
    c.text = "name: finetune-test\n"
    return c


# ---- reader and validation -----------------------------------------------------------------------

ROW = {"qid": 7, "q": "Who said hi?", "a0": "Ross", "a1": "Rachel", "a2": "Monica", "a3": "Joey",
       "a4": "Phoebe", "answer_idx": 3, "ts": "1.5-4.25", "vid_name": "friends_s01e01_seg02_clip_00",
       "show_name": "Friends"}


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_read_tvqa_hand_written_file(tmp_path):
    other = dict(ROW, qid="x2", ts="0-0", answer_idx=0, q="(Ross:) Hi, Rachel!")
    items = tvqa.read_tvqa(write_rows(tmp_path / "t.jsonl", [ROW, "", other]))
    assert len(items) == 2
    a, b = items
    assert (a.qid, a.question, a.answer_idx, a.ts, a.vid_name) == ("7", "Who said hi?", 3, (1.5, 4.25),
                                                                    "friends_s01e01_seg02_clip_00")
    assert a.answers == ("Ross", "Rachel", "Monica", "Joey", "Phoebe")
    assert b.ts == (0.0, 0.0) and b.qid == "x2"
    assert tvqa.normalise_words(b.question) == ["ross", "hi", "rachel"]


@pytest.mark.parametrize("change, message", [
    ({"answer_idx": 5}, r"line 1: answer_idx 5 out of range \(an integer 0..4\)"),
    ({"answer_idx": "2"}, r"answer_idx '2' out of range"),
    ({"ts": "4.0-1.0"}, r"ts '4.0-1.0' needs 0 <= start <= end"),
    ({"ts": "NaN-NaN"}, r"ts 'NaN-NaN' is not 'start-end'"),
    ({"ts": "12.5"}, r"ts '12.5' is not 'start-end'"),
    ({"a3": None}, r"field a3 must be a non-empty string"),
    ({"vid_name": "../x"}, r"vid_name '../x' must be a plain clip name"),
])
def test_bad_rows_are_one_line_errors(tmp_path, change, message):
    path = write_rows(tmp_path / "t.jsonl", [dict(ROW, **change)])
    with pytest.raises(DataError, match=message) as e:
        tvqa.read_tvqa(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_fields_json_and_duplicates(tmp_path):
    row = {k: v for k, v in ROW.items() if k not in ("a4", "ts")}
    with pytest.raises(DataError, match=r"line 1: missing field\(s\) a4, ts"):
        tvqa.read_tvqa(write_rows(tmp_path / "m.jsonl", [row]))
    with pytest.raises(DataError, match=r"line 2: not valid JSON"):
        tvqa.read_tvqa(write_rows(tmp_path / "j.jsonl", [ROW, "{oops"]))
    with pytest.raises(DataError, match=r"line 2: duplicate qid 7"):
        tvqa.read_tvqa(write_rows(tmp_path / "d.jsonl", [ROW, ROW]))
    with pytest.raises(DataError, match=r"TVQA file not found: .*nope.jsonl"):
        tvqa.read_tvqa(tmp_path / "nope.jsonl")


def test_missing_frames_and_subtitles(tmp_path, synth):
    root = tmp_path / "d"
    (root / "frames" / ROW["vid_name"]).mkdir(parents=True)
    write_rows(root / "tvqa_train.jsonl", [ROW])
    write_rows(root / "tvqa_val.jsonl", [ROW])
    cfg = make_cfg(tmp_path, root)
    with pytest.raises(DataError, match=r"clip friends_s01e01_seg02_clip_00: no frames \(.jpg/.png\) in .*frames"):
        finetune.run_finetune(cfg)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "frames" / ROW["vid_name"] / "00001.jpg")
    with pytest.raises(DataError, match=r"train clip friends_s01e01_seg02_clip_00: subtitles not found: .*\.srt"):
        finetune.run_finetune(cfg)
    with pytest.raises(ConfigError, match=r"finetune.data: TVQA directory not found"):
        finetune.run_finetune(make_cfg(tmp_path, tmp_path / "absent"))


# ---- the synthetic set and the clip readers --------------------------------------------------------

def test_synthetic_set_layout_and_answer_logic(synth):
    train = tvqa.read_tvqa(synth / "tvqa_train.jsonl")
    val = tvqa.read_tvqa(synth / "tvqa_val.jsonl")
    assert len(train) == TRAIN_N and len(val) == VAL_N
    tvqa.check_clips(synth, train, "train")
    labels = np.array([it.answer_idx for it in train])
    assert np.bincount(labels, minlength=5).min() > TRAIN_N / 5 * 0.6      # answer positions balanced
    from brainalign.stimuli.transcript import read_transcript

    for it in train[:40]:
        files = tvqa.frame_files(synth, it.vid_name)
        assert len(files) == round(tvqa.CLIP_SECONDS * tvqa.TVQA_FPS) and files[0].name == "00001.png"
        frames = tvqa.load_frames(files, it.ts, 2, SIZE)
        assert frames.shape == (2, SIZE, SIZE, 3) and frames.dtype == np.uint8
        # shirt colours seen in the frame: nearest palette colour of each seat's shirt block
        w = SIZE // 4
        seen = []
        for k in range(4):
            rgb = frames[0, SIZE * 3 // 4:, k * w + w // 4: (k + 1) * w - w // 4].reshape(-1, 3).mean(0)
            seen.append(min(tvqa.COLOURS, key=lambda c: np.sum((np.array(tvqa.COLOURS[c]) - rgb) ** 2)))
        said = tvqa.subtitle_words(read_transcript(tvqa.subtitle_path(synth, it.vid_name)), it.ts)
        assert said[0] in tvqa.SEATS and said[0] in tvqa.normalise_words(it.question)
        both = [a for a in it.answers if a in seen and a in said]
        assert both == [it.answers[it.answer_idx]]                       # only the answer is in both
        assert sum(a in seen for a in it.answers) == 3 and sum(a in said for a in it.answers) == 3


def test_frame_times_follow_tvqa_fps(tmp_path):
    from PIL import Image

    d = tmp_path / "frames" / "clip"
    d.mkdir(parents=True)
    for k in range(10):                          # frame k (1-based) shown from (k - 1) / 3 s
        Image.fromarray(np.full((4, 4, 3), 20 * k, np.uint8)).save(d / f"{k + 1:05d}.png")
    files = tvqa.frame_files(tmp_path, "clip")
    out = tvqa.load_frames(files, (1.0, 2.0), 2, 4)     # times 1.25 s, 1.75 s -> frames 4, 6 (0-based 3, 5)
    assert out[:, 0, 0, 0].tolist() == [60, 100]
    out = tvqa.load_frames(files, (5.0, 9.0), 1, 2)     # past the clip end: the last frame, resized
    assert out.shape == (1, 2, 2, 3) and out[0, 0, 0, 0] == 180


# ---- learning ------------------------------------------------------------------------------------

def val_accuracy(cfg):
    return json.loads((cfg.out / "finetune" / "metrics.json").read_text())["final_val_accuracy"]


def test_finetuning_needs_both_frames_and_subtitles(tmp_path, synth):
    """Joint fine-tuning beats chance (20 %) clearly; without frames or without subtitles it cannot get past
    the 33 % that one modality allows (see write_synthetic_tvqa)."""
    acc = {}
    for name, kw in {"joint": {}, "no_frames": {"use_frames": False},
                     "no_subtitles": {"use_subtitles": False}}.items():
        cfg = make_cfg(tmp_path / name, synth, epochs=EPOCHS)
        path = finetune.run_finetune(cfg, **kw)
        assert path == cfg.out / "finetune" / "model.pt" and path.is_file()
        acc[name] = val_accuracy(cfg)
    print("val accuracy", acc)
    assert acc["joint"] >= 0.6, acc
    assert acc["no_frames"] <= 0.45 and acc["no_subtitles"] <= 0.45, acc


EPOCHS = 8


# ---- resume, skip, DDP, extraction ------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return tvqa.write_synthetic_tvqa(tmp_path_factory.mktemp("small"), n_train=64, n_val=32, seed=3, size=SIZE)


def trained_state(cfg):
    """The QA model's state (backbone + head) after the last epoch, from the training checkpoint."""
    return torch.load(cfg.out / "finetune" / "checkpoint.pt", weights_only=True)["model"]


class Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_weights(tmp_path, small, monkeypatch):
    ref = make_cfg(tmp_path / "ref", small, epochs=3)
    finetune.run_finetune(ref)
    want = trained_state(ref)

    cfg = make_cfg(tmp_path / "run", small, epochs=3)

    def kill(epoch, rec):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        finetune.run_finetune(cfg, on_epoch_end=kill)
    work = cfg.out / "finetune"
    assert (work / "checkpoint.pt").is_file() and not (work / "model.pt").exists()
    assert not (work / "metrics.json").exists()
    assert torch.load(work / "checkpoint.pt", weights_only=True)["epoch"] == 1

    changed = make_cfg(tmp_path / "run", small, epochs=3, lr=1e-2)        # another config: refused
    with pytest.raises(ConfigError, match=r"checkpoint.pt was written for another config .*--force"):
        finetune.run_finetune(changed)

    seen = []
    finetune.run_finetune(cfg, on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [2, 3]                                                 # epoch 1 was not redone
    got = trained_state(cfg)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    m = json.loads((work / "metrics.json").read_text())
    r = json.loads((ref.out / "finetune" / "metrics.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3]
    assert [e["val_accuracy"] for e in m["epochs"]] == [e["val_accuracy"] for e in r["epochs"]]
    assert m["complete"] and m["chance"] == 0.2 and m["n_train"] == 64 and m["n_val"] == 32

    # complete and up to date: a second call trains nothing; --force trains again
    monkeypatch.setattr(finetune, "train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    assert finetune.run_finetune(cfg) == work / "model.pt"
    with pytest.raises(AssertionError, match="retrained"):
        finetune.run_finetune(cfg, force=True)


def test_ddp_two_processes_match_one_process(tmp_path, small):
    """Global batch 16 = 2 ranks x 8: DistributedSampler gives the ranks the two halves of the one-process
    batch and DDP averages their mean-loss gradients, i.e. the one-process gradient (float rounding aside)."""
    one = make_cfg(tmp_path / "one", small, epochs=2)
    finetune.run_finetune(one)
    two = make_cfg(tmp_path / "two", small, epochs=2)
    assert finetune.run_finetune_spawn(two, nprocs=2) == two.out / "finetune" / "model.pt"
    a, b = trained_state(one), trained_state(two)
    init = finetune.build_qa_model(one).state_dict()
    moved = 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4)
        moved += int(not torch.equal(a[k], init[k]))
    assert moved > 10                                                       # training changed the weights
    h = one.model.tiny.hidden                                               # dead parameters stay fixed
    for k in ("head.bias", "backbone.blocks.1.fc2.bias"):
        assert torch.equal(a[k], init[k]), k
    assert torch.equal(a["backbone.blocks.0.qkv.bias"][h:2 * h], init["backbone.blocks.0.qkv.bias"][h:2 * h])
    ma = json.loads((one.out / "finetune" / "metrics.json").read_text())
    mb = json.loads((two.out / "finetune" / "metrics.json").read_text())
    assert mb["world_size"] == 2 and ma["world_size"] == 1
    for ea, eb in zip(ma["epochs"], mb["epochs"]):
        assert eb["val_accuracy"] == ea["val_accuracy"]
        assert eb["train_loss"] == pytest.approx(ea["train_loss"], rel=1e-4)


def test_batch_must_split_over_ranks(tmp_path, small):
    cfg = make_cfg(tmp_path, small, batch_size=15)
    ds = finetune.load_split(cfg, "val")
    with pytest.raises(ConfigError, match=r"finetune.batch_size: the global batch 15 must be a multiple of the "
                                          r"number of ranks \(2\)"):
        finetune.train(cfg, finetune.build_qa_model(cfg), ds, ds, tmp_path, finetune.DistInfo(0, 2),
                       torch.device("cpu"), "")


def test_extraction_from_the_finetuned_checkpoint(tmp_path, small, monkeypatch):
    cfg = make_cfg(tmp_path, small, epochs=1)
    path = finetune.run_finetune(cfg)
    qa = trained_state(cfg)

    from brainalign import extract

    ext = make_cfg(tmp_path, small)
    ext.data.episodes = ["e1", "e2", "e3"]
    ext.data.bold.tr = 1.0
    ext.model.conditions = ["joint", "no_vision"]
    stim = synthetic_stimuli("e1", n_windows=6, tr=1.0, frames=2, image_size=SIZE, audio_rate=8000, seed=1)
    monkeypatch.setattr("brainalign.stimuli.windows.load_episode_stimuli", lambda c, ep: stim)
    before = extract.extract_episode_features(ext, "e1")
    ext.model.checkpoint = str(path)
    after = extract.extract_episode_features(ext, "e1")

    bb = get_backbone(ext.model, ext.windows)                 # what model.checkpoint loads: the tuned weights
    for k, v in bb.module.state_dict().items():
        assert torch.equal(v, qa["backbone." + k]), k
    direct = bb.encode(stim, slice(None), "joint").numpy()
    for c in ("joint", "no_vision"):
        assert after[c].shape == (2, 6, 32) and np.isfinite(after[c]).all()
        assert not np.allclose(after[c], before[c], atol=1e-4)        # fine-tuning changed the features
    np.testing.assert_allclose(after["joint"], direct, atol=1e-5)
    wrong = make_cfg(tmp_path, small)
    wrong.windows.frames = 3
    with pytest.raises(ConfigError, match=r"model.checkpoint: .*model.pt was saved for another tiny model"):
        load_checkpoint(TinyMultimodal(TinySpec.from_config(wrong.model, wrong.windows)), path)


def test_launcher_environment_detection(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"):
        monkeypatch.delenv(k, raising=False)
    assert finetune.dist_env() == (0, 1, 0)
    monkeypatch.setenv("SLURM_NTASKS", "1")                 # a one-task srun is not distributed
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert finetune.dist_env() == (0, 1, 0)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert finetune.dist_env() == (3, 4, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")                   # torchrun's variables win
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert finetune.dist_env() == (1, 2, 1)


def test_bfloat16_autocast_matches_float32_closely(tmp_path, small):
    losses = {}
    for prec in ("float32", "bfloat16"):
        cfg = make_cfg(tmp_path / prec, small, epochs=1, precision=prec)
        finetune.run_finetune(cfg)
        losses[prec] = json.loads((cfg.out / "finetune" / "metrics.json").read_text())["epochs"][0]
    assert losses["bfloat16"]["train_loss"] == pytest.approx(losses["float32"]["train_loss"], abs=0.02)
    assert np.isfinite(losses["bfloat16"]["val_loss"])


# ---- config and command line (need the lead's config.py / cli.py / pipeline.py changes) ---------------

def test_shipped_config_fits_the_demo_model(repo_root):
    from brainalign.config import load_config
    from brainalign.models.tiny import TinySpec

    ft = load_config(repo_root / "configs" / "finetune.yaml")
    demo = load_config(repo_root / "configs" / "demo.yaml")
    assert ft.pipeline == ["finetune"] and ft.model.backbone == "tiny" and ft.model.checkpoint is None
    # the fine-tuned checkpoint must load into the demo's extraction model
    assert TinySpec.from_config(ft.model, ft.windows) == TinySpec.from_config(demo.model, demo.windows)
    assert ft.model.seed == demo.model.seed and ft.data.root == demo.data.root


def test_cli_finetune_verb(tmp_path, small, capsys):
    from brainalign import cli

    cfg_path = tmp_path / "ft.yaml"
    cfg_path.write_text(f"""
name: cli-finetune
output: {tmp_path / 'out'}
pipeline: [finetune]
model: {{tiny: {{hidden: 32, layers: 2, heads: 2, vocab: 512, patch: 8, n_mels: 16}}}}
windows: {{frames: 2, image_size: {SIZE}, audio_rate: 8000}}
finetune: {{data: "{small}", epochs: 1, batch_size: 16}}
""")
    assert cli.main(["finetune", str(cfg_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "finetune" / "model.pt")
    assert json.loads((tmp_path / "out" / "finetune" / "metrics.json").read_text())["complete"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg_path.read_text().replace(str(small), str(tmp_path / "nowhere")))
    assert cli.main(["finetune", str(bad)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]
    assert len(err) == 1 and err[0].startswith("brainalign finetune: error: finetune.data: TVQA directory not found")


def test_sigterm_mid_epoch_keeps_the_finished_epochs(tmp_path, small, monkeypatch):
    """SIGTERM (SLURM's time limit, submitit's stop) in the middle of epoch 2: the stage says what is kept,
    exits 143 and the re-run resumes after epoch 1 to the weights of an uninterrupted run."""
    import os
    import signal

    from brainalign.interrupt import Interrupted, on_signals

    ref = make_cfg(tmp_path / "ref", small, epochs=2)
    finetune.run_finetune(ref)
    cfg = make_cfg(tmp_path / "run", small, epochs=2)
    real, finetune_epoch = finetune.qa_loss, [0]

    def on_epoch_end(epoch, rec):
        finetune_epoch[0] = epoch

    def loss_then_signal(*a, **kw):
        if finetune_epoch[0] == 1:                     # a batch of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(finetune, "qa_loss", loss_then_signal)
    with pytest.raises(Interrupted) as e:
        with on_signals():
            finetune.run_finetune(cfg, on_epoch_end=on_epoch_end)
    ckpt = cfg.out / "finetune" / "checkpoint.pt"
    assert str(e.value) == f"interrupted by SIGTERM: 1 of 2 epochs finished, the last saved in {ckpt}; a re-run " \
                           "resumes after epoch 1"
    assert e.value.exit_code == 143
    monkeypatch.setattr(finetune, "qa_loss", real)
    seen = []
    finetune.run_finetune(cfg, on_epoch_end=lambda ep, r: seen.append(ep))
    assert seen == [2]
    want, got = trained_state(ref), trained_state(cfg)
    for k in want:
        assert torch.equal(got[k], want[k]), k
