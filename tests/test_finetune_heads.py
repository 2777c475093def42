"""QA heads for MERLOT Reserve and GIT (finetune_heads): logits shapes, MERLOT pooling at the MASK slot against
a manual forward, the two-pass loss against numpy, training on a tiny synthetic TVQA set, and the fine-tuned
checkpoint loading back through the registry with changed features. Tiny random models, built here."""
import json

import numpy as np
import pytest
import torch

from brainalign import finetune, tvqa
from brainalign.config import Config, WindowsConfig
from brainalign.errors import ConfigError
from brainalign.finetune_heads import MerlotQAModel, qa_loss, qa_predict
from brainalign.models import get_backbone
from brainalign.models.merlot.convert import FORMAT, read_converted
from brainalign.models.merlot.model import AUDIOSPAN, MASK, MerlotConfig, build_model
from brainalign.models.synthetic import synthetic_stimuli

tokenizers = pytest.importorskip("tokenizers")

SIZE, FRAMES = 32, 2
MERLOT_TINY = dict(hidden_size=96, size_per_head=48, rotary_hsize=32, vocab_size=64, joint_num_layers=2,
                   vit_num_layers=1, audio_num_layers=1, span_num_layers=1, vit_patch_size=4, output_grid=(4, 6),
                   audio_seq_length=60, audio_token_length=6, audio_patch_size=2, num_mels=64)
MERLOT_SPECIAL = ["<pad>", "<s>", "</s>", "MASK", "MASKAUDIO", "AUDIOSPAN", "LTOVPOOL", "<unk>"]
WORDS = sorted(set(tvqa.SEATS) | set(tvqa.COLOURS) | set(tvqa.FILLER)
               | set(tvqa.normalise_words(tvqa.QUESTION.format(who="x"))) - {"x"})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return tvqa.write_synthetic_tvqa(tmp_path_factory.mktemp("tvqa"), n_train=24, n_val=8, seed=0, size=SIZE,
                                     audio=True)


