"""Extract stage: run the backbone over every episode's TR windows under each input condition.

Per episode one shard ``{output}/features/{episode}.h5`` (the unit of work: a SLURM array task or an MPI
rank extracts a subset with ``run_extract(cfg, episodes=[...])`` / ``extract_one``); then
``{output}/features.h5`` assembles the shards as HDF5 virtual datasets (relative file names, so the
output directory can be moved as a whole).

Shard ``features/{episode}.h5``:
  ``/{condition}`` float32 (n_layers, n_windows, hidden); ``/windows`` float64 (n_windows, 2);
  attrs episode and the same descriptive attrs as features.h5; each ``/{condition}`` carries its unit's
  ``stage_key`` / ``stage_record`` (brainalign.stagekeys).
features.h5:
  ``/{condition}/{episode}`` float32 (n_layers, n_windows, hidden), virtual over the shard's ``/{condition}``;
  ``/windows/{episode}`` float64 (n_windows, 2) [start, end) seconds (a copy);
  attrs conditions, episodes, layers, hidden, n_layers, backbone_layers, backbone, tr, window_context,
  frames_per_window, stage_key / stage_record (the units' keys) + provenance (see brainalign.h5io.atomic_h5).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import h5py
import numpy as np

from .errors import ConfigError, DataError
from .h5io import atomic_h5, is_complete, str_attr
from .interrupt import Interrupted
from .log import get_logger, progress
from .paths import FEATURE_SHARDS, FEATURES, feature_shard
from .stimuli.windows import check_stimuli, load_stimuli_for

log = get_logger("extract")



# ---- settings -----------------------------------------------------------------------------------

def resolve_layers(layers, n_layers: int, backbone: str = "") -> list[int]:
    """``model.layers`` (None = all; negative counts from the end) -> sorted-as-given non-negative indices."""
    if layers is None:
        return list(range(n_layers))
    out = []
    for i, layer in enumerate(layers):
        if not -n_layers <= layer < n_layers:
            raise ConfigError(f"model.layers[{i}]: layer {layer} out of range for backbone {backbone!r} with "
                              f"{n_layers} layers (0..{n_layers - 1} or -{n_layers}..-1)")
        idx = layer % n_layers
        if idx in out:
            raise ConfigError(f"model.layers[{i}]: layer {layer} is listed twice")
        out.append(idx)
    if not out:
        raise ConfigError("model.layers: empty list (use null for every layer)")
    return out


def _conditions(cfg, conditions) -> list[str]:
    from .models.conditions import modalities

    conds = list(cfg.model.conditions if conditions is None else conditions)
    if not conds:
        raise ConfigError("model.conditions: needs at least one condition")
    for c in conds:
        modalities(c)
    return conds


def _check_batch_size(cfg):
    if cfg.model.batch_size < 1:
        raise ConfigError(f"model.batch_size: must be positive, got {cfg.model.batch_size}")


def window_context(cfg) -> float:
    """Seconds of stimulus per window (windows.context, default one TR)."""
    return float(cfg.windows.context) if cfg.windows.context else float(cfg.data.bold.tr)


# ---- encoding ----------------------------------------------------------------------------------

def encode_stimuli(backbone, stimuli, conditions, layers, batch_size: int, out=None) -> dict[str, np.ndarray]:
    """{condition: float32 (len(layers), n_windows, hidden)} for one episode's stimuli, in window batches.
    ``out`` (a dict) is filled condition by condition (what an interrupted call finished stays in it)."""
    check_stimuli(stimuli)
    n = stimuli.n_windows
    sel = np.asarray(layers, dtype=np.int64)
    out = {} if out is None else out
    for c in conditions:
        backbone.check_condition(c)
        feats = np.empty((len(sel), n, backbone.hidden), dtype=np.float32)
        for start in range(0, n, batch_size):
            part = slice(start, min(start + batch_size, n))
            feats[:, part] = backbone.encode(stimuli, part, c).numpy()[sel]
        if not np.isfinite(feats).all():
            raise DataError(f"episode {stimuli.episode}: backbone {backbone.name!r} gave non-finite features "
                            f"under {c!r} (model.precision {backbone.precision!r} overflow?)")
        out[c] = feats
    return out


def _spec_key(spec):
    return None if spec is None else (spec.frame_size, spec.audio_rate, spec.peak_normalise, spec.window_audio)


def extract_episode_features(cfg, episode, conditions=None, backbone=None) -> dict[str, np.ndarray]:
    """Load ``episode``'s stimuli and encode them: {condition: float32 (n_layers, n_windows, hidden)}.

    ``conditions`` defaults to cfg.model.conditions; layers are cfg.model.layers (None: every layer).
    ``backbone`` defaults to ``get_backbone(cfg.model, cfg.windows)`` (pass one to reuse it).
    """
    from .models import get_backbone

    conds = _conditions(cfg, conditions)
    _check_batch_size(cfg)
    backbone = backbone or get_backbone(cfg.model, cfg.windows)
    layers = resolve_layers(cfg.model.layers, backbone.n_layers, backbone.name)
    stimuli = load_stimuli_for(backbone, cfg, episode)
    return encode_stimuli(backbone, stimuli, conds, layers, cfg.model.batch_size)


# ---- shards --------------------------------------------------------------------------------------
# The unit of extraction is (episode, feature set): its stage key (brainalign.stagekeys; what it reads
# is declared in brainalign.stagetable) is stored on the shard's dataset, so a new condition or
# variant extracts only that feature set and a changed stimulus file only that episode.

def shard_path(cfg, episode) -> Path:
    if not episode or "/" in episode or episode.startswith("."):
        raise ConfigError(f"data.episodes: {episode!r} cannot name a file (no '/', no leading '.')")
    return feature_shard(cfg, episode)


def unit_states(cfg, episodes=None, planning=False) -> dict:
    """{episode: {feature set: State}} of the extraction units (``planning``: never raises on missing files)."""
    from .stagecheck import assessor

    a = assessor(cfg, planning=planning)
    eps = list(cfg.data.episodes) if episodes is None else list(episodes)
    return {ep: {fs: a.unit_state("extract", f"{ep}/{fs}") for fs in cfg.all_conditions} for ep in eps}


def _episode_status(cfg, episode, states) -> str:
    path = shard_path(cfg, episode)
    if not path.exists():
        return "missing"
    if not is_complete(path):
        return "incomplete"
    return "complete" if all(st.current for st in states.values()) else "stale"


def shard_status(cfg, episode) -> str:
    """"complete" (every feature set current), "missing", "incomplete" (no marker / unreadable) or "stale"."""
    return _episode_status(cfg, episode, unit_states(cfg, [episode], planning=True)[episode])


def _descriptive_attrs(cfg, backbone, layers) -> dict:
    return {"layers": np.asarray(layers, np.int64), "n_layers": len(layers), "hidden": backbone.hidden,
            "backbone_layers": backbone.n_layers, "backbone": backbone.name, "tr": float(cfg.data.bold.tr),
            "window_context": window_context(cfg), "frames_per_window": cfg.windows.frames}


def _unit_attrs(state) -> dict:
    from .stagekeys import KEY_ATTR, RECORD_ATTR

    exp = state.expected.hash_inputs()          # --force on a current unit: its record gets hashes too
    return {KEY_ATTR: exp.key, RECORD_ATTR: json.dumps(exp.record(), sort_keys=True)}


def _kept(path, todo):
    """Datasets of an existing complete shard that are not redone: ({name: (array, attrs)}, windows)."""
    if not is_complete(path):
        return {}, None
    with h5py.File(path, "r") as f:
        keep = {n: (f[n][()], dict(f[n].attrs)) for n in f if n != "windows" and n not in todo
                and isinstance(f[n], h5py.Dataset)}
        return keep, f["windows"][()]


def extract_one(cfg, episode, backbone=None, force=False, states=None, backbones=None) -> Path:
    """Write ``{output}/features/{episode}.h5`` (atomically) with every feature set of the config: those whose
    unit is current are copied from the existing shard, the others are extracted (all with ``force``).
    ``backbones`` caches built backbones across episodes ({"": main, variant name: ...})."""
    from .models import get_backbone

    path = shard_path(cfg, episode)
    states = states if states is not None else unit_states(cfg, [episode])[episode]
    todo = list(states) if force else [fs for fs, st in states.items() if not st.current]
    if not todo:
        log.info("extract %s: every feature set in %s is current; skipping", episode, path)
        return path
    keep, old_windows = ({}, None) if force else _kept(path, todo)
    log.debug("extract %s: %s%s", episode, "; ".join(f"{fs}: {states[fs].why(2)}" for fs in todo),
             f"; keeping {', '.join(sorted(keep))}" if keep else "")
    conds = _conditions(cfg, None)
    _check_batch_size(cfg)
    backbones = {} if backbones is None else backbones
    if backbone is not None:
        backbones.setdefault("", backbone)

    def model(variant=""):
        if variant not in backbones:
            mcfg = cfg.model
            if variant:
                ckpt = next(v.checkpoint for v in cfg.model.variants if v.name == variant)
                mcfg = dataclasses.replace(cfg.model, checkpoint=ckpt)
            backbones[variant] = get_backbone(mcfg, cfg.windows)
        return backbones[variant]

    main = model("")                      # defines the stimuli (its stimulus_spec) and the geometry
    t0 = time.perf_counter()
    stimuli = load_stimuli_for(main, cfg, episode)
    t1 = time.perf_counter()
    by_model: dict = {}
    for fs in todo:
        c, _, variant = fs.partition("@")
        by_model.setdefault(variant, []).append(c)
    feats = {}
    windows = np.asarray(stimuli.windows, np.float64)
    main_layers = resolve_layers(cfg.model.layers, main.n_layers, main.name)

    def fits(keep):
        return not keep or (old_windows is not None and old_windows.shape == windows.shape
                            and all(x.shape == next(iter(feats.values())).shape for x, _ in keep.values()))

    try:
        for variant, cs in by_model.items():
            bb = model(variant)
            if variant:
                if (bb.n_layers, bb.hidden) != (main.n_layers, main.hidden):
                    raise ConfigError(f"model.variants: {variant!r} has {bb.n_layers} layers x {bb.hidden} hidden, "
                                      f"the main model {main.n_layers} x {main.hidden}")
                if _spec_key(bb.stimulus_spec) != _spec_key(main.stimulus_spec):
                    raise ConfigError(f"model.variants: {variant!r} takes other stimuli than the main model "
                                      "(frame grid or audio rate)")
                bb.to(main.device)
            layers = resolve_layers(cfg.model.layers, bb.n_layers, bb.name)
            done: dict = {}
            try:
                encode_stimuli(bb, stimuli, [c for c in conds if c in cs], layers, cfg.model.batch_size, out=done)
            finally:
                feats.update({f"{c}@{variant}" if variant else c: x for c, x in done.items()})
    except Interrupted as e:
        if feats and fits(keep):           # the feature sets finished before the signal: into the shard
            _write_shard(cfg, path, episode, feats, keep, states, windows, main, main_layers)
        e.kept = (f"episode {episode}: {len(feats)} of {len(todo)} feature sets saved to {path}" if feats and fits(keep)
                  else f"episode {episode} was in progress (nothing of it finished)")
        raise
    if not fits(keep):
        log.info("extract %s: the kept feature sets do not fit the new ones; extracting them again", episode)
        return extract_one(cfg, episode, force=True, states=states, backbones=backbones)
    t2 = time.perf_counter()
    _write_shard(cfg, path, episode, feats, keep, states, windows, main, main_layers)
    n = stimuli.n_windows
    log.debug("extract %s: %d windows x %d feature sets: stimuli %.1f s, model %.1f s (%.1f windows/s) -> %s",
              episode, n, len(feats), t1 - t0, t2 - t1, n * len(feats) / max(t2 - t1, 1e-9), path)
    return path


def _write_shard(cfg, path, episode, feats, keep, states, windows, main, layers):
    """The episode's shard (atomically): the feature sets extracted now (``feats``) and those kept."""
    names = [fs for fs in cfg.all_conditions if fs in feats or fs in keep] + sorted(set(keep) - set(cfg.all_conditions))
    need = sum((feats[fs] if fs in feats else keep[fs][0]).nbytes for fs in names)
    with atomic_h5(path, "extract", config_text=cfg.text, need=need) as f:
        for fs in names:
            x, attrs = (feats[fs], _unit_attrs(states[fs])) if fs in feats else keep[fs]
            ds = f.create_dataset(fs, data=x, chunks=(1,) + x.shape[1:])
            ds.attrs.update(attrs)
        f.create_dataset("windows", data=windows)
        f.attrs.update(_descriptive_attrs(cfg, main, layers))
        f.attrs["episode"] = episode
        f.attrs["conditions"] = str_attr(names)


