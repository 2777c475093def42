"""MERLOT Reserve's audio input: log-mel clips as its preprocessing computed them (librosa-compatible, numpy).

Parameters of the original (``mreserve/preprocess.py`` ``make_spectrogram``, ``pretrain/configs``): 22,050 Hz
mono, power spectrogram with n_fft 1536, hop 588, a symmetric Hann window (``scipy.signal.windows.hann``),
centred frames with reflect padding (librosa 0.8), 64 Slaney-scale mel bands 20 Hz - 11,025 Hz with Slaney
area normalisation, ``log(mel + 0.1) - log(0.1)`` (silence -> 0), then a 65th column holding the playback
speed (1). A 5-s segment gives 188 frames; its 3 clips of 60 frames are frames [2:62], [64:124], [126:186]
(``pad_size`` 2: the edge frames, which see the reflect padding, are skipped). The waveform is the whole
file divided by its peak (``stimuli.audio.peak_normalise``).
"""
from __future__ import annotations

import functools
import math

import numpy as np

SAMPLE_RATE = 22050
N_FFT = 1536
HOP = 588
N_MELS = 64
F_MIN, F_MAX = 20.0, 11025.0
LOG_EPS = 0.1
CLIP_FRAMES = 60
PAD_FRAMES = 2
CLIP_OFFSETS = tuple(PAD_FRAMES * (r + 1) + CLIP_FRAMES * r for r in range(3))     # (2, 64, 126)
TVQA_RATE = 22620          # finetune/tvqa/prep_data.py: 4.6667 s -> exactly 180 frames, read as 22,050 Hz
TVQA_SEGMENT_SECONDS = 4.6666667


def hz_to_mel(f):
    """Slaney mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above (27 mels per ln 6.4)."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    logpart = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (math.log(6.4) / 27.0)
    return np.where(f >= 1000.0, logpart, lin)


def mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    logpart = 1000.0 * np.exp((math.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, logpart, lin)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=F_MIN, fmax=F_MAX) -> np.ndarray:
    """float64 (n_mels, 1 + n_fft // 2) triangular filters on Slaney mel points, each scaled by
    2 / (upper edge - lower edge) Hz (Slaney area normalisation)."""
    freqs = np.linspace(0.0, sr / 2.0, 1 + n_fft // 2)
    pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    width = np.diff(pts)
    ramps = pts[:, None] - freqs[None, :]
    lower = -ramps[:-2] / width[:-1, None]
    upper = ramps[2:] / width[1:, None]
    fb = np.maximum(0.0, np.minimum(lower, upper))
    return fb * (2.0 / (pts[2:] - pts[:-2]))[:, None]


def frames_log_mel(frames: np.ndarray) -> np.ndarray:
    """float32 (..., 64) log-mel of windowed-to-be frames (..., n_fft) of samples."""
    window = np.hanning(N_FFT)                # symmetric Hann, as scipy.signal.windows.hann(N)
    power = np.abs(np.fft.rfft(np.asarray(frames, np.float64) * window, axis=-1)) ** 2
    mel = power @ mel_filterbank().T
    return (np.log(mel + LOG_EPS) - math.log(LOG_EPS)).astype(np.float32)


def log_mel(wave: np.ndarray) -> np.ndarray:
    """float32 (n_frames, 64) for a mono waveform (n_samples,), centred frames with reflect padding;
    n_frames = 1 + n_samples // 588."""
    wave = np.asarray(wave, dtype=np.float64)
    pad = N_FFT // 2
    if wave.size <= pad:                      # reflect padding needs more samples than the pad
        wave = np.concatenate([wave, np.zeros(pad + 1 - wave.size)])
    x = np.pad(wave, pad, mode="reflect")
    n = 1 + (x.size - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    return frames_log_mel(x[idx])


def with_speed(spec: np.ndarray) -> np.ndarray:
    """(..., 64) -> (..., 65): the playback-speed column (1) appended."""
    return np.concatenate([spec, np.ones(spec.shape[:-1] + (1,), np.float32)], -1)


def segment_clips(waveform: np.ndarray, rate: int, start: float, which=(0, 1, 2)) -> np.ndarray:
    """float32 (len(which), 60, 65): the clips of the 5-s segment starting at ``start`` s, as
    ``make_spectrogram`` cuts them from the segment ``waveform[floor(rate * start):]``: clip r = frames
    [CLIP_OFFSETS[r], + 60) of the segment's centred spectrogram. These frames never reach the segment's
    edges, so they are computed straight from the waveform (samples before 0 or after its end are 0)."""
    if int(rate) != SAMPLE_RATE:
        raise ValueError(f"MERLOT Reserve's audio is {SAMPLE_RATE} Hz, got {rate}")
    p0 = int(math.floor(rate * start))
    offsets = np.asarray([CLIP_OFFSETS[r] for r in which], dtype=np.int64)
    centres = p0 + (offsets[:, None] + np.arange(CLIP_FRAMES)[None, :]) * HOP            # (k, 60)
    idx = centres[..., None] - N_FFT // 2 + np.arange(N_FFT)                               # (k, 60, n_fft)
    ok = (idx >= 0) & (idx < len(waveform))
    samples = np.where(ok, np.asarray(waveform)[np.clip(idx, 0, max(len(waveform) - 1, 0))], 0.0) \
        if len(waveform) else np.zeros(idx.shape)
    return with_speed(frames_log_mel(samples))


def tvqa_clips(segment_wave: np.ndarray) -> np.ndarray:
    """float32 (3, 60, 65) of one TVQA segment (4.667 s decoded at 22,620 Hz), as the original's TVQA prep:
    ``make_spectrogram(wave, sr=22050, pad_size=0)`` -> 180 frames -> 3 consecutive clips."""
    spec = log_mel(segment_wave)
    if spec.shape[0] < 3 * CLIP_FRAMES:
        spec = np.concatenate([spec, np.zeros((3 * CLIP_FRAMES - spec.shape[0], N_MELS), np.float32)])
    return with_speed(spec[: 3 * CLIP_FRAMES].reshape(3, CLIP_FRAMES, N_MELS))
