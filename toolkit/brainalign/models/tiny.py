"""The built-in demo backbone: a tiny multimodal pre-LN transformer, deterministic from ``model.seed``.

Sequence per window (modalities dropped by the condition are absent, not blanked)::

    [CLS] + vision tokens + word tokens (padded, masked) + audio tokens

* vision: each of the window's F frames (uint8 RGB, image_size x image_size) is cut into patch x patch
  patches -> linear patch embedding + learned patch-position + learned frame embedding
  (F * (image_size / patch)**2 tokens).
* language: each word -> id ``3 + crc32(word.lower()) % (vocab - 3)`` (0 = PAD, 1 = MASK, 2 = CLS)
  -> embedding + sinusoidal position; windows with fewer words are padded and masked out of attention.
* audio: log-mel spectrogram (25 ms Hann window, 10 ms hop, ``n_mels`` HTK mel bands up to Nyquist),
  AUDIO_STACK consecutive frames stacked per token -> linear embedding + sinusoidal position.
* every token gets a learned modality-type embedding (CLS, vision, language, audio).

``encode`` returns, for each of the ``layers`` transformer layers (layer l = the residual stream after
block l; the embeddings themselves are not returned), a modality-balanced mean: the average of the mean over
the vision tokens present and the mean over the real (non-pad) word tokens present, each modality weighted
equally whatever its token count (32 patches vs a few words per TR would otherwise drown the language
positions). Audio tokens are context only (attended to, not pooled). So ``joint``/``no_audio`` pool
vision + words, ``no_vision``/``language_only`` words, ``no_language``/``vision_only`` vision; a window in
which no pooled modality is present (e.g. ``language_only`` without words) gets the CLS state, so every
window has a defined vector.

Weights: drawn from ``torch.Generator().manual_seed(model.seed)`` on the CPU (linear weights
N(0, 1/fan_in), except query/key rows N(0, 4/fan_in) so that attention is selective and the modalities
interact strongly; embeddings N(0, 1), learned positions N(0, 0.25), biases 0, LayerNorm 1/0) unless
``model.checkpoint`` names a state dict written by :func:`save_checkpoint`.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..h5io import atomic_path
from .audio import log_mel, stack_frames
from .conditions import modalities
from .registry import Backbone, window_indices

PAD, MASK, CLS = 0, 1, 2
N_SPECIAL = 3
AUDIO_STACK = 8                    # mel frames (10 ms each) per audio token
LOG_MEL_SHIFT, LOG_MEL_SCALE = 5.0, 5.0   # audio token input = (log_mel + shift) / scale
TYPE_CLS, TYPE_VISION, TYPE_LANGUAGE, TYPE_AUDIO = range(4)
CHECKPOINT_FORMAT = "brainalign-tiny/1"
QK_GAIN = 2.0                      # query/key init gain: attention logits ~4x sharper than unit-variance init


@dataclass(frozen=True)
class TinySpec:
    """Everything that fixes the tiny model's parameter shapes."""
    hidden: int
    layers: int
    heads: int
    vocab: int
    patch: int
    n_mels: int
    frames: int
    image_size: int
    audio_rate: int

    @classmethod
    def from_config(cls, model_cfg, windows_cfg) -> "TinySpec":
        t = model_cfg.tiny
        spec = cls(t.hidden, t.layers, t.heads, t.vocab, t.patch, t.n_mels, windows_cfg.frames,
                   windows_cfg.image_size, windows_cfg.audio_rate)
        checks = [
            (t.hidden > 0 and t.heads > 0 and t.hidden % t.heads == 0, "model.tiny.hidden",
             f"{t.hidden} must be a positive multiple of model.tiny.heads ({t.heads})"),
            (t.layers > 0, "model.tiny.layers", f"must be positive, got {t.layers}"),
            (t.vocab > N_SPECIAL, "model.tiny.vocab", f"must exceed {N_SPECIAL}, got {t.vocab}"),
            (t.n_mels > 0, "model.tiny.n_mels", f"must be positive, got {t.n_mels}"),
            (t.patch > 0 and windows_cfg.image_size % t.patch == 0, "windows.image_size",
             f"{windows_cfg.image_size} is not a multiple of model.tiny.patch ({t.patch})"),
            (windows_cfg.frames > 0, "windows.frames", f"must be positive, got {windows_cfg.frames}"),
        ]
        for ok, key, msg in checks:
            if not ok:
                raise ConfigError(f"{key}: {msg}")
        return spec

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch) ** 2


