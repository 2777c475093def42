"""Frames as MERLOT Reserve's preprocessing makes them: black bars trimmed, aspect kept, zero padding.

The rules are the original's (github rowanz/merlot_reserve):

* black bars (``mreserve/preprocess.py``: ``_detect_black_bars_from_video``, called by
  ``extract_frames_from_video`` with ``blackbar_threshold=32, max_perc_to_trim=0.2``): over ALL the frames
  taken from one video, a row (column) has content if some pixel of some frame has a channel >= 32; the
  crop keeps rows from the first to the last row with content, but never trims more than 20 % of the
  height (width) from either side; no content at all keeps the whole frame;
* resize and pad (``pretrain/data_utils.py``: ``resize_and_pad`` as ``mreserve/preprocess.py``'s
  ``preprocess_image_to_patches`` calls it, no random scale, no flip): uint8 -> float [0, 1]; one scale
  ``min(H / h, W / w)`` computed in float32 for both axes, the resized size truncated to integers
  (``tf.cast``); bilinear resize with antialiasing; clip to [0, 1]; the image in the top-left corner of an
  H x W canvas of zeros (padding at the bottom and the right).

:func:`letterbox` returns uint8 (rounded after the float resize: at most 0.5 / 255 from the original's
float pixels); the model divides by 255 again.
"""
from __future__ import annotations

import numpy as np

BLACKBAR_THRESHOLD = 32
MAX_TRIM = 0.2


def content_box(max_map: np.ndarray, threshold: int = BLACKBAR_THRESHOLD, max_trim: float = MAX_TRIM) -> tuple:
    """(y1, y2, x1, x2) crop from ``max_map`` (h, w): the per-pixel maximum over frames and channels."""
    h, w = max_map.shape
    has = max_map >= threshold
    rows = np.flatnonzero(has.any(1))
    cols = np.flatnonzero(has.any(0))
    rows = rows if rows.size else np.array([h // 2])
    cols = cols if cols.size else np.array([w // 2])
    y1 = min(int(rows[0]), int(h * max_trim))
    y2 = max(int(rows[-1]) + 1, int(h * (1 - max_trim)))
    x1 = min(int(cols[0]), int(w * max_trim))
    x2 = max(int(cols[-1]) + 1, int(w * (1 - max_trim)))
    return y1, y2, x1, x2


def channel_max(frame: np.ndarray) -> np.ndarray:
    """uint8 (h, w): the maximum over channels of an RGB frame (h, w, 3), to be max-accumulated over frames."""
    return frame.max(axis=-1)


def fitted_size(h: int, w: int, size: tuple) -> tuple:
    """(height, width) of an h x w image scaled into ``size`` = (H, W) keeping its aspect, as the original
    computes it: float32 scale min(H/h, W/w), products truncated."""
    H, W = (np.float32(v) for v in size)
    hf, wf = np.float32(h), np.float32(w)
    scale = min(H / hf, W / wf)
    return int(hf * scale), int(wf * scale)


def letterbox(frame: np.ndarray, size: tuple, box: tuple | None = None) -> np.ndarray:
    """uint8 (H, W, 3): ``frame`` (h, w, 3) uint8 cropped to ``box`` (y1, y2, x1, x2), resized into
    ``size`` = (H, W) keeping its aspect (bilinear, antialiased), zero-padded at the bottom and right."""
    import torch
    import torch.nn.functional as F

    if box is not None:
        y1, y2, x1, x2 = box
        frame = frame[y1:y2, x1:x2]
    H, W = (int(v) for v in size)
    h, w = frame.shape[:2]
    sh, sw = fitted_size(h, w, (H, W))
    frame = np.ascontiguousarray(frame)
    if not frame.flags.writeable:
        frame = frame.copy()
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float().div_(255.0)
    if (sh, sw) != (h, w):
        x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    x = x.clamp_(0.0, 1.0)[0].permute(1, 2, 0).mul_(255.0).round_().to(torch.uint8).numpy()
    out = np.zeros((H, W, 3), dtype=np.uint8)
    out[:sh, :sw] = x[:H, :W]
    return out
