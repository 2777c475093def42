"""Convert the official MERLOT Reserve Flax checkpoints (``base``, ``large``, ``*_resadapt``) to PyTorch.

The official files are ``flax.training.checkpoints`` msgpack files of a train state
``{"step", "params", "opt_state"}``, weights cast to float16. Only the ``params`` tree is used; it is
read with :mod:`.flaxmsgpack` (no flax/jax needed) and renamed/reshaped to :class:`.model.MerlotReserve`:

=======================================  ==========================================  =========================
Flax (original)                          PyTorch (ours)                              layout
=======================================  ==========================================  =========================
``token_encoder/Embed_0/embedding``      ``token_encoder.weight``                    (V, H) as is
``*/layer_07/...``                       ``*.layers.7....``
``*/scale`` of a LayerNorm               ``*.weight``                                as is
Dense ``kernel`` (in, out)               Linear ``weight`` (out, in)                 transposed
``qkv``/``query``/``key``/``value``       ``weight`` (heads*d, H), ``bias`` (heads*d)  from (H, heads, d), (heads, d)
``attn_proj``/``seq_attnpool/out``        ``weight`` (H, heads*d)                     from (heads, d, H)
``audio_encoder/embedding`` Conv         Linear over the flattened 2-frame patch     from (2, 65, H)
``head`` (or ``joint_proj``)             ``head``
=======================================  ==========================================  =========================

CLI use: ``python -m brainalign.models.merlot.convert SRC DST.pt`` (or :func:`convert`).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import torch

from ...errors import ConfigError, DataError
from ...h5io import atomic_path
from . import flaxmsgpack
from .model import MerlotConfig, MerlotReserve, build_model

FORMAT = "brainalign-merlot-reserve/1"
_ALIASES = {"joint_proj": "head"}      # the original names its joint projection 'head' (joint_proj in setup)


# ------------------------------------------------------------------------------------------- tree helpers
def flatten(tree, prefix="") -> dict:
    """Nested dict -> {"a/b/c": leaf}."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def read_flax_params(path) -> dict:
    """The flattened float32 ``params`` tree of a Flax msgpack checkpoint: {"a/b/kernel": ndarray}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MERLOT checkpoint not found: {path}")
    try:
        tree = flaxmsgpack.restore(path.read_bytes())
    except ImportError:
        raise
    except Exception as e:
        raise DataError(f"MERLOT checkpoint {path}: not a Flax msgpack file ({type(e).__name__}: {e})") from None
    if not isinstance(tree, dict):
        raise DataError(f"MERLOT checkpoint {path}: top level is a {type(tree).__name__}, not a parameter tree")
    for key in ("params", "target"):           # train state (flax.training) / optimizer state (flax.optim)
        if isinstance(tree.get(key), dict):
            tree = tree[key]
            break
    flat = {}
    for k, v in flatten(tree).items():
        parts = k.split("/")
        parts[0] = _ALIASES.get(parts[0], parts[0])
        if not isinstance(v, np.ndarray) or v.dtype.kind != "f":
            raise DataError(f"MERLOT checkpoint {path}: parameter '{k}' is not a float array "
                            f"({type(v).__name__} {getattr(v, 'dtype', '')})")
        flat["/".join(parts)] = v.astype(np.float32)
    return flat


# --------------------------------------------------------------------------------------- name mapping
def torch_to_flax(key: str) -> tuple[str, str]:
    """Our state-dict key -> (original Flax path, layout kind), e.g.
    'joint_transformer.layers.3.attention_layer.qkv.weight' -> ('joint_transformer/layer_03/attention_layer/qkv/kernel', 'in3').
    """
    if key == "token_encoder.weight":
        return "token_encoder/Embed_0/embedding", "copy"
    parts = key.split(".")
    out = []
    i = 0
    while i < len(parts):
        if parts[i] == "layers":
            out.append(f"layer_{int(parts[i + 1]):02d}")
            i += 2
        else:
            out.append(parts[i])
            i += 1
    leaf, module = out[-1], (out[-2] if len(out) > 1 else "")
    if leaf in ("cls", "contrastive_scales"):
        return "/".join(out), "copy"
    if module.endswith("_ln"):
        out[-1] = "scale" if leaf == "weight" else "bias"
        return "/".join(out), "copy"
    if leaf == "bias":
        kind = "bias2" if module in ("qkv", "query", "key", "value") else "copy"
        return "/".join(out), kind
    out[-1] = "kernel"
    if module in ("qkv", "query", "key", "value"):
        kind = "in3"
    elif module == "attn_proj" or (module == "out" and "seq_attnpool" in out):
        kind = "out3"
    elif module == "embedding" and out[0] == "audio_encoder":
        kind = "conv"
    else:
        kind = "dense"
    return "/".join(out), kind


def flax_shape(kind: str, torch_shape: tuple, cfg: MerlotConfig) -> tuple:
    """The Flax layout shape that maps onto ``torch_shape``."""
    d = cfg.size_per_head
    if kind == "dense":
        return (torch_shape[1], torch_shape[0])
    if kind == "in3":
        return (torch_shape[1], torch_shape[0] // d, d)
    if kind == "bias2":
        return (torch_shape[0] // d, d)
    if kind == "out3":
        return (torch_shape[1] // d, d, torch_shape[0])
    if kind == "conv":
        return (cfg.audio_patch_size, torch_shape[1] // cfg.audio_patch_size, torch_shape[0])
    return tuple(torch_shape)


def to_torch_layout(kind: str, arr: np.ndarray) -> np.ndarray:
    if kind == "dense":
        return arr.T
    if kind in ("in3", "out3", "conv"):
        if kind == "in3":
            return arr.reshape(arr.shape[0], -1).T
        return arr.reshape(-1, arr.shape[-1]).T
    if kind == "bias2":
        return arr.reshape(-1)
    return arr


# ------------------------------------------------------------------------------------ config inference
def _need(flat: dict, key: str, src) -> np.ndarray:
    if key not in flat:
        raise DataError(f"MERLOT checkpoint {src}: missing parameter '{key}'")
    return flat[key]


def _n_layers(flat: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
    found = {int(m.group(1)) for k in flat for m in [pat.match(k)] if m}
    return max(found) + 1 if found else 0


def infer_config(flat: dict, src="<params>", **overrides) -> MerlotConfig:
    """The architecture sizes implied by a flattened Flax parameter tree; ``overrides`` set the sizes that
    carry no parameters (output_grid, audio_seq_length, audio_token_length, rotary_hsize)."""
    vocab, hidden = _need(flat, "token_encoder/Embed_0/embedding", src).shape
    qkv = _need(flat, "joint_transformer/layer_00/attention_layer/qkv/kernel", src)
    inter = _need(flat, "joint_transformer/layer_00/mlp_layer/intermediate/kernel", src)
    vit = _need(flat, "vision_encoder/embedding/kernel", src)
    aud = _need(flat, "audio_encoder/embedding/kernel", src)
    if aud.ndim != 3:
        raise DataError(f"MERLOT checkpoint {src}: parameter 'audio_encoder/embedding/kernel' has shape "
                        f"{aud.shape}, expected (patch, mels + 1, hidden)")
    patch = int(round((vit.shape[0] / 3) ** 0.5))
    sizes = dict(hidden_size=int(hidden), vocab_size=int(vocab), size_per_head=int(qkv.shape[-1]),
                 expansion_mult=int(inter.shape[1]) // int(hidden), vit_patch_size=patch,
                 audio_patch_size=int(aud.shape[0]), num_mels=int(aud.shape[1]) - 1,
                 joint_num_layers=_n_layers(flat, "joint_transformer"),
                 vit_num_layers=_n_layers(flat, "vision_encoder/transformer"),
                 audio_num_layers=_n_layers(flat, "audio_encoder/transformer"),
                 span_num_layers=_n_layers(flat, "span_encoder/transformer"),
                 joint_head="head/kernel" in flat, qa_head="proj/kernel" in flat)
    sizes.update(overrides)
    try:
        return MerlotConfig(**sizes)
    except (TypeError, ValueError) as e:
        raise DataError(f"MERLOT checkpoint {src}: inconsistent sizes {sizes}: {e}") from None


# ------------------------------------------------------------------------------------------- conversion
def params_to_state_dict(flat: dict, cfg: MerlotConfig, src="<params>") -> dict[str, torch.Tensor]:
    """Flattened Flax params -> our state dict (float32), checked key by key against ``cfg``'s model."""
    expected = build_model(cfg, "meta").state_dict()
    wanted = {}
    for tkey, tensor in expected.items():
        fkey, kind = torch_to_flax(tkey)
        wanted[fkey] = (tkey, kind, tuple(tensor.shape))
    for fkey in flat:
        if fkey not in wanted:
            raise DataError(f"MERLOT checkpoint {src}: unknown parameter '{fkey}' {tuple(flat[fkey].shape)} "
                            "(not part of MERLOT Reserve)")
    sd = {}
    for fkey, (tkey, kind, tshape) in wanted.items():
        if fkey not in flat:
            raise DataError(f"MERLOT checkpoint {src}: missing parameter '{fkey}' "
                            f"(expected shape {flax_shape(kind, tshape, cfg)})")
        arr = flat[fkey]
        want = flax_shape(kind, tshape, cfg)
        if tuple(arr.shape) != want:
            raise DataError(f"MERLOT checkpoint {src}: parameter '{fkey}' has shape {tuple(arr.shape)}, "
                            f"expected {want}")
        sd[tkey] = torch.from_numpy(np.ascontiguousarray(to_torch_layout(kind, arr), dtype=np.float32))
    return sd


