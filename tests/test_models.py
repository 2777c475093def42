"""Backbone registry, the tiny multimodal model, input conditions, log-mel audio features, checkpoints."""
import dataclasses
import math
import zlib

import numpy as np
import pytest
import torch

from brainalign.config import Config, TinyModelConfig, WindowsConfig
from brainalign.errors import ConfigError, DataError
from brainalign.models import available_backbones, get_backbone, register_backbone, registry
from brainalign.models.audio import log_mel, mel_filterbank, stft_params
from brainalign.models.synthetic import synthetic_stimuli
from brainalign.models.tiny import TinyBackbone, TinySpec, pool, save_checkpoint, token_ids

CONDS = ("joint", "no_vision", "no_language", "no_audio", "vision_only", "language_only")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_cfg(**tiny):
    cfg = Config()
    cfg.model.tiny = TinyModelConfig(**{**dict(hidden=32, layers=2, heads=4, vocab=512, patch=8, n_mels=16),
                                        **tiny})
    cfg.windows = WindowsConfig(context=None, frames=2, image_size=32, audio_rate=8000)
    return cfg


def stim(n=12, seed=0, **kw):
    return synthetic_stimuli("ep", n_windows=n, tr=1.0, frames=2, image_size=32, audio_rate=8000, seed=seed, **kw)


@pytest.fixture(scope="module")
def bb():
    cfg = small_cfg()
    return get_backbone(cfg.model, cfg.windows)


def encode_all(backbone, s, cond, batch=64):
    return torch.cat([backbone.encode(s, slice(i, i + batch), cond) for i in range(0, s.n_windows, batch)], 1).numpy()


# ---- audio -----------------------------------------------------------------------------------------

def htk_filterbank_reference(n_freqs, n_mels, sr):
    """Straight from the HTK definition: triangles between mel-spaced corner frequencies, peak 1."""
    mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)        # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)          # noqa: E731
    top = mel(sr / 2)
    corners = [hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_freqs, n_mels))
    for k in range(n_freqs):
        x = k * (sr / 2) / (n_freqs - 1)
        for j in range(n_mels):
            lo, c, hi = corners[j], corners[j + 1], corners[j + 2]
            if lo <= x <= c:
                fb[k, j] = (x - lo) / (c - lo)
            elif c < x <= hi:
                fb[k, j] = (hi - x) / (hi - c)
    return fb


@pytest.mark.parametrize("n_fft,n_mels,sr", [(512, 32, 16000), (256, 16, 8000), (1024, 40, 22050)])
def test_mel_filterbank_matches_htk_definition(n_fft, n_mels, sr):
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sr).numpy()
    ref = htk_filterbank_reference(n_fft // 2 + 1, n_mels, sr)
    assert fb.shape == (n_fft // 2 + 1, n_mels) and fb.dtype == np.float32
    np.testing.assert_allclose(fb, ref, atol=1e-6)
    assert (fb.max(0) > 0.3).all()          # every band catches at least one bin near its peak


def test_log_mel_matches_numpy_stft():
    sr, n_mels = 8000, 16
    rng = np.random.default_rng(1)
    wave = rng.standard_normal((2, 2000)).astype(np.float32)
    got = log_mel(torch.from_numpy(wave), sr, n_mels).numpy()
    n_fft, win, hop = stft_params(sr)
    assert (n_fft, win, hop) == (256, 200, 80)
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left:left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)     # periodic Hann
    fb = htk_filterbank_reference(n_fft // 2 + 1, n_mels, sr)
    for b in range(2):
        x = np.pad(wave[b].astype(np.float64), n_fft // 2)
        n_frames = 1 + len(wave[b]) // hop
        frames = np.stack([x[t * hop:t * hop + n_fft] * window for t in range(n_frames)])
        ref = np.log(np.abs(np.fft.rfft(frames, axis=1)) ** 2 @ fb + 1e-6)
        assert got[b].shape == ref.shape == (n_frames, n_mels)
        np.testing.assert_allclose(got[b], ref, atol=2e-4, rtol=1e-4)


def test_log_mel_tone_peaks_in_its_band():
    sr, n_mels = 16000, 32
    t = np.arange(sr) / sr
    spec = log_mel(torch.from_numpy(np.sin(2 * np.pi * 1000 * t)[None].astype(np.float32)), sr, n_mels)[0]
    centers = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 8000 / 700), n_mels + 2)[1:-1] / 2595) - 1)
    assert int(spec.mean(0).argmax()) == int(np.abs(centers - 1000).argmin())


# ---- registry and model basics ----------------------------------------------------------------------

