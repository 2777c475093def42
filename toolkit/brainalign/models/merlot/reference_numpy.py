"""An independent float64 numpy forward of MERLOT Reserve, straight from the ORIGINAL Flax parameter tree.

Written from the math of the original code (not from our torch modules): Flax layouts (Dense kernel
(in, out), DenseGeneral kernels (H, heads, d) / (heads, d, H), Conv kernel (k, in, out)), Flax LayerNorm
(var = E[x^2] - E[x]^2), the rotary code as written there (stack/reshape of the sign-flipped pairs, the
'sin'/'cos' names holding cosine/sine), the -1e10 attention bias, the sequence assembly of
``prepare_multimodal_inputs``. Used by the tests as the reference for the torch port; slow, small inputs only.

``p`` arguments are nested dicts {name: {... : ndarray}} with the original names.
"""
from __future__ import annotations

import math

import numpy as np

AUDIOSPAN, PADDING = 5, 0


def ln(p, x, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = (x * x).mean(-1, keepdims=True) - mean * mean
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def dense(p, x):
    y = x @ p["kernel"]
    return y + p["bias"] if "bias" in p else y


def gelu(x):
    return x / (1.0 + np.exp(-1.702 * x))


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def coords_1d(n, center_origin=True):
    if center_origin:
        h = n // 2
        return np.concatenate([np.arange(h) - float(h), 1.0 + np.arange(n - h)])
    return 1.0 + np.arange(n, dtype=np.float64)


def coords_2d(h, w):
    s = 1.0 / (max(h, w) + 1.0)
    hh, ww = np.meshgrid(s * coords_1d(h), s * coords_1d(w), indexing="ij")
    return np.stack([hh, ww], -1).reshape(h * w, 2)


def sinusoids(coords, rotary_hsize=32, max_freq=10.0):
    """coords (..., L, D) -> (..., 2, L, R): index 0 = cos, 1 = sin, each angle repeated twice."""
    *batch, L, D = coords.shape
    E = rotary_hsize // (2 * D)
    freqs = np.logspace(0.0, math.log2(max_freq / 2.0), E, base=2)
    rad = (coords[..., None] * freqs * np.pi).reshape(*batch, L, D * E)
    s = np.stack([np.cos(rad), np.sin(rad)], -3)
    return np.repeat(s, 2, axis=-1)


def apply_rotary(qk, sin_cos):
    """qk (..., L, heads, d); sin_cos (..., 2, L, R) -- the original's arithmetic, names included."""
    R = sin_cos.shape[-1]
    while sin_cos.ndim - 1 < qk.ndim - 1:
        sin_cos = sin_cos[None]
    sin = sin_cos[..., 0, :, None, :]
    cos = sin_cos[..., 1, :, None, :]
    rope = qk[..., :R]
    rotated = np.stack([-rope[..., ::2], rope[..., 1::2]], -1).reshape(rope.shape)
    return np.concatenate([rope * cos + rotated * sin, qk[..., R:]], -1)


def attention(p, x, sin_cos, bias):
    qkv = np.einsum("...lh,hnd->...lnd", x, p["qkv"]["kernel"]) + p["qkv"]["bias"]
    nh = qkv.shape[-2] // 3
    qk, v = qkv[..., :2 * nh, :], qkv[..., 2 * nh:, :]
    if sin_cos is not None:
        qk = apply_rotary(qk, sin_cos)
    q, k = qk[..., :nh, :], qk[..., nh:, :]
    q = q / np.sqrt(q.shape[-1])
    logits = np.einsum("...qhd,...khd->...hqk", q, k)
    if bias is not None:
        logits = logits + bias
    a = np.einsum("...hqk,...khd->...qhd", softmax(logits), v)
    return np.einsum("...lnd,ndh->...lh", a, p["attn_proj"]["kernel"])


def layer(p, x, sin_cos, bias):
    x = x + attention(p["attention_layer"], ln(p["pre_attn_ln"], x), sin_cos, bias)
    m = p["mlp_layer"]
    return x + dense(m["out"], gelu(dense(m["intermediate"], ln(p["pre_mlp_ln"], x))))


def n_layers(p):
    return sum(1 for k in p if k.startswith("layer_"))


def encoder(p, x, coords, is_valid=None, add_cls=False, rotary_hsize=32):
    """TransformerEncoder: x (N, L, H), coords (L, D) or (N, L, D). Returns dict seq/cls/layers."""
    N = x.shape[0]
    if add_cls:
        x = np.concatenate([np.broadcast_to(p["cls"], (N, 1, x.shape[-1])), x], 1)
        coords = np.concatenate([np.zeros_like(coords[..., :1, :]), coords], -2)
        if is_valid is not None:
            is_valid = np.concatenate([np.ones((N, 1), bool), is_valid], 1)
    sc = sinusoids(coords, rotary_hsize)
    bias = None
    if is_valid is not None:
        m = is_valid[:, None, :, None] & is_valid[:, None, None, :]
        bias = np.where(m, 0.0, -1e10)
    x = ln(p["pre_ln"], x)
    layers = []
    for i in range(n_layers(p)):
        x = layer(p[f"layer_{i:02d}"], x, sc, bias)
        layers.append(x)
    x = ln(p["final_ln"], x)
    out = {"layers": layers}
    if add_cls:
        out["cls"] = dense(p["cls_proj"], x[:, 0])
        out["seq"] = x[:, 1:]
    else:
        out["seq"] = x
    return out


def mha_pool(p, q_in, kv):
    """flax MultiHeadDotProductAttention(inputs_q (N, 1, H), inputs_kv (N, G, H)) -> (N, 1, H)."""
    def proj(name, x):
        return np.einsum("...lh,hnd->...lnd", x, p[name]["kernel"]) + p[name]["bias"]
    q, k, v = proj("query", q_in), proj("key", kv), proj("value", kv)
    q = q / np.sqrt(q.shape[-1])
    w = softmax(np.einsum("...qhd,...khd->...hqk", q, k))
    a = np.einsum("...hqk,...khd->...qhd", w, v)
    return np.einsum("...lnd,ndh->...lh", a, p["out"]["kernel"]) + p["out"]["bias"]


def patches(img, P):
    """img (h*P, w*P, 3) -> (h*w, P*P*3) like tf.nn.space_to_depth: patch-major, then (row, col, channel)."""
    h, w = img.shape[0] // P, img.shape[1] // P
    return np.stack([img[i * P:(i + 1) * P, j * P:(j + 1) * P].reshape(-1) for i in range(h) for j in range(w)])


def vision(p, imgs, grid, patch, pool=2, rotary_hsize=32):
    """imgs (N, h*P, w*P, 3) -> dict cls (N, H), seq (N, hw, H), seq_attnpool (N, hw/4, H)."""
    h, w = grid
    x = dense(p["embedding"], np.stack([patches(im, patch) for im in imgs]))
    out = encoder(p["transformer"], x, coords_2d(h, w), add_cls=True, rotary_hsize=rotary_hsize)
    N, H = x.shape[0], x.shape[-1]
    h2, w2 = h // pool, w // pool
    pooled = np.zeros((N, h2 * w2, H))
    for n in range(N):
        for i in range(h2):
            for j in range(w2):
                idx = [(i * pool + a) * w + (j * pool + b) for a in range(pool) for b in range(pool)]
                grp = out["seq"][n, idx]
                pooled[n, i * w2 + j] = mha_pool(p["seq_attnpool"], grp.mean(0, keepdims=True)[None], grp[None])[0, 0]
    out["seq_attnpool"] = pooled
    return out


def audio(p, clips, token_length, rotary_hsize=32):
    """clips (N, T, C) -> dict cls (N, H), seq_attnpool (N, token_length, H) (stride-k Conv1D embedding)."""
    kern = p["embedding"]["kernel"]                       # (k, C, H)
    k = kern.shape[0]
    N, T, C = clips.shape
    L = T // k
    x = np.stack([sum(clips[:, t * k + j] @ kern[j] for j in range(k)) for t in range(L)], 1) + p["embedding"]["bias"]
    out = encoder(p["transformer"], x, (coords_1d(L) / L)[:, None], add_cls=True, rotary_hsize=rotary_hsize)
    r = L // token_length
    seq = out["seq"].reshape(N * token_length, r, -1)
    out["seq_attnpool"] = mha_pool(p["seq_attnpool"], seq.mean(1, keepdims=True), seq).reshape(N, token_length, -1)
    return out


def span(p, token_embs, is_valid, rotary_hsize=32):
    L = token_embs.shape[1]
    return encoder(p["transformer"], token_embs, (coords_1d(L, False) / 16.0)[:, None], is_valid=is_valid,
                   add_cls=True, rotary_hsize=rotary_hsize)["cls"]


def joint_inputs(params, tokens, token_segment, vis_seq=None, pooled_grid=None, audio_seq=None, audio_ptr=None):
    """prepare_multimodal_inputs: tokens (B, L); vis_seq (B, T*hp*wp, H); audio_seq (B, S, 6, H).

    Returns x (B, N, H), coords (B, N, 4), is_valid (B, N)."""
    emb = params["token_encoder"]["Embed_0"]["embedding"]
    B, L = tokens.shape
    x = emb[tokens]
    if audio_seq is not None:
        is_a = tokens == AUDIOSPAN
        sub = np.maximum(np.cumsum(is_a, -1) - 1, 0) % audio_seq.shape[2]
        ptr = np.maximum(audio_ptr, 0)
        for b in range(B):
            for i in range(L):
                if is_a[b, i]:
                    x[b, i] = audio_seq[b, ptr[b, i], sub[b, i]]
    tok = np.tile(1.0 + np.arange(L), (B, 1))
    z = np.zeros((B, L))
    coords = np.stack([z, z, token_segment / 16.0, tok / 1024.0], -1)
    valid = tokens != PADDING
    if vis_seq is not None:
        hp, wp = pooled_grid
        nv = vis_seq.shape[1]
        T = nv // (hp * wp)
        c2 = np.tile(coords_2d(hp, wp), (T, 1))
        seg = np.repeat(np.arange(T), hp * wp) / 16.0
        vc = np.concatenate([c2, seg[:, None], np.zeros((nv, 1))], -1)
        x = np.concatenate([x, vis_seq], 1)
        coords = np.concatenate([coords, np.tile(vc[None], (B, 1, 1))], 1)
        valid = np.concatenate([valid, np.ones((B, nv), bool)], 1)
    return x, coords, valid


def forward(params, cfg, tokens, token_segment, frames=None, audio_clips=None, audio_ptr=None):
    """The whole joint forward. frames (B, T, h*P, w*P, 3); audio_clips (B, S, T_a, C).

    Returns dict x (joint input), layers [(B, N, H)] per joint layer, seq (B, N, H)."""
    hs = cfg.rotary_hsize
    vis_seq = aud_seq = None
    B = tokens.shape[0]
    if frames is not None:
        T = frames.shape[1]
        v = vision(params["vision_encoder"], frames.reshape(B * T, *frames.shape[2:]), cfg.output_grid,
                   cfg.vit_patch_size, cfg.vit_pooling_ratio, hs)["seq_attnpool"]
        vis_seq = v.reshape(B, -1, v.shape[-1])
    if audio_clips is not None:
        S = audio_clips.shape[1]
        a = audio(params["audio_encoder"], audio_clips.reshape(B * S, *audio_clips.shape[2:]),
                  cfg.audio_token_length, hs)["seq_attnpool"]
        aud_seq = a.reshape(B, S, cfg.audio_token_length, -1)
    x, coords, valid = joint_inputs(params, tokens, token_segment, vis_seq, cfg.pooled_grid, aud_seq, audio_ptr)
    out = encoder(params["joint_transformer"], x, coords, is_valid=valid, rotary_hsize=hs)
    return {"x": x, "coords": coords, "is_valid": valid, "layers": out["layers"], "seq": out["seq"]}
