"""The embedded demo dataset: episodes (mp4 + wav + TSV transcript) and BIDS/fMRIPrep-named BOLD made by a
generative model that shares no code with the analysis (no align, fit, ridge, stats, extract or mlm).

Layout under ``data.root`` (default templates of config.py)::

    stimuli/{episode}.mp4 .wav .tsv      (the TSV has a word_class column: frame_predictable | other)
    derivatives/fmriprep/dataset_description.json
    derivatives/fmriprep/sub-XX/ses-NNN/func/sub-XX_ses-NNN_task-{episode}_space-S_desc-preproc_bold.nii.gz (+ .json,
                                                  + the run's ..._desc-brain_mask.nii.gz, as fMRIPrep writes it)
    derivatives/atlas/space-S_desc-brain_mask.nii.gz, space-S_desc-rois_dseg.nii.gz, desc-rois_dseg.tsv
    model/tiny-pretrained.pt   the tiny model after simulate.pretrain_steps of masked-word training
    truth.json      what was planted: ROIs, their drivers, planted noise ceilings, expected contrasts, words
    .complete       written last: hash of the config sections the data depend on

The generative model (:mod:`brainalign.sim`): stimulus-level latents (what is on screen, what is said, and
their interaction; :mod:`.sim.latents`) go through a double-gamma HRF into ROI responses shared across
subjects plus subject-specific ones, under AR(1) noise, ROI-coherent intrinsic fluctuations and slow drift
(:mod:`.sim.bold`). ROIs: ``vision`` (vision latents), ``language`` (language latents), ``crossmodal`` (the
interaction only), ``null_k`` (nothing).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .h5io import atomic_path
from .log import get_logger
from .paths import ATLAS_PATHS, COMPLETE, PRETRAINED, TRUTH, simulated_bold
from .sim import anatomy, bold as simbold, latents as lat
from .sim.stimuli import (COLOURS, CUE, FRAME_PREDICTABLE, OTHER, WORD_CLASS_COLUMN, Episode, grammar,
                          make_episode, transcript_tsv, write_mp4)

log = get_logger("simulate")

RESIDUAL = {"a": "residual", "target": "joint", "without": ["vision", "language"]}   # joint's crossmodal residual
#: planted ROI -> (latent family, what it responds to, contrasts expected positive, contrasts expected null);
#: a null ROI expects every contrast null
PLANTED = {
    "language": ("language", "what is said (word rate, word length, lexical semantics)",
                 [{"a": "joint", "b": "no_language", "direction": "a > b"}], [RESIDUAL]),
    "vision": ("vision", "what is on screen (luminance, colour opponency, shape area and position, motion)",
               [{"a": "joint", "b": "no_vision", "direction": "a > b"}], [RESIDUAL]),
    "crossmodal": ("interaction", "the interaction of what is said and what is on screen (bilinear, main "
                   "effects projected out)",
                   [{**RESIDUAL, "direction": "a > 0",
                     "requires": "joint features that carry the interaction"}], []),
}


def roi_names(n_null: int) -> list[str]:
    return list(PLANTED) + [f"null_{k + 1}" for k in range(n_null)]


# ---------------------------------------------------------------------------------------------- stimuli

def episode_of(cfg, index: int) -> Episode:
    """The ``index``-th episode of the config, in memory (seed stream [simulate.seed, 1, index])."""
    sim = cfg.simulate
    return make_episode(sim.trs_per_run, cfg.data.bold.tr, sim.fps, sim.frame_size, sim.audio_rate,
                        np.random.default_rng([sim.seed, 1, index]), grammar(sim.seed))


def write_episode_stimuli(cfg, episode: str, index: int) -> Episode:
    """Write {episode}.mp4, .wav and .tsv as cfg.data.stimuli names them; returns the Episode (in memory)."""
    from scipy.io import wavfile

    sim = cfg.simulate
    if sim.frame_size % 2:
        raise ConfigError(f"simulate.frame_size: must be even for h264, got {sim.frame_size}")
    ep = episode_of(cfg, index)
    st = cfg.data.stimuli
    write_mp4(cfg.path(st.video, episode=episode), ep.frames, sim.fps, ep.audio, sim.audio_rate)
    if st.audio:
        with atomic_path(cfg.path(st.audio, episode=episode)) as tmp:
            with open(tmp, "wb") as fh:
                wavfile.write(fh, sim.audio_rate, (ep.audio * 32767).astype(np.int16))
    tpath = cfg.path(st.transcript, episode=episode)
    if tpath.suffix.lower() != ".tsv":
        raise ConfigError(f"data.stimuli.transcript: simulate writes .tsv transcripts, got {tpath.name}")
    with atomic_path(tpath) as tmp:
        tmp.write_text(transcript_tsv(ep.words))
    return ep


# ---------------------------------------------------------------------------------------------- responses

def roi_regressors(episodes: list[Episode], tr: float, trs: int, seed: int) -> dict[str, list[np.ndarray]]:
    """{latent family: per run float64 (trs, k)}: the HRF-convolved, TR-sampled latents of every episode."""
    fams = lat.stimulus_latents(episodes, seed)
    return {k: [lat.tr_regressors(x, e.fps, tr, trs) for x, e in zip(runs, episodes)] for k, runs in fams.items()}


def _write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def pretrain_model(cfg, path: Path) -> dict:
    """Seeded masked-word pretraining of the tiny model (simulate.pretrain_steps) -> checkpoint at ``path``."""
    from .models.tiny import TinyMultimodal, TinySpec, save_checkpoint
    from .sim.pretrain import training_clips, pretrain_tiny

    t0 = time.perf_counter()
    data = training_clips(cfg.simulate, float(cfg.data.bold.tr), cfg.windows, grammar(cfg.simulate.seed))
    module = TinyMultimodal(TinySpec.from_config(cfg.model, cfg.windows))
    module.init_weights(cfg.model.seed)
    losses = pretrain_tiny(module, data, cfg.simulate.pretrain_steps, cfg.simulate.seed)
    save_checkpoint(module, path)
    k = max(1, len(losses) // 10)
    return {"steps": cfg.simulate.pretrain_steps, "checkpoint": str(path), "training_windows": len(data["words"]),
            "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
            "seconds": round(time.perf_counter() - t0, 1)}


def simulate(cfg, force: bool = False) -> Path:
    """Write the demo dataset under cfg.data.root (see the module docstring); returns the root.

    Skipped while ``{root}/.complete`` (JSON, written last) holds the current stage key and every file it
    writes exists (brainalign.stagekeys).
    """
    from .brain.bids import brain_mask_path
    from .brain.volumes import write_nifti
    from .provenance import provenance

    from .stagecheck import stage_check

    root = Path(cfg.data.root)
    marker = root / COMPLETE
    stage = stage_check(cfg, "simulate", force)      # files it wrote that a user replaced count as data
    if stage.current:
        return root
    h = stage.key
    if cfg.data.bold.format != "bids":
        raise ConfigError("data.bold.format: simulate writes BIDS derivatives; set it to 'bids'")
    sim, b = cfg.simulate, cfg.data.bold
    lo, hi = (float(x) for x in sim.effect_r) if len(sim.effect_r) == 2 else (0.0, -1.0)
    if not 0 < lo <= hi < 1:
        raise ConfigError(f"simulate.effect_r: needs [lo, hi] with 0 < lo <= hi < 1, got {list(sim.effect_r)}")
    if sim.subject_share < 0:
        raise ConfigError(f"simulate.subject_share: must be >= 0, got {sim.subject_share}")
    if sim.pretrain_steps < 0:
        raise ConfigError(f"simulate.pretrain_steps: must be >= 0, got {sim.pretrain_steps}")
    if sim.pretrain_steps and cfg.model.backbone != "tiny":
        raise ConfigError(f"simulate.pretrain_steps: pretrains the tiny demo model, but model.backbone is "
                          f"{cfg.model.backbone!r} (set pretrain_steps to 0)")
    grid = [int(g) for g in sim.grid]
    if min(grid) < 4:
        raise ConfigError(f"simulate.grid: each dimension needs at least 4 voxels, got {grid}")
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    tr = float(b.tr)

    t0 = time.perf_counter()
    episodes = [write_episode_stimuli(cfg, ep, i) for i, ep in enumerate(cfg.data.episodes)]
    from .tvqa import write_synthetic_tvqa      # the QA set that `brainalign finetune` trains on

    write_synthetic_tvqa(cfg.path(cfg.finetune.data), cfg.finetune.n_train, cfg.finetune.n_val, seed=sim.seed,
                         size=cfg.windows.image_size)
    log.info("simulate: wrote %d episodes of %d TRs to %s in %.1f s", len(episodes), sim.trs_per_run,
             cfg.path(cfg.data.stimuli.video, episode="*").parent, time.perf_counter() - t0)

    affine = anatomy.mni_affine(grid)
    mask = anatomy.ellipsoid_mask(grid)
    names = roi_names(sim.n_null_rois)
    labels3d = anatomy.place_rois(mask, names, sim.roi_voxels)
    atlas = {k: cfg.path(getattr(b, k) or v) for k, v in ATLAS_PATHS.items()}   # null keys: the demo's places
    write_nifti(atlas["mask"], mask.astype(np.uint8), affine, dtype=np.uint8)
    write_nifti(atlas["rois"], labels3d, affine, dtype=np.int16)
    with atomic_path(atlas["roi_names"]) as tmp:
        tmp.write_text("index\tname\n" + "".join(f"{k}\t{n}\n" for k, n in enumerate(names, start=1)))
    labels = labels3d[mask]
    n_vox = int(mask.sum())
    roi_index = {n: np.flatnonzero(labels == k) for k, n in enumerate(names, start=1)}

    t0 = time.perf_counter()
    fam = roi_regressors(episodes, tr, sim.trs_per_run, sim.seed)
    regressors = {roi: fam[PLANTED[roi][0]] for roi in PLANTED}
    rng = np.random.default_rng([sim.seed, 4])
    weights = {roi: rng.standard_normal((x[0].shape[1], len(roi_index[roi]))) for roi, x in regressors.items()}
    target_r = np.full(n_vox, np.nan)
    for roi in PLANTED:
        target_r[roi_index[roi]] = rng.uniform(lo, hi, size=len(roi_index[roi]))

    bold_dir = cfg.path(b.dir)
    _write_json(bold_dir / "dataset_description.json", {
        "Name": "brainalign demo (simulated fMRIPrep derivatives)", "BIDSVersion": "1.8.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "brainalign.simulate"}]})
    ceilings = {}
    for si, sub in enumerate(b.subjects):
        srng = np.random.default_rng([sim.seed, 5, si])
        specific = {roi: srng.standard_normal(w.shape) for roi, w in weights.items()}
        out = simbold.synthesize_subject(regressors, weights, specific, target_r, roi_index, n_vox,
                                         float(sim.subject_share), np.random.default_rng([sim.seed, 2, si]))
        for i, ep in enumerate(cfg.data.episodes):
            vol = np.zeros(tuple(grid) + (out.bold[i].shape[0],), dtype=np.float32)
            vol[mask] = out.bold[i].T
            path = simulated_bold(cfg, sub, ep, i)
            write_nifti(path, vol, affine, tr=tr)
            write_nifti(brain_mask_path(path), mask.astype(np.uint8), affine, dtype=np.uint8)   # as fMRIPrep does
            _write_json(path.with_name(path.name.replace(".nii.gz", ".json")),
                        {"RepetitionTime": tr, "TaskName": ep, "SkullStripped": False,
                         "SliceTimingCorrected": False, "Simulated": True})
        ceilings[sub] = {roi: float(np.mean(out.ceiling[roi_index[roi]])) for roi in PLANTED}
    log.info("simulate: %d subjects x %d runs of BOLD in %s in %.1f s", len(b.subjects), len(episodes),
             bold_dir, time.perf_counter() - t0)

    model = None
    if sim.pretrain_steps > 0:
        model = pretrain_model(cfg, root / PRETRAINED)
        log.info("simulate: pretrained model -> %s in %.1f s", model["checkpoint"], model["seconds"])

    _write_json(root / TRUTH, truth_record(cfg, names, roi_index, target_r, ceilings, episodes, model, h))
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(dict(stage.json_fields(), provenance=provenance(cfg.text or None, "simulate")),
                                  default=str, indent=1) + "\n")
    return root


def truth_record(cfg, names, roi_index, target_r, ceilings, episodes, model, stage_key) -> dict:
    """The content of truth.json (documented in docs/demo-dataset.md)."""
    sim, b = cfg.simulate, cfg.data.bold
    counts = {ep: {c: sum(1 for *_, k in e.words if k == c) for c in (FRAME_PREDICTABLE, OTHER)}
              for ep, e in zip(cfg.data.episodes, episodes)}
    rois = []
    for k, n in enumerate(names, start=1):
        fam, what, expect, null = PLANTED.get(n, (None, "nothing (noise only)", [], "all"))
        rois.append({
            "name": n, "label": k, "n_voxels": int(len(roi_index[n])), "driver": fam, "responds_to": what,
            "target_ceiling": list(sim.effect_r) if fam else None,
            "mean_target_ceiling": float(np.mean(target_r[roi_index[n]])) if fam else None,
            "planted_ceiling": {s: ceilings[s][n] for s in ceilings} if fam else None,
            "expect": expect, "expect_null": null})
    return {
        "seed": sim.seed, "tr": float(b.tr), "trs_per_run": sim.trs_per_run, "episodes": list(cfg.data.episodes),
        "subjects": list(b.subjects), "stage_key": stage_key,
        "generative_model": {
            "latents": {"vision": list(lat.VISION_LATENTS), "language": list(lat.LANGUAGE_LATENTS),
                        "interaction": f"{lat.N_INTERACTIONS} bilinear forms of the spoken word's semantic vector and "
                                       "the visual latents, main effects projected out"},
            "hrf": "double gamma g(t; 6, 1 s) - g(t; 16, 1 s) / 6, sampled at the frame rate, BOLD read at TR middles",
            "shared_response": "per voxel Gaussian weights on its ROI's latents, the same for every subject",
            "subject_response": f"per subject and voxel Gaussian weights, variance {sim.subject_share} x the shared",
            "effect_r": list(sim.effect_r),
            "noise": {"ar1": simbold.AR1, "intrinsic": {"phi": simbold.INTRINSIC_PHI, "sd": simbold.INTRINSIC_SD},
                      "drift": "linear trend + slow cosine per run", "sd_percent_of_baseline": simbold.NOISE_PERCENT}},
        "words": {"column": WORD_CLASS_COLUMN, "frame_predictable": FRAME_PREDICTABLE, "other": OTHER,
                  "frame_predictable_words": list(COLOURS), "cue": CUE,
                  "rule": f"'{CUE} <colour>' names the backdrop colour on screen at the colour word's onset",
                  "counts": counts},
        "model": model,
        "rois": rois,
    }
