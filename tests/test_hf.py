"""The hf backbone on tiny random GIT models saved to tmp_path (no downloads): shapes, layers, conditions,
agreement with a direct transformers forward, the LM head used by `brainalign mlm`, and errors."""
import dataclasses

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402

from brainalign.config import Config, WindowsConfig  # noqa: E402
from brainalign.errors import ConfigError, DataError  # noqa: E402
from brainalign.models import get_backbone, registry  # noqa: E402
from brainalign.models.hf import CLIP_MEAN, CLIP_STD, build_hf, fallback_pixels, tokenize_words  # noqa: E402
from brainalign.models.synthetic import WORDS, synthetic_stimuli  # noqa: E402
from conftest import placeholder_stimuli  # noqa: E402

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def word_tokenizer(extra=()):
    """A WordLevel tokenizer over the synthetic words, [CLS] text [SEP], wrapped for transformers."""
    vocab = {w: i for i, w in enumerate(SPECIAL + sorted(set(WORDS)) + list(extra))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def git_dir(path, n_img=2, cls="GitForCausalLM", processor=True, seed=0):
    tok = word_tokenizer()
    cfg = transformers.GitConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=16, patch_size=8),
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, num_image_with_embedding=n_img, pad_token_id=0, bos_token_id=2,
        eos_token_id=3)
    torch.manual_seed(seed)
    model = getattr(transformers, cls)(cfg).eval()
    with torch.no_grad():                 # GIT inits the temporal embeddings to zero: make frames distinguishable
        for p in getattr(model, "git", model).img_temporal_embedding if n_img else ():
            p.normal_()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    if processor:
        transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
                                        ).save_pretrained(path)
    return path


def cfg_for(path, frames=2):
    cfg = Config()
    cfg.model.backbone = "hf"
    cfg.model.checkpoint = str(path)
    cfg.windows = WindowsConfig(context=None, frames=frames, image_size=32, audio_rate=8000)
    return cfg


def load(path, frames=2):
    if "hf" not in registry._BUILTIN and "hf" not in registry._FACTORIES:
        registry.register_backbone("hf")(build_hf)
    cfg = cfg_for(path, frames)
    return get_backbone(cfg.model, cfg.windows)


def stim(n=6, seed=0, frames=2, **kw):
    return synthetic_stimuli("ep", n_windows=n, tr=1.0, frames=frames, image_size=32, audio_rate=8000,
                             seed=seed, **kw)


@pytest.fixture(scope="module")
def gitdir(tmp_path_factory):
    return git_dir(tmp_path_factory.mktemp("git"))


@pytest.fixture(scope="module")
def bb(gitdir):
    return load(gitdir)


@pytest.fixture(scope="module")
def s():
    st = stim(8)
    st.words[0] = []                                   # a window without words
    st.words[1] = ["hey", "you", "coffee"]
    st.words[2] = ["oh", "phone"]
    return st


def test_shapes_layers_and_determinism(bb, s):
    assert (bb.n_layers, bb.hidden) == (3, 32)
    out = bb.encode(s, slice(0, 8), "joint")
    assert out.shape == (3, 8, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, bb.encode(s, slice(0, 8), "joint"))
    one = torch.cat([bb.encode(s, [i], "joint") for i in range(8)], dim=1)   # batch (padding) invariance
    torch.testing.assert_close(one, out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], out[-1])                               # layers differ


def direct_pooled(gitdir, s, i, vision=True, words=True):
    """Reference: tokenizer + image processor + GitModel forward straight from transformers."""
    tok = transformers.AutoTokenizer.from_pretrained(gitdir)
    ip = transformers.AutoImageProcessor.from_pretrained(gitdir)
    model = transformers.GitForCausalLM.from_pretrained(gitdir).eval()
    text = " ".join(s.words[i]) if words else ""
    ids = torch.tensor([tok(text)["input_ids"]])
    kw = {}
    if vision:
        kw["pixel_values"] = ip(images=list(s.frames[i]), return_tensors="pt")["pixel_values"][None]
    with torch.no_grad():
        hs = torch.stack(model.git(input_ids=ids, output_hidden_states=True, **kw).hidden_states[1:])[:, 0]
    n_vis = 2 * 5 if vision else 0                      # 2 frames x (4 patches + CLS)
    n_words = len(s.words[i]) if words else 0          # one WordLevel token per word, after [CLS]
    parts = []
    if vision:
        parts.append(hs[:, :n_vis].mean(1))
    if n_words:
        parts.append(hs[:, n_vis + 1: n_vis + 1 + n_words].mean(1))
    if not parts:
        return hs[:, n_vis]
    return sum(parts) / len(parts)


