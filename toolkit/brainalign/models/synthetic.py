"""Synthetic EpisodeStimuli for tests, benchmarks and smoke runs (random frames, words and tones)."""
from __future__ import annotations

import numpy as np

from ..stimuli.episode import EpisodeStimuli

WORDS = ("the a and you i it what is that no yes oh hey okay coffee apartment friend phone door baby "
         "ross rachel monica chandler joey phoebe we they know think really just so").split()


def synthetic_stimuli(episode: str = "synthetic", n_windows: int = 20, tr: float = 1.0, frames: int = 2,
                      image_size: int = 32, audio_rate: int = 8000, context: float | None = None,
                      max_words: int = 6, seed: int = 0, spec=None) -> EpisodeStimuli:
    """Random but reproducible stimuli: uint8 frames, 0..max_words words per window, tone+noise audio.

    Shapes follow EpisodeStimuli: frames (n_windows, frames, image_size, image_size, 3), audio
    float32 (n_windows, round(context * audio_rate)), windows [end - context, end) with end = (i + 1) * tr.
    ``spec`` (a backbone's ``stimulus_spec``, e.g. MERLOT Reserve's) shapes them as the loader would for it:
    its frame times and frame size, its audio rate, the episode waveform and a timed transcript.
    """
    rng = np.random.default_rng(seed)
    context = tr if context is None else context
    ends = (np.arange(n_windows) + 1.0) * tr
    windows = np.stack([ends - context, ends], axis=1)
    if spec is not None:
        return _for_spec(spec, episode, float(tr), windows, audio_rate, max_words, rng)
    fr = rng.integers(0, 256, (n_windows, frames, image_size, image_size, 3), dtype=np.uint8)
    words = [list(rng.choice(WORDS, size=int(rng.integers(0, max_words + 1)))) for _ in range(n_windows)]
    n = int(round(context * audio_rate))
    t = np.arange(n) / audio_rate
    f0 = rng.uniform(100, audio_rate / 3, (n_windows, 1))
    audio = (0.3 * np.sin(2 * np.pi * f0 * t[None]) + 0.05 * rng.standard_normal((n_windows, n)))
    return EpisodeStimuli(episode, float(tr), windows, fr, words, audio.astype(np.float32), int(audio_rate))


def _for_spec(spec, episode, tr, windows, audio_rate, max_words, rng) -> EpisodeStimuli:
    from ..stimuli.audio import peak_normalise
    from ..stimuli.transcript import Word
    from ..stimuli.windows import window_audio, window_words

    n = len(windows)
    times = spec.frame_times(windows) if spec.frame_times is not None else \
        windows[:, :1] + (windows[:, 1:] - windows[:, :1]) * np.array([[0.25, 0.75]])
    h, w = spec.frame_size if spec.frame_size is not None else (32, 32)
    fr = rng.integers(0, 256, (n, times.shape[1], h, w, 3), dtype=np.uint8)
    rate = int(spec.audio_rate or audio_rate)
    total = float(windows[-1, 1])
    t = np.arange(int(round(total * rate))) / rate
    wave = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) + 0.05 * rng.standard_normal(t.size))
    wave = wave.astype(np.float32)
    if spec.peak_normalise:
        wave = peak_normalise(wave)
    transcript = []
    for s, e in windows:
        k = int(rng.integers(0, max_words + 1))
        for j, wd in enumerate(rng.choice(WORDS, size=k)):
            transcript.append(Word(str(wd), max(float(s), 0.0) + (j + 0.5) * (e - max(s, 0.0)) / max(k, 1), 0.2))
    transcript.sort(key=lambda x: x.onset)
    audio = window_audio(wave, rate, windows) if spec.window_audio else np.zeros((n, 0), np.float32)
    return EpisodeStimuli(episode, tr, windows, fr, window_words(transcript, windows), audio, rate,
                          waveform=wave, transcript=transcript, frame_times=times)
