"""Stimulus readers and per-TR windows on small files written here (PyAV mp4/mkv, wav, TSV/JSON/SRT)."""
import json
import math

import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import resample_poly

from brainalign.config import parse_config
from brainalign.errors import ConfigError, DataError
from brainalign.stimuli import (load_episode_stimuli, read_audio, read_transcript, sample_frames,
                                video_info)

FPS = 10
STEP = 5  # frame i is grey STEP * i (luma survives h264 best), so the decoded grey level names the frame


def write_video(path, n_frames, fps=FPS, size=32, audio=None, rate=16000, fmt=None):
    """Grey frames coding their index (right quarter white); optional AAC mono audio."""
    import av

    with av.open(str(path), "w", format=fmt) as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": "10"}
        if audio is not None:
            aus = c.add_stream("aac", rate=rate)
            aus.layout = "mono"
        for i in range(n_frames):
            img = np.zeros((size, size, 3), np.uint8)
            img[:] = STEP * i
            img[:, 3 * size // 4:] = 255
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            c.mux(vs.encode(f))
        c.mux(vs.encode())
        if audio is not None:
            for k in range(0, len(audio), 1024):
                f = av.AudioFrame.from_ndarray(audio[None, k:k + 1024].astype(np.float32), format="fltp",
                                               layout="mono")
                f.sample_rate = rate
                f.pts = k
                c.mux(aus.encode(f))
            c.mux(aus.encode())
    return path


def frame_index(frames):
    """Decoded frame index from the grey level of each frame's left part."""
    c = frames.shape[1] // 4
    return np.round(frames[:, c, c].astype(float).mean(-1) / STEP).astype(int)


def tone(duration, rate, onset=1.0, freq=440.0):
    t = np.arange(int(round(duration * rate))) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t) * (t >= onset)).astype(np.float32)


# ---- video ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_sample_frames_takes_the_frame_shown_at_each_time(tmp_path, suffix):
    path = write_video(tmp_path / f"v.{suffix}", 30)
    times = np.array([1.55, 0.0, 0.049, 0.1, 0.2999, 2.95, 7.0, -1.0, 1.0])   # unsorted, out of range too
    frames = sample_frames(path, times, 8)
    assert frames.shape == (len(times), 8, 8, 3) and frames.dtype == np.uint8
    expected = np.clip(np.floor(np.clip(times, 0, None) * FPS + 1e-9), 0, 29).astype(int)
    np.testing.assert_array_equal(frame_index(frames), expected)
    # the white right quarter lands in the right quarter: the whole frame was resized, not cropped
    assert (frames[:, :, 7] > 240).all() and (frames[:, :, :5] < 200).all()


def test_video_info(tmp_path):
    dur, fps, has_audio = video_info(write_video(tmp_path / "a.mp4", 25, audio=tone(2.5, 16000)))
    assert dur == pytest.approx(2.5) and fps == pytest.approx(FPS) and has_audio
    dur, fps, has_audio = video_info(write_video(tmp_path / "b.mkv", 25))
    assert dur == pytest.approx(2.5, abs=0.11) and not has_audio