@pytest.mark.parametrize("cond,vision,words", [("joint", True, True), ("no_vision", False, True),
                                               ("no_language", True, False)])
def test_matches_direct_transformers_forward(bb, gitdir, s, cond, vision, words):
    out = bb.encode(s, slice(0, 4), cond)
    for i in range(4):
        ref = direct_pooled(gitdir, s, i, vision, words)
        torch.testing.assert_close(out[:, i], ref, atol=1e-5, rtol=1e-4)


def test_condition_invariances(bb, s):
    other = dataclasses.replace(s, frames=stim(8, seed=5).frames)
    words2 = [list(reversed(w)) + ["okay"] for w in s.words]
    other_words = dataclasses.replace(s, words=words2)
    enc = lambda st, c: bb.encode(st, slice(0, 8), c)          # noqa: E731
    # no_vision / language_only ignore the frames; no_language / vision_only ignore the words
    assert torch.equal(enc(s, "no_vision"), enc(other, "no_vision"))
    assert torch.equal(enc(s, "language_only"), enc(s, "no_vision"))
    assert torch.equal(enc(s, "no_language"), enc(other_words, "no_language"))
    assert torch.equal(enc(s, "vision_only"), enc(s, "no_language"))
    # joint depends on both
    assert not torch.allclose(enc(s, "joint"), enc(other, "joint"))
    assert not torch.allclose(enc(s, "joint")[:, 1:], enc(other_words, "joint")[:, 1:])
    # a window without words: joint == no_language (the empty text is how language is removed)
    torch.testing.assert_close(enc(s, "joint")[:, 0], enc(s, "no_language")[:, 0], atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="does not support condition 'no_audio'"):
        bb.encode(s, [0], "no_audio")


def test_image_git_uses_middle_frame(tmp_path):
    bb = load(git_dir(tmp_path / "img", n_img=None), frames=3)
    st = stim(4, frames=3)
    fr = st.frames.copy()
    fr[:, 0] = 0
    fr[:, 2] = 255
    alt = dataclasses.replace(st, frames=fr)
    assert torch.equal(bb.encode(st, slice(0, 4), "joint"), bb.encode(alt, slice(0, 4), "joint"))
    fr[:, 1] = 0
    assert not torch.allclose(bb.encode(st, slice(0, 4), "joint"), bb.encode(alt, slice(0, 4), "joint"))


