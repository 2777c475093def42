"""One model window per fMRI TR: frames, words and audio of an episode (see EpisodeStimuli)."""
from __future__ import annotations

import math

import numpy as np

from ..config import require_file
from ..errors import ConfigError, DataError
from ..log import get_logger
from .audio import peak_normalise, read_audio, source_sample_rate
from .episode import EpisodeStimuli
from .transcript import read_transcript
from .video import sample_frames, sample_frames_letterboxed, video_info

log = get_logger("stimuli")


def window_bounds(n_windows: int, tr: float, context: float) -> np.ndarray:
    """float64 (n_windows, 2): window i = [end_i - context, end_i) with end_i = (i + 1) * tr."""
    ends = (np.arange(n_windows, dtype=np.float64) + 1.0) * tr
    return np.stack([ends - context, ends], axis=1)


def frame_times(windows: np.ndarray, n_frames: int, duration: float) -> np.ndarray:
    """float64 (n_windows, n_frames): centres of n_frames equal parts of each window, clipped to [0, duration)."""
    start, end = windows[:, :1], windows[:, 1:]
    frac = (np.arange(n_frames, dtype=np.float64) + 0.5) / n_frames
    t = start + (end - start) * frac[None, :]
    return np.clip(t, 0.0, np.nextafter(duration, 0.0))


def window_words(words, windows: np.ndarray) -> list[list[str]]:
    """For each window, the words whose onset lies in [start, end), in onset order."""
    onsets = np.array([w.onset for w in words], dtype=np.float64)
    lo = np.searchsorted(onsets, windows[:, 0], side="left")
    hi = np.searchsorted(onsets, windows[:, 1], side="left")
    return [[words[j].word for j in range(a, b)] for a, b in zip(lo, hi)]


def window_audio(audio: np.ndarray, rate: int, windows: np.ndarray) -> np.ndarray:
    """float32 (n_windows, round(context * rate)): samples from round(start * rate) on, zero outside the track."""
    n = int(round((windows[0, 1] - windows[0, 0]) * rate))
    out = np.zeros((len(windows), n), dtype=np.float32)
    for i, start in enumerate(windows[:, 0]):
        s0 = int(round(start * rate))
        a, b = max(s0, 0), min(s0 + n, len(audio))
        if b > a:
            out[i, a - s0:b - s0] = audio[a:b]
    return out


def audio_source(cfg, episode: str, video, has_audio: bool):
    """The audio file of an episode, or None for the video's own track: ``data.stimuli.audio`` when that file
    exists; when it is null or missing and the video carries an audio track (Algonauts/CNeuroMod .mkv: h264 +
    mp3), that track (a missing file is logged). One line naming the key when there is neither."""
    template = cfg.data.stimuli.audio
    path = cfg.path(template, "data.stimuli.audio", episode=episode) if template else None
    if path is not None and path.is_file():
        return path
    if not has_audio:
        if path is None:
            raise DataError(f"video {video} has no audio track and data.stimuli.audio is null")
        raise ConfigError(f"data.stimuli.audio: audio not found: {path} (and video {video} has no audio track)")
    if path is not None:
        log.info("episode %s: %s not found; using the audio track of %s", episode, path, video)
    return None


