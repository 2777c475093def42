"""Stimulus-level latents of the demo and the haemodynamic response that carries them to the BOLD.

Everything here is computed from the stimuli themselves (frames, scene, words), at the frame rate
(dt = 1 / fps), never from a model:

* vision (what is on screen), VISION_LATENTS: mean luminance, red-green and blue-yellow opponency of the
  frame, the shapes' area and centroid (y, x), and motion energy (mean absolute frame difference);
* language (what is said), LANGUAGE_LATENTS: word rate (1 while a word is spoken), word length, and a
  4-dimensional lexical-semantic vector per word type (Gaussian, fixed by the seed) while it is spoken;
* interaction (what is said x what is on screen), N_INTERACTIONS bilinear forms s(w)^T B_k v(t) of the
  spoken word's semantic vector and the z-scored visual latents at that moment, with the main effects
  (an intercept, every vision and language latent) projected out by least squares over all episodes,
  so the interaction is linearly unpredictable from either modality alone at the stimulus level.

Each family is z-scored over all episodes pooled, convolved with a double-gamma HRF and sampled at the
middle of every TR (:func:`tr_regressors`).
"""
from __future__ import annotations

import math

import numpy as np

from .stimuli import COLOURS, CUE, VOCAB, Episode, Scene

VISION_LATENTS = ("luminance", "red_green", "blue_yellow", "area", "centroid_y", "centroid_x", "motion")
SEMANTIC_DIMS = 4
LANGUAGE_LATENTS = ("word_rate", "word_length") + tuple(f"semantic_{k + 1}" for k in range(SEMANTIC_DIMS))
N_INTERACTIONS = 3
LEXICON = VOCAB + (CUE,) + tuple(COLOURS)

# double-gamma HRF (Glover 1999 / SPM canonical): peak shape 6, undershoot shape 16, ratio 1/6, scale 1 s
HRF_PEAK_SHAPE, HRF_UNDERSHOOT_SHAPE, HRF_RATIO, HRF_SCALE_S, HRF_LENGTH_S = 6.0, 16.0, 1 / 6, 1.0, 32.0


def gamma_pdf(t, shape: float, scale: float) -> np.ndarray:
    """Gamma density t^(k-1) exp(-t/θ) / (Γ(k) θ^k) for t > 0 (0 elsewhere), via logs for stability."""
    t = np.asarray(t, dtype=np.float64)
    pos = t > 0
    out = np.zeros_like(t)
    tp = t[pos]
    out[pos] = np.exp((shape - 1) * np.log(tp) - tp / scale - math.lgamma(shape) - shape * math.log(scale))
    return out


def double_gamma_hrf(dt: float, length: float = HRF_LENGTH_S) -> np.ndarray:
    """The canonical double-gamma HRF sampled every ``dt`` s on [0, length]: g(t; 6, 1) - g(t; 16, 1) / 6,
    scaled to unit integral (sum * dt = 1), so a sustained unit input settles at 1."""
    t = np.arange(int(round(length / dt)) + 1) * dt
    h = gamma_pdf(t, HRF_PEAK_SHAPE, HRF_SCALE_S) - HRF_RATIO * gamma_pdf(t, HRF_UNDERSHOOT_SHAPE, HRF_SCALE_S)
    return h / (h.sum() * dt)


def lexicon_semantics(seed: int) -> dict[str, np.ndarray]:
    """word -> float64 (SEMANTIC_DIMS,) Gaussian lexical-semantic vector, fixed by the seed."""
    rng = np.random.default_rng([int(seed), 8])
    vecs = rng.standard_normal((len(LEXICON), SEMANTIC_DIMS))
    return dict(zip(LEXICON, vecs))


def vision_latents(frames: np.ndarray, scene: Scene) -> np.ndarray:
    """float64 (n_frames, len(VISION_LATENTS)) from the rendered frames and their Scene."""
    x = frames.astype(np.float64) / 255.0
    r, g, b = x[..., 0].mean((1, 2)), x[..., 1].mean((1, 2)), x[..., 2].mean((1, 2))
    motion = np.zeros(len(x))
    motion[1:] = np.abs(np.diff(x, axis=0)).mean((1, 2, 3))
    return np.stack([0.299 * r + 0.587 * g + 0.114 * b, r - g, b - (r + g) / 2, scene.area, scene.cy, scene.cx,
                     motion], axis=1)


def word_samples(onset: float, duration: float, fps: float, n: int) -> slice:
    """Frame-grid samples k (time k / fps) during which a word is spoken: [onset, onset + duration), at least one."""
    a = min(int(math.floor(onset * fps)), n - 1)
    b = max(a + 1, min(int(math.ceil((onset + duration) * fps)), n))
    return slice(a, b)