def test_fallback_preprocessing_without_image_processor(tmp_path, s):
    bb = load(git_dir(tmp_path / "noproc", processor=False))
    assert bb.image_processor is None
    x = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    ref = (x.astype(np.float64) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(fallback_pixels(torch.from_numpy(x), 16).numpy(), ref.transpose(0, 3, 1, 2),
                               atol=1e-5)
    pv = bb.pixel_values(s.frames[:2])
    assert pv.shape == (2, 2, 3, 16, 16)
    assert torch.isfinite(bb.encode(s, slice(0, 3), "joint")).all()


def test_tokenize_words_maps_subwords_to_words():
    vocab = {w: i for i, w in enumerate(SPECIAL + ["hey", "you", "coff", "##ee"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]")
    ids, word_of = tokenize_words(fast, ["hey", "coffee", "you"])
    assert ids == [2, 5, 7, 8, 6, 3]
    assert word_of == [-1, 0, 1, 1, 2, -1]
    assert tokenize_words(fast, []) == ([2, 3], [-1, -1])


def test_masked_word_logits_match_lm_head(bb, gitdir, s):
    res = bb.masked_word_logits(s, [1, 2], "joint", [[0, 2], [0]])
    model = transformers.GitForCausalLM.from_pretrained(gitdir).eval()
    ip = transformers.AutoImageProcessor.from_pretrained(gitdir)
    tok = transformers.AutoTokenizer.from_pretrained(gitdir)
    for b, (i, wis) in enumerate([(1, [0, 2]), (2, [0])]):
        ids = tok(" ".join(s.words[i]))["input_ids"]
        pv = ip(images=list(s.frames[i]), return_tensors="pt")["pixel_values"][None]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), pixel_values=pv).logits[0]
        for (lg, target), wi in zip(res[b], wis):
            pos = 10 + 1 + wi                                     # vision tokens, [CLS], word index
            torch.testing.assert_close(lg[0], logits[pos - 1], atol=1e-4, rtol=1e-4)
            assert target.tolist() == [ids[1 + wi]]


def test_errors(tmp_path, s):
    with pytest.raises(ConfigError, match="model.checkpoint: the hf backbone needs a directory"):
        load_cfg = cfg_for("x")
        load_cfg.model.checkpoint = None
        build_hf(load_cfg.model, load_cfg.windows)
    with pytest.raises(ConfigError, match="not a directory written by save_pretrained"):
        load(tmp_path / "missing")
    bert = tmp_path / "bert"
    transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=8).save_pretrained(bert)
    with pytest.raises(ConfigError, match="holds a 'bert' model; the hf backbone supports model types git"):
        load(bert)
    with pytest.raises(ConfigError, match="has temporal embeddings for 2"):
        load(git_dir(tmp_path / "vid", n_img=2), frames=3)
    bare = git_dir(tmp_path / "bare", cls="GitModel")
    bb = load(bare)
    assert bb.encode(s, [0], "joint").shape == (3, 1, 32)
    with pytest.raises(ConfigError, match="has no language-model head"):
        bb.masked_word_logits(s, [1], "joint", [[0]])
    notok = git_dir(tmp_path / "notok")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (notok / f).unlink()
    with pytest.raises(ConfigError, match="has no tokenizer"):
        load(notok)
    word_tokenizer(extra=[f"w{i}" for i in range(40)]).save_pretrained(notok)     # larger than the model's vocab
    with pytest.raises(ConfigError, match=r"tokenizer in .* has 78 tokens \(5 special\) but the model's "
                                          r"vocabulary has 38"):
        load(notok)
    with pytest.raises(DataError, match="frames have shape"):
        load(bare, frames=2).encode(stim(2, frames=1), [0], "joint")


def test_mlm_stage_with_git(bb, s, tmp_path, monkeypatch):
    """`brainalign mlm` through the GIT LM head: per-word loss = -log p(word | left context) from a direct
    GitForCausalLM forward; no_vision scores the same words without frames."""
    from brainalign import mlm

    cfg = cfg_for(bb.source)
    cfg.output = str(tmp_path / "out")
    cfg.data.episodes = ["a", "b", "c"]
    cfg.data.root = str(tmp_path / "data")
    placeholder_stimuli(cfg)          # the loader is faked; the stage key fingerprints the files
    cfg.mlm.conditions = ["joint", "no_vision"]
    cfg.mlm.bootstrap = 50
    monkeypatch.setattr("brainalign.stimuli.windows.load_episode_stimuli",
                        lambda c, ep: dataclasses.replace(s, episode=ep))
    path = mlm.run_mlm(cfg, backbone=bb)
    import h5py
    with h5py.File(path, "r") as f:
        ep, win, wi = f["episode_index"][()], f["window_index"][()], f["word_index"][()]
        loss = {c: f[f"{c}/loss"][()] for c in ("joint", "no_vision")}
        assert f.attrs["backbone"] == "hf" and (f["n_tokens"][()] == 1).all()
    assert not np.allclose(loss["joint"], loss["no_vision"])
    model = transformers.GitForCausalLM.from_pretrained(bb.source).eval()
    tok = transformers.AutoTokenizer.from_pretrained(bb.source)
    ip = transformers.AutoImageProcessor.from_pretrained(bb.source)
    k = int(np.flatnonzero(ep == 1)[0])
    i, w = int(win[k]), int(wi[k])
    ids = tok(" ".join(s.words[i]))["input_ids"]
    pv = ip(images=list(s.frames[i]), return_tensors="pt")["pixel_values"][None]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids]), pixel_values=pv).logits[0], -1)
    assert loss["joint"][k] == pytest.approx(-float(logp[10 + w, ids[1 + w]]), rel=1e-4)


