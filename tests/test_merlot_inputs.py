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
VOCAB = {w: 10 + i for i, w in enumerate("a b c d we were on break late early hello there okay".split())}
CONDITIONS = ("joint", "no_vision", "no_language", "no_audio", "vision_only", "language_only")


def word_ids(text):
    return [VOCAB[w] for w in text.split()]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(MerlotConfig(**TINY))


@pytest.fixture(scope="module")
def backbone(model):
    """The layout before issue 22 (``causal``), whose rules the tests of sections 1-3 spell out."""
    return MerlotBackbone(model, word_ids, layout="causal")


@pytest.fixture(scope="module")
def centred(model):
    return MerlotBackbone(model, word_ids)


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
    plan = layout.plan_windows(st.windows, "causal")
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
            ("break", 9.7, .5), ("okay", 9.8, .5), ("late", 10.2, .2)]


def test_layout_of_a_tr_window_by_hand(backbone):
    """Window [8.51, 10) (a 1.49-s TR), causal layout: one 5-s segment [5, 10), clips centred 0.853 / 2.507 /
    4.160 s in it. A word is in the segment that holds its CENTRE (data/process.py: center = (start + end) / 2,
    a chunk takes the rows with center < t_end): 'early' (4.9-5.1, centre 5.0) is in, 'okay' (9.8-10.3,
    centre 10.05) is not, though its onset is in the window. Centres 5.0, 5.35 -> sub 0; 7.1 -> sub 1; 8.6,
    9.05, 9.95 -> sub 2 (the target); 'late' (10.3) is after the segment."""
    plan = layout.plan_window(1.49, "causal")
    assert (plan.n_target, plan.n_segments, plan.n_context) == (1, 1, 2)
    np.testing.assert_allclose(layout.clip_centres(), [32 * 588 / 22050, 94 * 588 / 22050, 156 * 588 / 22050])
    st = stimuli_for([[8.51, 10.0]], TR_WORDS, 1)
    assert layout.subsegment_words(st.transcript, 10.0, plan) == [["early", "we"], ["were"], ["on", "a", "break"]]
    want = {   # condition: (tokens, audio_ptr, pooled)
        "joint": ([5] * 12 + word_ids("on a break"), [0] * 6 + [1] * 6 + [-1] * 3, [0] * 12 + [1] * 3),
        "no_vision": ([5] * 12 + word_ids("on a break"), [0] * 6 + [1] * 6 + [-1] * 3, [0] * 12 + [1] * 3),
        "no_audio": (word_ids("early we were on a break"), [-1] * 6, [0, 0, 0, 1, 1, 1]),
        "language_only": (word_ids("early we were on a break"), [-1] * 6, [0, 0, 0, 1, 1, 1]),
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
    plan = layout.plan_window(5.0, "causal")
    assert (plan.n_target, plan.n_segments) == (3, 2)
    np.testing.assert_allclose(layout.frame_times(np.array([[15.0, 20.0]]), "causal"), [[12.5, 17.5]])
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
    assert layout.plan_window(39.0, "causal").n_segments == 8
    with pytest.raises(ConfigError) as e:
        layout.plan_window(40.0, "causal")
    msg = str(e.value)
    assert msg.startswith("windows.context: 40 s") and "at most 8" in msg and "\n" not in msg


def test_centred_layout_of_a_tr_window_by_hand(centred):
    """Issue 22, item 2 (the default layout): window [8.51, 10) -> the grid ends one sub-segment (5/3 s)
    after the window: segment [6.667, 11.667), its frame (the middle) at 9.167 s, inside the TR; clip centres
    7.520 / 9.174 / 10.827 s. Word centres: 'were' 7.1 -> sub 0; 'on' 8.6, 'a' 9.05, 'break' 9.95 -> sub 1
    (the window); 'okay' 10.05, 'late' 10.3 -> sub 2 (after the window: one MASK, their text never enters).
    joint: pass 1 = (window text, context audio), pass 2 = (window audio, context text); no_language: all
    audio. The window's own clip (sub 1) spans samples 64 * 588 - 768 .. 123 * 588 + 768 of the segment:
    8.339 .. 9.981 s, inside [6.667, 10)."""
    ends = np.array([10.0])
    np.testing.assert_allclose(layout.frame_times(np.stack([ends - 1.49, ends], 1)), [[10.0 - 5 / 6]])
    assert 8.51 <= 10.0 - 5 / 6 < 10.0 and abs((10.0 - 5 / 6) - (10.0 - 1.49 / 2)) < 0.09
    plan = layout.plan_window(1.49)
    assert (plan.n_context, plan.n_target, plan.n_after, plan.n_segments) == (1, 1, 1, 1)
    st = stimuli_for([[8.51, 10.0]], TR_WORDS, 1)
    assert layout.subsegment_words(st.transcript, 10.0, plan) == [["were"], ["on", "a", "break"], ["okay", "late"]]
    A, M = AUDIOSPAN, MASK
    want = {   # condition: [(tokens, audio_ptr, pooled) per pass]
        "joint": [([A] * 6 + word_ids("on a break") + [M], [0] * 6 + [-1] * 4, [0] * 6 + [1] * 3 + [0]),
                  (word_ids("were") + [A] * 6 + [M], [-1] + [1] * 6 + [-1], [0] + [1] * 6 + [0])],
        "no_language": [([A] * 12 + [M], [0] * 6 + [1] * 6 + [-1], [0] * 6 + [1] * 6 + [0])],
        "no_audio": [(word_ids("were on a break") + [M], [-1] * 5, [0, 1, 1, 1, 0])],
        "vision_only": [([M], [-1], [1])],
    }
    want["no_vision"], want["language_only"] = want["joint"], want["no_audio"]
    for c, per_pass in want.items():
        assert centred.n_passes(c) == len(per_pass), c
        for p, (tok, ptr, pooled) in enumerate(per_pass):
            batch, vis, aud = centred.prepare(st, [0], c, p)
            assert batch.tokens[0].tolist() == tok, (c, p)
            assert batch.audio_ptr[0].tolist() == ptr, (c, p)
            assert batch.pooled[0].long().tolist() == pooled, (c, p)
            if aud is not None:
                assert aud.shape == (1, 2, 6, 96)                  # the context's clip and the window's
    # the window's clip is sub-segment 1's of the segment [6.667, 11.667)
    clips = centred.clips(st, 0, plan)
    t0 = 10.0 + 5 / 3 - 5.0
    ref = librosa_log_mel(st.waveform[int(22050 * t0): int(22050 * (t0 + 5))])
    np.testing.assert_allclose(clips[1, :, :64], ref[64:124], rtol=1e-4, atol=2e-4)
    # joint = the mean of its two passes' pooled states
    got = centred.encode(st, [0], "joint")[:, 0]
    means = []
    for p in range(2):
        batch, vis, aud = centred.prepare(st, [0], "joint", p)
        with torch.no_grad():
            hs = centred.model(tokens=batch.tokens, token_segment=batch.token_segment, audio_ptr=batch.audio_ptr,
                               vision_tokens=vis, audio_tokens=aud)["hidden_states"][:, 0]
        means.append(hs[:, :batch.tokens.shape[1]][:, batch.pooled[0]].mean(1))
    torch.testing.assert_close(got, (means[0] + means[1]) / 2, rtol=1e-5, atol=1e-5)


def test_centred_layout_sees_nothing_after_the_window(centred):
    """Words, sound and pictures after the window's end change no feature of it, in any condition."""
    ends = np.array([10.0, 14.47])
    st = stimuli_for(np.stack([ends - 1.49, ends], 1), TR_WORDS, 1)
    later = stimuli_for(np.stack([ends - 1.49, ends], 1), TR_WORDS + [("hello", 10.01, 0.1)], 1)
    later.waveform[int(22050 * 10.0):] *= 5.0
    for c in CONDITIONS:
        a = centred.encode(st, [0], c)
        b = MerlotBackbone(centred.model, word_ids).encode(later, [0], c)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=c)


