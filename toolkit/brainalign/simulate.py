"""The embedded demo dataset: episodes (mp4 + wav + TSV transcript) and BIDS/fMRIPrep-named BOLD with
planted effects driven by the demo model's own features.

Layout under ``data.root`` (default templates of config.py)::

    stimuli/{episode}.mp4 .wav .tsv
    derivatives/fmriprep/dataset_description.json
    derivatives/fmriprep/sub-XX/ses-NNN/func/sub-XX_ses-NNN_task-{episode}_space-S_desc-preproc_bold.nii.gz (+ .json,
                                                  + the run's ..._desc-brain_mask.nii.gz, as fMRIPrep writes it)
    derivatives/atlas/space-S_desc-brain_mask.nii.gz, space-S_desc-rois_dseg.nii.gz, desc-rois_dseg.tsv
    truth.json      planted ROIs, drivers, layer, target r, expected contrasts
    .complete       written last: hash of the config sections the data depend on

Planted ROIs (compact blobs): ``language`` (driven by language_only features), ``vision`` (vision_only),
``crossmodal`` (the part of joint features the unimodal/ablated ones cannot linearly predict), ``null_k``
(nothing). Per voxel: BOLD = baseline + scale * (a * HRF * (Z @ w) + noise), Z the per-run z-scored driver,
w random weights in Z's top principal subspace, noise AR(1) + slow drift, and ``a`` set so that the
noiseless signal correlates with the voxel's BOLD exactly at a target r drawn from simulate.effect_r.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .h5io import atomic_path
from .log import get_logger

log = get_logger("simulate")

SIM_CONDITIONS = ["joint", "vision_only", "language_only", "no_vision", "no_language"]
CROSSMODAL_PREDICTORS = ["no_vision", "no_language"]   # default when the config defines no residual
PLANTED = {  # roi -> (driver, expected contrast (a, b); b None = a vs zero)
    "language": ("language_only", ("joint", "no_language")),
    "vision": ("vision_only", ("joint", "no_vision")),
    "crossmodal": ("joint_residual", ("residual", None)),
}
AR1 = 0.3
PLANTED_RESIDUAL_ALPHA = 1.0   # penalty of the planted crossmodal map (z-scored features; ~ OLS)
WEIGHT_RANK = 8        # voxel weights live in the driver's top principal subspace (learnable from few TRs)
EPISODES_PER_SESSION = 2
VOXEL_MM = 4.0

VOCAB = ("friend", "coffee", "apartment", "phone", "date", "job", "funny", "really", "okay", "know", "think",
         "guess", "wait", "look", "come", "going", "want", "tell", "never", "always", "again", "maybe", "right",
         "great", "sorry", "hey", "yeah", "no", "what", "why", "where", "who", "we", "you", "they", "she", "he",
         "it", "the", "a", "and", "but", "couch", "door", "night", "party", "wedding", "baby")
SHAPES = ("disc", "square", "triangle", "ring", "cross")


# ---------------------------------------------------------------------------------------------- stimuli

def episode_duration(trs: int, tr: float, fps: float) -> tuple[int, float]:
    """(n_frames, duration_s) of a simulated episode: trs * tr + 0.5 s (less for TR < 1.25 s), whole frames."""
    pad = min(0.5, 0.4 * tr)
    n_frames = int(round((trs * tr + pad) * fps))
    duration = n_frames / fps
    if math.floor(duration / tr + 1e-6) != trs:
        raise ConfigError(f"simulate.fps: {fps} frames/s cannot give {trs} whole TRs of {tr} s")
    return n_frames, duration


def _shape_mask(kind, yy, xx, cy, cx, r):
    dy, dx = yy - cy, xx - cx
    if kind == "disc":
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if kind == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if kind == "ring":
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    return ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r))


def render_frames(n_frames: int, fps: float, size: int, rng) -> np.ndarray:
    """uint8 (n_frames, size, size, 3): 1-2 moving coloured shapes; shapes/colours/paths change every 2-4 s."""
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    i = 0
    while i < n_frames:
        seg = min(n_frames - i, max(1, int(round(rng.uniform(2.0, 4.0) * fps))))
        bg = rng.uniform(0, 90, size=3)
        objs = []
        for _ in range(rng.integers(1, 3)):
            objs.append(dict(kind=SHAPES[rng.integers(len(SHAPES))], colour=rng.uniform(60, 255, size=3),
                             pos=rng.uniform(0.2, 0.8, size=2) * size, vel=rng.normal(0, 0.25, size=2) * size,
                             r=rng.uniform(0.1, 0.22) * size, wobble=rng.uniform(0.5, 2.0)))
        for k in range(seg):
            t = k / fps
            img = np.empty((size, size, 3), dtype=np.float32)
            img[:] = bg
            for o in objs:
                p = o["pos"] + o["vel"] * t
                p = np.abs(np.mod(p, 2 * size) - size) * 0.8 + 0.1 * size  # bounce inside the frame
                r = o["r"] * (1 + 0.2 * math.sin(2 * math.pi * o["wobble"] * t))
                img[_shape_mask(o["kind"], yy, xx, p[0], p[1], r)] = o["colour"]
            frames[i + k] = img.astype(np.uint8)
        i += seg
    return frames


def tone_sequence(duration: float, rate: int, rng) -> np.ndarray:
    """float32 (round(duration * rate),) in [-1, 1]: a melody of ramped pure tones and pauses, plus faint noise."""
    n = int(round(duration * rate))
    x = rng.normal(0, 0.005, size=n)
    scale = 220.0 * 2 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16, 19, 21, 24]) / 12)
    t = float(rng.uniform(0, 0.3))
    while t < duration:
        d = float(rng.uniform(0.15, 0.6))
        a, b = int(t * rate), min(int((t + d) * rate), n)
        if b > a:
            tt = np.arange(b - a) / rate
            ramp = np.minimum(1.0, np.minimum(tt, tt[::-1]) / 0.01)
            x[a:b] += rng.uniform(0.2, 0.5) * ramp * np.sin(2 * np.pi * scale[rng.integers(len(scale))] * tt)
        t += d + float(rng.uniform(0.0, 0.3))
    return np.clip(x, -1, 1).astype(np.float32)


def word_sequence(duration: float, rng) -> list[tuple[str, float, float]]:
    """[(word, onset, duration)] at about 2 words/s with occasional pauses, all ending before duration - 0.3 s."""
    words = []
    t = float(rng.uniform(0.2, 0.6))
    while True:
        d = float(rng.uniform(0.15, 0.4))
        if t + d > duration - 0.3:
            return words
        words.append((VOCAB[rng.integers(len(VOCAB))], round(t, 3), round(d, 3)))
        t += d + float(rng.exponential(0.1)) + (float(rng.uniform(1.0, 2.0)) if rng.random() < 0.1 else 0.0)


def write_mp4(path, frames: np.ndarray, fps: float, audio: np.ndarray, rate: int) -> None:
    """h264 (libx264, yuv420p) video + AAC mono audio, written atomically with PyAV."""
    import av
    from fractions import Fraction

    with atomic_path(path) as tmp:
        named = tmp.with_name(tmp.name + ".mp4")
        try:
            with av.open(str(named), "w", format="mp4") as c:
                vs = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                vs.width, vs.height = frames.shape[2], frames.shape[1]
                vs.pix_fmt = "yuv420p"
                vs.options = {"crf": "18", "preset": "veryfast"}
                aus = c.add_stream("aac", rate=rate)
                aus.layout = "mono"
                aus.bit_rate = 64000
                aus.options = {"aac_coder": "fast"}
                for i, img in enumerate(frames):
                    f = av.VideoFrame.from_ndarray(img, format="rgb24")
                    f.pts = i
                    c.mux(vs.encode(f))
                c.mux(vs.encode())
                step = 1024
                for k in range(0, len(audio), step):
                    f = av.AudioFrame.from_ndarray(audio[None, k:k + step], format="fltp", layout="mono")
                    f.sample_rate = rate
                    f.pts = k
                    c.mux(aus.encode(f))
                c.mux(aus.encode())
            named.replace(tmp)
        finally:
            if named.exists():
                named.unlink()


def write_episode_stimuli(cfg, episode: str, index: int) -> float:
    """Write {episode}.mp4, .wav and .tsv as cfg.data.stimuli names them; returns the duration (s)."""
    from scipy.io import wavfile

    sim = cfg.simulate
    if sim.frame_size % 2:
        raise ConfigError(f"simulate.frame_size: must be even for h264, got {sim.frame_size}")
    rng = np.random.default_rng([sim.seed, 1, index])
    n_frames, duration = episode_duration(sim.trs_per_run, cfg.data.bold.tr, sim.fps)
    frames = render_frames(n_frames, sim.fps, sim.frame_size, rng)
    audio = tone_sequence(duration, sim.audio_rate, rng)
    words = word_sequence(duration, rng)
    st = cfg.data.stimuli
    video_path = cfg.path(st.video, episode=episode)
    write_mp4(video_path, frames, sim.fps, audio, sim.audio_rate)
    if st.audio:
        with atomic_path(cfg.path(st.audio, episode=episode)) as tmp:
            with open(tmp, "wb") as fh:
                wavfile.write(fh, sim.audio_rate, (audio * 32767).astype(np.int16))
    tpath = cfg.path(st.transcript, episode=episode)
    if tpath.suffix.lower() != ".tsv":
        raise ConfigError(f"data.stimuli.transcript: simulate writes .tsv transcripts, got {tpath.name}")
    with atomic_path(tpath) as tmp:
        tmp.write_text("word\tonset\tduration\n" + "".join(f"{w}\t{o:.3f}\t{d:.3f}\n" for w, o, d in words))
    return duration


# ---------------------------------------------------------------------------------------------- anatomy

def mni_affine(grid) -> np.ndarray:
    """4 mm RAS affine placing the grid centre near MNI (0, -18, 10)."""
    aff = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    centre = (np.asarray(grid, dtype=np.float64) - 1) / 2
    aff[:3, 3] = np.array([0.0, -18.0, 10.0]) - VOXEL_MM * centre
    return aff


def ellipsoid_mask(grid) -> np.ndarray:
    """bool (X, Y, Z): an ellipsoid with semi-axes 0.45 x the grid, centred."""
    grid = np.asarray(grid)
    c = (grid - 1) / 2
    idx = np.indices(tuple(grid)).astype(np.float64)
    d = sum(((idx[k] - c[k]) / (0.45 * grid[k])) ** 2 for k in range(3))
    return d <= 1.0


# preferred blob centres in ellipsoid coordinates ([-1, 1]; x left->right, y back->front, z down->up)
_CENTRES = {"language": (-0.65, 0.05, -0.2), "vision": (0.0, -0.75, 0.0), "crossmodal": (0.6, -0.4, 0.15),
            "null_1": (0.0, 0.7, 0.25), "null_2": (0.0, 0.0, 0.7), "null_3": (-0.45, 0.5, -0.35),
            "null_4": (0.5, 0.45, -0.35)}


def roi_names(n_null: int) -> list[str]:
    return list(PLANTED) + [f"null_{k + 1}" for k in range(n_null)]


def place_rois(mask: np.ndarray, names: list[str], n_voxels: int) -> np.ndarray:
    """int32 (X, Y, Z) labels 1..len(names) (0 = none): compact blobs of n_voxels mask voxels each.

    Each blob is the n_voxels free mask voxels nearest its preferred centre; a ROI without a preferred
    centre grows from the free voxel farthest from all ROIs placed so far.
    """
    total = int(mask.sum())
    if n_voxels < 1 or n_voxels * len(names) > 0.8 * total:
        raise ConfigError(f"simulate.roi_voxels: {len(names)} ROIs of {n_voxels} voxels do not fit in the "
                          f"{total}-voxel mask of simulate.grid (use at most {int(0.8 * total) // len(names)})")
    coords = np.argwhere(mask).astype(np.float64)
    grid = np.asarray(mask.shape, dtype=np.float64)
    c = (grid - 1) / 2
    labels = np.zeros(len(coords), dtype=np.int32)
    for k, name in enumerate(names, start=1):
        free = labels == 0
        if name in _CENTRES:
            centre = c + np.asarray(_CENTRES[name]) * 0.45 * grid
        else:
            taken = coords[labels > 0]
            dist = np.min(((coords[:, None] - taken[None]) ** 2).sum(-1), axis=1) if len(taken) else np.zeros(len(coords))
            centre = coords[np.argmax(np.where(free, dist, -1))]
        d = ((coords - centre) ** 2).sum(1)
        d[~free] = np.inf
        labels[np.argsort(d, kind="stable")[:n_voxels]] = k
    out = np.zeros(mask.shape, dtype=np.int32)
    out[mask] = labels
    return out


# ---------------------------------------------------------------------------------------------- signals

def spm_hrf(tr: float, length: float = 32.0) -> np.ndarray:
    """SPM canonical double-gamma HRF sampled every tr seconds (peak 6 s, undershoot 16 s, ratio 1/6), sum 1."""
    dt = tr / 16.0
    t = np.arange(int(length / dt) + 1) * dt

    def gamma_pdf(shape):  # unit-scale gamma density
        return np.exp((shape - 1) * np.log(np.maximum(t, 1e-300)) - t - math.lgamma(shape)) * (t > 0)

    h = (gamma_pdf(6) - gamma_pdf(16) / 6.0)[::16]
    return h / h.sum()


def zscore_runs(runs: list[np.ndarray]) -> list[np.ndarray]:
    """Each (T, H) run z-scored per column (constant columns -> 0), float64."""
    out = []
    for x in runs:
        x = np.asarray(x, dtype=np.float64)
        sd = x.std(axis=0)
        out.append(np.where(sd > 0, (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0))
    return out


def crossmodal_residual(joint: list[np.ndarray], predictors: list[list[np.ndarray]],
                        alpha: float = 1.0) -> list[np.ndarray]:
    """joint minus its ridge prediction (with intercept) from the concatenated predictor features.

    A ridge map (``align.ridge_residual``, penalty PLANTED_RESIDUAL_ALPHA) fitted on all runs pooled: the
    part of the joint features the predictors cannot linearly predict, which align's cross-fitted residual
    estimates out of sample.
    joint: per run (T_r, H); predictors: per predictor set, per run (T_r, H_p). Returns per run (T_r, H).
    ConfigError if the residual vanishes (too few TRs for the predictors).
    """
    from .align import ridge_residual

    lens = [len(j) for j in joint]
    y = np.concatenate(joint).astype(np.float64)
    x = np.concatenate([np.concatenate(p) for p in predictors], axis=1).astype(np.float64)
    res = ridge_residual(y, x, np.ones(len(y), bool), alpha)
    if np.linalg.norm(res) <= 1e-6 * max(np.linalg.norm(y - y.mean(0)), 1e-12):
        raise ConfigError(f"simulate: the crossmodal residual is zero: {len(y)} TRs in all runs cannot leave a "
                          f"residual after {x.shape[1]} predictor columns; raise simulate.trs_per_run or add "
                          f"episodes (or lower model.tiny.hidden)")
    return np.split(res, np.cumsum(lens)[:-1])


def planted_drivers(features: dict, layer: int, predictors=tuple(CROSSMODAL_PREDICTORS),
                    alpha: float = 1.0) -> dict[str, list[np.ndarray]]:
    """Per planted ROI, per run (episode order of ``features``): float64 (T, H) z-scored driver features.

    features: {episode: {condition: (n_layers, n_windows, hidden)}} with at least SIM_CONDITIONS. The
    crossmodal driver is joint minus its ridge prediction from ``predictors`` (features z-scored per run
    first, as align does).
    """
    eps = list(features)
    missing = [c for c in SIM_CONDITIONS if c not in features[eps[0]]]
    if missing:
        raise ConfigError(f"simulate: features lack condition(s) {', '.join(missing)}")
    n_layers = features[eps[0]]["joint"].shape[0]
    if not -n_layers <= layer < n_layers:
        raise ConfigError(f"simulate.layer: {layer} is out of range for a model with {n_layers} layers")

    def runs(cond):
        return zscore_runs([np.asarray(features[e][cond][layer], dtype=np.float64) for e in eps])

    resid = crossmodal_residual(runs("joint"), [runs(c) for c in predictors], alpha)
    return {"language": runs("language_only"), "vision": runs("vision_only"), "crossmodal": zscore_runs(resid)}


def crossmodal_definition(cfg) -> tuple[list[str], float]:
    """The predictors and penalty of the planted crossmodal signal: the predictors of the config's first
    residual feature set whose target is ``joint`` (else the default), penalty PLANTED_RESIDUAL_ALPHA."""
    for res in cfg.align.residuals:
        if res.target == "joint" and all(p in SIM_CONDITIONS for p in res.predictors):
            return list(res.predictors), PLANTED_RESIDUAL_ALPHA
    return list(CROSSMODAL_PREDICTORS), PLANTED_RESIDUAL_ALPHA


def scale_for_r(s: np.ndarray, n: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per column a (signed) such that corr(a * s, a * s + n) == r exactly (sample correlation over rows).

    s, n: (T, V); r: (V,) in (0, 1). With S = |s|^2, N = |n|^2, c = <s, n> (centred) and
    q = r * sqrt((S N - c^2) / (1 - r^2)): a = (q - c) / S if that is positive, else -(q + c) / S
    (flipping the sign of a voxel's weights, which are random anyway, keeps the correlation at +r).
    """
    s = s - s.mean(0)
    n = n - n.mean(0)
    S, N, c = (s * s).sum(0), (n * n).sum(0), (s * n).sum(0)
    q = r * np.sqrt(np.maximum(S * N - c * c, 0.0) / (1 - r * r))
    return np.where(q - c > 0, (q - c) / S, -(q + c) / S)


