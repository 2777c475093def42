"""MERLOT Reserve port: rotary math, Flax msgpack reading, converter, torch vs independent numpy forward,
parameter counts of base/large (the input pipeline: test_merlot_inputs.py). Checkpoints here are written by the test in the official
format (a Flax train-state msgpack, float16 weights) with random weights for a tiny config."""
import math

import msgpack
import numpy as np
import pytest
import torch

from brainalign.errors import DataError
from brainalign.models.merlot import flaxmsgpack
from brainalign.models.merlot import reference_numpy as ref
from brainalign.models.merlot.convert import (convert, convert_flax_checkpoint, infer_config, load_converted,
                                              main as convert_main, read_flax_params)
from brainalign.models.merlot.inputs import batch_windows
from brainalign.models.merlot.layout import WindowTokens
from brainalign.models.merlot.model import (AUDIOSPAN, MerlotConfig, apply_rotary, build_model,
                                            count_parameters, rotary_coordinates, rotary_coordinates_2d,
                                            rotary_factor, rotary_sinusoids)

TINY = dict(hidden_size=96, size_per_head=48, rotary_hsize=32, vocab_size=64, joint_num_layers=2,
            vit_num_layers=2, audio_num_layers=2, span_num_layers=2, vit_patch_size=4, output_grid=(4, 6),
            audio_seq_length=12, audio_token_length=2, audio_patch_size=2, num_mels=8)
NON_PARAM = dict(output_grid=(4, 6), audio_seq_length=12, audio_token_length=2)


def rows_from_ids(word_ids: list, n_clips: int = 0, audio_token_length: int = 6) -> list:
    """Simple rows: window b = its ids (sub-segment 2, pooled) after ``n_clips``
    runs of AUDIOSPAN (sub-segments 0 .. n_clips - 1)."""
    out = []
    for ids in word_ids:
        toks = [AUDIOSPAN] * (n_clips * audio_token_length) + list(ids)
        sub = [j for j in range(n_clips) for _ in range(audio_token_length)] + [n_clips] * len(ids)
        out.append(WindowTokens(toks, sub, [False] * (n_clips * audio_token_length) + [True] * len(ids)))
    return out


# --------------------------------------------------------------------- the original's parameter tree
def flax_tree(cfg: MerlotConfig, make):
    """The original's params tree (names/shapes from mreserve/modeling.py), leaves make(shape, kind)."""
    H, d = cfg.hidden_size, cfg.size_per_head
    nh, F = H // d, cfg.expansion_mult * H

    def ln():
        return {"scale": make((H,), "scale"), "bias": make((H,), "b")}

    def layer():
        return {"pre_attn_ln": ln(),
                "attention_layer": {"qkv": {"kernel": make((H, 3 * nh, d), "w"), "bias": make((3 * nh, d), "b")},
                                    "attn_proj": {"kernel": make((nh, d, H), "w")}},
                "pre_mlp_ln": ln(),
                "mlp_layer": {"intermediate": {"kernel": make((H, F), "w"), "bias": make((F,), "b")},
                              "out": {"kernel": make((F, H), "w")}}}

    def enc(n, cls):
        t = {"pre_ln": ln(), "final_ln": ln(), **{f"layer_{i:02d}": layer() for i in range(n)}}
        if cls:
            t["cls"] = make((H,), "e")
            t["cls_proj"] = {"kernel": make((H, H), "w"), "bias": make((H,), "b")}
        return t

    def mha():
        t = {k: {"kernel": make((H, nh, d), "w"), "bias": make((nh, d), "b")} for k in ("query", "key", "value")}
        t["out"] = {"kernel": make((nh, d, H), "w"), "bias": make((H,), "b")}
        return t

    P = cfg.vit_patch_size
    return {
        "vision_encoder": {"embedding": {"kernel": make((P * P * 3, H), "w"), "bias": make((H,), "b")},
                           "transformer": enc(cfg.vit_num_layers, True), "seq_attnpool": mha()},
        "audio_encoder": {"embedding": {"kernel": make((cfg.audio_patch_size, cfg.num_mels + 1, H), "w"),
                                        "bias": make((H,), "b")},
                          "transformer": enc(cfg.audio_num_layers, True), "seq_attnpool": mha()},
        "token_encoder": {"Embed_0": {"embedding": make((cfg.vocab_size, H), "e")}},
        "span_encoder": {"transformer": enc(cfg.span_num_layers, True)},
        "joint_transformer": enc(cfg.joint_num_layers, False),
        "head": {"kernel": make((H, H), "w"), "bias": make((H,), "b")},
        "contrastive_scales": make((3,), "scale"),
    }