def assemble_features(cfg, states=None) -> Path:
    """Write ``{output}/features.h5``: virtual datasets over every episode's shard, all units current."""
    from .stagekeys import KEY_ATTR, RECORD_ATTR, units_key

    episodes = list(cfg.data.episodes)
    states = states if states is not None else unit_states(cfg)
    status = {ep: _episode_status(cfg, ep, states[ep]) for ep in episodes}
    bad = {s: [ep for ep in episodes if status[ep] == s] for s in ("missing", "incomplete", "stale")}
    if any(bad.values()):
        what = "; ".join(f"{s if s != 'stale' else 'made with other settings'}: {', '.join(eps)}"
                         for s, eps in bad.items() if eps)
        raise DataError(f"cannot assemble {cfg.out / FEATURES}: shards under {cfg.out / FEATURE_SHARDS} "
                        f"{what} (run `brainalign extract`)")
    conds = cfg.all_conditions
    keys = {f"{ep}/{fs}": states[ep][fs].key for ep in episodes for fs in conds}
    key = units_key("extract", keys)
    record = {"stage": "extract", "key": key, "units": keys,
              "fingerprint": cfg.pipeline.fingerprint}
    path = cfg.out / FEATURES
    shapes, windows, attrs = {}, {}, None
    for ep in episodes:
        with h5py.File(shard_path(cfg, ep), "r") as f:
            shapes[ep] = f[conds[0]].shape
            windows[ep] = f["windows"][()]
            mine = {k: f.attrs[k] for k in ("layers", "hidden", "n_layers", "backbone_layers", "backbone", "tr",
                                            "window_context", "frames_per_window")}
            attrs = attrs or mine
            if any(f[c].shape != shapes[ep] for c in conds) or shapes[ep][1] != len(windows[ep]):
                raise DataError(f"shard {shard_path(cfg, ep)}: conditions disagree in shape")
    with atomic_h5(path, "extract", config_text=cfg.text,
                   extra={KEY_ATTR: key, RECORD_ATTR: json.dumps(record, sort_keys=True)}) as f:
        f.attrs.update(attrs)
        f.attrs["conditions"] = str_attr(conds)
        f.attrs["episodes"] = str_attr(episodes)
        for c in conds:
            g = f.create_group(c)
            for ep in episodes:
                layout = h5py.VirtualLayout(shape=shapes[ep], dtype=np.float32)
                layout[...] = h5py.VirtualSource(f"{FEATURE_SHARDS}/{ep}.h5", c, shape=shapes[ep])
                g.create_virtual_dataset(ep, layout, fillvalue=np.float32(np.nan))
        g = f.create_group("windows")
        for ep in episodes:
            g.create_dataset(ep, data=windows[ep])
    log.info("extract: assembled %d episodes x %d conditions -> %s", len(episodes), len(conds), path)
    return path