def ar1_noise(n_trs: int, n_vox: int, rng, phi: float = AR1) -> np.ndarray:
    """float64 (n_trs, n_vox) stationary AR(1) Gaussian noise with unit variance."""
    e = rng.standard_normal((n_trs, n_vox))
    out = np.empty_like(e)
    out[0] = e[0]
    k = math.sqrt(1 - phi * phi)
    for t in range(1, n_trs):
        out[t] = phi * out[t - 1] + k * e[t]
    return out


def drift(n_trs: int, n_vox: int, rng) -> np.ndarray:
    """float64 (n_trs, n_vox): slow drift, a random linear trend plus a half-to-one-cycle cosine per voxel."""
    t = np.linspace(0, 1, n_trs)[:, None]
    slope = rng.normal(0, 0.5, size=n_vox)
    amp, cyc, ph = rng.normal(0, 0.4, n_vox), rng.uniform(0.5, 1.0, n_vox), rng.uniform(0, 2 * np.pi, n_vox)
    return slope * (t - 0.5) + amp * np.cos(2 * np.pi * cyc * t + ph)


@dataclass
class SimulatedBold:
    bold: list          # per run float32 (T_r, n_vox): baseline + scale * (signal + noise)
    signal: list        # per run float64 (T_r, n_vox): the noiseless planted part (0 outside planted ROIs)
    target_r: np.ndarray  # float64 (n_vox,): planted corr(signal, bold) over all runs; NaN where none