def random_maker(seed=0):
    rng = np.random.default_rng(seed)

    def make(shape, kind):
        if kind == "scale":
            x = 1.0 + 0.1 * rng.standard_normal(shape)
        elif kind == "w":
            fan_in = shape[0] if len(shape) == 2 or shape[0] > shape[-1] else shape[0] * shape[1]
            x = rng.standard_normal(shape) / math.sqrt(fan_in)
        else:
            x = 0.3 * rng.standard_normal(shape)
        return x.astype(np.float16)
    return make


def to64(tree):
    return {k: to64(v) if isinstance(v, dict) else v.astype(np.float64) for k, v in tree.items()}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    cfg = MerlotConfig(**TINY)
    params = flax_tree(cfg, random_maker(0))
    # a flax TrainState's state dict: optax state tuples become {"0": ..., "1": ...}; only params are read
    opt = {"0": {"count": np.int32(5), "mu": {"joint_transformer": {"x": np.zeros(3, np.float16)}}}, "1": {}}
    state = {"step": np.int32(1234), "params": params, "opt_state": opt}
    path = tmp_path_factory.mktemp("merlot") / "base"
    path.write_bytes(flaxmsgpack.serialize(state))
    return cfg, to64(params), path


@pytest.fixture(scope="module")
def tiny_model(tiny_ckpt):
    cfg, params, path = tiny_ckpt
    model = build_model(cfg, "meta")
    model.load_state_dict(convert_flax_checkpoint(path, **NON_PARAM), strict=True, assign=True)
    return model.eval(), params


def inputs(cfg, B=2, T=2, S=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    frames = torch.rand(B, T, h, w, 3, generator=g)
    audio = torch.randn(B, S, cfg.audio_seq_length, cfg.num_mels + 1, generator=g)
    words = [[7, 8, 9, 10, 11], [12, 13, 14]]
    return batch_windows(rows_from_ids(words, S, cfg.audio_token_length), frames, audio)


def close(a, b, tol=2e-5):
    a = a.detach().double().numpy() if isinstance(a, torch.Tensor) else a
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------ rotary
def test_rotary_coordinates_by_hand():
    assert rotary_coordinates(5).tolist() == [-2.0, -1.0, 1.0, 2.0, 3.0]
    assert rotary_coordinates(4).tolist() == [-2.0, -1.0, 1.0, 2.0]
    assert rotary_coordinates(3, center_origin=False).tolist() == [1.0, 2.0, 3.0]
    c = rotary_coordinates_2d(2, 3)          # scale 1/4; rows [-1, 1], cols [-1, 1, 2]
    want = np.array([[-1, -1], [-1, 1], [-1, 2], [1, -1], [1, 1], [1, 2]]) / 4.0
    np.testing.assert_allclose(c.numpy(), want)
    np.testing.assert_allclose(ref.coords_2d(2, 3), want)


def test_rotary_embedding_hand_computed():
    # one 1-D coordinate 1/6, rotary_hsize 4 -> 2 frequencies [1, 5] -> angles [pi/6, 5pi/6]:
    # sin = [1/2, 1/2], cos = [c, -c] with c = sqrt(3)/2.
    # original map: x_2k -> x_2k (sin - cos), x_2k+1 -> x_2k+1 (sin + cos); dims >= 4 untouched.
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).view(1, 1, 1, 6)      # (B, L, heads, d)
    s = rotary_sinusoids(torch.tensor([[1.0 / 6.0]]), rotary_hsize=4)      # (2, L=1, 4)
    c = math.sqrt(3.0) / 2.0
    want = [1.0 * (0.5 - c), 2.0 * (0.5 + c), 3.0 * (0.5 + c), 4.0 * (0.5 - c), 5.0, 6.0]
    np.testing.assert_allclose(apply_rotary(x, s).view(-1).numpy(), want, atol=5e-6)
    np.testing.assert_allclose(ref.apply_rotary(x.double().numpy(), ref.sinusoids(np.array([[1.0 / 6.0]]), 4)).reshape(-1),
                               want, atol=1e-12)
    # 2-D coordinates: angles ordered (axis, frequency) -> (h f0, h f1, w f0, w f1), each repeated twice
    s2 = rotary_sinusoids(torch.tensor([[0.5, 0.1]]), rotary_hsize=8)[1, 0]   # sines
    ang = np.array([0.5, 0.5 * 5, 0.1, 0.1 * 5]) * math.pi
    np.testing.assert_allclose(s2.numpy(), np.repeat(np.sin(ang), 2), atol=1e-6)


