"""MERLOT Reserve (Zellers et al. 2022) in PyTorch: architecture for the official ``base``/``large`` checkpoints.

Written from the paper and the math of the original Flax code (github rowanz/merlot_reserve); module and
parameter names follow the original's parameter tree so that :mod:`.convert` is a renaming.

Components (B = batch of windows):

* ``vision_encoder``: ViT over 16-px patches of frames at the original resolution (grid ``output_grid``,
  12 x 20 patches = 192 x 320 px for the pretrained checkpoints), CLS token, 2-D rotary coordinates,
  then attention pooling of every 2 x 2 block of patches (query = mean of the block) -> grid/2 tokens.
* ``audio_encoder``: transformer over log-mel spectrogram clips (``audio_seq_length`` = 60 frames x
  (64 mels + 1 playback-speed column)), 2-frame patches (the original's stride-2 Conv1D, here a Linear
  over the flattened patch), CLS token, 1-D rotary coordinates, attention pooling of every 5 patches ->
  ``audio_token_length`` = 6 tokens per clip.
* ``token_encoder``: BPE embedding, vocab 32,768.
* ``joint_transformer``: pre-LN transformer over [tokens (text and AUDIOSPAN slots) | pooled vision
  tokens], 4-D rotary coordinates (h, w, segment/16, token index/1024).
* ``span_encoder``: 4-layer transformer with CLS over text spans (rotary coordinates 1..L / 16).
* ``head`` (the original's ``joint_proj``) and ``contrastive_scales``: pretraining heads, loaded but not
  used by :meth:`MerlotReserve.forward`; ``proj`` (H -> 1): the TVQA fine-tuning scorer (fine-tuned
  checkpoints have ``proj`` and lack ``head`` and ``span_encoder``).

Every transformer: LayerNorm eps 1e-5, pre-LN blocks (x += attn(LN(x)); x += mlp(LN(x))), a LayerNorm
on the embeddings (``pre_ln``) and one after the last block (``final_ln``), MLP expansion 4 with the
sigmoid GELU ``x * sigmoid(1.702 x)``, no bias on the attention output or the MLP output projection,
attention logits scaled by 1/sqrt(size_per_head), masked keys get a -1e10 bias.

Rotary embedding, exactly as the original computes it (including what its own code calls a bug):
for coordinates c (D axes), E = rotary_hsize / (2 D) frequencies f_e = 2 ** linspace(0, log2(max_freq/2), E)
and angles theta[d*E + e] = c_d * f_e * pi, each repeated twice -> rotary_hsize values; on the first
rotary_hsize dims of every query and key head the original computes
``x * sin(theta) + [-x0, x1, -x2, x3, ...] * cos(theta)`` (its variables named ``sin``/``cos`` hold the
cosine/sine), i.e. ``x_2k * (sin - cos)`` and ``x_2k+1 * (sin + cos)``; other dims pass unchanged.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# special tokens of the original's BPE vocabulary (mreserve/lowercase_encoder.py)
PADDING, START, END, MASK, MASKAUDIO, AUDIOSPAN, LTOVPOOL = 0, 1, 2, 3, 4, 5, 6
LN_EPS = 1e-5
MASK_BIAS = -1e10
MAX_SEGMENT = 16.0      # joint rotary: segment coordinate = segment index / 16
MAX_TOKEN = 1024.0      # joint rotary: token coordinate = (1 + position) / 1024
SPAN_MAX_LEN = 16       # span encoder rotary: coordinate = (1 + position) / 16


@dataclass(frozen=True)
class MerlotConfig:
    """Sizes of a MERLOT Reserve model (names as in the original's pretrain/configs/*.yaml)."""
    hidden_size: int = 768
    joint_num_layers: int = 12
    vit_num_layers: int = 12
    audio_num_layers: int = 12
    span_num_layers: int = 4
    vit_patch_size: int = 16
    vit_pooling_ratio: int = 2
    output_grid: tuple = (12, 20)
    audio_patch_size: int = 2
    audio_seq_length: int = 60
    audio_token_length: int = 6
    num_mels: int = 64              # the audio input has num_mels + 1 columns (playback speed last)
    vocab_size: int = 32768
    size_per_head: int = 64
    rotary_hsize: int = 32
    expansion_mult: int = 4
    joint_head: bool = True         # the pretraining projection 'head' (absent in the TVQA/VCR fine-tuned files)
    qa_head: bool = False           # the TVQA fine-tuning scorer 'proj' (H -> 1, no bias)

    def __post_init__(self):
        object.__setattr__(self, "output_grid", tuple(int(v) for v in self.output_grid))
        h, w = self.output_grid
        if self.hidden_size % self.size_per_head:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of size_per_head "
                             f"{self.size_per_head}")
        if h % self.vit_pooling_ratio or w % self.vit_pooling_ratio:
            raise ValueError(f"output_grid {self.output_grid} is not divisible by vit_pooling_ratio "
                             f"{self.vit_pooling_ratio}")
        if self.audio_seq_length % (self.audio_patch_size * self.audio_token_length):
            raise ValueError(f"audio_seq_length {self.audio_seq_length} is not a multiple of audio_patch_size "
                             f"x audio_token_length ({self.audio_patch_size} x {self.audio_token_length})")
        if self.rotary_hsize > self.size_per_head or self.rotary_hsize % 8:
            raise ValueError(f"rotary_hsize {self.rotary_hsize} must be a multiple of 8 and <= size_per_head")

    @property
    def num_heads(self) -> int:
        return self.hidden_size // self.size_per_head

    @property
    def pooled_grid(self) -> tuple:
        return (self.output_grid[0] // self.vit_pooling_ratio, self.output_grid[1] // self.vit_pooling_ratio)

    @property
    def audio_pooling_ratio(self) -> int:
        return self.audio_seq_length // (self.audio_token_length * self.audio_patch_size)

    @property
    def image_size(self) -> tuple:
        """(height, width) in pixels of the frames the vision encoder takes."""
        return (self.output_grid[0] * self.vit_patch_size, self.output_grid[1] * self.vit_patch_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output_grid"] = list(self.output_grid)
        return d

    @classmethod
    def base(cls, **kw) -> "MerlotConfig":
        return cls(**kw)

    @classmethod
    def large(cls, **kw) -> "MerlotConfig":
        return cls(**{"hidden_size": 1024, "joint_num_layers": 24, "vit_num_layers": 24, **kw})

    @classmethod
    def named(cls, name: str, **kw) -> "MerlotConfig":
        if name not in ("base", "large"):
            raise ValueError(f"unknown MERLOT Reserve size {name!r} (base, large)")
        return getattr(cls, name)(**kw)


# ----------------------------------------------------------------------------------------------- rotary
def rotary_coordinates(n: int, center_origin: bool = True) -> torch.Tensor:
    """float32 (n,): [-n//2, ..., -1, 1, ..., n - n//2] (zero skipped) if centred, else [1, ..., n]."""
    if center_origin:
        h = n // 2
        return torch.cat([torch.arange(h, dtype=torch.float32) - h,
                          1.0 + torch.arange(n - h, dtype=torch.float32)])
    return 1.0 + torch.arange(n, dtype=torch.float32)


def rotary_coordinates_2d(h: int, w: int) -> torch.Tensor:
    """float32 (h*w, 2) of (row, col) coordinates, both centred and scaled by 1 / (max(h, w) + 1), row-major."""
    scale = 1.0 / (max(h, w) + 1.0)
    hc = scale * rotary_coordinates(h)
    wc = scale * rotary_coordinates(w)
    return torch.stack(torch.meshgrid(hc, wc, indexing="ij"), -1).reshape(h * w, 2)


def rotary_sinusoids(coords: torch.Tensor, rotary_hsize: int, max_freq: float = 10.0) -> torch.Tensor:
    """(..., L, D) coordinates -> (..., 2, L, rotary_hsize): [cos(theta), sin(theta)], each angle repeated twice."""
    d = coords.shape[-1]
    if rotary_hsize % (2 * d):
        raise ValueError(f"rotary_hsize {rotary_hsize} is not a multiple of 2 x {d} coordinate axes")
    e = rotary_hsize // (2 * d)
    freqs = torch.logspace(0.0, math.log2(max_freq / 2.0), e, base=2.0, dtype=torch.float32,
                           device=coords.device)
    theta = (coords.float()[..., None] * freqs * math.pi).flatten(-2)          # (..., L, D*E)
    sinus = torch.stack([torch.cos(theta), torch.sin(theta)], dim=-3)          # (..., 2, L, D*E)
    return sinus.repeat_interleave(2, dim=-1)


def rotary_factor(sinusoids: torch.Tensor, size_per_head: int) -> torch.Tensor:
    """The original's rotary map as a per-dim multiplier (..., L, 1, size_per_head) for (..., L, heads, d).

    First R = rotary_hsize dims: sin + s_j cos with s_j = -1 for even j, +1 for odd j; the rest: 1.
    """
    r = sinusoids.shape[-1]
    cos_t = sinusoids[..., 0, :, None, :]
    sin_t = sinusoids[..., 1, :, None, :]
    sign = torch.ones(r, dtype=sinusoids.dtype, device=sinusoids.device)
    sign[0::2] = -1.0
    factor = sin_t + sign * cos_t
    if size_per_head > r:
        factor = torch.cat([factor, factor.new_ones(*factor.shape[:-1], size_per_head - r)], dim=-1)
    return factor


def apply_rotary(x: torch.Tensor, sinusoids: torch.Tensor) -> torch.Tensor:
    """The original's rotary map on (B, L, heads, d) queries/keys; sinusoids (2, L, R) or (B, 2, L, R).

    Elementwise: first R dims x_j -> x_j * (sin_j + s_j cos_j) with s_j = -1 for even j, +1 for odd j
    (the original's ``x * cos + [-x0, x1, -x2, ...] * sin`` with its names swapped); other dims unchanged.
    """
    return x * rotary_factor(sinusoids, x.shape[-1]).to(x.dtype)


# ------------------------------------------------------------------------------------------- building blocks
def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def mask_bias(is_valid: torch.Tensor) -> torch.Tensor:
    """bool (B, L) -> float32 additive attention bias (B, 1, L, L): 0 where both ends are valid, -1e10 else."""
    ok = is_valid[:, None, :, None] & is_valid[:, None, None, :]
    return torch.where(ok, 0.0, MASK_BIAS).to(torch.float32)


def _bias_as(bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The -1e10 bias in ``dtype``, clamped to its finite range (float16: -65504, not -inf, so padded
    query rows stay finite and never put NaN into the valid rows)."""
    return bias.clamp(min=torch.finfo(dtype).min).to(dtype)


class SelfAttention(nn.Module):
    """Fused qkv projection (heads: queries, keys, values), rotary on queries and keys, no output bias."""

    def __init__(self, hidden: int, size_per_head: int):
        super().__init__()
        self.heads, self.d = hidden // size_per_head, size_per_head
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, rot=None, bias=None):
        """x (..., L, H); rot: rotary multiplier (..., L, 1, d) from :func:`rotary_factor`; bias (..., 1, L, L)."""
        *lead, n, _ = x.shape
        qkv = self.qkv(x).view(*lead, n, 3 * self.heads, self.d)
        qk, v = qkv[..., :2 * self.heads, :], qkv[..., 2 * self.heads:, :]
        if rot is not None:
            qk = qk * rot.to(qk.dtype)
        q, k = qk.split(self.heads, dim=-2)
        o = F.scaled_dot_product_attention(q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2),
                                           attn_mask=None if bias is None else _bias_as(bias, q.dtype))
        return self.attn_proj(o.transpose(-3, -2).reshape(*lead, n, self.heads * self.d))


class MLP(nn.Module):
    def __init__(self, hidden: int, mult: int):
        super().__init__()
        self.intermediate = nn.Linear(hidden, mult * hidden)
        self.out = nn.Linear(mult * hidden, hidden, bias=False)

    def forward(self, x):
        return self.out(quick_gelu(self.intermediate(x)))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: MerlotConfig):
        super().__init__()
        h = cfg.hidden_size
        self.pre_attn_ln = nn.LayerNorm(h, eps=LN_EPS)
        self.attention_layer = SelfAttention(h, cfg.size_per_head)
        self.pre_mlp_ln = nn.LayerNorm(h, eps=LN_EPS)
        self.mlp_layer = MLP(h, cfg.expansion_mult)

    def forward(self, x, rot=None, bias=None):
        x = x + self.attention_layer(self.pre_attn_ln(x), rot, bias)
        return x + self.mlp_layer(self.pre_mlp_ln(x))


class TransformerEncoder(nn.Module):
    """pre_ln -> layers -> final_ln, optionally with a learned CLS token prepended (rotary coordinate 0)."""

    def __init__(self, cfg: MerlotConfig, num_layers: int, add_cls: bool):
        super().__init__()
        h = cfg.hidden_size
        self.rotary_hsize, self.size_per_head = cfg.rotary_hsize, cfg.size_per_head
        self.add_cls = add_cls
        if add_cls:
            self.cls = nn.Parameter(torch.zeros(h))
            self.cls_proj = nn.Linear(h, h)
        self.pre_ln = nn.LayerNorm(h, eps=LN_EPS)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(num_layers))
        self.final_ln = nn.LayerNorm(h, eps=LN_EPS)

    def forward(self, x, coords, is_valid=None, bias=None, keep_layers=False):
        """x (N, L, H); coords (L, D) or (N, L, D); is_valid bool (N, L) or an additive bias (N, 1, L', L').

        Returns {'seq': (N, L, H) after final_ln, 'cls': (N, H) if add_cls, 'layers': [(N, L', H)] if
        keep_layers (the residual stream after each layer, CLS included, before final_ln)}.
        """
        if self.add_cls:
            n = x.shape[0]
            x = torch.cat([self.cls.to(x.dtype).expand(n, 1, -1), x], dim=1)
            coords = torch.cat([torch.zeros_like(coords[..., :1, :]), coords], dim=-2)
            if is_valid is not None:
                is_valid = torch.cat([is_valid.new_ones(n, 1), is_valid], dim=1)
        if bias is None and is_valid is not None:
            bias = mask_bias(is_valid)
        rot = rotary_factor(rotary_sinusoids(coords, self.rotary_hsize), self.size_per_head)
        x = self.pre_ln(x)
        layers = []
        for layer in self.layers:
            x = layer(x, rot, bias)
            if keep_layers:
                layers.append(x)
        x = self.final_ln(x)
        out = {"layers": layers}
        if self.add_cls:
            out["cls"] = self.cls_proj(x[:, 0])
            out["seq"] = x[:, 1:]
        else:
            out["seq"] = x
        return out


class AttentionPool(nn.Module):
    """Multi-head attention of one query (the mean of a group) over the group; q/k/v/out with biases."""

    def __init__(self, hidden: int, size_per_head: int):
        super().__init__()
        self.heads, self.d = hidden // size_per_head, size_per_head
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, groups):
        """groups (N, G, H) -> (N, H)."""
        n, g, _ = groups.shape
        q = self.query(groups.mean(1, keepdim=True)).view(n, 1, self.heads, self.d).transpose(1, 2)
        k = self.key(groups).view(n, g, self.heads, self.d).transpose(1, 2)
        v = self.value(groups).view(n, g, self.heads, self.d).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)                       # (N, heads, 1, d)
        return self.out(o.reshape(n, self.heads * self.d))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: MerlotConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.vit_patch_size
        self.embedding = nn.Linear(p * p * 3, cfg.hidden_size)
        self.transformer = TransformerEncoder(cfg, cfg.vit_num_layers, add_cls=True)
        self.seq_attnpool = AttentionPool(cfg.hidden_size, cfg.size_per_head)

    def forward(self, patches):
        """patches (N, h*w, P*P*3) -> {'cls': (N, H), 'seq': (N, h*w, H), 'seq_attnpool': (N, h*w/r^2, H)}."""
        cfg = self.cfg
        (h, w), r = cfg.output_grid, cfg.vit_pooling_ratio
        n = patches.shape[0]
        coords = rotary_coordinates_2d(h, w).to(patches.device)
        out = self.transformer(self.embedding(patches), coords)
        seq = out["seq"].reshape(n, h // r, r, w // r, r, -1).transpose(2, 3)      # (N, h2, w2, r, r, H)
        pooled = self.seq_attnpool(seq.reshape(n * (h // r) * (w // r), r * r, -1))
        out["seq_attnpool"] = pooled.reshape(n, (h // r) * (w // r), -1)
        return out


class AudioEncoder(nn.Module):
    def __init__(self, cfg: MerlotConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Linear(cfg.audio_patch_size * (cfg.num_mels + 1), cfg.hidden_size)
        self.transformer = TransformerEncoder(cfg, cfg.audio_num_layers, add_cls=True)
        self.seq_attnpool = AttentionPool(cfg.hidden_size, cfg.size_per_head)

    def forward(self, clips):
        """clips (N, audio_seq_length, num_mels + 1) -> {'cls': (N, H), 'seq_attnpool': (N, token_length, H)}."""
        cfg = self.cfg
        n, t, c = clips.shape
        L = t // cfg.audio_patch_size
        x = self.embedding(clips.reshape(n, L, cfg.audio_patch_size * c))
        coords = (rotary_coordinates(L) / L)[:, None].to(clips.device)
        out = self.transformer(x, coords)
        pooled = self.seq_attnpool(out["seq"].reshape(n * cfg.audio_token_length, cfg.audio_pooling_ratio, -1))
        out["seq_attnpool"] = pooled.reshape(n, cfg.audio_token_length, -1)
        return out


class SpanEncoder(nn.Module):
    def __init__(self, cfg: MerlotConfig):
        super().__init__()
        self.transformer = TransformerEncoder(cfg, cfg.span_num_layers, add_cls=True)

    def forward(self, x, is_valid):
        """x (N, L < 16, H) token embeddings, is_valid bool (N, L) -> (N, H) CLS projection."""
        L = x.shape[1]
        coords = (rotary_coordinates(L, center_origin=False) / SPAN_MAX_LEN)[:, None].to(x.device)
        return self.transformer(x, coords, is_valid=is_valid)["cls"]


def patchify(frames: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, h*P, w*P, 3) -> (N, h*w, P*P*3), patches row-major, each flattened (row, col, channel)."""
    n, hp, wp, c = frames.shape
    h, w = hp // patch, wp // patch
    x = frames.reshape(n, h, patch, w, patch, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h * w, patch * patch * c)


# ------------------------------------------------------------------------------------------------- the model
class MerlotReserve(nn.Module):
    """MERLOT Reserve; :meth:`forward` runs the joint transformer on one sequence per batch row.

    Input contract of :meth:`forward` (B windows, L token slots, T frames, S audio clips):

    * ``tokens`` int64 (B, L): BPE ids; PADDING (0) slots are masked out; an AUDIOSPAN (5) slot takes the
      next audio token of clip ``audio_ptr``: AUDIOSPAN slots must come in runs of ``audio_token_length``
      (6), one run per clip, as the original builds them (the k-th AUDIOSPAN of the row takes token k % 6).
    * ``token_segment`` int64 (B, L) or None (zeros): segment (time step) index of each slot, 0..15.
    * ``frames`` float (B, T, h*16, w*16, 3) RGB in [0, 1] at the configured grid (``cfg.image_size``),
      or None (no vision tokens). Frame t gets segment index t.
    * ``audio`` float (B, S, audio_seq_length, num_mels + 1) log-mel clips (playback speed column last),
      with ``audio_ptr`` int64 (B, L) naming the clip of each AUDIOSPAN slot; None if no AUDIOSPAN slots.

    Joint sequence: [L token slots | T * (h/2)*(w/2) pooled vision tokens].
    """

    def __init__(self, cfg: MerlotConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_encoder = VisionEncoder(cfg)
        self.audio_encoder = AudioEncoder(cfg)
        self.token_encoder = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.span_num_layers > 0:           # fine-tuned checkpoints drop the span encoder
            self.span_encoder = SpanEncoder(cfg)
        self.joint_transformer = TransformerEncoder(cfg, cfg.joint_num_layers, add_cls=False)
        if cfg.joint_head:
            self.head = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        if cfg.qa_head:
            self.proj = nn.Linear(cfg.hidden_size, 1, bias=False)
        self.contrastive_scales = nn.Parameter(torch.ones(3))

    # -- encoders -----------------------------------------------------------------------------------
    def encode_frames(self, frames: torch.Tensor) -> dict:
        """frames (N, h*P, w*P, 3) in [0, 1] -> the vision encoder's dict (see VisionEncoder.forward)."""
        want = self.cfg.image_size
        if tuple(frames.shape[1:3]) != want:
            raise ValueError(f"frames are {tuple(frames.shape[1:3])} px but the model's grid "
                             f"{self.cfg.output_grid} needs {want}")
        return self.vision_encoder(patchify(frames, self.cfg.vit_patch_size))

    def vision_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, h*P, w*P, 3) in [0, 1] -> pooled vision tokens (B, T * h/2 * w/2, H)."""
        B, T = frames.shape[:2]
        vis = self.encode_frames(frames.reshape(B * T, *frames.shape[2:]))["seq_attnpool"]
        return vis.reshape(B, T * vis.shape[1], -1)

    def audio_tokens(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, S, audio_seq_length, num_mels + 1) -> pooled audio tokens (B, S, audio_token_length, H)."""
        B, S = audio.shape[:2]
        enc = self.audio_encoder(audio.reshape(B * S, *audio.shape[2:]))["seq_attnpool"]
        return enc.reshape(B, S, self.cfg.audio_token_length, -1)

    def embed_inputs(self, tokens, token_segment=None, frames=None, audio=None, audio_ptr=None,
                     vision_tokens=None, audio_tokens=None, vision_segment_offset: int = 0) -> dict:
        """The joint transformer's input: {'x': (B, N, H), 'coords': (B, N, 4), 'is_valid': bool (B, N),
        'n_tokens': L, 'n_vision': T * pooled patches}. ``vision_tokens`` / ``audio_tokens`` (outputs of
        :meth:`vision_tokens` / :meth:`audio_tokens`) replace ``frames`` / ``audio`` when already encoded.
        Frame t has segment index ``t + vision_segment_offset`` (1 in the original's TVQA head, whose
        segment 0 is a dummy image dropped from the sequence)."""
        cfg = self.cfg
        B, L = tokens.shape
        dev = tokens.device
        x = self.token_encoder(tokens)
        is_audio = tokens == AUDIOSPAN
        if bool(is_audio.any()):
            if (audio is None and audio_tokens is None) or audio_ptr is None:
                raise ValueError("tokens contain AUDIOSPAN slots but no audio / audio_ptr was given")
            enc = self.audio_tokens(audio) if audio_tokens is None else audio_tokens
            sub = (is_audio.long().cumsum(-1) - 1).clamp(min=0) % cfg.audio_token_length
            ptr = audio_ptr.clamp(min=0)
            picked = enc[torch.arange(B, device=dev)[:, None], ptr, sub]
            x = torch.where(is_audio[..., None], picked.to(x.dtype), x)
        seg = torch.zeros(B, L, device=dev) if token_segment is None else token_segment.float()
        zeros = torch.zeros(B, L, device=dev)
        tok_idx = (1.0 + torch.arange(L, dtype=torch.float32, device=dev)).expand(B, L)
        coords = torch.stack([zeros, zeros, seg / MAX_SEGMENT, tok_idx / MAX_TOKEN], -1)
        is_valid = tokens != PADDING
        n_vision = 0
        if frames is not None or vision_tokens is not None:
            vis = self.vision_tokens(frames) if vision_tokens is None else vision_tokens
            n_per = cfg.pooled_grid[0] * cfg.pooled_grid[1]
            nv = vis.shape[1]
            T = nv // n_per
            hw = rotary_coordinates_2d(*cfg.pooled_grid).to(dev).repeat(T, 1)          # (T*n_per, 2)
            vseg = (torch.arange(T, device=dev, dtype=torch.float32) + vision_segment_offset).repeat_interleave(n_per)
            vcoords = torch.cat([hw, (vseg / MAX_SEGMENT)[:, None], torch.zeros(nv, 1, device=dev)], -1)
            x = torch.cat([x, vis.to(x.dtype)], 1)
            coords = torch.cat([coords, vcoords.expand(B, -1, -1)], 1)
            is_valid = torch.cat([is_valid, is_valid.new_ones(B, nv)], 1)
            n_vision = nv
        return {"x": x, "coords": coords, "is_valid": is_valid, "n_tokens": L, "n_vision": n_vision}

    def forward(self, tokens, token_segment=None, frames=None, audio=None, audio_ptr=None,
                keep_layers: bool = True, vision_tokens=None, audio_tokens=None,
                vision_segment_offset: int = 0) -> dict:
        """Run the joint transformer (input contract in the class docstring).

        Returns {'hidden_states': (n_layers, B, N, H) residual stream after each joint layer (before
        final_ln), 'seq': (B, N, H) final_ln output (the original's joint encoding), 'is_valid': bool
        (B, N), 'n_tokens': L (slots [0, L) are the token slots), 'n_vision': number of vision tokens
        (slots [L, N))}.
        """
        inp = self.embed_inputs(tokens, token_segment, frames, audio, audio_ptr, vision_tokens, audio_tokens,
                                vision_segment_offset)
        out = self.joint_transformer(inp["x"], inp["coords"], is_valid=inp["is_valid"], keep_layers=keep_layers)
        hidden = torch.stack(out["layers"]) if keep_layers else None
        return {"hidden_states": hidden, "seq": out["seq"], "is_valid": inp["is_valid"],
                "n_tokens": inp["n_tokens"], "n_vision": inp["n_vision"]}

    def embed_text_spans(self, spans: torch.Tensor) -> torch.Tensor:
        """spans int64 (N, L < 16) -> (N, H) span-encoder CLS vectors (not normalised)."""
        if not hasattr(self, "span_encoder"):
            raise ValueError("this checkpoint has no span encoder (fine-tuned checkpoints drop it)")
        return self.span_encoder(self.token_encoder(spans), spans != PADDING)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(cfg: MerlotConfig, device="cpu") -> MerlotReserve:
    """Instantiate on ``device`` (use "meta" to get shapes and parameter counts without memory)."""
    with torch.device(device):
        return MerlotReserve(cfg)