def synthesize_bold(drivers: dict[str, list[np.ndarray]], roi_index: dict[str, np.ndarray], n_vox: int,
                    tr: float, effect_r, rng) -> SimulatedBold:
    """BOLD for one subject: voxels of roi_index[name] follow HRF * (drivers[name] @ w) at a target r.

    Each voxel's weights w are random (Gaussian) within the top WEIGHT_RANK principal directions of its
    ROI's driver features (all runs pooled), so an encoding model can learn them from a short demo.
    drivers: {roi: per run (T_r, H)} (ROIs without drivers, e.g. nulls, get noise only); roi_index: {roi:
    int voxel indices}; effect_r: [lo, hi] range of the per-voxel target r. Deterministic given rng.
    """
    lo, hi = float(effect_r[0]), float(effect_r[1])
    if not 0 < lo <= hi < 1:
        raise ConfigError(f"simulate.effect_r: needs 0 < lo <= hi < 1, got {list(effect_r)}")
    lens = [len(d) for d in next(iter(drivers.values()))]
    hrf = spm_hrf(tr)
    noise = [ar1_noise(T, n_vox, rng) + drift(T, n_vox, rng) for T in lens]
    signal = [np.zeros((T, n_vox)) for T in lens]
    target = np.full(n_vox, np.nan)
    for name, idx in roi_index.items():
        if name not in drivers:
            continue
        runs = drivers[name]
        _, _, vt = np.linalg.svd(np.concatenate(runs), full_matrices=False)
        k = min(WEIGHT_RANK, vt.shape[0])
        w = vt[:k].T @ rng.standard_normal((k, len(idx))) / math.sqrt(k)
        raw = [np.apply_along_axis(lambda v: np.convolve(v, hrf)[:len(v)], 0, d @ w) for d in runs]
        r = rng.uniform(lo, hi, size=len(idx))
        a = scale_for_r(np.concatenate(raw), np.concatenate([n[:, idx] for n in noise]), r)
        for sig, x in zip(signal, raw):
            sig[:, idx] = x * a
        target[idx] = r
    baseline = rng.uniform(400.0, 1200.0, size=n_vox)
    scale = 0.01 * baseline * rng.uniform(0.8, 1.25, size=n_vox)   # noise sd ~1 % of the baseline
    bold = [(baseline + scale * (s + n)).astype(np.float32) for s, n in zip(signal, noise)]
    return SimulatedBold(bold=bold, signal=[s * scale for s in signal], target_r=target)