# ------------------------------------------------------------------------------------ flax msgpack
def test_flax_msgpack_format(monkeypatch):
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    # packed by hand exactly as flax does: ExtType(1, packb((shape, dtype name, C bytes)))
    raw = msgpack.packb({"params": {"w": msgpack.ExtType(1, msgpack.packb(((2, 3), "float16", a.tobytes()),
                                                                          use_bin_type=True))}})
    out = flaxmsgpack.restore(raw)
    assert out["params"]["w"].dtype == np.float16 and out["params"]["w"].tolist() == a.tolist()
    # bfloat16 payload (upper 16 bits of float32) -> float32
    f = np.array([1.5, -2.25], dtype=np.float32)
    bf = (f.view(np.uint32) >> 16).astype(np.uint16)
    raw = msgpack.packb({"b": msgpack.ExtType(1, msgpack.packb(((2,), "bfloat16", bf.tobytes())))})
    assert flaxmsgpack.restore(raw)["b"].tolist() == [1.5, -2.25]
    # chunked leaves and numpy scalars survive a round trip
    monkeypatch.setattr(flaxmsgpack, "MAX_CHUNK_BYTES", 16)
    big = np.arange(40, dtype=np.float32).reshape(5, 8)
    raw = flaxmsgpack.serialize({"x": {"big": big}, "step": np.int32(3)})
    assert b"__msgpack_chunked_array__" in raw
    back = flaxmsgpack.restore(raw)
    np.testing.assert_array_equal(back["x"]["big"], big)
    assert back["step"] == 3


# ------------------------------------------------------------------------ torch port vs numpy reference
def test_infer_config_from_checkpoint(tiny_ckpt):
    cfg, _, path = tiny_ckpt
    assert infer_config(read_flax_params(path), path, **NON_PARAM) == cfg


def test_vision_and_audio_encoders_match_numpy(tiny_model):
    model, p = tiny_model
    cfg = model.cfg
    b = inputs(cfg)
    fr = b.frames[0]
    with torch.no_grad():
        v = model.encode_frames(fr)
        a = model.audio_encoder(b.audio[0])
    rv = ref.vision(p["vision_encoder"], fr.double().numpy(), cfg.output_grid, cfg.vit_patch_size)
    close(v["cls"], rv["cls"])
    close(v["seq_attnpool"], rv["seq_attnpool"])
    ra = ref.audio(p["audio_encoder"], b.audio[0].double().numpy(), cfg.audio_token_length)
    close(a["cls"], ra["cls"])
    close(a["seq_attnpool"], ra["seq_attnpool"])
    spans = torch.tensor([[7, 9, 11, 0], [8, 0, 0, 0]])
    with torch.no_grad():
        s = model.embed_text_spans(spans)
    emb = p["token_encoder"]["Embed_0"]["embedding"][spans.numpy()]
    close(s, ref.span(p["span_encoder"], emb, spans.numpy() != 0))


def test_joint_forward_matches_numpy(tiny_model):
    model, p = tiny_model
    cfg = model.cfg
    b = inputs(cfg)
    with torch.no_grad():
        emb = model.embed_inputs(**b.model_kwargs())
        out = model(**b.model_kwargs())
    r = ref.forward(p, cfg, b.tokens.numpy(), b.token_segment.numpy(), b.frames.double().numpy(),
                    b.audio.double().numpy(), b.audio_ptr.numpy())
    n_vis = 2 * 2 * 3
    assert out["hidden_states"].shape == (cfg.joint_num_layers, 2, b.tokens.shape[1] + n_vis, cfg.hidden_size)
    assert out["n_vision"] == n_vis and out["n_tokens"] == b.tokens.shape[1]
    np.testing.assert_array_equal(out["is_valid"].numpy(), r["is_valid"])
    close(emb["coords"], r["coords"], 1e-7)
    close(emb["x"], r["x"])                                    # embeddings (tokens, audio slots, vision)
    valid = r["is_valid"]
    close(out["hidden_states"][0][torch.from_numpy(valid)], r["layers"][0][valid])     # one joint layer
    for i in range(cfg.joint_num_layers):                      # every layer and the final output
        close(out["hidden_states"][i][torch.from_numpy(valid)], r["layers"][i][valid], 5e-5)
    close(out["seq"][torch.from_numpy(valid)], r["seq"][valid], 5e-5)