def test_layout_is_a_config_choice_in_the_extract_key():
    from brainalign.stagetable import STAGES

    cfg = parse_config({"model": {"backbone": "merlot_reserve"}})
    assert cfg.model.merlot_reserve.layout == "centred"
    other = parse_config({"model": {"backbone": "merlot_reserve", "merlot_reserve": {"layout": "causal"}}})
    assert STAGES["extract"].values(cfg)["model.merlot_reserve.layout"] == "centred"
    assert STAGES["extract"].values(other)["model.merlot_reserve.layout"] == "causal"
    tiny = parse_config({"model": {"backbone": "tiny", "merlot_reserve": {"layout": "causal"}}})
    assert "model.merlot_reserve.layout" not in STAGES["extract"].values(tiny)      # another backbone's setting
    with pytest.raises(ConfigError, match=r"model.merlot_reserve.layout"):
        parse_config({"model": {"merlot_reserve": {"layout": "middle"}}})


# ------------------------------------------------------------------------------------------ 3. conditions
def random_transcript(rng, seconds):
    t, out = 0.0, []
    while t < seconds:
        t += rng.exponential(0.35)
        out.append((str(rng.choice(list(VOCAB))), t, float(rng.uniform(0.05, 0.4))))
    return out


#: layout -> condition -> [(target form, context form) per pass]; None: no slot; "text": its words (or one MASK
#: in a target without words); after the window (centred): one MASK, none where the context has none
WANT_FORMS = {
    "causal": {"joint": [("text", "audio")], "no_vision": [("text", "audio")], "no_language": [("mask", "audio")],
               "no_audio": [("text", "text")], "language_only": [("text", "text")], "vision_only": [("mask", None)]},
    "centred": {"joint": [("text", "audio"), ("audio", "text")], "no_vision": [("text", "audio"), ("audio", "text")],
                "no_language": [("audio", "audio")], "no_audio": [("text", "text")],
                "language_only": [("text", "text")], "vision_only": [("mask", None)]},
}