def test_video_errors(tmp_path):
    with pytest.raises(DataError, match="video not found: .*nope.mp4"):
        video_info(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(DataError, match="bad.mp4 cannot be opened"):
        sample_frames(bad, [0.0], 8)


# ---- audio ----------------------------------------------------------------------------------------

def test_read_audio_wav_resamples_and_averages_channels(tmp_path):
    rate = 22050
    x = tone(2.0, rate, onset=0.5, freq=300.0)
    stereo = np.stack([x, -0.5 * x], axis=1)
    path = tmp_path / "s.wav"
    wavfile.write(path, rate, (stereo * 32767).astype(np.int16))
    got = read_audio(path, 16000)
    mono = ((stereo * 32767).astype(np.int16).astype(np.float64) / 32768).mean(axis=1)
    ref = resample_poly(mono, 320, 441)   # 16000 / 22050
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.abs(got).max() == pytest.approx(0.125, abs=0.005)   # (0.5 - 0.25) / 2


@pytest.mark.parametrize("rate", [16000, 8000])
def test_read_audio_from_video_track_keeps_timing(tmp_path, rate):
    x = tone(3.0, 16000, onset=1.0, freq=440.0)
    path = write_video(tmp_path / "v.mp4", 30, audio=x)
    got = read_audio(path, rate)
    assert abs(len(got) / rate - 3.0) < 0.05
    onset = np.argmax(np.abs(got) > 0.1) / rate          # AAC priming must not shift the timeline
    assert onset == pytest.approx(1.0, abs=0.005)
    spec = np.abs(np.fft.rfft(got[int(1.2 * rate):int(2.8 * rate)]))
    peak = np.fft.rfftfreq(int(2.8 * rate) - int(1.2 * rate), 1 / rate)[np.argmax(spec)]
    assert peak == pytest.approx(440, abs=2)


def test_read_audio_errors(tmp_path):
    with pytest.raises(DataError, match="audio not found"):
        read_audio(tmp_path / "x.wav", 16000)
    (tmp_path / "x.wav").write_bytes(b"RIFFgarbage")
    with pytest.raises(DataError, match="x.wav is not a readable wav"):
        read_audio(tmp_path / "x.wav", 16000)
    with pytest.raises(DataError, match="v.mp4 has no audio track"):
        read_audio(write_video(tmp_path / "v.mp4", 5), 16000)


# ---- transcripts ----------------------------------------------------------------------------------

def test_read_tsv_any_column_order_sorted(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("onset\tword\tduration\n1.5\tworld\t0.2\n0.5\thello\t0.3\n\n")
    words = read_transcript(p)
    assert [(w.word, w.onset, w.duration) for w in words] == [("hello", 0.5, 0.3), ("world", 1.5, 0.2)]


def test_read_json_words_and_segments(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"words": [{"word": "b", "start": 2.0, "end": 2.5},
                                       {"word": "a", "start": 1.0, "end": 1.25}]}))
    assert [(w.word, w.onset, w.duration) for w in read_transcript(p)] == [("a", 1.0, 0.25), ("b", 2.0, 0.5)]
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"segments": [{"text": "x y", "words": [{"word": " x", "start": 0.0, "end": 0.5},
                                                                     {"word": "y", "start": 0.5, "end": 1.0}]},
                                          {"words": [{"word": "z", "start": 3.0, "end": 3.0}]}]}))
    assert [(w.word, w.onset) for w in read_transcript(p)] == [("x", 0.0), ("y", 0.5), ("z", 3.0)]


def test_read_srt_spreads_words_over_the_block(tmp_path):
    p = tmp_path / "s.srt"
    p.write_text("1\n00:00:01,000 --> 00:00:03,000\n<i>Hello there</i> my\n{\\an8}friend\n\n"
                 "2\n00:01:00,500 --> 00:01:01,500\nOK\n")
    words = read_transcript(p)
    assert [w.word for w in words] == ["Hello", "there", "my", "friend", "OK"]
    np.testing.assert_allclose([w.onset for w in words], [1.0, 1.5, 2.0, 2.5, 60.5])
    np.testing.assert_allclose([w.duration for w in words], [0.5] * 4 + [1.0])


ALGONAUTS_ROWS = [   # chunk: (words, onsets, durations) -- apostrophes, double quotes, both, commas, empty chunks
    (["to", "come", "there's"], [0.2, 0.5, 0.9], [0.25, 0.3, 0.4]),
    None,
    (['he said "hi"', "I'm", 'it\'s "fine", ok'], [3.1, 3.6, 3.9], [0.4, 0.2, 0.5]),
    "n/a",
    (["don't", "you're"], [6.0, 6.4], [0.3, 0.3]),
    ([], [], []),
]


