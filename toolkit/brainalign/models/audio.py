"""Log-mel spectrograms in torch (no torchaudio): STFT + an HTK-scale triangular mel filterbank."""
from __future__ import annotations

import math

import numpy as np
import torch

WIN_SECONDS = 0.025      # analysis window (Hann)
HOP_SECONDS = 0.010      # hop between spectrogram frames
LOG_FLOOR = 1e-6         # added to mel power before the log (silence -> log(1e-6))


def hz_to_mel(f):
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def stft_params(sample_rate: int) -> tuple[int, int, int]:
    """(n_fft, win_length, hop_length) in samples: 25 ms Hann window, 10 ms hop, n_fft the next power of 2."""
    win = max(2, int(round(WIN_SECONDS * sample_rate)))
    hop = max(1, int(round(HOP_SECONDS * sample_rate)))
    return 1 << (win - 1).bit_length(), win, hop


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: float, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular filters, float32 (n_freqs, n_mels), peak 1, no area normalisation.

    FFT bin k has frequency k * (sample_rate / 2) / (n_freqs - 1). Filter j rises linearly (in Hz) from
    f[j] to its peak at f[j+1] and falls to zero at f[j+2], where f = n_mels + 2 points evenly spaced on the
    HTK mel scale between f_min and f_max (default sample_rate / 2).
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = np.linspace(0.0, sample_rate / 2, n_freqs)
    pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    width = np.diff(pts)                                   # (n_mels + 1,)
    slopes = pts[None, :] - freqs[:, None]                 # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / width[:-1]                    # rising edge
    up = slopes[:, 2:] / width[1:]                         # falling edge
    fb = np.maximum(0.0, np.minimum(down, up))
    return torch.from_numpy(fb.astype(np.float32))


def log_mel(wave: torch.Tensor, sample_rate: int, n_mels: int) -> torch.Tensor:
    """Log-mel spectrogram, float32 (batch, n_frames, n_mels) of float waveforms (batch, n_samples).

    n_frames = 1 + n_samples // hop (centred frames, zero padding at the edges).
    """
    n_fft, win, hop = stft_params(sample_rate)
    wave = wave.float()
    window = torch.hann_window(win, periodic=True, device=wave.device)
    spec = torch.stft(wave, n_fft=n_fft, hop_length=hop, win_length=win, window=window, center=True,
                      pad_mode="constant", return_complex=True)          # (batch, n_freqs, n_frames)
    power = spec.real ** 2 + spec.imag ** 2
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate).to(wave.device)
    mel = torch.einsum("bft,fm->btm", power, fb)
    return torch.log(mel + LOG_FLOOR)


def stack_frames(feats: torch.Tensor, stack: int) -> torch.Tensor:
    """(batch, n_frames, d) -> (batch, ceil(n_frames / stack), stack * d), padding with log(LOG_FLOOR)."""
    b, t, d = feats.shape
    n = math.ceil(t / stack)
    if n * stack != t:
        pad = feats.new_full((b, n * stack - t, d), math.log(LOG_FLOOR))
        feats = torch.cat([feats, pad], dim=1)
    return feats.reshape(b, n, stack * d)