def test_token_ids_stable_case_insensitive_and_in_range():
    ids = token_ids(["Coffee", "coffee", "COFFEE", "a"], 512)
    assert ids[0] == ids[1] == ids[2] == 3 + zlib.crc32(b"coffee") % 509
    assert all(3 <= i < 512 for i in ids) and ids[3] != ids[0]


def test_shapes_dtype_and_index_forms(bb):
    s = stim(10)
    assert (bb.name, bb.n_layers, bb.hidden) == ("tiny", 2, 32) and set(bb.supported_conditions) == set(CONDS)
    for c in CONDS:
        out = bb.encode(s, slice(2, 7), c)
        assert out.shape == (2, 5, 32) and out.dtype == torch.float32 and out.device.type == "cpu"
        assert torch.isfinite(out).all()
    by_array = bb.encode(s, np.array([6, 2, 4]), "joint")
    by_slice = bb.encode(s, slice(2, 7), "joint")
    torch.testing.assert_close(by_array, by_slice[:, [4, 0, 2]], atol=1e-5, rtol=1e-5)


def test_determinism_across_instances_seeds_and_batch_sizes(bb):
    s = stim(13)
    ref = encode_all(bb, s, "joint")
    cfg = small_cfg()
    again = encode_all(get_backbone(cfg.model, cfg.windows), s, "joint")
    np.testing.assert_array_equal(ref, again)
    for batch in (1, 4, 5):
        np.testing.assert_allclose(encode_all(bb, s, "joint", batch), ref, atol=1e-5, rtol=0)
    cfg.model.seed = 1
    other = encode_all(get_backbone(cfg.model, cfg.windows), s, "joint")
    assert np.abs(other - ref).mean() > 0.1


def test_unknown_backbone_and_plugin_registration(monkeypatch):
    cfg = small_cfg()
    cfg.model.backbone = "nope"
    with pytest.raises(ConfigError, match=r"model.backbone: unknown backbone 'nope' \(known: .*tiny"):
        get_backbone(cfg.model, cfg.windows)

    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))     # undo the registration after

    @register_backbone("tiny_alias_for_test")
    def build(model_cfg, windows_cfg):
        return TinyBackbone(TinySpec.from_config(model_cfg, windows_cfg), seed=model_cfg.seed)

    cfg.model.backbone = "tiny_alias_for_test"
    assert "tiny_alias_for_test" in available_backbones()
    assert get_backbone(cfg.model, cfg.windows).n_layers == 2

    monkeypatch.setitem(registry._BUILTIN, "needs_missing_pkg", "brainalign_no_such_module:build")
    cfg.model.backbone = "needs_missing_pkg"
    with pytest.raises(ConfigError, match="model.backbone: backbone 'needs_missing_pkg' is not usable here: "
                                          "No module named 'brainalign_no_such_module'"):
        get_backbone(cfg.model, cfg.windows)


def test_cuda_not_available_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    cfg = small_cfg()
    for dev in ("cuda", "cuda:0"):
        cfg.model.device = dev
        with pytest.raises(ConfigError, match=rf"model.device: '{dev}' requested but CUDA is not available"):
            get_backbone(cfg.model, cfg.windows)
    cfg.model.device = "gpu7"
    with pytest.raises(ConfigError, match="model.device: not a torch device: 'gpu7'"):
        get_backbone(cfg.model, cfg.windows)


def test_bad_geometry_and_inputs_are_one_line_errors(bb):
    with pytest.raises(ConfigError, match=r"windows.image_size: 30 is not a multiple of model.tiny.patch \(8\)"):
        cfg = small_cfg()
        cfg.windows.image_size = 30
        get_backbone(cfg.model, cfg.windows)
    with pytest.raises(ConfigError, match="model.tiny.hidden: 30 must be a positive multiple of model.tiny.heads"):
        cfg = small_cfg(hidden=30)
        get_backbone(cfg.model, cfg.windows)
    s = synthetic_stimuli("ep7", n_windows=3, tr=1.0, frames=3, image_size=32, audio_rate=8000)
    with pytest.raises(DataError, match=r"episode ep7: frames have shape \(3, 3, 32, 32, 3\)"):
        bb.encode(s, slice(None), "joint")
    bb.encode(s, slice(None), "no_vision")       # frames are not used there
    s = synthetic_stimuli("ep8", n_windows=3, tr=1.0, frames=2, image_size=32, audio_rate=16000)
    with pytest.raises(DataError, match="episode ep8: audio at 16000 Hz but the model was built for "
                                        "windows.audio_rate = 8000"):
        bb.encode(s, slice(None), "joint")
    with pytest.raises(ConfigError, match="does not support condition 'both'"):
        bb.encode(stim(2), slice(None), "both")