def word_level(special, unk):
    """A WordLevel tokenizer: special tokens at ids 0.., then the synthetic set's words."""
    vocab = {w: i for i, w in enumerate(list(special) + WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return tok


# ---- MERLOT Reserve --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def merlot_ckpt(tmp_path_factory):
    """A converted-format .pt (as convert.py writes) of a tiny random pre-trained MERLOT Reserve."""
    cfg = MerlotConfig(**MERLOT_TINY)
    torch.manual_seed(0)
    model = build_model(cfg)
    tok = word_level(MERLOT_SPECIAL, "<unk>")
    assert tok.get_vocab_size() <= cfg.vocab_size
    path = tmp_path_factory.mktemp("merlot") / "pretrained.pt"
    torch.save({"format": FORMAT, "config": cfg.to_dict(), "state_dict": model.state_dict(), "source": "test",
                "tokenizer_json": tok.to_str()}, path)
    return path


def merlot_cfg(tmp_path, data, ckpt, **ft):
    c = Config()
    c.output = str(tmp_path / "out")
    c.data.root = str(tmp_path)
    c.finetune.data = str(data)
    c.model.backbone = "merlot_reserve"
    c.model.checkpoint = None if ckpt is None else str(ckpt)
    c.windows = WindowsConfig(frames=FRAMES, image_size=SIZE, audio_rate=16000)
    c.finetune.batch_size = 8
    c.finetune.lr = 1e-3
    c.finetune.warmup_steps = 2
    c.finetune.epochs = 3
    for k, v in ft.items():
        setattr(c.finetune, k, v)
    c.text = "name: heads-test\n"
    return c


def first_batch(ds, n=3):
    return finetune.collate_for(ds)([ds[i] for i in range(n)])


def loaded(cfg, qa, split="train", **kw):
    return finetune.attach_model(finetune.load_split(cfg, split, **kw), qa)


def test_tvqa_segments_as_the_original():
    """prep_data.py's segments, derived by hand: 4.667-s segments, the first centred on the middle of ts
    rounded to 1/3 s, then -1, +1, -2, +2, ... segments (each end rounded to 1/3 s) while inside the clip."""
    seg = 4.6666667
    got = tvqa.merlot_segments((0.1, 1.9), 7, 11 / 3)               # a 4-s clip at 3 fps: 12 frames
    np.testing.assert_allclose(got, [(1 - seg / 2, 1 + seg / 2), (10 / 3, 8.0)], atol=1e-6)
    got = tvqa.merlot_segments((30.0, 32.2), 7, 60.0)                # mid 31.1 -> 31.0 (nearest 1/3 s: 93 / 3)
    want = sorted([(31 - seg / 2, 31 + seg / 2)] + [(x, x + 14 / 3) for x in
                  (24.0, 100 / 3, 58 / 3, 38.0, 44 / 3, 128 / 3)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert len(tvqa.merlot_segments((30.0, 32.2), 3, 60.0)) == 3


def manual_merlot_logits(model, inputs, ids):
    """Independent of MerlotQAModel.forward: per row, the model on raw frames with frame t at segment t + 1,
    the audio pass's k-th AUDIOSPAN taking clip k // 6, MASK found with list.index, seq -> proj."""
    from brainalign.models.merlot.model import PADDING as PAD

    b, a, _ = ids.shape
    T = inputs.audio.shape[1]
    out = np.zeros((b, 2, a))
    for i in range(b):
        x = inputs.frames[i: i + 1].float() / 255.0
        clips = inputs.audio[i].reshape(1, 3 * T, *inputs.audio.shape[3:])
        for k in range(a):
            passes = []
            row = [v for v, s in zip(inputs.audio_rows[i, k].tolist(), inputs.audio_seg[i, k].tolist()) if v != PAD]
            seg = inputs.audio_seg[i, k, :len(row)].tolist()
            n_audio = 0
            ptr = []
            for v in row:
                ptr.append(n_audio // 6 if v == AUDIOSPAN else -1)
                n_audio += v == AUDIOSPAN
            passes.append((row, seg, {"audio": clips, "audio_ptr": torch.tensor([ptr])}))
            trow = [v for v in ids[i, k].tolist() if v != PAD]
            passes.append((trow, inputs.text_seg[i, k, :len(trow)].tolist(), {}))
            for p, (r, sg, kw) in enumerate(passes):
                with torch.no_grad():
                    seq = model(tokens=torch.tensor([r]), token_segment=torch.tensor([sg]), frames=x,
                                vision_segment_offset=1, **kw)["seq"][0]
                    out[i, p, k] = float(seq[r.index(MASK)] @ model.proj.weight[0])
    return out


def test_tvqa_subtitles_whole_cues_by_midpoint(tmp_path):
    """prep_data.py: for each pysrt cue, mid = (start + end) / 2, pos = np.searchsorted(bounds, mid) over the
    segment starts + the last end (side left), kept when 0 < pos <= n, appended whole (its text lines joined
    by newlines); per segment ' '.join(texts), unidecode(ftfy(.)), newlines -> spaces. Written out here."""
    from brainalign.stimuli.transcript import read_srt_cues

    srt = tmp_path / "c.srt"
    srt.write_text("1\n00:00:00,500 --> 00:00:03,900\n<i>Ross:</i> We were\non a break!\n\n"   # mid 2.2 -> seg 0
                   "2\n00:00:04,000 --> 00:00:06,000\nIt\u2019s \u201cover\u201d\n\n"    # mid 5.0 = a start -> seg 0
                   "3\n00:00:04,100 --> 00:00:09,900\nCaf\u00e9 \u2014 now\n\n"             # mid 7.0 -> seg 1
                   "4\n00:00:20,000 --> 00:00:21,000\nlate\n\n"                               # mid 20.5: after
                   "5\n00:00:00,000 --> 00:00:00,400\nearly\n", encoding="utf-8")   # mid 0.2 < start 1
    segs = [(1.0, 5.0), (5.0, 9.0), (9.0, 13.0)]
    got = tvqa.segment_subtitles(read_srt_cues(srt), segs)
    assert got == ["<i>Ross:</i> We were on a break! It's \"over\"", "Cafe -- now", ""]


def test_merlot_rows_logits_and_mask_pooling(synth, merlot_ckpt, tmp_path):
    from brainalign.models.merlot.model import START
    from brainalign.models.merlot.spectrogram import tvqa_clips
    from brainalign.stimuli.audio import peak_normalise, read_audio

    cfg = merlot_cfg(tmp_path, synth, merlot_ckpt)
    cfg.windows.frames = 3                                   # not MERLOT's: the original always builds 7 segments
    qa = finetune.build_qa_model(cfg).eval()
    assert isinstance(qa, MerlotQAModel) and not hasattr(qa.model, "head") and not hasattr(qa.model, "span_encoder")
    assert qa.n_segments == 7
    ds = loaded(cfg, qa)
    it = ds.items[0]
    tok = word_level(MERLOT_SPECIAL, "<unk>")
    enc = lambda text: tok.encode(text).ids                              # noqa: E731
    # prep_data.py by hand for this 4-s clip (12 frames at 3 fps: max_time 11/3): ts mid rounded to 1/3 s,
    # [mid - 7/3, mid + 7/3], then one 14/3-s step left (ends < 0: skipped) and right ([10/3, 8]: kept, starts
    # before max_time), the next ones out of the clip; 2 real segments, padded to 7
    mid = round((it.ts[0] + it.ts[1]) / 2 * 3) / 3
    assert mid == 1.0
    segs = [(mid - 4.6666667 / 2, mid + 4.6666667 / 2), (10 / 3, 8.0)]
    inputs, rows, label = ds[0]
    # segment 0: "{start} to {end}" (in % of the segments' span) + START + question + "answer: " + answer, MASK
    t0, dur = segs[0][0], segs[-1][1] - segs[0][0]
    rel = f"{int((it.ts[0] - t0) / dur * 100)} to {int((it.ts[1] - t0) / dur * 100)}"
    # subtitles: each cue WHOLE by its midpoint (prep_data.py: searchsorted over the segment starts): the
    # clip's cues [0.2, 1.8] and [2.2, 3.8] have midpoints 1.0 and 3.0 < 10/3, so both are segment 1's text,
    # joined by a space, newlines as spaces (a word-centre rule would put the words of the second cue
    # after 3.33 s in segment 2)
    srt = (synth / "subtitles" / f"{it.vid_name}.srt").read_text().split("\n\n")
    cue_text = [b.strip().split("\n", 2)[2].replace("\n", " ") for b in srt if b.strip()]
    assert len(cue_text) == 2
    sub1 = enc(" ".join(cue_text))
    for a, row, seg, arow, aseg in zip(it.answers, rows, inputs.text_seg, inputs.audio_rows, inputs.audio_seg):
        option = enc(rel) + [START] + enc(it.question) + enc("answer: ") + enc(a) + [MASK]
        assert row == option + sub1
        assert seg == [0] * len(option) + [1] * len(sub1)
        arow_want = option + [AUDIOSPAN] * (18 * 7)
        assert arow == arow_want[:256] and aseg == ([0] * len(option) + [s for s in range(1, 8) for _ in range(18)])[:256]
    # frames: the middle of each segment, letterboxed (32 x 32 -> 16 x 16 in the 16 x 24 grid); segments
    # 3..7 do not exist: black frame, silent audio (speed column 1)
    assert inputs.frames.shape == (7, 16, 24, 3) and inputs.valid.tolist() == [True, True] + [False] * 5
    assert (inputs.frames[:, :, 16:] == 0).all() and inputs.frames[0, :, :16].mean() > 20
    assert (inputs.frames[2:] == 0).all() and (inputs.audio[2:, ..., :64] == 0).all()
    assert (inputs.audio[..., 64] == 1).all()
    # audio: the clip's wav at 22,620 Hz over its peak; segment 1 = samples [floor(sr t0), floor(sr t1))
    wave = peak_normalise(read_audio(tvqa.audio_path(synth, it.vid_name), 22620))
    i0, i1 = int(np.floor(22620 * segs[1][0])), int(np.floor(22620 * segs[1][1]))
    seg1 = np.zeros(i1 - i0, np.float32)
    seg1[: len(wave) - i0] = wave[i0:]
    np.testing.assert_allclose(inputs.audio[1], tvqa_clips(seg1), atol=1e-5)
    assert inputs.audio[1, ..., :64].max() > 1.0                         # real sound, not silence
    # logits: the model's own forward per row agrees; pooling at the MASK (rolling gives other logits)
    batch, ids, labels = first_batch(ds)
    with torch.no_grad():
        logits = qa(batch, ids)
    assert logits.shape == (3, 2, 5) and logits.dtype == torch.float32
    want = manual_merlot_logits(qa.model, batch, ids)
    np.testing.assert_allclose(logits.numpy(), want, rtol=1e-4, atol=1e-5)
    assert np.abs(want[:, 1] - np.roll(want[:, 1], 1, axis=1)).max() > 1e-4
    # the frames' rotary segment coordinate starts at 1 (the dummy first image's segment 0 is the query's)
    with torch.no_grad():
        emb = qa.model.embed_inputs(tokens=ids[:1, 0], token_segment=batch.text_seg[:1, 0],
                                    frames=batch.frames[:1].float() / 255, vision_segment_offset=1)
    vis_seg = (emb["coords"][0, ids.shape[-1]:, 2] * 16).tolist()
    assert vis_seg == [float(s) for s in range(1, 8) for _ in range(6)]


def test_merlot_proj_starts_as_the_original_trained_it(merlot_ckpt):
    """tvqa_finetune.py trains params['proj'] = np.random.randn(hsz, 1) * 0.01 (its Dense's normal(0.02)
    initialiser is never run: the loaded parameters are passed to the train state)."""
    w = MerlotQAModel.from_checkpoint(merlot_ckpt, seed=3).model.proj.weight.detach()
    assert w.shape == (1, 96)
    ws = torch.cat([MerlotQAModel.from_checkpoint(merlot_ckpt, seed=s).model.proj.weight.detach()
                    for s in range(30)]).reshape(-1).double()
    assert abs(ws.std().item() - 0.01) < 0.001 and abs(ws.mean().item()) < 0.001


def test_merlot_tvqa_needs_the_clip_audio(synth, merlot_ckpt, tmp_path):
    import shutil

    from brainalign.errors import DataError

    data = tmp_path / "noaudio"
    shutil.copytree(synth, data, ignore=shutil.ignore_patterns("audio"))
    cfg = merlot_cfg(tmp_path, data, merlot_ckpt)
    qa = finetune.build_qa_model(cfg)
    with pytest.raises(DataError, match=r"TVQA clip synth_train_00000: no audio file .*audio/synth_train_00000.mp3"):
        loaded(cfg, qa)[0]
    cfg.windows.frames = 8                                   # the tiny/hf frame count: MERLOT takes 7 segments
    assert finetune.build_qa_model(cfg).n_segments == 7


def test_two_pass_loss_is_the_sum_of_the_single_pass_losses():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 2, 5)) * 2
    labels = rng.integers(0, 5, 6)

    def ce(z):      # numpy float64 cross-entropy, mean over the batch
        lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
        return float(np.mean(lse - z[np.arange(len(z)), labels]))

    got = qa_loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels))
    assert got.item() == pytest.approx(ce(logits[:, 0]) + ce(logits[:, 1]), rel=1e-5)
    assert qa_loss(torch.tensor(logits[:, 1], dtype=torch.float32), torch.tensor(labels)).item() == \
        pytest.approx(ce(logits[:, 1]), rel=1e-5)
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_array_equal(qa_predict(torch.tensor(logits)).numpy(), soft.sum(1).argmax(1))


def merlot_stimuli():
    """Three 1.5-s windows as MERLOT's loader gives them (one 16 x 24 frame per segment, 22,050 Hz audio)."""
    from brainalign.stimuli.episode import EpisodeStimuli
    from brainalign.stimuli.transcript import Word

    rng = np.random.default_rng(1)
    ends = np.array([6.0, 7.5, 9.0])
    words = [Word(w, t, 0.2) for w, t in [("ross", 4.8), ("red", 5.5), ("okay", 7.7), ("blue", 8.2), ("coffee", 8.6)]]
    return EpisodeStimuli("ep", 1.5, np.stack([ends - 1.5, ends], 1),
                          rng.integers(0, 256, (3, 1, 16, 24, 3), dtype=np.uint8), [[]] * 3,
                          np.zeros((3, 0), np.float32), 22050,
                          waveform=(0.1 * rng.standard_normal(10 * 22050)).astype(np.float32), transcript=words)


def encode_all(bb, stim):
    return bb.encode(stim, slice(None), "joint")


def test_merlot_finetune_learns_and_saves_a_loadable_checkpoint(synth, merlot_ckpt, tmp_path):
    cfg = merlot_cfg(tmp_path, synth, merlot_ckpt)
    path = finetune.run_finetune(cfg)
    metrics = json.loads((cfg.out / "finetune" / "metrics.json").read_text())
    losses = [e["train_loss"] for e in metrics["epochs"]]
    assert losses[-1] < losses[0], losses
    assert metrics["backbone"] == "merlot_reserve"
    payload = read_converted(path)
    assert payload["config"]["qa_head"] and "proj.weight" in payload["state_dict"]
    assert payload["tokenizer_json"] == read_converted(merlot_ckpt)["tokenizer_json"]
    # the fine-tuned proj is kept: a QA model from the saved file scores like the trained one
    qa = MerlotQAModel.from_checkpoint(path).eval()
    state = torch.load(cfg.out / "finetune" / "checkpoint.pt", weights_only=True)["model"]
    torch.testing.assert_close(qa.model.proj.weight, state["model.proj.weight"])
    # extraction through the registry: the pre-trained and fine-tuned weights give different features
    stim = merlot_stimuli()
    pre = get_backbone(cfg.model, cfg.windows)
    cfg.model.checkpoint = str(path)
    post = get_backbone(cfg.model, cfg.windows)
    a, b = encode_all(pre, stim), encode_all(post, stim)
    assert a.shape == b.shape == (2, 3, 96) and torch.isfinite(b).all()
    assert (a - b).abs().max() > 1e-3


def test_build_qa_model_errors(tmp_path, synth):
    cfg = merlot_cfg(tmp_path, synth, None)
    with pytest.raises(ConfigError, match="model.checkpoint: fine-tuning merlot_reserve needs"):
        finetune.build_qa_model(cfg)
    cfg.model.backbone = "nope"
    with pytest.raises(ConfigError, match="model.backbone: finetune supports tiny, merlot_reserve, hf, not 'nope'"):
        finetune.build_qa_model(cfg)


# ---- Hugging Face GIT ------------------------------------------------------------------------------

HF_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def git_ckpt(tmp_path_factory):
    """A save_pretrained directory of a tiny random GIT (2 frames) + WordLevel tokenizer + CLIP processor."""
    transformers = pytest.importorskip("transformers")
    tok = word_level(HF_SPECIAL, "[UNK]")
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                                  special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    cfg = transformers.GitConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, num_image_with_embedding=FRAMES, pad_token_id=0, bos_token_id=2,
        eos_token_id=3)
    torch.manual_seed(0)
    model = transformers.GitForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.git.img_temporal_embedding:
            p.normal_()
    path = tmp_path_factory.mktemp("git") / "pretrained"
    model.save_pretrained(path)
    fast.save_pretrained(path)
    transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
                                    ).save_pretrained(path)
    return path


