"""MERLOT Reserve sees what it saw in pre-training (issue 15): every input rule against a reference that is
not our code -- frames against PIL on letter-boxed, non-square frames; the spectrogram and its clips against
librosa with the original's parameters; the sequence layout against token / segment / pointer arrays derived
by hand from the original's rules (mreserve/preprocess.py, pretrain/dataloader.py) for known words and
timings; each condition's invariants; truncation, grids."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import wavfile

from brainalign.config import parse_config
from brainalign.errors import ConfigError, DataError
from brainalign.models.merlot import layout
from brainalign.models.merlot.backbone import MerlotBackbone
from brainalign.models.merlot.model import AUDIOSPAN, MASK, MerlotConfig, build_model
from brainalign.models.merlot.spectrogram import log_mel, segment_clips
from brainalign.stimuli.episode import EpisodeStimuli
from brainalign.stimuli.frames import content_box, letterbox
from brainalign.stimuli.transcript import Word

TINY = dict(hidden_size=96, size_per_head=48, rotary_hsize=32, vocab_size=64, joint_num_layers=2,
            vit_num_layers=1, audio_num_layers=1, span_num_layers=1, vit_patch_size=4, output_grid=(4, 6),
            audio_seq_length=60, audio_token_length=6, audio_patch_size=2, num_mels=64)
VOCAB = {w: 10 + i for i, w in enumerate("a b c d we were on break late early hello there".split())}
CONDITIONS = ("joint", "no_vision", "no_language", "no_audio", "vision_only", "language_only")


def word_ids(text):
    return [VOCAB[w] for w in text.split()]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return MerlotBackbone(build_model(MerlotConfig(**TINY)), word_ids)


# ---------------------------------------------------------------------------------------------- 1. frames
def pil_letterbox(img, box, fitted, size):
    """Independent reference: crop, PIL bilinear resize of each float channel to the hand-derived size,
    paste top-left on a zero canvas."""
    y1, y2, x1, x2 = box
    crop = img[y1:y2, x1:x2].astype(np.float32) / 255.0
    sh, sw = fitted
    chans = [np.asarray(Image.fromarray(crop[..., c], mode="F").resize((sw, sh), Image.BILINEAR)) for c in range(3)]
    out = np.zeros((*size, 3), np.float32)
    out[:sh, :sw] = np.clip(np.stack(chans, -1), 0, 1)
    return np.round(out * 255)


def content(rng, h, w):
    return rng.integers(40, 256, (h, w, 3)).astype(np.uint8)


@pytest.mark.parametrize("case", ["letterbox", "pillarbox", "capped", "black"])
def test_frames_trim_resize_pad_match_pil(case):
    rng = np.random.default_rng(0)
    if case == "letterbox":            # 720x480 with 60-row bars: content 360 x 720 -> 160 x 320, padded below
        img = np.zeros((480, 720, 3), np.uint8)
        img[60:420] = content(rng, 360, 720)
        box, fitted = (60, 420, 0, 720), (160, 320)
    elif case == "pillarbox":          # 640x480 with 80-column bars: content 480 x 480 -> 192 x 192, padded right
        img = np.zeros((480, 640, 3), np.uint8)
        img[:, 80:560] = content(rng, 480, 480)
        box, fitted = (0, 480, 80, 560), (192, 192)
    elif case == "capped":             # bars of 150 rows (37 %): at most 20 % (80 rows) trimmed per side
        img = np.zeros((400, 400, 3), np.uint8)
        img[150:250] = content(rng, 100, 400)
        img[150, 5] = [31, 31, 31]     # below the threshold 32: not content
        box, fitted = (80, 320, 0, 400), (192, 320)
    else:                              # nothing reaches 32: the original keeps the middle (rows [h/2]) -> 20 % off
        img = np.full((100, 200, 3), 20, np.uint8)
        box, fitted = (20, 80, 40, 160), (160, 320)
    assert content_box(img.max(-1)) == box
    got = letterbox(img, (192, 320), box)
    assert got.shape == (192, 320, 3) and got.dtype == np.uint8
    want = pil_letterbox(img, box, fitted, (192, 320))
    assert np.abs(got.astype(np.float64) - want).max() <= 1.0
    assert (got[fitted[0]:] == 0).all() and (got[:, fitted[1]:] == 0).all()


def test_frames_through_the_video_decoder(tmp_path):
    """sample_frames_letterboxed on an h264 file: one crop for all requested frames (from their per-pixel
    maximum), each frame = the PIL reference of the decoded source frame."""
    import av

    from brainalign.stimuli.video import sample_frames_letterboxed

    rng = np.random.default_rng(1)
    frames = []
    for i in range(6):                  # 160x96 source, bars of 16 rows; content moves but stays inside
        img = np.zeros((96, 160, 3), np.uint8)
        img[16:80] = np.clip(content(rng, 64, 160).astype(int) // 2 + 20 * i, 0, 255)
        frames.append(img)
    path = tmp_path / "lb.mp4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=2)
        vs.width, vs.height, vs.pix_fmt, vs.options = 160, 96, "yuv444p", {"crf": "0"}
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            c.mux(vs.encode(f))
        c.mux(vs.encode())
    decoded = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            decoded.append(f.to_ndarray(format="rgb24"))
    times = np.array([0.25, 1.75, 2.9])             # frames 0, 3, 5 at 2 fps
    out, box = sample_frames_letterboxed(path, times, (48, 64))
    picked = [decoded[0], decoded[3], decoded[5]]
    has = np.stack(picked).max(axis=(0, -1)) >= 32            # the original's rule, on the decoded frames
    rows, cols = np.flatnonzero(has.any(1)), np.flatnonzero(has.any(0))
    want_box = (min(rows[0], int(96 * .2)), max(rows[-1] + 1, int(96 * .8)),
                min(cols[0], int(160 * .2)), max(cols[-1] + 1, int(160 * .8)))
    assert box == want_box and box[0] >= 14 and box[1] <= 82
    h, w = box[1] - box[0], box[3] - box[2]
    fitted = (int(h * min(48 / h, 64 / w)), int(w * min(48 / h, 64 / w)))
    for got, src in zip(out, picked):
        assert np.abs(got.astype(float) - pil_letterbox(src, box, fitted, (48, 64))).max() <= 1.0


# --------------------------------------------------------------------------------------------- 4. audio
LIBROSA = dict(sr=22050, n_mels=64, n_fft=1536, hop_length=588, fmin=20.0, fmax=11025.0, center=True,
               pad_mode="reflect")       # make_spectrogram's parameters; librosa 0.8 padded by reflection


def librosa_log_mel(wave):
    librosa = pytest.importorskip("librosa")
    import scipy.signal

    mel = librosa.feature.melspectrogram(y=np.asarray(wave, np.float32), window=scipy.signal.windows.hann,
                                         **LIBROSA)
    return (np.log(mel + 0.1) - np.log(0.1)).T


def test_spectrogram_matches_librosa_with_the_original_parameters():
    rng = np.random.default_rng(0)
    t = np.arange(110250) / 22050
    wave = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 6000 * t * (1 + t / 10))
            + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ours, ref = log_mel(wave), librosa_log_mel(wave)
    assert ours.shape == ref.shape == (188, 64)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-4)
    assert np.abs(log_mel(np.zeros(5000))).max() == 0.0           # silence -> 0


def test_clips_at_the_original_offsets_match_librosa():
    """A 5-s segment of a longer file: clips = frames [2:62], [64:124], [126:186] of the segment's own
    librosa spectrogram (make_spectrogram, pad_size 2) -- not [0:60], which holds reflect-padded frames."""
    rng = np.random.default_rng(2)
    wave = (0.3 * rng.standard_normal(22050 * 9)).astype(np.float32)
    start = 2.3
    seg = wave[int(22050 * start): int(22050 * (start + 5.0))]
    ref = librosa_log_mel(seg)
    clips = segment_clips(wave, 22050, start)
    assert clips.shape == (3, 60, 65) and (clips[..., 64] == 1).all()
    for r, a in enumerate((2, 64, 126)):
        np.testing.assert_allclose(clips[r, :, :64], ref[a:a + 60], rtol=1e-4, atol=2e-4)
    assert np.abs(clips[0, :, :64] - ref[0:60]).max() > 0.1            # the port's old [0:60] differs
    # before t = 0 the file is silent: a segment starting at -3 s is zeros there, the file after
    early = segment_clips(wave, 22050, -3.0)
    assert np.abs(early[0, :, :64]).max() == 0.0
    np.testing.assert_allclose(early[2, 30:, :64], librosa_log_mel(np.concatenate(
        [np.zeros(3 * 22050, np.float32), wave[:2 * 22050]]))[126 + 30:186], rtol=1e-4, atol=2e-4)


def write_episode(root, rate=22050, peak=0.74, seconds=12.0, size=(60, 80)):
    """ep.mp4 (letter-boxed 80x60 frames: bars of 10 rows; frame brightness codes its time), ep.wav
    (a tone of peak ``peak`` at ``rate``), ep.tsv (words of known timings)."""
    import av

    st = root / "stimuli"
    st.mkdir(parents=True, exist_ok=True)
    with av.open(str(st / "ep.mp4"), "w") as c:
        vs = c.add_stream("libx264", rate=4)
        vs.width, vs.height, vs.pix_fmt, vs.options = size[1], size[0], "yuv444p", {"crf": "0"}
        for i in range(int(seconds * 4)):
            img = np.zeros((*size, 3), np.uint8)
            img[10:-10] = 40 + 4 * i
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            c.mux(vs.encode(f))
        c.mux(vs.encode())
    t = np.arange(int(seconds * rate)) / rate
    wavfile.write(st / "ep.wav", rate, (peak * np.sin(2 * np.pi * 300 * t) * np.minimum(1, t)).astype(np.float32))
    words = [("we", 5.2, .3), ("were", 6.9, .4), ("on", 8.5, .2), ("a", 9.0, .1), ("break", 9.7, .5)]
    (st / "ep.tsv").write_text("word\tonset\tduration\n" + "".join(f"{w}\t{o}\t{d}\n" for w, o, d in words))
    return parse_config({"data": {"root": str(root), "episodes": ["ep", "x", "y"], "bold": {"tr": 1.25}},
                         "windows": {"image_size": 8, "audio_rate": 16000}})


def test_loader_gives_merlot_its_frames_and_audio(tmp_path, backbone, caplog):
    from brainalign.stimuli.windows import load_episode_stimuli

    cfg = write_episode(tmp_path, rate=16000)
    with caplog.at_level("WARNING"):
        st = load_episode_stimuli(cfg, "ep", backbone.stimulus_spec)
    assert "band-limited: stored at 16000 Hz" in caplog.text        # warned, then decoded at 22,050 Hz
    assert st.audio_rate == 22050 and abs(len(st.waveform) - 12 * 22050) <= 1
    assert abs(np.abs(st.waveform).max() - 1.0) < 1e-3                # whole-file peak normalisation
    # one frame per 5-s segment, at its middle: window i ends at 1.25 (i + 1), its segment starts 5 s before
    ends = 1.25 * np.arange(1, st.n_windows + 1)
    np.testing.assert_allclose(st.frame_times[:, 0], np.clip(ends - 2.5, 0, None))
    assert st.frames.shape == (st.n_windows, 1, 16, 24, 3)
    # 60 x 80 with 10-row bars -> crop 40 x 80 -> 12 x 24 in the 16 x 24 grid, zero rows below
    assert (st.frames[:, :, 12:] == 0).all() and (st.frames[:, :, :12] > 0).all()
    k = int(np.searchsorted(ends, 9.0))
    shown = int(np.floor(st.frame_times[k, 0] * 4))                   # the frame's code: 40 + 4 i
    assert abs(int(st.frames[k, 0, 5, 5, 0]) - (40 + 4 * shown)) <= 2
    assert st.audio.shape == (st.n_windows, 0)                        # per-window audio not needed


def test_peak_normalisation_is_what_the_clips_see(tmp_path, backbone):
    from brainalign.stimuli.windows import load_episode_stimuli

    cfg = write_episode(tmp_path, peak=0.74)
    st = load_episode_stimuli(cfg, "ep", backbone.stimulus_spec)
    raw = wavfile.read(tmp_path / "stimuli" / "ep.wav")[1]
    np.testing.assert_allclose(st.waveform, raw / np.abs(raw).max(), atol=1e-6)
    plan = layout.plan_windows(st.windows)
    i = 7                                                            # window [7.5, 8.75): segment [3.75, 8.75)
    clips = backbone.clips(st, i, plan)
    assert plan.n_context == 2 and clips.shape == (2, 60, 65)
    ref = librosa_log_mel((raw / np.abs(raw).max())[int(22050 * 3.75): int(22050 * 8.75)])
    np.testing.assert_allclose(clips[0, :, :64], ref[2:62], rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(clips[1, :, :64], ref[64:124], rtol=1e-4, atol=2e-4)
    unnormalised = librosa_log_mel(raw[int(22050 * 3.75): int(22050 * 8.75)])
    assert np.abs(unnormalised[2:62] - clips[0, :, :64]).max() > 0.2          # log-mel is not scale-invariant


# ------------------------------------------------------------------------------------- 2. sequence layout
def stimuli_for(windows, transcript, n_seg, seconds=30.0, seed=0):
    rng = np.random.default_rng(seed)
    n = len(windows)
    return EpisodeStimuli("ep", 1.49, np.asarray(windows, np.float64),
                          rng.integers(0, 256, (n, n_seg, 16, 24, 3), dtype=np.uint8), [[] for _ in range(n)],
                          np.zeros((n, 0), np.float32), 22050,
                          waveform=(0.1 * rng.standard_normal(int(seconds * 22050))).astype(np.float32),
                          transcript=[Word(w, o, d) for w, o, d in transcript])


TR_WORDS = [("early", 4.9, .2), ("we", 5.2, .3), ("were", 6.9, .4), ("on", 8.5, .2), ("a", 9.0, .1),
            ("break", 9.7, .5), ("late", 10.2, .2)]


def test_layout_of_a_tr_window_by_hand(backbone):
    """Window [8.51, 10) (a 1.49-s TR): one 5-s segment [5, 10), clips centred 0.853 / 2.507 / 4.160 s in it.
    Word centres 5.35 -> sub 0; 7.1 -> sub 1; 8.6, 9.05, 9.95 -> sub 2 (the target); 'early' (onset 4.9)
    and 'late' (10.2) lie outside the segment."""
    plan = layout.plan_window(1.49)
    assert (plan.n_target, plan.n_segments, plan.n_context) == (1, 1, 2)
    np.testing.assert_allclose(layout.clip_centres(), [32 * 588 / 22050, 94 * 588 / 22050, 156 * 588 / 22050])
    st = stimuli_for([[8.51, 10.0]], TR_WORDS, 1)
    assert layout.subsegment_words(st.transcript, 10.0, plan) == [["we"], ["were"], ["on", "a", "break"]]
    want = {   # condition: (tokens, audio_ptr, pooled)
        "joint": ([5] * 12 + word_ids("on a break"), [0] * 6 + [1] * 6 + [-1] * 3, [0] * 12 + [1] * 3),
        "no_vision": ([5] * 12 + word_ids("on a break"), [0] * 6 + [1] * 6 + [-1] * 3, [0] * 12 + [1] * 3),
        "no_audio": (word_ids("we were on a break"), [-1] * 5, [0, 0, 1, 1, 1]),
        "language_only": (word_ids("we were on a break"), [-1] * 5, [0, 0, 1, 1, 1]),
        "no_language": ([5] * 12 + [MASK], [0] * 6 + [1] * 6 + [-1], [0] * 12 + [1]),
        "vision_only": ([MASK], [-1], [1]),
    }
    for c, (tok, ptr, pooled) in want.items():
        batch, vis, aud = backbone.prepare(st, [0], c)
        assert batch.tokens[0].tolist() == tok, c
        assert batch.token_segment[0].tolist() == [0] * len(tok), c
        assert batch.audio_ptr[0].tolist() == ptr, c
        assert batch.pooled[0].long().tolist() == pooled, c
        assert (vis is None) == (c in ("no_vision", "language_only")), c
        assert (aud is None) == (c in ("no_audio", "vision_only", "language_only")), c
        if aud is not None:
            assert aud.shape == (1, 2, 6, 96)
        if vis is not None:
            assert vis.shape == (1, 1 * 2 * 3, 96)       # one frame (segment 0), 2 x 3 pooled patches


def test_layout_of_a_window_spanning_segments_by_hand(backbone):
    """A 5-s window [15, 20): 3 target sub-segments -> 2 segments [10, 15), [15, 20); the first (context)
    has segment index 0, the window's own sub-segments segment index 1; frames at 12.5 s and 17.5 s."""
    words = [("a", 10.3, .2), ("b", 12.4, .2), ("c", 16.0, .2), ("d", 19.5, .3)]
    plan = layout.plan_window(5.0)
    assert (plan.n_target, plan.n_segments) == (3, 2)
    np.testing.assert_allclose(layout.frame_times(np.array([[15.0, 20.0]])), [[12.5, 17.5]])
    st = stimuli_for([[15.0, 20.0]], words, 2)
    assert layout.subsegment_words(st.transcript, 20.0, plan) == [["a"], ["b"], [], ["c"], [], ["d"]]
    batch, vis, aud = backbone.prepare(st, [0], "joint")
    assert batch.tokens[0].tolist() == [5] * 18 + word_ids("c d")
    assert batch.token_segment[0].tolist() == [0] * 18 + [1, 1]
    assert batch.audio_ptr[0].tolist() == [0] * 6 + [1] * 6 + [2] * 6 + [-1, -1]
    assert batch.pooled[0].tolist() == [False] * 18 + [True, True]
    assert aud.shape == (1, 3, 6, 96) and vis.shape == (1, 2 * 6, 96)
    b2, _, _ = backbone.prepare(st, [0], "no_audio")
    assert b2.tokens[0].tolist() == word_ids("a b c d") and b2.token_segment[0].tolist() == [0, 0, 1, 1]
    b3, _, _ = backbone.prepare(st, [0], "no_language")
    assert b3.tokens[0].tolist() == [5] * 18 + [MASK] * 3
    assert b3.token_segment[0].tolist() == [0] * 18 + [1] * 3
    # the joint transformer's rotary coordinates: segment / 16 for slots and for frame g's tokens
    emb = backbone.model.embed_inputs(tokens=batch.tokens.cpu(), token_segment=batch.token_segment.cpu(),
                                      audio_ptr=batch.audio_ptr.cpu(), audio_tokens=aud.cpu(),
                                      vision_tokens=vis.cpu())
    seg = emb["coords"][0, :, 2] * 16
    assert seg.tolist() == [0.0] * 18 + [1.0, 1.0] + [0.0] * 6 + [1.0] * 6
    assert (emb["coords"][0, :20, 3] * 1024).tolist() == list(range(1, 21))


