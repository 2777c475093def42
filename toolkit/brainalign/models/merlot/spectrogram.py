"""MERLOT Reserve's audio input: log-mel clips as its pretraining computed them (librosa-compatible, numpy).

Parameters of the original (``mreserve/preprocess.py``, ``pretrain/configs``): 22,050 Hz mono, power
spectrogram with n_fft 1536, hop 588, a symmetric Hann window, centred frames with reflect padding
(librosa < 0.10), 64 Slaney-scale mel bands 20 Hz - 11,025 Hz with Slaney area normalisation,
``log(mel + 0.1) - log(0.1)`` (silence -> 0), then a 65th column holding the playback speed (1).
One clip = 60 frames (~1.6 s); a window's spectrogram is cut into consecutive clips, the last one
padded with silence (0).
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


def log_mel(wave: np.ndarray) -> np.ndarray:
    """float32 (n_frames, 64) for a mono 22,050 Hz waveform (n_samples,); n_frames = 1 + n_samples // 588."""
    wave = np.asarray(wave, dtype=np.float64)
    pad = N_FFT // 2
    if wave.size <= pad:                      # reflect padding needs more samples than the pad
        wave = np.concatenate([wave, np.zeros(pad + 1 - wave.size)])
    x = np.pad(wave, pad, mode="reflect")
    n = 1 + (x.size - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    window = np.hanning(N_FFT)                # symmetric Hann, as scipy.signal.windows.hann(N)
    power = np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2          # (n, 1 + n_fft // 2)
    mel = power @ mel_filterbank().T
    return (np.log(mel + LOG_EPS) - math.log(LOG_EPS)).astype(np.float32)


def resample(wave: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy) of (..., n_samples) from ``rate`` to ``target`` Hz."""
    if rate == target:
        return np.asarray(wave, dtype=np.float32)
    from scipy.signal import resample_poly
    g = math.gcd(int(rate), int(target))
    return resample_poly(np.asarray(wave, dtype=np.float64), target // g, rate // g, axis=-1).astype(np.float32)


def n_clips(n_samples: int, rate: int, clip_frames: int = CLIP_FRAMES) -> int:
    """Clips for a window of ``n_samples`` at ``rate``: its frames / clip_frames, an overhang under 20% of a
    clip cut (5 s -> 188 frames -> 3 clips, as in the original), at least one."""
    n_target = math.ceil(n_samples * SAMPLE_RATE / rate)      # the length resample_poly returns
    frames = 1 + max(n_target, N_FFT // 2 + 1) // HOP
    return max(1, math.ceil(frames / clip_frames - 0.2))


def audio_clips(wave: np.ndarray, rate: int, count: int | None = None, clip_frames: int = CLIP_FRAMES,
                n_mels: int = N_MELS) -> np.ndarray:
    """float32 (n_clips, clip_frames, n_mels + 1) model input for one window's waveform (n_samples,) at ``rate``.

    ``count`` default: :func:`n_clips`. Frames past the audio are silence (0).
    """
    if n_mels != N_MELS:
        raise ValueError(f"MERLOT Reserve takes {N_MELS} mel bands, not {n_mels}")
    spec = log_mel(resample(wave, rate))
    count = n_clips(len(wave), rate, clip_frames) if count is None else count
    out = np.zeros((count, clip_frames, n_mels + 1), dtype=np.float32)
    flat = out[..., :n_mels].reshape(count * clip_frames, n_mels)
    k = min(flat.shape[0], spec.shape[0])
    flat[:k] = spec[:k]
    out[..., :n_mels] = flat.reshape(count, clip_frames, n_mels)
    out[..., n_mels] = 1.0                      # playback speed
    return out