def test_git_head_logits_match_a_per_row_forward(synth, git_ckpt, tmp_path):
    cfg = merlot_cfg(tmp_path, synth, git_ckpt)
    cfg.model.backbone = "hf"
    qa = finetune.build_qa_model(cfg).eval()
    ds = finetune.load_split(cfg, "train")
    ds.set_encoder(qa.encode_answers, qa.pad_id)
    frames, ids, _ = first_batch(ds)
    with torch.no_grad():
        logits = qa(frames, ids)
        assert logits.shape == (3, 5) and logits.dtype == torch.float32
        pv = qa.hf.pixel_values(frames.numpy())
        for i in range(3):
            for k in range(5):
                row = [v for v in ids[i, k].tolist() if v != qa.pad_id]
                h = qa.hf.core(input_ids=torch.tensor([row]), pixel_values=pv[i: i + 1]).last_hidden_state[0]
                assert h.shape[0] == FRAMES * qa.hf.tokens_per_frame + len(row)
                want = float(h.mean(0) @ qa.head.weight[0] + qa.head.bias[0])
                assert logits[i, k].item() == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_git_finetune_learns_and_saves_a_loadable_directory(synth, git_ckpt, tmp_path):
    cfg = merlot_cfg(tmp_path, synth, git_ckpt, lr=3e-3)
    cfg.model.backbone = "hf"
    path = finetune.run_finetune(cfg)
    assert path == cfg.out / "finetune" / "model" and (path / "config.json").is_file()
    losses = [e["train_loss"] for e in json.loads((cfg.out / "finetune" / "metrics.json").read_text())["epochs"]]
    assert losses[-1] < losses[0], losses
    head = torch.load(cfg.out / "finetune" / "qa_head.pt", weights_only=True)
    assert head["weight"].shape == (1, 32)
    stim = synthetic_stimuli("ep", n_windows=3, frames=FRAMES, image_size=SIZE, audio_rate=16000, seed=1)
    stim.words = [["ross", "red"], [], ["okay", "blue", "coffee"]]
    pre = get_backbone(cfg.model, cfg.windows)
    cfg.model.checkpoint = str(path)
    post = get_backbone(cfg.model, cfg.windows)
    a, b = encode_all(pre, stim), encode_all(post, stim)
    assert a.shape == b.shape == (2, 3, 32) and torch.isfinite(b).all()
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("backbone", ["merlot_reserve", "hf"])
@pytest.mark.parametrize("use_frames", [True, False])
def test_every_trained_parameter_gets_a_gradient(synth, merlot_ckpt, git_ckpt, tmp_path, backbone, use_frames):
    """What DistributedDataParallel needs: no trainable parameter is left out of the loss."""
    cfg = merlot_cfg(tmp_path, synth, merlot_ckpt if backbone == "merlot_reserve" else git_ckpt)
    cfg.model.backbone = backbone
    qa = finetune.build_qa_model(cfg)
    ds = loaded(cfg, qa, use_frames=use_frames)
    if not use_frames:
        qa.freeze_vision()
    frames, ids, labels = first_batch(ds, 2)
    qa_loss(qa(frames, ids), labels).backward()
    trained = [(n, p) for n, p in qa.named_parameters() if p.requires_grad]
    assert len(trained) > 10
    assert [n for n, p in trained if p.grad is None] == []