def test_more_than_eight_segments_is_refused():
    assert layout.plan_window(39.0).n_segments == 8
    with pytest.raises(ConfigError) as e:
        layout.plan_window(40.0)
    msg = str(e.value)
    assert msg.startswith("windows.context: 40 s") and "at most 8" in msg and "\n" not in msg


# ------------------------------------------------------------------------------------------ 3. conditions
def random_transcript(rng, seconds):
    t, out = 0.0, []
    while t < seconds:
        t += rng.exponential(0.35)
        out.append((str(rng.choice(list(VOCAB))), t, float(rng.uniform(0.05, 0.4))))
    return out


@pytest.mark.parametrize("context", [1.49, 5.0, 12.0])
def test_condition_invariants(backbone, context):
    """In every condition each sub-segment is in ONE form -- its text, its 6 AUDIOSPAN slots or one MASK --
    (pre-training never shows a span's text and its audio together, nor a run of MASKs); the pooled slots
    are the window's own sub-segments; the conditions differ from joint only where they should."""
    rng = np.random.default_rng(int(context * 10))
    ends = np.array([14.0, 17.3, 21.0, 24.5])
    plan = layout.plan_window(context)
    st = stimuli_for(np.stack([ends - context, ends], 1), random_transcript(rng, 30), plan.n_segments, seed=3)
    for c in CONDITIONS:
        rows = backbone.window_rows(st, np.arange(4), c, plan)
        for b, r in enumerate(rows):
            words = layout.subsegment_words(st.transcript, float(ends[b]), plan)
            for j in range(plan.n_sub):
                toks = [t for t, s in zip(r.tokens, r.subseg) if s == j]
                kinds = {"audio" if t == AUDIOSPAN else "mask" if t == MASK else "text" for t in toks}
                assert len(kinds) <= 1, (c, j, toks)
                if "audio" in kinds:
                    assert toks == [AUDIOSPAN] * 6
                if "mask" in kinds:
                    assert toks == [MASK]
                target = j >= plan.n_context
                assert all(p == target for p, s in zip(r.pooled, r.subseg) if s == j)
                if target and c in ("no_language", "vision_only"):
                    assert toks == [MASK]
                if target and c not in ("no_language", "vision_only") and words[j]:
                    assert toks == word_ids(" ".join(words[j]))
                if not target:
                    want = {"joint": "audio", "no_vision": "audio", "no_language": "audio",
                            "no_audio": "text", "language_only": "text", "vision_only": None}[c]
                    assert kinds <= ({want} if want else set()), (c, j, kinds)
            assert r.subseg == sorted(r.subseg)                  # time order
            assert any(r.pooled)
    feats = {c: backbone.encode(st, slice(None), c) for c in CONDITIONS}
    for c, v in feats.items():
        assert v.shape == (2, 4, 96) and torch.isfinite(v).all(), c
        if c != "joint":
            assert (v - feats["joint"]).abs().max() > 1e-4, c