@pytest.mark.parametrize("index", [False, True])
def test_algonauts_transcript_as_pandas_writes_it(tmp_path, index):
    """Issue 23: the per-TR file as pandas writes it (DataFrame of lists -> to_csv with tabs): a cell whose
    list repr holds a double quote is CSV-quoted with the quotes doubled; empty chunks are NaN (empty cells) or
    'n/a'. Every word comes back with its own onset and duration."""
    pd = pytest.importorskip("pandas")
    rows = []
    for r in ALGONAUTS_ROWS:
        if r is None or r == "n/a":
            rows.append({c: (None if r is None else "n/a") for c in
                         ("text_per_tr", "words_per_tr", "onsets_per_tr", "durations_per_tr")})
        else:
            rows.append({"text_per_tr": " ".join(r[0]), "words_per_tr": r[0], "onsets_per_tr": r[1],
                         "durations_per_tr": r[2]})
    p = tmp_path / "friends_s01e01a.tsv"
    pd.DataFrame(rows).to_csv(p, sep="\t", index=index)
    text = p.read_text()
    assert '""there\'s""' in text and '""hi""' in text                 # quoted as the published files are
    want = [(w, o, d) for r in ALGONAUTS_ROWS if isinstance(r, tuple) for w, o, d in zip(*r)]
    got = read_transcript(p)
    assert [(w.word, w.onset, w.duration) for w in got] == want


def test_out_of_order_duplicate_and_overlapping_words_are_logged(tmp_path, caplog):
    """Issue 24: out-of-order words are sorted with a warning naming the file and line; duplicates are warned
    (and kept); overlapping words (speakers overlap) are counted at INFO."""
    p = tmp_path / "t.tsv"
    p.write_text("word\tonset\tduration\n"
                 "a\t1.0\t0.5\n"          # line 2
                 "b\t1.2\t0.2\n"          # line 3: overlaps a (1.2 < 1.5)
                 "c\t0.5\t0.1\n"          # line 4: before b -> out of order
                 "d\t3.0\t0.2\n"          # line 5
                 "d\t3.0\t0.2\n"          # line 6: a duplicate of line 5
                 "e\t2.0\t0.1\n")         # line 7: out of order again
    with caplog.at_level("INFO", logger="brainalign"):
        words = read_transcript(p)
    assert [(w.word, w.onset) for w in words] == [("c", 0.5), ("a", 1.0), ("b", 1.2), ("e", 2.0), ("d", 3.0),
                                                  ("d", 3.0)]
    warn = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"transcript {p} line 4: 'c' at 0.500 s starts before the word above it (1.200 s); 2 word(s) out "
               "of order, sorted by onset" == m for m in warn), warn
    assert any(f"transcript {p} line 6: 'd' at 3.000 s repeats line 5; 1 duplicated word(s) (kept)" == m
               for m in warn), warn
    info = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    # in onset order c, a, b, e, d, d: b starts inside a; the second d inside the first
    assert f"transcript {p}: 2 word(s) start before the previous word ends (overlapping speech)" in info
    caplog.clear()
    with caplog.at_level("INFO", logger="brainalign"):
        q = tmp_path / "ok.tsv"
        q.write_text("word\tonset\tduration\na\t0.0\t0.5\nb\t0.5\t0.5\n")
        read_transcript(q)
    assert not caplog.records                                        # touching words are not an overlap