# ---- TVP (TvpModel: [10 text-prompt tokens ; text ; visual grid], bidirectional, no LM head) ---------------

def tvp_dir(path, num_frames=2, processor=True):
    tok = word_tokenizer()
    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                         out_features=["stage2"])
    cfg = transformers.TvpConfig(backbone_config=backbone, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64, vocab_size=len(tok),
                                 max_position_embeddings=64, visual_prompt_size=4, max_img_size=32,
                                 num_frames=num_frames, max_grid_row_position_embeddings=8,
                                 max_grid_col_position_embeddings=8)
    torch.manual_seed(1)
    transformers.TvpModel(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    if processor:
        transformers.TvpImageProcessor(size={"longest_edge": 32}, crop_size={"height": 32, "width": 32},
                                       pad_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tvp(tmp_path_factory):
    return load(tvp_dir(tmp_path_factory.mktemp("tvp")))


def test_tvp_matches_direct_forward(tvp, s):
    out = tvp.encode(s, slice(0, 4), "joint")
    assert out.shape == (2, 4, 32) and tvp.n_layers == 2
    torch.testing.assert_close(torch.cat([tvp.encode(s, [i], "joint") for i in range(4)], 1), out,
                               atol=1e-5, rtol=1e-5)
    model = transformers.TvpModel.from_pretrained(tvp.source).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tvp.source)
    ip = transformers.AutoImageProcessor.from_pretrained(tvp.source)
    for i in range(4):
        ids = torch.tensor([tok(" ".join(s.words[i]))["input_ids"]])
        pv = ip([list(s.frames[i])], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            hs = torch.stack(model(input_ids=ids, pixel_values=pv, attention_mask=torch.ones_like(ids),
                                   output_hidden_states=True).hidden_states[1:])[:, 0]
        n_text, n = ids.shape[1], len(s.words[i])
        vis = hs[:, 10 + n_text:].mean(1)
        ref = (vis + hs[:, 11: 11 + n].mean(1)) / 2 if n else vis
        torch.testing.assert_close(out[:, i], ref, atol=1e-5, rtol=1e-4)


def test_tvp_conditions_and_no_lm_head(tvp, s):
    other = dataclasses.replace(s, frames=stim(8, seed=5).frames)
    other_words = dataclasses.replace(s, words=[list(reversed(w)) + ["okay"] for w in s.words])
    enc = lambda st, c: tvp.encode(st, slice(0, 4), c)          # noqa: E731
    assert torch.equal(enc(s, "no_vision"), enc(other, "no_vision"))         # null (zero) frames
    assert torch.equal(enc(s, "no_language"), enc(other_words, "no_language"))
    assert torch.equal(enc(s, "vision_only"), enc(s, "no_language"))
    assert not torch.allclose(enc(s, "joint"), enc(other, "joint"))
    assert not torch.allclose(enc(s, "joint")[:, 1:], enc(other_words, "joint")[:, 1:])
    with pytest.raises(ConfigError, match=r"backbone 'hf' \(TvpModel from .*\) has no language-model head"):
        tvp.masked_word_logits(s, [1], "joint", [[0]])


def test_tvp_frames_repeated_to_num_frames_and_fallback(tmp_path, s):
    bb = load(tvp_dir(tmp_path / "t4", num_frames=4, processor=False))
    assert bb.frame_sel == [0, 0, 1, 1] and bb.image_processor is None
    pv = bb.pixel_values(s.frames[:1])
    x = s.frames[0, 1].astype(np.float64) / 255.0
    np.testing.assert_allclose(pv[0, 3].numpy(), ((x - 0.5) / 0.5)[..., ::-1].transpose(2, 0, 1), atol=1e-6)
    assert bb.encode(s, slice(0, 3), "joint").shape == (2, 3, 32)