#: the grids the resolution-adapted checkpoints were trained at (mreserve/modeling.py from_pretrained)
RESADAPT_GRIDS = ((18, 32), (24, 24))


def check_grid(src, overrides: dict) -> None:
    """A ``*_resadapt`` checkpoint has no parameter that tells its grid (the rotary coordinates are computed),
    so it must be converted with one of the grids it was trained at: refused otherwise (one line)."""
    if "resadapt" not in Path(src).name.lower():
        return
    grid = overrides.get("output_grid")
    if grid is None:
        raise DataError(f"MERLOT checkpoint {src}: a resolution-adapted checkpoint must be converted with --grid "
                        f"(18 32 or 24 24, the grids it was trained at); without it the frames would run at the "
                        f"pretrained 12 x 20")
    if tuple(int(v) for v in grid) not in RESADAPT_GRIDS:
        raise DataError(f"MERLOT checkpoint {src}: grid {tuple(grid)} is not one a resolution-adapted checkpoint "
                        f"was trained at ({', '.join(f'{h} {w}' for h, w in RESADAPT_GRIDS)})")


def _read_flax(path, overrides: dict) -> tuple[MerlotConfig, dict[str, torch.Tensor]]:
    check_grid(path, overrides)
    flat = read_flax_params(path)
    cfg = infer_config(flat, path, **overrides)
    return cfg, params_to_state_dict(flat, cfg, path)