def run_extract(cfg, episodes=None, force=False) -> Path:
    """Extract every episode (or the subset ``episodes``), resuming per (episode, feature set); returns
    features.h5.

    With ``episodes`` (e.g. one SLURM array task) only those shards are written and the shard directory
    is returned: a later call without ``episodes`` skips the current units and assembles features.h5.
    """
    from .stagecheck import stage_check

    known = list(cfg.data.episodes)
    todo_eps = known if episodes is None else list(episodes)
    unknown = [e for e in todo_eps if e not in known]
    if unknown:
        raise ConfigError(f"episodes: {', '.join(unknown)} not in data.episodes ({', '.join(known)})")
    whole = stage_check(cfg, "extract", force, quiet=episodes is not None)   # a subset: its units say
    if episodes is None and whole.current:
        return cfg.out / FEATURES
    states = {ep: {fs: whole.units[f"{ep}/{fs}"] for fs in cfg.all_conditions} for ep in todo_eps}
    needs = [ep for ep in todo_eps if force or not all(st.current for st in states[ep].values())]
    n_units = sum(force or not st.current for ep in needs for st in states[ep].values())
    log.info("extract: %d of %d units (episode x feature set) to do in %d of %d episodes (%s)", n_units,
             len(todo_eps) * len(cfg.all_conditions), len(needs), len(todo_eps),
             "forced" if force else "current units are kept")
    backbones: dict = {}
    finished = []
    try:
        for ep in progress(needs, desc="extract", unit="episode"):
            extract_one(cfg, ep, force=force, states=states[ep], backbones=backbones)
            finished.append(ep)
    except Interrupted as e:
        e.kept = (f"{len(finished)} episode(s) finished in this run are in {cfg.out / FEATURE_SHARDS}"
                  + (f"; {e.kept}" if e.kept else "") + "; a re-run extracts only the rest")
        raise
    if episodes is not None:
        return cfg.out / FEATURE_SHARDS
    return assemble_features(cfg)