def test_bfloat16_autocast_close_to_float32():
    cfg = small_cfg()
    cfg.model.precision = "bfloat16"
    low = get_backbone(cfg.model, cfg.windows)
    s = stim(8)
    a = encode_all(low, s, "joint")
    cfg.model.precision = "float32"
    b = encode_all(get_backbone(cfg.model, cfg.windows), s, "joint")
    assert a.dtype == np.float32
    c = (a - a.mean(1, keepdims=True)).ravel(), (b - b.mean(1, keepdims=True)).ravel()
    assert np.corrcoef(*c)[0, 1] > 0.98
    assert not np.array_equal(a, b)     # autocast really ran in bfloat16


# ---- conditions ------------------------------------------------------------------------------------

def _replace(s, **kw):
    return dataclasses.replace(s, **kw)


def test_condition_invariances(bb):
    s = stim(9, seed=3)
    other = stim(9, seed=4)            # different frames, words and audio
    swap = {"frames": _replace(s, frames=other.frames), "words": _replace(s, words=other.words),
            "audio": _replace(s, audio=other.audio)}
    uses = {"joint": {"frames", "words", "audio"}, "no_vision": {"words", "audio"},
            "no_language": {"frames", "audio"}, "no_audio": {"frames", "words"},
            "vision_only": {"frames"}, "language_only": {"words"}}
    for c, used in uses.items():
        base = encode_all(bb, s, c)
        for part, s2 in swap.items():
            changed = encode_all(bb, s2, c)
            if part in used:
                # every window whose input differs must change (two windows may both have no words)
                differs = np.array([getattr(s, part)[i] != getattr(s2, part)[i] if part == "words"
                                    else not np.array_equal(getattr(s, part)[i], getattr(s2, part)[i])
                                    for i in range(9)])
                assert differs.sum() >= 7
                moved = np.abs(changed - base).max(axis=(0, 2))
                assert (moved[differs] > 1e-3).all() and (moved[~differs] < 1e-5).all(), (c, part)
            else:
                np.testing.assert_array_equal(changed, base, err_msg=f"{c} depends on {part}")


def test_dropped_modalities_equal_running_without_their_tokens(bb):
    s = stim(6, seed=5)
    kw = bb.inputs(s, np.arange(6), "joint")
    full = {"frames": kw["frames"], "ids": kw["ids"], "wave": kw["wave"]}
    expect = {"no_vision": ("ids", "wave"), "no_language": ("frames", "wave"), "no_audio": ("frames", "ids"),
              "vision_only": ("frames",), "language_only": ("ids",)}
    with torch.inference_mode():
        for c, keep in expect.items():
            out = bb.module(**{k: full[k] for k in keep}, sample_rate=8000, batch=6)
            n_tokens = 1 + 2 * 16 * ("frames" in keep) + kw["ids"].shape[1] * ("ids" in keep) \
                + 13 * ("wave" in keep)     # 1 s at 8 kHz: 101 mel frames -> 13 audio tokens
            assert out.hidden.shape == (2, 6, n_tokens, 32)
            np.testing.assert_allclose(bb.encode(s, slice(None), c).numpy(), pool(out).numpy(), atol=1e-6)


def test_pooled_positions_and_windows_without_words(bb):
    s = stim(4, seed=6)
    s.words[1] = []
    kw = bb.inputs(s, np.arange(4), "joint")
    with torch.inference_mode():
        out = bb.module(**kw)
        n_words = [len(w) for w in s.words]
        # pooled = 32 vision tokens + the real words; CLS, audio tokens and padding are not pooled
        assert out.pooled_mask.sum(1).tolist() == [32 + n for n in n_words]
        h = out.hidden[:, 1]                                   # window 1 has no words
        manual = h[:, 1:33].mean(1)                            # the 32 vision tokens alone
        np.testing.assert_allclose(pool(out)[:, 1].numpy(), manual.numpy(), atol=1e-6)
        # a window with words: vision mean and word mean weigh equally, whatever the token counts
        b = int(np.argmax(n_words))
        words = out.hidden[:, b, 33:33 + n_words[b]].mean(1)
        balanced = 0.5 * (out.hidden[:, b, 1:33].mean(1) + words)
        np.testing.assert_allclose(pool(out)[:, b].numpy(), balanced.numpy(), atol=1e-6)
        # language_only for a window without words is exactly the CLS token run alone
        lang = bb.encode(s, [1], "language_only")
        cls_only = bb.module(batch=1).hidden[:, 0, 0]
        np.testing.assert_allclose(lang[:, 0].numpy(), cls_only.numpy(), atol=1e-6)


