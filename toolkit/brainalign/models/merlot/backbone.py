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
padding is masked, so a window's vector does not depend on the batch it is in. The vision and audio
encoders do not depend on the condition: their outputs are cached per window for the current episode
(~180 KB per frame for base) and shared by the conditions, so each frame and clip is encoded once.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ..conditions import modalities
from ..registry import Backbone, window_indices
from .convert import model_from_payload, read_converted
from .inputs import apply_condition, pack_windows
from .model import MAX_SEGMENT, MerlotReserve
from .spectrogram import audio_clips, n_clips

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
        self._cache_key, self._cache = None, {}

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

    def _cached(self, stimuli, idx, kind: str, compute) -> torch.Tensor:
        """Per-window encoder outputs, computed once per episode: the encoders do not depend on the
        condition, so the vision / audio tokens of a window are shared by every condition that keeps them."""
        key = (id(stimuli), stimuli.episode, stimuli.n_windows, str(self.device), self.precision)
        if self._cache_key != key:
            self._cache_key, self._cache = key, {"vision": {}, "audio": {}}
        store = self._cache[kind]
        todo = [int(i) for i in idx if int(i) not in store]
        if todo:
            with self.autocast():
                out = compute(np.asarray(todo))
            for j, i in enumerate(todo):
                store[i] = out[j]
        return torch.stack([store[int(i)] for i in idx])

    def _vision_tokens(self, stimuli, idx) -> torch.Tensor:
        return self._cached(stimuli, idx, "vision",
                            lambda sel: self.model.vision_tokens(self._frames(stimuli.frames[sel])))

    def _audio_tokens(self, stimuli, idx) -> torch.Tensor:
        def compute(sel):
            clips = np.stack([audio_clips(stimuli.audio[i], stimuli.audio_rate, clip_frames=self.cfg.audio_seq_length)
                              for i in sel])
            return self.model.audio_tokens(torch.from_numpy(clips).to(self.device))
        return self._cached(stimuli, idx, "audio", compute)

    def prepare(self, stimuli, index, condition: str):
        """(WindowBatch on the device with the condition applied, vision tokens or None, audio tokens or None)."""
        idx = window_indices(index, stimuli.n_windows)
        if stimuli.frames.shape[1] != self.n_frames:
            raise ConfigError(f"windows.frames: backbone built for {self.n_frames} frames per window, "
                              f"stimuli of {stimuli.episode} have {stimuli.frames.shape[1]}")
        keep = modalities(condition)
        ids = [self.tokenize(" ".join(stimuli.words[i])) for i in idx]
        S = n_clips(stimuli.audio.shape[1], stimuli.audio_rate, self.cfg.audio_seq_length)
        n_audio = S * self.cfg.audio_token_length
        length = min(MAX_SLOTS, max(max(len(r), 1) for r in ids) + n_audio)
        batch = apply_condition(pack_windows(ids, None, None, self.cfg.audio_token_length, length=length,
                                             n_clips=S), condition)
        for k in ("tokens", "token_segment", "audio_ptr", "language"):
            setattr(batch, k, getattr(batch, k).to(self.device))
        vis = self._vision_tokens(stimuli, idx) if "vision" in keep else None
        aud = self._audio_tokens(stimuli, idx) if "audio" in keep else None
        return batch, vis, aud

    @torch.no_grad()
    def encode(self, stimuli, index, condition: str) -> torch.Tensor:
        self.check_condition(condition)
        batch, vis, aud = self.prepare(stimuli, index, condition)
        with self.autocast():
            out = self.model(tokens=batch.tokens, token_segment=batch.token_segment, audio_ptr=batch.audio_ptr,
                             vision_tokens=vis, audio_tokens=aud)
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
