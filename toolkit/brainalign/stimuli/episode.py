"""The model-ready stimulus of one episode: one window per fMRI TR.

Window i covers [end_i - context, end_i) seconds with end_i = (i + 1) * TR, so features at row i
describe the stimulus presented during TR i (delays to the BOLD response are added later by align).
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class EpisodeStimuli:
    episode: str
    tr: float
    windows: np.ndarray        # float64 (n_windows, 2): [start, end) seconds of each window
    frames: np.ndarray         # uint8 (n_windows, n_frames, H, W, 3): RGB frames of each window (see StimulusSpec)
    words: list                # list (n_windows) of list[str]: words whose onset lies in the window, in order
    audio: np.ndarray          # float32 (n_windows, n_samples): mono waveform of the window, zero-padded before t=0
    audio_rate: int            # samples per second of ``audio`` and ``waveform``
    waveform: Optional[np.ndarray] = None     # float32 (n,): the whole episode's audio, sample 0 = t 0 s
    transcript: Optional[list] = None         # list[Word] of the whole episode (onset, duration), by onset
    frame_times: Optional[np.ndarray] = None  # float64 (n_windows, n_frames): when each frame was shown

    @property
    def n_windows(self) -> int:
        return int(self.windows.shape[0])