# ---- features carry information ---------------------------------------------------------------------

def test_features_are_not_degenerate(bb):
    f = encode_all(bb, stim(40, seed=7), "joint")
    for layer in f:
        d = np.linalg.norm(layer[:, None] - layer[None], axis=2)[np.triu_indices(40, 1)]
        assert d.min() > 0.2 * np.median(d)                     # no two windows collapse
        sv = np.linalg.svd(layer - layer.mean(0), compute_uv=False)
        participation = sv.sum() ** 2 / (sv ** 2).sum()
        assert participation > 8                                # variance spread over many directions


def heldout_unexplained(y, x, n_train):
    """Fraction of held-out variance of y (n, d) left after an OLS fit on [x, 1] over the first n_train rows."""
    x = np.concatenate([x, np.ones((len(x), 1))], 1).astype(np.float64)
    y = y.astype(np.float64)
    beta = np.linalg.lstsq(x[:n_train], y[:n_train], rcond=None)[0]
    res = y[n_train:] - x[n_train:] @ beta
    return float((res ** 2).sum() / ((y[n_train:] - y[n_train:].mean(0)) ** 2).sum())


def test_joint_features_carry_cross_modal_interactions(bb):
    s = stim(360, seed=8)
    s.audio[:] = s.audio[0]             # audio fixed: only frames and words vary
    f = {c: encode_all(bb, s, c) for c in ("joint", "vision_only", "language_only")}
    rng = np.random.default_rng(0)
    for li in range(bb.n_layers):
        x = np.concatenate([f["vision_only"][li], f["language_only"][li]], 1)     # 64 predictors
        # positive control: a linear function of the unimodal features is recovered almost exactly
        linear = x @ rng.standard_normal((64, 32)) + 0.01 * rng.standard_normal((360, 32))
        assert heldout_unexplained(linear, x, 240) < 0.01
        assert heldout_unexplained(f["joint"][li], x, 240) > 0.15, f"layer {li}: joint ~ linear in unimodal"


# ---- checkpoints ------------------------------------------------------------------------------------

def test_checkpoint_round_trip_and_errors(bb, tmp_path):
    s = stim(5, seed=9)
    ref = encode_all(bb, s, "joint")
    path = save_checkpoint(bb, tmp_path / "ckpt" / "tiny.pt")
    cfg = small_cfg()
    cfg.model.seed = 123                       # the checkpoint, not the seed, gives the weights
    cfg.model.checkpoint = str(path)
    np.testing.assert_array_equal(encode_all(get_backbone(cfg.model, cfg.windows), s, "joint"), ref)

    other = small_cfg(hidden=16)
    other.model.checkpoint = str(path)
    with pytest.raises(ConfigError, match=r"tiny.pt was saved for another tiny model .*hidden 32 vs 16"):
        get_backbone(other.model, other.windows)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    cfg.model.checkpoint = str(bad)
    with pytest.raises(DataError, match="model.checkpoint: cannot read .*bad.pt as a torch checkpoint"):
        get_backbone(cfg.model, cfg.windows)
    cfg.model.checkpoint = str(tmp_path / "absent.pt")
    with pytest.raises(ConfigError, match="model.checkpoint: file not found: .*absent.pt"):
        get_backbone(cfg.model, cfg.windows)
    state = {k: v for k, v in bb.module.state_dict().items() if not k.startswith("blocks.1")}
    torch.save(state, tmp_path / "partial.pt")
    cfg.model.checkpoint = str(tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match="partial.pt does not fit the tiny model .*Missing key"):
        get_backbone(cfg.model, cfg.windows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_and_autocast_runs():
    cfg = small_cfg()
    s = stim(10, seed=11)
    cpu = encode_all(get_backbone(cfg.model, cfg.windows), s, "joint")
    cfg.model.device = "cuda"
    gpu = get_backbone(cfg.model, cfg.windows)
    assert gpu.device.type == "cuda" and next(gpu.module.parameters()).is_cuda
    np.testing.assert_allclose(encode_all(gpu, s, "joint", batch=4), cpu, atol=1e-3)
    for precision in ("bfloat16", "float16"):
        cfg.model.precision = precision
        low = encode_all(get_backbone(cfg.model, cfg.windows), s, "joint")
        assert low.dtype == np.float32
        assert np.corrcoef((low - low.mean(1, keepdims=True)).ravel(),
                           (cpu - cpu.mean(1, keepdims=True)).ravel())[0, 1] > 0.98