def token_ids(words, vocab: int) -> list[int]:
    """Stable word -> id hash: 3 + crc32(lower-cased UTF-8 word) mod (vocab - 3)."""
    return [N_SPECIAL + zlib.crc32(str(w).lower().encode("utf-8")) % (vocab - N_SPECIAL) for w in words]


def sinusoid(n: int, dim: int, device=None) -> torch.Tensor:
    """Fixed sinusoidal positions, float32 (n, dim)."""
    pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(1e4) / dim))
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then + mlp(ln(x))."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, 4 * hidden)
        self.fc2 = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """x (B, T, H); attend bool (B, T): keys that may be attended to."""
        b, t, h = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attend[:, None, None, :])
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, h))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


@dataclass
class TinyOutput:
    hidden: torch.Tensor   # (layers, B, T, H): residual stream after each block
    valid: torch.Tensor    # bool (B, T): real tokens (False for word padding)
    types: torch.Tensor    # int64 (T,): TYPE_* of each position
    pool_weights: torch.Tensor  # float32 (B, T): weight of each position in ``pool`` (rows sum to 1)

    @property
    def pooled_mask(self) -> torch.Tensor:
        """bool (B, T): positions that ``pool`` averages."""
        return self.pool_weights > 0


class TinyMultimodal(nn.Module):
    def __init__(self, spec: TinySpec):
        super().__init__()
        self.spec = spec
        h = spec.hidden
        self.patch_embed = nn.Linear(3 * spec.patch ** 2, h)
        self.patch_pos = nn.Parameter(torch.zeros(spec.n_patches, h))
        self.frame_pos = nn.Parameter(torch.zeros(spec.frames, h))
        self.tok_embed = nn.Embedding(spec.vocab, h)
        self.audio_embed = nn.Linear(AUDIO_STACK * spec.n_mels, h)
        self.type_embed = nn.Parameter(torch.zeros(4, h))
        self.blocks = nn.ModuleList(Block(h, spec.heads) for _ in range(spec.layers))

    @torch.no_grad()
    def init_weights(self, seed: int):
        """Deterministic init from ``seed`` (same values on every device and platform)."""
        g = torch.Generator().manual_seed(int(seed))
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                new = torch.zeros_like(p)
            elif ".ln" in name:
                new = torch.ones_like(p)
            elif name in ("patch_pos", "frame_pos"):
                new = torch.randn(p.shape, generator=g) * 0.5
            elif p.ndim == 2 and name not in ("tok_embed.weight", "type_embed"):
                new = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1])    # Linear: (out, in)
            else:
                new = torch.randn(p.shape, generator=g)
            if name.endswith("qkv.weight"):
                new[: 2 * self.spec.hidden] *= QK_GAIN          # query and key rows
            p.copy_(new.to(p.device, p.dtype))

    # ---- token embeddings ----------------------------------------------------------------------
    def embed_vision(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8/float frames (B, F, S, S, 3), values 0..255 -> (B, F * n_patches, H)."""
        b, f, s, _, c = frames.shape
        p = self.spec.patch
        x = (frames.float() / 255.0 - 0.5) / 0.25
        x = x.view(b, f, s // p, p, s // p, p, c).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, f, -1, p * p * c)
        x = self.patch_embed(x) + self.patch_pos[None, None] + self.frame_pos[None, :f, None]
        return x.reshape(b, -1, self.spec.hidden) + self.type_embed[TYPE_VISION]

    def embed_words(self, ids: torch.Tensor) -> torch.Tensor:
        """int64 (B, W) with PAD = 0 -> (B, W, H)."""
        pos = sinusoid(ids.shape[1], self.spec.hidden, ids.device)
        return self.tok_embed(ids) + pos[None] + self.type_embed[TYPE_LANGUAGE]

    def embed_audio(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """float waveform (B, n_samples) -> (B, ceil(n_frames / AUDIO_STACK), H)."""
        mel = (log_mel(wave, sample_rate, self.spec.n_mels) + LOG_MEL_SHIFT) / LOG_MEL_SCALE
        x = self.audio_embed(stack_frames(mel, AUDIO_STACK))
        return x + sinusoid(x.shape[1], self.spec.hidden, x.device)[None] + self.type_embed[TYPE_AUDIO]

    def forward(self, frames=None, ids=None, wave=None, sample_rate=None, batch=None) -> TinyOutput:
        """Run the modalities given (None = absent) and return every layer's hidden states and masks.

        frames uint8 (B, F, S, S, 3); ids int64 (B, W), PAD-padded; wave float32 (B, n_samples) at
        ``sample_rate``. Sequence order: CLS, vision, words, audio.
        """
        given = [x for x in (frames, ids, wave) if x is not None]
        if batch is None and not given:
            raise ValueError("TinyMultimodal: pass batch= when no modality is given (a CLS-only run)")
        b = batch if batch is not None else given[0].shape[0]
        dev = self.type_embed.device
        cls = (self.tok_embed.weight[CLS] + self.type_embed[TYPE_CLS]).expand(b, 1, -1)
        seq, valid, types = [cls], [torch.ones(b, 1, dtype=torch.bool, device=dev)], [TYPE_CLS]
        if frames is not None:
            v = self.embed_vision(frames)
            seq.append(v)
            valid.append(torch.ones(b, v.shape[1], dtype=torch.bool, device=dev))
            types += [TYPE_VISION] * v.shape[1]
        if ids is not None and ids.shape[1] > 0:
            seq.append(self.embed_words(ids))
            valid.append(ids != PAD)
            types += [TYPE_LANGUAGE] * ids.shape[1]
        if wave is not None:
            a = self.embed_audio(wave, sample_rate)
            seq.append(a)
            valid.append(torch.ones(b, a.shape[1], dtype=torch.bool, device=dev))
            types += [TYPE_AUDIO] * a.shape[1]
        x = torch.cat(seq, dim=1)
        attend = torch.cat(valid, dim=1)
        hidden = []
        for block in self.blocks:
            x = block(x, attend)
            hidden.append(x)
        types_t = torch.tensor(types, device=dev)
        return TinyOutput(torch.stack(hidden), attend, types_t, pool_weights(attend, types_t))

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Word logits (…, vocab) from hidden states (…, H), tied to the token embedding (for MLM)."""
        return F.layer_norm(hidden.float(), hidden.shape[-1:]) @ self.tok_embed.weight.float().T


def pool_weights(valid: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
    """float32 (B, T) position weights of the modality-balanced mean (see the module docstring)."""
    w = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
    groups = torch.zeros(valid.shape[0], dtype=torch.float32, device=valid.device)
    for t in (TYPE_VISION, TYPE_LANGUAGE):
        m = (valid & (types == t)[None]).to(torch.float32)
        n = m.sum(1, keepdim=True)
        w += m / n.clamp(min=1)
        groups += (n[:, 0] > 0).to(torch.float32)
    w = w / groups.clamp(min=1)[:, None]
    w[:, 0] += (groups == 0).to(torch.float32)      # nothing pooled: the CLS state (position 0)
    return w


def pool(out: TinyOutput) -> torch.Tensor:
    """Modality-balanced mean over the pooled positions: float32 (layers, B, H)."""
    return torch.einsum("lbth,bt->lbh", out.hidden.float(), out.pool_weights)


class TinyBackbone(Backbone):
    name = "tiny"

    def __init__(self, spec: TinySpec, seed: int = 0, checkpoint=None):
        self.spec = spec
        self.n_layers = spec.layers
        self.hidden = spec.hidden
        self.module = TinyMultimodal(spec)
        self.module.init_weights(seed)
        if checkpoint:
            load_checkpoint(self.module, checkpoint)
        self.module.eval()

    def to(self, device):
        super().to(device)
        self.module.to(self.device)
        return self

    def inputs(self, stimuli, idx: np.ndarray, condition: str) -> dict:
        """Model inputs for windows ``idx`` under ``condition`` (absent modalities are None)."""
        keep = modalities(condition)
        spec, dev = self.spec, self.device
        kw = {"batch": len(idx)}
        if "vision" in keep:
            fr = stimuli.frames
            want = (spec.frames, spec.image_size, spec.image_size, 3)
            if fr.ndim != 5 or tuple(fr.shape[1:]) != want:
                raise DataError(f"episode {stimuli.episode}: frames have shape {tuple(fr.shape)}, the tiny "
                                f"model expects (n_windows, {', '.join(map(str, want))}) "
                                "(windows.frames, windows.image_size)")
            kw["frames"] = torch.from_numpy(np.ascontiguousarray(fr[idx])).to(dev)
        if "language" in keep:
            rows = [token_ids(stimuli.words[i], spec.vocab) for i in idx]
            ids = torch.full((len(idx), max((len(r) for r in rows), default=0)), PAD, dtype=torch.int64)
            for b, r in enumerate(rows):
                ids[b, : len(r)] = torch.tensor(r, dtype=torch.int64)
            kw["ids"] = ids.to(dev)
        if "audio" in keep:
            if int(stimuli.audio_rate) != spec.audio_rate:
                raise DataError(f"episode {stimuli.episode}: audio at {stimuli.audio_rate} Hz but the model "
                                f"was built for windows.audio_rate = {spec.audio_rate}")
            if stimuli.audio.ndim != 2 or stimuli.audio.shape[1] == 0:
                raise DataError(f"episode {stimuli.episode}: audio has shape {tuple(stimuli.audio.shape)}, "
                                "expected (n_windows, n_samples > 0)")
            kw["wave"] = torch.from_numpy(np.ascontiguousarray(stimuli.audio[idx], dtype=np.float32)).to(dev)
            kw["sample_rate"] = spec.audio_rate
        return kw

    @torch.inference_mode()
    def encode(self, stimuli, index, condition: str) -> torch.Tensor:
        self.check_condition(condition)
        idx = window_indices(index, stimuli.n_windows)
        if len(idx) == 0:
            return torch.zeros(self.n_layers, 0, self.hidden)
        kw = self.inputs(stimuli, idx, condition)
        with self.autocast():
            out = self.module(**kw)
        return pool(out).float().cpu()

    @torch.inference_mode()
    def masked_word_logits(self, stimuli, idx, condition: str, masked) -> list[list[tuple]]:
        """The masked-word head (``brainalign mlm``), through TinyMultimodal's forward and token_logits: for window
        idx[b] and each word index in masked[b], (logits float32 (1, vocab), target int64 (1,))."""
        self.check_condition(condition)
        idx = np.asarray(idx, dtype=np.int64)
        kw = self.inputs(stimuli, idx, condition)
        ids = kw.get("ids")
        if ids is None:
            raise ConfigError(f"mlm.conditions: condition {condition!r} removes the words; nothing to predict")
        targets = ids.clone()
        for b, ws in enumerate(masked):
            ids[b, ws] = MASK
        with self.autocast():
            out = self.module(**kw)
        start = int(torch.nonzero(out.types == TYPE_LANGUAGE)[0, 0])
        res = []
        for b, ws in enumerate(masked):
            pos = torch.tensor([start + w for w in ws], dtype=torch.int64, device=ids.device)
            logits = self.module.token_logits(out.hidden[-1, b, pos]).float().cpu()      # (n_masked, vocab)
            res.append([(logits[j: j + 1], targets[b, w: w + 1].cpu()) for j, w in enumerate(ws)])
        return res


def build_tiny(model_cfg, windows_cfg) -> TinyBackbone:
    return TinyBackbone(TinySpec.from_config(model_cfg, windows_cfg), seed=model_cfg.seed,
                        checkpoint=model_cfg.checkpoint)


# ---- checkpoints ---------------------------------------------------------------------------------

def save_checkpoint(model, path) -> Path:
    """Write a TinyBackbone's (or TinyMultimodal's) weights + spec atomically to ``path`` (torch.save)."""
    module = model.module if isinstance(model, TinyBackbone) else model
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "spec": dataclasses.asdict(module.spec), "state_dict": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(module: TinyMultimodal, path):
    """Load weights written by :func:`save_checkpoint` (or a bare state dict) into ``module``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.checkpoint: file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise DataError(f"model.checkpoint: cannot read {path} as a torch checkpoint "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(payload, dict) and "state_dict" in payload:
        spec = payload.get("spec", {})
        mine = dataclasses.asdict(module.spec)
        diff = [f"{k} {spec[k]} vs {mine[k]}" for k in mine if k in spec and spec[k] != mine[k]]
        if diff:
            raise ConfigError(f"model.checkpoint: {path} was saved for another tiny model "
                              f"(checkpoint vs config: {', '.join(diff)})")
        payload = payload["state_dict"]
    if not isinstance(payload, dict):
        raise DataError(f"model.checkpoint: {path} holds no state dict")
    try:
        module.load_state_dict(payload, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        raise ConfigError(f"model.checkpoint: {path} does not fit the tiny model "
                          f"({' '.join(s.strip() for s in first[:3])})") from None
