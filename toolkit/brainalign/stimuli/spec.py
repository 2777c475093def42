"""What a backbone asks of the stimulus loader (``Backbone.stimulus_spec``; None = the loader's defaults).

The defaults serve the tiny and Hugging Face backbones: ``windows.frames`` frames evenly inside each window,
squashed to ``windows.image_size`` squared, audio at ``windows.audio_rate``. MERLOT Reserve asks for its own
frame times (one per 5-s segment), letterboxed frames at its grid, audio at 22,050 Hz peak-normalised by the
whole file, and the episode-level waveform and transcript (its segments reach before the window start).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True)
class StimulusSpec:
    frame_size: Optional[tuple] = None          # (H, W): letterboxed (black bars trimmed, aspect kept, padded)
    audio_rate: Optional[int] = None            # decode rate (None: windows.audio_rate)
    peak_normalise: bool = False                # divide the whole file by its peak amplitude
    frame_times: Optional[Callable[[np.ndarray], np.ndarray]] = None   # windows (n, 2) -> times (n, k)
    window_audio: bool = True                   # fill EpisodeStimuli.audio (per-window samples)
    name: str = ""                              # for messages: the backbone asking