def test_pooled_feature_is_the_mean_over_the_target_slots(backbone):
    st = stimuli_for([[8.51, 10.0], [9.0, 10.49]], TR_WORDS, 1)
    got = backbone.encode(st, slice(None), "joint")
    batch, vis, aud = backbone.prepare(st, slice(None), "joint")
    with torch.no_grad():
        hs = backbone.model(tokens=batch.tokens, token_segment=batch.token_segment, audio_ptr=batch.audio_ptr,
                            vision_tokens=vis, audio_tokens=aud)["hidden_states"]
    for b in range(2):
        idx = [i for i, p in enumerate(batch.pooled[b].tolist()) if p]
        torch.testing.assert_close(got[:, b], hs[:, b, idx].mean(1), rtol=1e-5, atol=1e-5)
    # one window at a time gives the same vector (padding is masked)
    torch.testing.assert_close(backbone.encode(st, [1], "joint")[:, 0], got[:, 1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- 5. truncation and grids
def test_truncation_keeps_the_head():
    plan = layout.plan_window(1.49)
    words = [["a"] * 100, ["b"] * 100, ["c"] * 100]
    r = layout.window_tokens(words, plan, "no_audio", word_ids)
    assert len(r.tokens) == 160 and r.truncated == 140
    assert r.tokens == [VOCAB["a"]] * 100 + [VOCAB["b"]] * 60 and not any(r.pooled)
    r = layout.window_tokens([["a"] * 60, [], ["c"] * 150], plan, "joint", word_ids)
    assert r.tokens == [AUDIOSPAN] * 12 + [VOCAB["c"]] * 148 and r.truncated == 2


def test_all_target_slots_cut_is_an_error(backbone):
    words = [("a", 5.0 + 0.01 * k, 0.005) for k in range(170)] + [("b", 9.5, 0.1)]
    st = stimuli_for([[8.51, 10.0]], words, 1)
    with pytest.raises(DataError, match=r"window 0 \(no_audio\): the 160-slot limit cut every slot"):
        backbone.encode(st, [0], "no_audio")


def test_resadapt_checkpoints_need_their_grid(tmp_path):
    from brainalign.models.merlot import flaxmsgpack
    from brainalign.models.merlot.convert import convert, main as convert_main
    from test_merlot import NON_PARAM, flax_tree, random_maker

    cfg = MerlotConfig(**{**TINY, "num_mels": 8, "audio_seq_length": 12, "audio_token_length": 2})
    src = tmp_path / "base_resadapt"
    src.write_bytes(flaxmsgpack.serialize({"params": flax_tree(cfg, random_maker(0))}))
    extra = {k: v for k, v in NON_PARAM.items() if k != "output_grid"}
    with pytest.raises(DataError, match=r"base_resadapt: a resolution-adapted checkpoint must be converted with "
                                        r"--grid \(18 32 or 24 24"):
        convert(src, tmp_path / "x.pt", **extra)
    with pytest.raises(DataError, match=r"grid \(12, 20\) is not one a resolution-adapted checkpoint"):
        convert(src, tmp_path / "x.pt", output_grid=(12, 20), **extra)
    assert convert_main([str(src), str(tmp_path / "x.pt"), "--audio-seq-length", "12",
                         "--audio-token-length", "2"]) == 2
    assert not (tmp_path / "x.pt").exists()
    from brainalign.models.merlot.convert import load_converted
    model = load_converted(convert(src, tmp_path / "ok.pt", output_grid=(18, 32), **extra))
    assert model.cfg.output_grid == (18, 32) and model.cfg.image_size == (72, 128)
    assert math.prod(model.cfg.pooled_grid) == 9 * 16


def test_encoder_cache_follows_the_stimuli_object(backbone, monkeypatch):
    """The per-episode encoder cache belongs to one stimuli object: a new one with the same episode name and
    window count at a freed one's address gets its own frames and clips encoded. (Address reuse is made
    certain here: id() answers 0 for every object inside the backbone's module.)"""
    from brainalign.models.merlot import backbone as module

    monkeypatch.setattr(module, "id", lambda obj: 0, raising=False)
    for seed in range(3):
        st = stimuli_for([[8.51, 10.0]], TR_WORDS, 1, seed=seed)
        got = backbone.encode(st, [0], "joint")
        fresh = MerlotBackbone(backbone.model, word_ids).encode(st, [0], "joint")
        torch.testing.assert_close(got, fresh)