def test_git_rows_cut_subtitles_first(synth, git_ckpt, tmp_path):
    cfg = merlot_cfg(tmp_path, synth, git_ckpt)
    cfg.model.backbone = "hf"
    qa = finetune.build_qa_model(cfg)
    vocab = qa.hf.tokenizer.get_vocab()
    sub, q, a = ["okay", "red", "coffee", "so"], ["which", "colour"], ["blue"]
    full = qa.encode_answers(sub, q, [a])[0]
    assert full == [2] + [vocab[w] for w in sub + q + a] + [3]          # [CLS] words [SEP]
    qa.hf.max_text = 6
    assert qa.encode_answers(sub, q, [a])[0] == [2] + [vocab[w] for w in sub[:1] + q + a] + [3]
    qa.hf.max_text = 4
    assert qa.encode_answers(sub, q, [a])[0] == [2] + [vocab[w] for w in q[1:] + a] + [3]


def test_merlot_rows_keep_their_head(synth, merlot_ckpt, tmp_path, monkeypatch):
    """As preprocess_tvqa: the option (ts + question + answer) is cut to 255 tokens keeping its head, then
    MASK; the whole row is cut to 256 keeping its head (subtitles at the end go first)."""
    from brainalign import finetune_heads

    cfg = merlot_cfg(tmp_path, synth, merlot_ckpt)
    qa = finetune.build_qa_model(cfg)
    ds = loaded(cfg, qa)
    full = ds[0][1][0]
    m = full.index(MASK)
    monkeypatch.setattr(finetune_heads, "TVQA_SLOTS", m + 3)
    inputs, rows = qa.item_inputs(ds, ds.items[0])
    assert rows[0] == full[: m + 3] and inputs.audio_rows[0] == full[: m + 1] + [AUDIOSPAN] * 2
    monkeypatch.setattr(finetune_heads, "TVQA_SLOTS", 5)
    inputs, rows = qa.item_inputs(ds, ds.items[0])
    assert rows[0] == full[:4] + [MASK] and inputs.text_seg[0] == [0] * 5