# ---------------------------------------------------------------------------------------------- driver

# where the demo's study mask and ROI atlas go when data.bold.mask / rois / roi_names are null (then align uses
# the per-run fMRIPrep-style brain masks written beside each BOLD run, and no ROIs)
ATLAS_PATHS = {"mask": "{root}/derivatives/atlas/space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz",
               "rois": "{root}/derivatives/atlas/space-MNI152NLin2009cAsym_desc-rois_dseg.nii.gz",
               "roi_names": "{root}/derivatives/atlas/desc-rois_dseg.tsv"}


def session_of(index: int) -> str:
    return f"{index // EPISODES_PER_SESSION + 1:03d}"


def bold_path(cfg, subject: str, episode: str, index: int) -> Path:
    from .brain.bids import bold_name

    b = cfg.data.bold
    ses = session_of(index)
    return (cfg.path(b.dir) / f"sub-{subject}" / f"ses-{ses}" / "func"
            / bold_name(subject, episode, b.space, b.desc, ses))


def _write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def simulate(cfg, force: bool = False, features: dict | None = None) -> Path:
    """Write the demo dataset under cfg.data.root (see the module docstring); returns the root.

    Skipped while ``{root}/.complete`` (JSON, written last) holds the current stage key and every file it
    writes exists (brainalign.pipeline.keys). ``features`` ({episode:
    {condition: (n_layers, n_windows, hidden)}}) replaces running the demo model (tests).
    """
    from .brain.bids import brain_mask_path
    from .brain.volumes import write_nifti
    from .provenance import provenance

    from .pipeline.keys import stage_check

    root = Path(cfg.data.root)
    marker = root / ".complete"
    stage = stage_check(cfg, "simulate", force)      # files it wrote that a user replaced count as data
    if stage.current:
        return root
    h = stage.key
    if cfg.data.bold.format != "bids":
        raise ConfigError("data.bold.format: simulate writes BIDS derivatives; set it to 'bids'")
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    sim, b = cfg.simulate, cfg.data.bold
    tr = float(b.tr)

    t0 = time.perf_counter()
    for i, ep in enumerate(cfg.data.episodes):
        write_episode_stimuli(cfg, ep, i)
    from .tvqa import write_synthetic_tvqa      # the QA set that `brainalign finetune` trains on

    write_synthetic_tvqa(cfg.path(cfg.finetune.data), cfg.finetune.n_train, cfg.finetune.n_val, seed=sim.seed,
                         size=cfg.windows.image_size)
    log.info("simulate: wrote %d episodes of %d TRs to %s in %.1f s", len(cfg.data.episodes), sim.trs_per_run,
             cfg.path(cfg.data.stimuli.video, episode="*").parent, time.perf_counter() - t0)

    grid = [int(g) for g in sim.grid]
    if min(grid) < 4:
        raise ConfigError(f"simulate.grid: each dimension needs at least 4 voxels, got {grid}")
    affine = mni_affine(grid)
    mask = ellipsoid_mask(grid)
    names = roi_names(sim.n_null_rois)
    labels3d = place_rois(mask, names, sim.roi_voxels)
    atlas = {k: cfg.path(getattr(b, k) or v) for k, v in ATLAS_PATHS.items()}   # null keys: the demo's places
    write_nifti(atlas["mask"], mask.astype(np.uint8), affine, dtype=np.uint8)
    write_nifti(atlas["rois"], labels3d, affine, dtype=np.int16)
    with atomic_path(atlas["roi_names"]) as tmp:
        tmp.write_text("index\tname\n" + "".join(f"{k}\t{n}\n" for k, n in enumerate(names, start=1)))
    labels = labels3d[mask]
    roi_index = {n: np.flatnonzero(labels == k) for k, n in enumerate(names, start=1)}

    t0 = time.perf_counter()
    if features is None:
        from .extract import extract_episode_features
        from .models import get_backbone

        backbone = get_backbone(cfg.model, cfg.windows)
        features = {ep: extract_episode_features(cfg, ep, SIM_CONDITIONS, backbone=backbone)
                    for ep in cfg.data.episodes}
        log.info("simulate: %s features of %d conditions in %.1f s", cfg.model.backbone, len(SIM_CONDITIONS),
                 time.perf_counter() - t0)
    t0 = time.perf_counter()
    for ep in cfg.data.episodes:
        n_win = features[ep]["joint"].shape[1]
        if n_win != sim.trs_per_run:
            raise ConfigError(f"simulate: features of {ep} have {n_win} windows, expected {sim.trs_per_run}")
    cm_predictors, cm_alpha = crossmodal_definition(cfg)
    drivers = planted_drivers({ep: features[ep] for ep in cfg.data.episodes}, sim.layer, cm_predictors, cm_alpha)

    bold_dir = cfg.path(b.dir)
    _write_json(bold_dir / "dataset_description.json", {
        "Name": "brainalign demo (simulated fMRIPrep derivatives)", "BIDSVersion": "1.8.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "brainalign.simulate"}]})
    achieved = {}
    for si, sub in enumerate(b.subjects):
        out = synthesize_bold(drivers, roi_index, int(mask.sum()), tr, sim.effect_r,
                              np.random.default_rng([sim.seed, 2, si]))
        for i, ep in enumerate(cfg.data.episodes):
            vol = np.zeros(tuple(grid) + (out.bold[i].shape[0],), dtype=np.float32)
            vol[mask] = out.bold[i].T
            path = bold_path(cfg, sub, ep, i)
            write_nifti(path, vol, affine, tr=tr)
            write_nifti(brain_mask_path(path), mask.astype(np.uint8), affine, dtype=np.uint8)   # as fMRIPrep does
            _write_json(path.with_name(path.name.replace(".nii.gz", ".json")),
                        {"RepetitionTime": tr, "TaskName": ep, "SkullStripped": False,
                         "SliceTimingCorrected": False, "Simulated": True})
        achieved[sub] = {n: float(np.nanmean(out.target_r[idx])) for n, idx in roi_index.items()
                         if n in drivers}

    truth = {
        "seed": sim.seed, "layer": sim.layer, "tr": tr, "trs_per_run": sim.trs_per_run,
        "episodes": list(cfg.data.episodes), "subjects": list(b.subjects), "effect_r": list(sim.effect_r),
        "conditions": SIM_CONDITIONS, "crossmodal_predictors": cm_predictors,
        "crossmodal_alpha": cm_alpha,
        "noise": {"ar1": AR1, "drift": "linear trend + slow cosine per run", "sd_percent_of_baseline": 1.0},
        "hrf": "SPM canonical double gamma", "weights": f"Gaussian in the driver's top {WEIGHT_RANK} principal "
                                                         "directions, per voxel and subject", "model": cfg.model.backbone, "stage_key": h,
        "rois": [],
    }
    for k, n in enumerate(names, start=1):
        driver, contrast = PLANTED.get(n, (None, None))
        truth["rois"].append({
            "name": n, "label": k, "n_voxels": int(len(roi_index[n])), "driver": driver,
            "target_r": list(sim.effect_r) if driver else None,
            "mean_target_r": {s: achieved[s][n] for s in achieved} if driver else None,
            "expect": ({"a": contrast[0], "b": contrast[1], "direction": "a > b" if contrast[1] else "a > 0"}
                       if contrast else None)})
    _write_json(root / "truth.json", truth)
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(dict(stage.json_fields(), provenance=provenance(cfg.text or None, "simulate")),
                                  default=str, indent=1) + "\n")
    log.info("simulate: %d subjects x %d runs of BOLD in %s in %.1f s", len(b.subjects), len(cfg.data.episodes),
             bold_dir, time.perf_counter() - t0)
    return root