def convert_flax_checkpoint(path, **overrides) -> dict[str, torch.Tensor]:
    """Read an official Flax checkpoint and return our float32 state dict (see :func:`infer_config`)."""
    return _read_flax(path, overrides)[1]


def write_converted(dst, cfg: MerlotConfig, state_dict: dict, source: str, tokenizer_json) -> Path:
    """``dst`` = torch.save of {format, config, state_dict, source, tokenizer_json}, written atomically."""
    payload = {"format": FORMAT, "config": cfg.to_dict(), "state_dict": state_dict, "source": source,
               "tokenizer_json": tokenizer_json}
    with atomic_path(dst) as tmp:
        torch.save(payload, tmp)
    return Path(dst)


def convert(src, dst, tokenizer=None, **overrides) -> Path:
    """Convert ``src`` (Flax msgpack) to ``dst`` (:func:`write_converted`). ``tokenizer``: the original's BPE
    vocabulary file (mreserve/lowercase_encoder.json), embedded so that the .pt is all the backbone needs.
    ``overrides``: e.g. ``output_grid=(18, 32)``, required for the res-adapted checkpoints (:func:`check_grid`)."""
    cfg, sd = _read_flax(src, overrides)
    tok = None
    if tokenizer is not None:
        tpath = Path(tokenizer)
        if not tpath.is_file():
            raise DataError(f"MERLOT tokenizer file not found: {tpath}")
        tok = tpath.read_text(encoding="utf-8")
    return write_converted(dst, cfg, sd, str(src), tok)