def test_merlot_two_ranks_match_one(synth, merlot_ckpt, tmp_path):
    """DistributedDataParallel (2 gloo processes) trains the MERLOT head like one process."""
    hist = {}
    for n in (1, 2):
        cfg = merlot_cfg(tmp_path / f"r{n}", synth, merlot_ckpt, epochs=1)
        if n == 1:
            finetune.run_finetune(cfg)
        else:
            finetune.run_finetune_spawn(cfg, 2)
        hist[n] = json.loads((cfg.out / "finetune" / "metrics.json").read_text())["epochs"][0]
    for k in ("train_loss", "val_loss", "val_accuracy"):
        assert hist[2][k] == pytest.approx(hist[1][k], rel=1e-4, abs=1e-6), k


@pytest.mark.parametrize("backbone,lr", [("merlot_reserve", 5e-4), ("hf", 1e-2)])
def test_a_few_steps_fit_a_batch(synth, merlot_ckpt, git_ckpt, tmp_path, backbone, lr):
    """The head + backbone can fit: 15 AdamW steps on one batch of 4 questions cut its loss by over a quarter
    (eval mode: GIT's dropout off, so the steps are deterministic)."""
    cfg = merlot_cfg(tmp_path, synth, merlot_ckpt if backbone == "merlot_reserve" else git_ckpt)
    cfg.model.backbone = backbone
    qa = finetune.build_qa_model(cfg).eval()
    ds = loaded(cfg, qa)
    frames, ids, labels = first_batch(ds, 4)
    opt = torch.optim.AdamW([p for p in qa.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(15):
        loss = qa_loss(qa(frames, ids), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