def test_single_joint_layer_matches_numpy(tiny_model):
    model, p = tiny_model
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, model.cfg.hidden_size, generator=g)
    coords = torch.rand(2, 7, 4, generator=g)
    valid = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    from brainalign.models.merlot.model import mask_bias
    with torch.no_grad():
        y = model.joint_transformer.layers[1](x, rotary_factor(rotary_sinusoids(coords, 32), 48), mask_bias(valid))
    ry = ref.layer(p["joint_transformer"]["layer_01"], x.double().numpy(), ref.sinusoids(coords.double().numpy()),
                   np.where(valid.numpy()[:, None, :, None] & valid.numpy()[:, None, None, :], 0.0, -1e10))
    close(y[valid], ry[valid.numpy()])


# ------------------------------------------------------------------------------------------ converter
def test_convert_writes_loadable_checkpoint(tiny_ckpt, tiny_model, tmp_path):
    cfg, _, path = tiny_ckpt
    dst = tmp_path / "merlot_tiny.pt"
    assert convert_main([str(path), str(dst), "--grid", "4", "6", "--audio-seq-length", "12",
                         "--audio-token-length", "2"]) == 0
    model = load_converted(dst)
    assert model.cfg == cfg
    b = inputs(cfg)
    with torch.no_grad():
        a = model(**b.model_kwargs())["seq"]
        c = tiny_model[0](**b.model_kwargs())["seq"]
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    # checkpoint weights are float16; the state dict holds them exactly as float32
    w = model.joint_transformer.layers[0].mlp_layer.out.weight
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, w.half().float(), rtol=0, atol=0)


def _write(path, params):
    path.write_bytes(flaxmsgpack.serialize({"step": np.int32(1), "params": params}))
    return path


