"""The ``merlot_reserve`` backbone: MERLOT Reserve on the study's windows (one window per TR).

Per window (see :mod:`.inputs` for the token layout and the conditions):

* vision: the window's ``windows.frames`` frames (uint8, square ``windows.image_size``) -> float [0, 1],
  bilinearly resized to the model's frame size (192 x 320 for the pretrained grid 12 x 20); frame t is
  segment t (at most 16 frames);
* language: the window's words joined by spaces, BPE-encoded with the original's vocabulary (embedded in
  the converted checkpoint; needs the ``tokenizers`` package); at most ``MAX_SLOTS`` (160, the original's
  text length) slots with the audio, the most recent words kept;
* audio: the window's waveform -> 22,050 Hz log-mel clips of 60 frames (:mod:`.spectrogram`), 6 tokens each.

``encode`` returns, for every joint-transformer layer, the mean of the residual stream (after that
layer) over the window's language positions: its word tokens (MASK tokens in the conditions without
language; one MASK slot for a window without words). Windows are padded to the longest in the batch;
padding is masked, so a window's vector does not depend on the batch it is in.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ..registry import Backbone, window_indices
from .convert import model_from_payload, read_converted
from .inputs import apply_condition, pack_windows
from .model import MAX_SEGMENT, MerlotReserve
from .spectrogram import audio_clips

MAX_SLOTS = 160


def bpe_tokenizer(tokenizer_json: str) -> Callable[[str], list]:
    """text -> BPE ids with the original's vocabulary (HF ``tokenizers`` JSON)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError("model.backbone: merlot_reserve needs the 'tokenizers' package "
                          "(pip install tokenizers)") from None
    tok = Tokenizer.from_str(tokenizer_json)
    return lambda text: tok.encode(text).ids


class MerlotBackbone(Backbone):
    name = "merlot_reserve"

    def __init__(self, model: MerlotReserve, tokenize: Callable[[str], list], n_frames: int):
        if not 1 <= n_frames <= int(MAX_SEGMENT):
            raise ConfigError(f"windows.frames: MERLOT Reserve takes 1..{int(MAX_SEGMENT)} frames per window "
                              f"(one segment each), got {n_frames}")
        self.model = model.eval()
        self.cfg = model.cfg
        self.tokenize = tokenize
        self.n_frames = n_frames
        self.n_layers = self.cfg.joint_num_layers
        self.hidden = self.cfg.hidden_size

    def to(self, device) -> "MerlotBackbone":
        super().to(device)
        self.model.to(self.device)
        return self

    def _frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (b, T, s, s, 3) -> float32 (b, T, H, W, 3) in [0, 1] at the model's frame size."""
        b, t = frames.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).float().div_(255.0)
        x = x.reshape(b * t, *frames.shape[2:]).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=self.cfg.image_size, mode="bilinear", align_corners=False, antialias=True)
        return x.permute(0, 2, 3, 1).reshape(b, t, *self.cfg.image_size, 3).clamp_(0.0, 1.0)

    def prepare(self, stimuli, index, condition: str):
        """The :class:`.inputs.WindowBatch` of windows ``stimuli[index]`` under ``condition`` (on the device)."""
        idx = window_indices(index, stimuli.n_windows)
        if stimuli.frames.shape[1] != self.n_frames:
            raise ConfigError(f"windows.frames: backbone built for {self.n_frames} frames per window, "
                              f"stimuli of {stimuli.episode} have {stimuli.frames.shape[1]}")
        ids = [self.tokenize(" ".join(stimuli.words[i])) for i in idx]
        clips = np.stack([audio_clips(stimuli.audio[i], stimuli.audio_rate, clip_frames=self.cfg.audio_seq_length)
                          for i in idx])
        n_audio = clips.shape[1] * self.cfg.audio_token_length
        length = min(MAX_SLOTS, max(max(len(r), 1) for r in ids) + n_audio)
        batch = pack_windows(ids, self._frames(stimuli.frames[idx]), torch.from_numpy(clips).to(self.device),
                             self.cfg.audio_token_length, length=length)
        batch = apply_condition(batch, condition)
        for k in ("tokens", "token_segment", "audio_ptr", "language"):
            setattr(batch, k, getattr(batch, k).to(self.device))
        return batch

    @torch.no_grad()
    def encode(self, stimuli, index, condition: str) -> torch.Tensor:
        self.check_condition(condition)
        batch = self.prepare(stimuli, index, condition)
        with self.autocast():
            out = self.model(**batch.model_kwargs())
        L = batch.tokens.shape[1]
        hs = out["hidden_states"][:, :, :L].float()                         # (layers, b, L, H)
        w = batch.language.float()
        pooled = (hs * w[None, :, :, None]).sum(2) / w.sum(1)[None, :, None]
        return pooled.cpu()


def build_merlot_reserve(model_cfg, windows_cfg) -> MerlotBackbone:
    """Registry factory: ``model.checkpoint`` = a .pt written by ``python -m brainalign.models.merlot.convert``."""
    if not model_cfg.checkpoint:
        raise ConfigError("model.checkpoint: the merlot_reserve backbone needs a converted checkpoint "
                          "(python -m brainalign.models.merlot.convert FLAX_CKPT OUT.pt --tokenizer "
                          "lowercase_encoder.json)")
    payload = read_converted(model_cfg.checkpoint)
    if not payload.get("tokenizer_json"):
        raise ConfigError(f"model.checkpoint: {model_cfg.checkpoint} has no BPE vocabulary; convert again with "
                          "--tokenizer lowercase_encoder.json (from the original repository)")
    tokenize = bpe_tokenizer(payload["tokenizer_json"])
    return MerlotBackbone(model_from_payload(payload), tokenize, int(windows_cfg.frames))