def load_episode_stimuli(cfg, episode: str, spec=None) -> EpisodeStimuli:
    """Read and window one episode's video, audio and transcript as configured in ``cfg.data.stimuli``.

    ``spec`` (a :class:`.spec.StimulusSpec`, from ``backbone.stimulus_spec``) overrides the frame times,
    the frame geometry and the audio rate; None: ``windows.frames`` squashed ``windows.image_size`` frames
    and audio at ``windows.audio_rate``.
    """
    st = cfg.data.stimuli
    tr = float(cfg.data.bold.tr)
    video = require_file("data.stimuli.video", cfg.path(st.video, "data.stimuli.video", episode=episode), "video")
    transcript = require_file("data.stimuli.transcript",
                              cfg.path(st.transcript, "data.stimuli.transcript", episode=episode), "transcript")
    duration, _fps, has_audio = video_info(video)
    audio_path = audio_source(cfg, episode, video, has_audio)
    step = float(cfg.windows.step) if cfg.windows.step else tr     # windows end every `step` s (default: each TR)
    if step <= 0:
        raise DataError(f"windows.step must be positive, got {step}")
    n_windows = int(math.floor(duration / step + 1e-6))
    if n_windows < 1:
        raise DataError(f"video {video}: {duration:.3f} s is shorter than one window step ({step} s)")
    context = float(cfg.windows.context) if cfg.windows.context else step
    if context <= 0:
        raise DataError(f"windows.context must be positive, got {context}")
    windows = window_bounds(n_windows, step, context)

    # audio
    spec_rate = spec.audio_rate if spec is not None else None
    rate = int(spec_rate) if spec_rate else int(cfg.windows.audio_rate)
    source = audio_path if audio_path is not None else video
    audio = read_audio(source, rate)
    native = source_sample_rate(source) if spec_rate else None      # opens the file: only when a model asks
    if native and native < rate:
        log.warning("audio %s is band-limited: stored at %d Hz, so nothing above %d Hz reaches %s's %d Hz input "
                    "(its top mel bands stay empty)", source, native, native // 2, spec.name or "the model", rate)
    if spec is not None and spec.peak_normalise:
        audio = peak_normalise(audio)
    audio_s = len(audio) / rate
    if audio_s < duration - tr:
        raise DataError(f"audio {audio_path or video} is unsynchronised with video {video}: "
                        f"{audio_s:.2f} s of audio for {duration:.2f} s of video (tolerance one TR, {tr} s)")

    # transcript
    words = read_transcript(transcript, st.transcript_format)
    if not words:
        raise DataError(f"transcript {transcript} has no words")
    last = words[-1].onset
    if last > duration + tr:
        raise DataError(f"transcript {transcript} is unsynchronised with video {video}: a word at {last:.2f} s "
                        f"but the video ends at {duration:.2f} s (tolerance one TR, {tr} s)")

    if spec is not None and spec.frame_times is not None:
        times = np.clip(np.asarray(spec.frame_times(windows), dtype=np.float64), 0.0, np.nextafter(duration, 0.0))
    else:
        times = frame_times(windows, int(cfg.windows.frames), duration)
    if spec is not None and spec.frame_size is not None:
        H, W = (int(v) for v in spec.frame_size)
        flat, box = sample_frames_letterboxed(video, times.reshape(-1), (H, W))
        frames = flat.reshape(n_windows, times.shape[1], H, W, 3)
        log.debug("episode %s: frames letterboxed to %dx%d, crop %s", episode, H, W, box)
    else:
        size = int(cfg.windows.image_size)
        frames = sample_frames(video, times.reshape(-1), size).reshape(n_windows, times.shape[1], size, size, 3)
    per_window = spec is None or spec.window_audio
    log.debug("episode %s: %d windows of %.2f s, %d words, %.1f s audio", episode, n_windows, context,
              len(words), audio_s)
    return EpisodeStimuli(episode=episode, tr=tr, windows=windows, frames=frames,
                          words=window_words(words, windows),
                          audio=window_audio(audio, rate, windows) if per_window
                          else np.zeros((n_windows, 0), np.float32),
                          audio_rate=rate, waveform=audio, transcript=words, frame_times=times)


def load_stimuli_for(backbone, cfg, episode):
    """The episode's stimuli as ``backbone`` takes them (its ``stimulus_spec``; the loader's defaults if None)."""
    spec = getattr(backbone, "stimulus_spec", None)
    return load_episode_stimuli(cfg, episode) if spec is None else load_episode_stimuli(cfg, episode, spec)


def check_stimuli(stimuli):
    """One-line DataError if an EpisodeStimuli's parts disagree in window count or hold non-finite audio."""
    n = stimuli.windows.shape[0] if stimuli.windows.ndim == 2 else -1
    counts = {"windows": n, "frames": len(stimuli.frames), "words": len(stimuli.words),
              "audio": len(stimuli.audio)}
    if n == 0:
        raise DataError(f"episode {stimuli.episode}: no stimulus windows (shorter than one TR?)")
    if n < 0 or stimuli.windows.shape[1] != 2 or len(set(counts.values())) != 1:
        raise DataError(f"episode {stimuli.episode}: stimuli disagree on the number of windows ("
                        + ", ".join(f"{k} {v}" for k, v in counts.items())
                        + f"; windows shape {tuple(stimuli.windows.shape)})")
    if not np.isfinite(stimuli.audio).all():
        bad = int(np.flatnonzero(~np.isfinite(stimuli.audio.reshape(n, -1)).all(axis=1))[0])
        raise DataError(f"episode {stimuli.episode}: audio has non-finite samples (first in window {bad})")