def test_converter_errors_name_the_parameter(tiny_ckpt, tmp_path):
    cfg = MerlotConfig(**TINY)
    params = flax_tree(cfg, random_maker(1))
    del params["joint_transformer"]["layer_01"]["mlp_layer"]["out"]
    with pytest.raises(DataError, match=r"missing parameter 'joint_transformer/layer_01/mlp_layer/out/kernel' "
                                        r"\(expected shape \(384, 96\)\)"):
        convert_flax_checkpoint(_write(tmp_path / "a", params), **NON_PARAM)
    params = flax_tree(cfg, random_maker(1))
    params["vision_encoder"]["seq_attnpool"]["key"]["kernel"] = np.zeros((96, 2, 40), np.float16)
    with pytest.raises(DataError, match=r"'vision_encoder/seq_attnpool/key/kernel' has shape \(96, 2, 40\), "
                                        r"expected \(96, 2, 48\)"):
        convert_flax_checkpoint(_write(tmp_path / "b", params), **NON_PARAM)
    params = flax_tree(cfg, random_maker(1))
    params["joint_transformer"]["pe"] = np.zeros((10, 96), np.float16)
    with pytest.raises(DataError, match=r"unknown parameter 'joint_transformer/pe' \(10, 96\)"):
        convert_flax_checkpoint(_write(tmp_path / "c", params), **NON_PARAM)
    del params["token_encoder"]
    with pytest.raises(DataError, match=r"missing parameter 'token_encoder/Embed_0/embedding'"):
        convert_flax_checkpoint(_write(tmp_path / "d", params), **NON_PARAM)
    (tmp_path / "e").write_bytes(b"\x00not msgpack at all")
    with pytest.raises(DataError, match=r"MERLOT checkpoint .*e: not a Flax msgpack file"):
        convert_flax_checkpoint(tmp_path / "e")
    with pytest.raises(DataError, match="MERLOT checkpoint not found"):
        convert(tmp_path / "nope", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_convert_tvqa_finetuned_layout(tmp_path):
    # the original's TVQA fine-tuning drops 'head' and 'span_encoder' and adds 'proj' (H, 1)
    cfg = MerlotConfig(**TINY)
    params = flax_tree(cfg, random_maker(2))
    del params["head"], params["span_encoder"]
    params["proj"] = {"kernel": np.arange(96, dtype=np.float16).reshape(96, 1)}
    sd = convert_flax_checkpoint(_write(tmp_path / "tvqa", params), **NON_PARAM)
    assert "head.weight" not in sd and not any(k.startswith("span_encoder") for k in sd)
    np.testing.assert_array_equal(sd["proj.weight"].numpy(), np.arange(96, dtype=np.float32)[None])
    model = load_converted(convert(tmp_path / "tvqa", tmp_path / "tvqa.pt", **NON_PARAM))
    assert model.cfg.qa_head and not model.cfg.joint_head and model.cfg.span_num_layers == 0


# -------------------------------------------------------------------------------- base / large sizes
@pytest.mark.parametrize("name", ["base", "large"])
def test_base_large_parameter_counts(name):
    cfg = MerlotConfig.named(name)
    counted = []
    flax_tree(cfg, lambda shape, kind: counted.append(int(np.prod(shape))))
    model = build_model(cfg, "meta")
    assert count_parameters(model) == sum(counted)
    H, V = cfg.hidden_size, 32768
    per_layer = 12 * H * H + 11 * H         # qkv 3H^2+3H, proj H^2, mlp 8H^2+4H, 2 LN 4H
    n_layers = cfg.joint_num_layers + cfg.vit_num_layers + cfg.audio_num_layers + cfg.span_num_layers
    closed_form = (n_layers * per_layer + 4 * 2 * 2 * H + 3 * (H * H + 2 * H)  # layers, pre/final LNs, cls + cls_proj
                   + 2 * (4 * H * H + 4 * H)                                   # two attention pools
                   + 768 * H + H + 130 * H + H + V * H + H * H + H + 3)
    assert count_parameters(model) == closed_form
    assert model.cfg.image_size == (192, 320)


# ------------------------------------------------------------------------------------------ spectrogram
def test_spectrogram_matches_the_original_parameters():
    from brainalign.models.merlot import spectrogram as sp
    np.testing.assert_allclose(sp.hz_to_mel([200.0 / 3, 1000.0, 6400.0]), [1.0, 15.0, 42.0])
    f = np.array([20.0, 500.0, 999.0, 1000.0, 4000.0, 11025.0])
    np.testing.assert_allclose(sp.mel_to_hz(sp.hz_to_mel(f)), f)
    fb = sp.mel_filterbank()
    assert fb.shape == (64, 769)
    df = 22050 / 2 / 768
    area = fb.sum(1) * df                              # Slaney normalisation: unit area in Hz
    np.testing.assert_allclose(area[20:], 1.0, rtol=0.05)
    t = np.arange(22050) / 22050
    spec = sp.log_mel(np.sin(2 * np.pi * 1000.0 * t))
    assert spec.shape == (1 + 22050 // 588, 64)
    centres = sp.mel_to_hz(np.linspace(sp.hz_to_mel(20.0), sp.hz_to_mel(11025.0), 66))[1:-1]
    assert spec[10].argmax() == np.abs(centres - 1000.0).argmin()
    assert np.abs(sp.log_mel(np.zeros(5000))).max() == 0.0          # silence -> 0
    assert sp.log_mel(np.zeros(5 * 22050)).shape == (188, 64)        # a 5-s segment: 188 frames
    clips = sp.segment_clips(np.zeros(5 * 22050, np.float32), 22050, 0.0)
    assert clips.shape == (3, 60, 65) and (clips[..., 64] == 1).all() and (clips[..., :64] == 0).all()


# ------------------------------------------------------------------------------------------ backbone
def test_backbone_factory_errors(tiny_ckpt, tmp_path):
    from types import SimpleNamespace
    from brainalign.errors import ConfigError
    from brainalign.models.merlot.backbone import build_merlot_reserve
    win = SimpleNamespace(frames=2)
    with pytest.raises(ConfigError, match="model.checkpoint: the merlot_reserve backbone needs a converted"):
        build_merlot_reserve(SimpleNamespace(checkpoint=None), win)
    dst = convert(tiny_ckpt[2], tmp_path / "m.pt", **NON_PARAM)
    with pytest.raises(ConfigError, match=r"m.pt has no BPE vocabulary; convert again with --tokenizer"):
        build_merlot_reserve(SimpleNamespace(checkpoint=str(dst)), win)
    with pytest.raises(DataError, match="MERLOT checkpoint not found"):
        build_merlot_reserve(SimpleNamespace(checkpoint=str(tmp_path / "none.pt")), win)
