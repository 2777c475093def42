"""Mono audio at a requested sample rate, from a wav file or any container's audio track (PyAV).

Sample 0 of the result is t = 0 s on the container's presentation timeline. A container's track is decoded
and resampled as one stream placed by its first frame's pts, so encoder priming (AAC, negative pts) is
dropped and a track starting after t = 0 is zero-padded in front. (Gaps inside a track are not re-timed.)
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import DataError


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly) of float (n,) from rate_in to rate_out."""
    if int(rate_in) == int(rate_out):
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    frac = Fraction(int(rate_out), int(rate_in))
    return resample_poly(x.astype(np.float64), frac.numerator, frac.denominator).astype(np.float32)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(str(path))
    except Exception as e:
        raise DataError(f"audio {path} is not a readable wav file: {e}") from None
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        if info.min == 0:  # unsigned 8-bit PCM
            data = (data.astype(np.float32) - 128.0) / 128.0
        else:
            data = data.astype(np.float32) / np.float32(-info.min)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    return data, int(rate)


def _read_container(path: Path, rate: int) -> np.ndarray:
    """Decode the first audio track, resample to ``rate`` while streaming (FFmpeg swresample, float planar,
    channels kept and averaged here), and place the samples by the first frame's pts."""
    import av

    try:
        container = av.open(str(path))
    except Exception as e:
        raise DataError(f"audio {path} cannot be opened: {e}") from None
    try:
        if not container.streams.audio:
            raise DataError(f"{path} has no audio track")
        stream = container.streams.audio[0]
        resampler = None
        t0 = None
        chunks = []
        try:
            for frame in container.decode(stream):
                if t0 is None:
                    t0 = float(frame.time) if frame.pts is not None else 0.0
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=int(rate))
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(len(out.layout.channels), -1).mean(axis=0))
            if resampler is not None:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(len(out.layout.channels), -1).mean(axis=0))
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"audio track of {path}: decoding failed ({type(e).__name__}: {e})") from None
    finally:
        container.close()
    if not chunks:
        raise DataError(f"audio track of {path} has no decodable samples")
    x = np.concatenate(chunks).astype(np.float32, copy=False)
    shift = int(round(t0 * rate))
    if shift < 0:
        x = x[-shift:]
    elif shift > 0:
        x = np.concatenate([np.zeros(shift, np.float32), x])
    return x


def read_audio(path, rate: int) -> np.ndarray:
    """float32 (n,) mono waveform at ``rate`` Hz (channels averaged) from a .wav or any audio/video file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio not found: {path}")
    if path.suffix.lower() == ".wav":
        x, rate_in = _read_wav(path)
        x = _resample(x, rate_in, rate)
    else:
        x = _read_container(path, rate)
    if x.size and not np.all(np.isfinite(x)):
        raise DataError(f"audio {path}: contains NaN/inf samples")
    return x


def peak_normalise(x: np.ndarray) -> np.ndarray:
    """``x`` divided by its peak absolute amplitude, as MERLOT Reserve's preprocessing does to the whole file
    (``waveform /= max(abs(waveform).max(), 1.0)`` on 16-bit samples: the floor is one 16-bit step)."""
    x = np.asarray(x, dtype=np.float32)
    peak = float(np.abs(x).max()) if x.size else 0.0
    return x / np.float32(max(peak, 2.0 ** -15))


def source_sample_rate(path) -> int | None:
    """The sample rate stored in the file (wav header or the first audio stream), None if unknown."""
    path = Path(path)
    if path.suffix.lower() == ".wav":
        from scipy.io import wavfile

        try:
            return int(wavfile.read(str(path), mmap=True)[0])
        except Exception:
            return None
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                return None
            s = c.streams.audio[0]
            return int(s.codec_context.sample_rate or s.rate or 0) or None
    except Exception:
        return None
