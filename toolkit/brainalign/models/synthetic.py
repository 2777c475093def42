"""Synthetic EpisodeStimuli for tests, benchmarks and smoke runs (random frames, words and tones)."""
from __future__ import annotations

import numpy as np

from ..stimuli.episode import EpisodeStimuli

WORDS = ("the a and you i it what is that no yes oh hey okay coffee apartment friend phone door baby "
         "ross rachel monica chandler joey phoebe we they know think really just so").split()


def synthetic_stimuli(episode: str = "synthetic", n_windows: int = 20, tr: float = 1.0, frames: int = 2,
                      image_size: int = 32, audio_rate: int = 8000, context: float | None = None,
                      max_words: int = 6, seed: int = 0) -> EpisodeStimuli:
    """Random but reproducible stimuli: uint8 frames, 0..max_words words per window, tone+noise audio.

    Shapes follow EpisodeStimuli: frames (n_windows, frames, image_size, image_size, 3), audio
    float32 (n_windows, round(context * audio_rate)), windows [end - context, end) with end = (i + 1) * tr.
    """
    rng = np.random.default_rng(seed)
    context = tr if context is None else context
    ends = (np.arange(n_windows) + 1.0) * tr
    windows = np.stack([ends - context, ends], axis=1)
    fr = rng.integers(0, 256, (n_windows, frames, image_size, image_size, 3), dtype=np.uint8)
    words = [list(rng.choice(WORDS, size=int(rng.integers(0, max_words + 1)))) for _ in range(n_windows)]
    n = int(round(context * audio_rate))
    t = np.arange(n) / audio_rate
    f0 = rng.uniform(100, audio_rate / 3, (n_windows, 1))
    audio = (0.3 * np.sin(2 * np.pi * f0 * t[None]) + 0.05 * rng.standard_normal((n_windows, n)))
    return EpisodeStimuli(episode, float(tr), windows, fr, words, audio.astype(np.float32), int(audio_rate))
