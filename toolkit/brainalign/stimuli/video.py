"""Video frames by presentation time, decoded with PyAV in one streaming pass (mp4, mkv, any FFmpeg container).

Only the frames needed are converted to RGB and kept, so memory stays O(len(times)), not O(episode).
Times are seconds on the container's presentation timeline (frame pts x time base).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError


def _open(path):
    import av

    path = Path(path)
    if not path.is_file():
        raise DataError(f"video not found: {path}")
    try:
        container = av.open(str(path))
    except Exception as e:  # av.error.InvalidDataError and friends
        raise DataError(f"video {path} cannot be opened (corrupt or not a video): {e}") from None
    if not container.streams.video:
        container.close()
        raise DataError(f"video {path} has no video stream")
    return container


def video_info(path) -> tuple[float, float, bool]:
    """(duration_s, fps, has_audio) of a video file.

    The duration is the video stream's own (what its frames cover), falling back to the container's
    duration where the stream does not record one (e.g. mkv).
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        if not duration and container.duration is not None:
            import av

            duration = float(container.duration / av.time_base)
        if not duration and stream.frames and fps:
            duration = stream.frames / fps
        if not duration:
            raise DataError(f"video {path}: cannot determine its duration")
        return duration, fps, bool(container.streams.audio)
    finally:
        container.close()


def _stream_frames(path, times, convert, store) -> None:
    """Decode ``path`` once and call ``store(i, convert(frame))`` for every requested time ``times[i]`` with
    the frame shown then (each shown frame converted once). Times before the first frame get the first frame;
    times after the last frame get the last frame."""
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if len(times) == 0:
        return
    if not np.all(np.isfinite(times)):
        raise DataError(f"video {path}: requested frame times contain NaN/inf")
    order = np.argsort(times, kind="stable")
    container = _open(path)
    k = 0                     # next position in ``order`` to fill
    prev = None               # last decoded frame (shown until the next frame's pts)

    def emit(frame, upto):
        nonlocal k
        if k >= len(order) or not (times[order[k]] < upto):
            return
        value = convert(frame)
        while k < len(order) and times[order[k]] < upto:
            store(int(order[k]), value)
            k += 1

    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.time)
                if prev is None:
                    emit(frame, t)          # times before the first frame: the first frame
                else:
                    emit(prev, t)           # times in [prev.time, t): the previous frame
                prev = frame
                if k >= len(order):
                    break
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"video {path}: decoding failed ({type(e).__name__}: {e})") from None
        if prev is None:
            raise DataError(f"video {path}: no decodable frames")
        emit(prev, np.inf)                  # times after the last frame: the last frame
    finally:
        container.close()


def sample_frames(path, times, size: int) -> np.ndarray:
    """The frame shown at each time, resized to size x size RGB (squashed: the tiny model's input).

    times: float (n,) seconds, in any order. Returns uint8 (n, size, size, 3). A time before the first
    frame gets the first frame; a time after the last frame gets the last frame.
    """
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    out = np.zeros((len(times), size, size, 3), dtype=np.uint8)
    _stream_frames(path, times, lambda f: f.reformat(width=size, height=size, format="rgb24").to_ndarray(),
                   out.__setitem__)
    return out


def sample_frames_letterboxed(path, times, size: tuple, trim: bool = True) -> tuple:
    """MERLOT Reserve's frames (:mod:`.frames`): the frame shown at each time, decoded at the source
    resolution, black bars trimmed (one crop for all the requested frames of the video, as the original
    does per video), resized into ``size`` = (H, W) keeping the aspect, zero-padded bottom/right.

    Two decoding passes (the first finds the crop from the per-pixel maximum over the requested frames,
    so memory stays O(len(times) x H x W), never O(frames at source resolution)).
    Returns (uint8 (n, H, W, 3), crop (y1, y2, x1, x2) in source pixels).
    """
    from .frames import channel_max, content_box, letterbox

    times = np.asarray(times, dtype=np.float64).reshape(-1)
    H, W = (int(v) for v in size)
    out = np.zeros((len(times), H, W, 3), dtype=np.uint8)
    if len(times) == 0:
        return out, None
    rgb = lambda f: f.to_ndarray(format="rgb24")        # noqa: E731  (source resolution)
    box = None
    if trim:
        acc = {}

        def accumulate(i, m):
            acc["max"] = m if "max" not in acc else np.maximum(acc["max"], m)
        _stream_frames(path, times, lambda f: channel_max(rgb(f)), accumulate)
        box = content_box(acc["max"])
    _stream_frames(path, times, lambda f: letterbox(rgb(f), (H, W), box), out.__setitem__)
    return out, box
