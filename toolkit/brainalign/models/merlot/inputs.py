"""Window batches for MERLOT Reserve: the slots of :func:`.layout.window_tokens` as model tensors.

Row b holds window b's slots in time order, then PADDING (masked out of attention). Per slot:
``token_segment = sub-segment // 3`` (``mreserve/modeling.py`` ``embed_video``: ``token_segment_idx =
subseg_idxs // 3``) and, for AUDIOSPAN slots, ``audio_ptr`` = the clip of its sub-segment (the original's
``audio_pointers = subseg_idxs``); the k-th AUDIOSPAN of a run takes the clip's token k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .layout import SUBSEGMENTS
from .model import AUDIOSPAN, PADDING


@dataclass
class WindowBatch:
    """tokens, token_segment, audio_ptr: int64 (B, L); pooled: bool (B, L) slots whose states are pooled;
    frames: float32 (B, T, H, W, 3) in [0, 1] or None; audio: float32 (B, S, 60, 65) or None."""
    tokens: torch.Tensor
    token_segment: torch.Tensor
    audio_ptr: torch.Tensor
    pooled: torch.Tensor
    frames: Optional[torch.Tensor] = None
    audio: Optional[torch.Tensor] = None

    def model_kwargs(self) -> dict:
        return dict(tokens=self.tokens, token_segment=self.token_segment, frames=self.frames,
                    audio=self.audio, audio_ptr=self.audio_ptr)

    def to(self, device) -> "WindowBatch":
        for k in ("tokens", "token_segment", "audio_ptr", "pooled", "frames", "audio"):
            v = getattr(self, k)
            if v is not None:
                setattr(self, k, v.to(device))
        return self


def batch_windows(rows: list, frames=None, audio=None) -> WindowBatch:
    """WindowTokens rows -> a WindowBatch padded to the longest row."""
    L = max(1, max(len(r.tokens) for r in rows))
    B = len(rows)
    tokens = torch.full((B, L), PADDING, dtype=torch.long)
    seg = torch.zeros((B, L), dtype=torch.long)
    ptr = torch.full((B, L), -1, dtype=torch.long)
    pooled = torch.zeros((B, L), dtype=torch.bool)
    for b, r in enumerate(rows):
        n = len(r.tokens)
        if not n:
            continue
        t = torch.tensor(r.tokens, dtype=torch.long)
        s = torch.tensor(r.subseg, dtype=torch.long)
        tokens[b, :n] = t
        seg[b, :n] = s // SUBSEGMENTS
        ptr[b, :n] = torch.where(t == AUDIOSPAN, s, torch.full_like(s, -1))
        pooled[b, :n] = torch.tensor(r.pooled, dtype=torch.bool)
    return WindowBatch(tokens, seg, ptr, pooled, frames, audio)