def language_latents(words, fps: float, n: int, semantics: dict) -> tuple[np.ndarray, np.ndarray]:
    """(float64 (n, len(LANGUAGE_LATENTS)), float64 (n, SEMANTIC_DIMS) the semantic vector being spoken).

    words: [(word, onset, duration, ...)]; overlapping words add up."""
    out = np.zeros((n, len(LANGUAGE_LATENTS)))
    sem = np.zeros((n, SEMANTIC_DIMS))
    for w, onset, dur, *_ in words:
        s = word_samples(onset, dur, fps, n)
        out[s, 0] += 1.0
        out[s, 1] += (len(w) - 4.0) / 2.0
        sem[s] += semantics[w]
    out[:, 2:] = sem
    return out, sem


def zscore_pooled(runs: list[np.ndarray]) -> list[np.ndarray]:
    """Each column z-scored with the mean and SD of all runs pooled (constant columns -> 0)."""
    allx = np.concatenate(runs)
    mu, sd = allx.mean(0), allx.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return [(x - mu) / sd for x in runs]


def interaction_forms(seed: int) -> np.ndarray:
    """float64 (N_INTERACTIONS, SEMANTIC_DIMS, len(VISION_LATENTS)): the bilinear forms B_k, fixed by the seed."""
    rng = np.random.default_rng([int(seed), 9])
    return rng.standard_normal((N_INTERACTIONS, SEMANTIC_DIMS, len(VISION_LATENTS))) / math.sqrt(
        SEMANTIC_DIMS * len(VISION_LATENTS))


def interaction_latents(vision: list[np.ndarray], language: list[np.ndarray], semantic: list[np.ndarray],
                        forms: np.ndarray) -> list[np.ndarray]:
    """Per run float64 (n, N_INTERACTIONS): s(t)^T B_k v(t) with the main effects projected out (pooled).

    vision, language: per run z-scored latents; semantic: per run (n, SEMANTIC_DIMS) raw spoken vectors."""
    raw = [np.einsum("ts,ksv,tv->tk", s, forms, v) for s, v in zip(semantic, vision)]
    main = np.concatenate([np.concatenate([np.ones((len(v), 1)), v, lang], 1) for v, lang in zip(vision, language)])
    y = np.concatenate(raw)
    beta, *_ = np.linalg.lstsq(main, y, rcond=None)
    resid = y - main @ beta
    return zscore_pooled(np.split(resid, np.cumsum([len(r) for r in raw])[:-1]))


def tr_regressors(latents: np.ndarray, fps: float, tr: float, n_trs: int) -> np.ndarray:
    """float64 (n_trs, k): each latent column (frame grid, time k / fps) convolved with the HRF and sampled
    at the middle of each TR, (i + 0.5) * tr, by linear interpolation."""
    dt = 1.0 / fps
    h = double_gamma_hrf(dt)
    n = latents.shape[0]
    conv = np.stack([np.convolve(latents[:, j], h)[:n] * dt for j in range(latents.shape[1])], axis=1)
    t_grid = np.arange(n) * dt
    t_tr = (np.arange(n_trs) + 0.5) * tr
    return np.stack([np.interp(t_tr, t_grid, conv[:, j]) for j in range(conv.shape[1])], axis=1)


def stimulus_latents(episodes: list[Episode], seed: int) -> dict[str, list[np.ndarray]]:
    """{"vision", "language", "interaction": per episode float64 (n_frames, k)} on each episode's frame grid,
    each family z-scored over all episodes pooled (the interaction after projecting out the main effects)."""
    sem = lexicon_semantics(seed)
    vision = zscore_pooled([vision_latents(e.frames, e.scene) for e in episodes])
    lang_raw = [language_latents(e.words, e.fps, len(e.frames), sem) for e in episodes]
    language = zscore_pooled([x for x, _ in lang_raw])
    inter = interaction_latents(vision, language, [s for _, s in lang_raw], interaction_forms(seed))
    return {"vision": vision, "language": language, "interaction": inter}


def window_means(latents: np.ndarray, fps: float, tr: float, n_trs: int) -> np.ndarray:
    """float64 (n_trs, k): the mean of each latent over TR window i = [i tr, (i + 1) tr) (frame k at k / fps),
    i.e. the stimulus the model sees in window i, before any haemodynamics."""
    t = np.arange(latents.shape[0]) / fps
    win = np.minimum((t // tr).astype(np.int64), n_trs)
    out = np.zeros((n_trs + 1, latents.shape[1]))
    np.add.at(out, win, latents)
    counts = np.bincount(win, minlength=n_trs + 1)[:, None]
    return (out / np.maximum(counts, 1))[:n_trs]