@pytest.mark.parametrize("name,text,msg", [
    ("neg.tsv", "word\tonset\tduration\na\t0.1\t0.1\nb\t-1\t0.2\n", r"neg.tsv line 3: negative onset"),
    ("nan.tsv", "word\tonset\tduration\na\tnan\t0.1\n", r"nan.tsv line 2: onset/duration is NaN"),
    ("txt.tsv", "word\tonset\tduration\na\tsoon\t0.1\n", r"txt.tsv line 2: onset 'soon' is not a number"),
    ("cols.tsv", "word onset duration\na 1 2\n", r"cols.tsv line 1: missing column\(s\) word, onset, duration"),
    ("dur.tsv", "word\tonset\n", r"dur.tsv line 1: missing column\(s\) duration"),
    ("end.json", '{"words": [{"word": "a", "start": 2, "end": 1}]}', r"end.json words\[0\]: end before start"),
    ("key.json", '{"words": [{"word": "a", "start": 2}]}', r"key.json words\[0\]: missing key\(s\) end"),
    ("bad.json", '{"words": [', r"bad.json line 1: not valid JSON"),
    ("time.srt", "1\n00:00:01 --> 00:00:02,000\nhi\n", r"time.srt line 2: bad SRT time"),
    ("back.srt", "1\n00:00:05,000 --> 00:00:02,000\nhi\n", r"back.srt line 2: end before start"),
    ("t.vtt", "WEBVTT\n", r"t.vtt: unknown format"),
])
def test_transcript_errors_name_file_and_line(tmp_path, name, text, msg):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(DataError, match=msg):
        read_transcript(p)


# ---- windows --------------------------------------------------------------------------------------

def make_episode(root, n_frames=45, audio_s=None, words=None, rate=16000):
    """An episode with TR 1 s: video (frame colour = index), wav whose sample value is its time, TSV words."""
    (root / "stimuli").mkdir(parents=True, exist_ok=True)
    write_video(root / "stimuli" / "ep.mp4", n_frames, audio=tone(n_frames / FPS, rate))
    n = int(round((audio_s if audio_s is not None else n_frames / FPS) * rate))
    wavfile.write(root / "stimuli" / "ep.wav", rate, (np.arange(n) / rate / 10).astype(np.float32))
    words = words if words is not None else [("a", 0.0), ("b", 0.99), ("c", 1.0), ("d", 2.5), ("e", 3.2)]
    (root / "stimuli" / "ep.tsv").write_text(
        "word\tonset\tduration\n" + "".join(f"{w}\t{o}\t0.1\n" for w, o in words))


def episode_cfg(root, **windows):
    return parse_config({"data": {"root": str(root), "episodes": ["ep", "x", "y"], "bold": {"tr": 1.0}},
                         "windows": {"image_size": 8, "audio_rate": 8000, **windows}})


def test_windows_frames_words_audio(tmp_path):
    make_episode(tmp_path)
    st = load_episode_stimuli(episode_cfg(tmp_path, frames=2), "ep")
    assert st.n_windows == 4 and st.tr == 1.0 and st.audio_rate == 8000          # floor(4.5 s / 1 s)
    np.testing.assert_allclose(st.windows, [[0, 1], [1, 2], [2, 3], [3, 4]])
    assert st.frames.shape == (4, 2, 8, 8, 3) and st.frames.dtype == np.uint8
    # frames at 0.25 and 0.75 s of each window -> frame indices floor(t * 10)
    np.testing.assert_array_equal(frame_index(st.frames.reshape(-1, 8, 8, 3)).reshape(4, 2),
                                  [[2, 7], [12, 17], [22, 27], [32, 37]])
    assert st.words == [["a", "b"], ["c"], ["d"], ["e"]]
    assert st.audio.shape == (4, 8000) and st.audio.dtype == np.float32
    # the wav's value is time / 10: window i holds times [i, i + 1)
    t = np.arange(8000) / 8000
    for i in range(1, 4):
        np.testing.assert_allclose(st.audio[i, 50:-50], (i + t[50:-50]) / 10, atol=2e-4)