@pytest.mark.parametrize("context", [1.49, 5.0, 12.0])
@pytest.mark.parametrize("mode", ["causal", "centred"])
def test_condition_invariants(model, mode, context):
    """In every condition each sub-segment is in ONE form -- its text, its 6 AUDIOSPAN slots or one MASK --
    (pre-training never shows a span's text and its audio together); the pooled slots are the window's own
    sub-segments; nothing after the window but one MASK; the conditions differ from joint only where they
    should."""
    bb = MerlotBackbone(model, word_ids, layout=mode)
    rng = np.random.default_rng(int(context * 10))
    ends = np.array([14.0, 17.3, 21.0, 24.5])
    plan = layout.plan_window(context, mode)
    assert plan.n_after == (mode == "centred")
    st = stimuli_for(np.stack([ends - context, ends], 1), random_transcript(rng, 30), plan.n_segments, seed=3)
    for c in CONDITIONS:
        assert bb.n_passes(c) == len(WANT_FORMS[mode][c])
        for p, (target_form, context_form) in enumerate(WANT_FORMS[mode][c]):
            rows = bb.window_rows(st, np.arange(4), c, plan, p)
            for b, r in enumerate(rows):
                words = layout.subsegment_words(st.transcript, float(ends[b]), plan)
                for j in range(plan.n_sub):
                    toks = [t for t, s in zip(r.tokens, r.subseg) if s == j]
                    kinds = {"audio" if t == AUDIOSPAN else "mask" if t == MASK else "text" for t in toks}
                    assert len(kinds) <= 1, (c, j, toks)
                    target = plan.n_context <= j < plan.n_sub - plan.n_after
                    assert all(q == target for q, s in zip(r.pooled, r.subseg) if s == j)
                    if j >= plan.n_sub - plan.n_after:
                        assert toks == ([MASK] if context_form else []), (c, j, toks)
                        continue
                    form = target_form if target else context_form
                    if form == "audio":
                        assert toks == [AUDIOSPAN] * 6 and r.subseg.count(j) == 6
                    elif form == "mask":
                        assert toks == [MASK]
                    elif form == "text":
                        assert toks == (word_ids(" ".join(words[j])) if words[j] else [MASK] * (toks == [MASK]))
                    else:
                        assert toks == []
                assert r.subseg == sorted(r.subseg)                  # time order
                assert any(r.pooled)
    feats = {c: bb.encode(st, slice(None), c) for c in CONDITIONS}
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
    plan = layout.plan_window(1.49, "causal")
    words = [["a"] * 100, ["b"] * 100, ["c"] * 100]
    r = layout.window_tokens(words, plan, "no_audio", word_ids, layout="causal")
    assert len(r.tokens) == 160 and r.truncated == 140
    assert r.tokens == [VOCAB["a"]] * 100 + [VOCAB["b"]] * 60 and not any(r.pooled)
    r = layout.window_tokens([["a"] * 60, [], ["c"] * 150], plan, "joint", word_ids, layout="causal")
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
        fresh = MerlotBackbone(backbone.model, word_ids, layout="causal").encode(st, [0], "joint")
        torch.testing.assert_close(got, fresh)