def read_converted(path) -> dict:
    """The payload written by :func:`convert` (DataError if missing or not ours)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MERLOT checkpoint not found: {path} (convert the Flax file with "
                        "`python -m brainalign.models.merlot.convert SRC DST.pt`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"MERLOT checkpoint {path}: cannot read as a torch file ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"MERLOT checkpoint {path}: not written by brainalign's MERLOT converter "
                        f"(format {payload.get('format') if isinstance(payload, dict) else None!r})")
    return payload


CONVERT_HINT = ("python -m brainalign.models.merlot.convert FLAX_CKPT OUT.pt --tokenizer lowercase_encoder.json "
                "(README: Running on CNeuroMod / Algonauts data, step 4)")


def check_converted(path, key: str = "model.checkpoint") -> None:
    """ConfigError (one line naming ``key``) unless ``path`` is a checkpoint written by :func:`convert` with its
    BPE vocabulary; the tensors are memory-mapped, not read, so this is quick for the large checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: MERLOT Reserve checkpoint not found: {path} (download and convert it: "
                          f"{CONVERT_HINT})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ConfigError(f"{key}: {path} is not a converted MERLOT Reserve checkpoint (cannot read it as a torch "
                          f"file: {type(e).__name__}; an official Flax file must be converted: {CONVERT_HINT})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ConfigError(f"{key}: {path} is not a converted MERLOT Reserve checkpoint (format {found!r}, expected "
                          f"{FORMAT!r}: {CONVERT_HINT})")
    if not payload.get("tokenizer_json"):
        raise ConfigError(f"{key}: {path} has no BPE vocabulary; convert again with --tokenizer "
                          "lowercase_encoder.json (from the original repository)")


def model_from_payload(payload: dict, device="cpu", **overrides) -> MerlotReserve:
    cfg = MerlotConfig(**{**payload["config"], **overrides})
    model = build_model(cfg, "meta")
    model.load_state_dict(payload["state_dict"], strict=True, assign=True)
    return model.to(device).eval()


def load_converted(path, device="cpu", **overrides) -> MerlotReserve:
    """A :class:`MerlotReserve` with the weights written by :func:`convert` (``overrides`` e.g. output_grid)."""
    return model_from_payload(read_converted(path), device, **overrides)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m brainalign.models.merlot.convert",
                                 description="Convert an official MERLOT Reserve Flax checkpoint to a torch .pt file.")
    ap.add_argument("src", help="Flax msgpack checkpoint (e.g. ~/.cache/merlotreserve/base)")
    ap.add_argument("dst", help="output .pt file")
    ap.add_argument("--grid", nargs=2, type=int, metavar=("H", "W"), default=None,
                    help="patch grid of the frames (default 12 20; required for *_resadapt: 18 32 or 24 24)")
    ap.add_argument("--audio-seq-length", type=int, default=None, help="spectrogram frames per clip (60)")
    ap.add_argument("--audio-token-length", type=int, default=None, help="audio tokens per clip (6)")
    ap.add_argument("--tokenizer", default=None,
                    help="the original's BPE vocabulary (mreserve/lowercase_encoder.json) to embed in DST")
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in (("output_grid", tuple(args.grid) if args.grid else None),
                                   ("audio_seq_length", args.audio_seq_length),
                                   ("audio_token_length", args.audio_token_length)) if v is not None}
    try:
        out = convert(args.src, args.dst, tokenizer=args.tokenizer, **overrides)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