def test_windows_longer_context_pads_before_zero(tmp_path):
    make_episode(tmp_path)
    st = load_episode_stimuli(episode_cfg(tmp_path, frames=4, context=2.0), "ep")
    np.testing.assert_allclose(st.windows[:2], [[-1, 1], [0, 2]])
    # window 0 frame times -0.75, -0.25 (clipped to 0), 0.25, 0.75
    np.testing.assert_array_equal(frame_index(st.frames[0]), [0, 0, 2, 7])
    assert st.words[0] == ["a", "b"] and st.words[1] == ["a", "b", "c"]
    assert st.audio.shape == (4, 16000)
    np.testing.assert_array_equal(st.audio[0, :8000], 0)                          # before t = 0
    np.testing.assert_allclose(st.audio[0, 8100:15900], np.arange(100, 7900) / 8000 / 10, atol=2e-4)


def test_windows_audio_from_the_video_track(tmp_path):
    make_episode(tmp_path)
    cfg = episode_cfg(tmp_path)
    cfg.data.stimuli.audio = None
    st = load_episode_stimuli(cfg, "ep")
    # tone starts at 1.0 s: window 0 silent, window 1 loud
    assert np.abs(st.audio[0, :7900]).max() < 0.02 and np.abs(st.audio[1, 200:]).max() > 0.4


def test_missing_wav_falls_back_to_the_video_track(tmp_path, caplog):
    """The default data.stimuli.audio is a wav beside the video; a movie that carries its own track (Algonauts
    .mkv) and no wav uses that track (logged) instead of failing."""
    make_episode(tmp_path)
    (tmp_path / "stimuli" / "ep.wav").unlink()
    cfg = episode_cfg(tmp_path)
    assert cfg.data.stimuli.audio.endswith("{episode}.wav")
    with caplog.at_level("INFO", logger="brainalign.stimuli"):
        st = load_episode_stimuli(cfg, "ep")
    assert "ep.wav not found; using the audio track of" in caplog.text
    ref = episode_cfg(tmp_path)
    ref.data.stimuli.audio = None
    np.testing.assert_array_equal(st.audio, load_episode_stimuli(ref, "ep").audio)


@pytest.mark.parametrize("setup,exc,msg", [
    (lambda r: (r / "stimuli" / "ep.mp4").unlink(), ConfigError, r"data.stimuli.video: video not found: .*ep.mp4"),
    (lambda r: (r / "stimuli" / "ep.tsv").unlink(), ConfigError, r"data.stimuli.transcript: transcript not found"),
    (lambda r: ((r / "stimuli" / "ep.wav").unlink(), write_video(r / "stimuli" / "ep.mp4", 45)), ConfigError,
     r"data.stimuli.audio: audio not found: .*ep.wav \(and video .*ep.mp4 has no audio track\)"),
    (lambda r: make_episode(r, n_frames=8), DataError, r"ep.mp4: 0.800 s is shorter than one window step"),
    (lambda r: make_episode(r, words=[("a", 1.0), ("late", 6.0)]), DataError,
     r"transcript .*ep.tsv is unsynchronised with video .*ep.mp4: a word at 6.00 s"),
    (lambda r: make_episode(r, audio_s=3.0), DataError, r"audio .*ep.wav is unsynchronised with video"),
    (lambda r: make_episode(r, words=[]), DataError, r"transcript .*ep.tsv has no words"),
])
def test_window_errors(tmp_path, setup, exc, msg):
    make_episode(tmp_path)
    setup(tmp_path)
    with pytest.raises(exc, match=msg) as info:
        load_episode_stimuli(episode_cfg(tmp_path), "ep")
    assert "\n" not in str(info.value)


def test_tolerances_allow_one_tr(tmp_path):
    make_episode(tmp_path, audio_s=3.6, words=[("a", 1.0), ("b", 5.4)])   # audio 0.9 s short, word 0.9 s late
    st = load_episode_stimuli(episode_cfg(tmp_path), "ep")
    assert st.n_windows == 4 and sum(map(len, st.words)) == 1
    assert math.isclose(float(st.audio[3, -1]), 0.0)                        # zero-padded past the audio's end
