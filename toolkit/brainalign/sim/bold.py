"""BOLD of the demo: stimulus-driven responses (shared across subjects + subject-specific), AR(1) noise,
ROI-coherent intrinsic fluctuations and slow drift.

Per subject s, run e and voxel v of a planted ROI with latent regressors R_e (HRF-convolved, TR-sampled,
see :mod:`.latents`)::

    bold = baseline_v + scale_v * (a_v * (R_e w_v + R_e u_sv) + noise_sv)
    noise = AR(1) (phi AR1, unit variance) + INTRINSIC_SD * loading_v * f_s,roi (a slow AR(1), phi
            INTRINSIC_PHI, shared by the ROI's voxels, per subject) + drift (linear trend + slow cosine)

``w_v`` (Gaussian, the same for every subject) makes the *shared* response; ``u_sv`` (Gaussian per subject)
the *subject-specific* one, rescaled to ``subject_share`` times the shared variance. ``a_v`` is solved so
that the shared response correlates with the voxel's BOLD (all runs pooled) at exactly r_v, a per-voxel
target drawn from ``effect_r`` (the same for every subject): r_v is the planted noise ceiling, the
correlation of the stimulus-locked signal every subject shares with one subject's BOLD. ``scale_v`` makes the noise SD 1 % of the baseline (tSNR ~ 100).
Voxels outside planted ROIs (null ROIs included) are noise only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

AR1 = 0.35                  # lag-1 autocorrelation of the voxel noise at the TR
INTRINSIC_PHI = 0.9         # slow ROI-coherent fluctuation
INTRINSIC_SD = 0.5          # its SD relative to the unit-variance AR(1) noise (times a voxel loading 0.5-1)
NOISE_PERCENT = 1.0         # noise SD as % of the baseline


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


def intrinsic(n_trs: int, groups: list[np.ndarray], n_vox: int, rng) -> np.ndarray:
    """float64 (n_trs, n_vox): per voxel group (ROI) one slow unit-variance AR(1) time course, loaded on its
    voxels with weights U(0.5, 1) x INTRINSIC_SD (spatially coherent, not stimulus-locked)."""
    out = np.zeros((n_trs, n_vox))
    for idx in groups:
        f = ar1_noise(n_trs, 1, rng, INTRINSIC_PHI)
        out[:, idx] = f * (INTRINSIC_SD * rng.uniform(0.5, 1.0, size=len(idx)))
    return out


def subject_noise(lens: list[int], groups: list[np.ndarray], n_vox: int, rng) -> list[np.ndarray]:
    return [ar1_noise(T, n_vox, rng) + intrinsic(T, groups, n_vox, rng) + drift(T, n_vox, rng) for T in lens]


def response_scale(shared: np.ndarray, signal: np.ndarray, noise: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per column the a > 0 with corr(S, a U + N) = r exactly (sample correlation over rows), where S is the
    shared response, U = S + P the whole stimulus-driven response and N the noise.

    With centred sums c_SU = <S, U>, c_SN, c_UN, v_S, v_U, v_N, squaring corr = r gives
    a^2 (c_SU^2 - r^2 v_S v_U) + 2 a (c_SU c_SN - r^2 v_S c_UN) + c_SN^2 - r^2 v_S v_N = 0; the root with
    a c_SU + c_SN > 0 is taken. ConfigError when r exceeds what U allows (r^2 >= corr(S, U)^2, i.e. about
    1 / (1 + simulate.subject_share)).
    """
    S, U, N = (x - x.mean(0) for x in (shared, signal, noise))
    c_su, c_sn, c_un = (S * U).sum(0), (S * N).sum(0), (U * N).sum(0)
    v_s, v_u, v_n = (S * S).sum(0), (U * U).sum(0), (N * N).sum(0)
    r2 = r * r
    qa = c_su ** 2 - r2 * v_s * v_u
    if np.any(qa <= 0):
        raise ConfigError("simulate.effect_r: a planted r this high leaves no room for the subject-specific "
                          "response (needs r^2 < 1 / (1 + simulate.subject_share))")
    qb = 2 * (c_su * c_sn - r2 * v_s * c_un)
    qc = c_sn ** 2 - r2 * v_s * v_n
    disc = np.sqrt(np.maximum(qb * qb - 4 * qa * qc, 0.0))
    roots = np.stack([(-qb + disc) / (2 * qa), (-qb - disc) / (2 * qa)])
    ok = (roots > 0) & (roots * c_su + c_sn > 0)
    return np.where(ok[0], roots[0], roots[1])


@dataclass
class SubjectBold:
    bold: list              # per run float32 (T_r, n_vox)
    shared: list            # per run float64 (T_r, n_vox): a * shared response, in BOLD units (0 = none)
    ceiling: np.ndarray     # float64 (n_vox,): realised corr(shared, bold) over all runs; NaN where none


def synthesize_subject(regressors: dict, weights: dict, specific: dict, target_r: np.ndarray,
                       roi_index: dict, n_vox: int, subject_share: float, rng) -> SubjectBold:
    """One subject's BOLD (see the module docstring).

    regressors: {roi: per run (T_r, k)}; weights: {roi: (k, n_roi) shared}; specific: {roi: (k, n_roi) this
    subject's}; target_r (n_vox,) (NaN outside planted ROIs); roi_index: {roi: voxel indices} of every ROI
    (planted or not: each gets its own intrinsic fluctuation). Deterministic given rng.
    """
    lens = [len(x) for x in next(iter(regressors.values()))] if regressors else None
    if lens is None:
        raise ConfigError("simulate: no planted ROI")
    in_roi = np.zeros(n_vox, bool)
    for idx in roi_index.values():
        in_roi[idx] = True
    groups = list(roi_index.values()) + [np.flatnonzero(~in_roi)]
    noise = subject_noise(lens, groups, n_vox, rng)
    signal = [np.zeros((T, n_vox)) for T in lens]
    shared_out = [np.zeros((T, n_vox)) for T in lens]
    ceiling = np.full(n_vox, np.nan)
    for roi, runs in regressors.items():
        idx = roi_index[roi]
        S = [x @ weights[roi] for x in runs]
        P = [x @ specific[roi] for x in runs]
        s_all, p_all = np.concatenate(S), np.concatenate(P)
        p_scale = np.sqrt(subject_share * s_all.var(0) / np.maximum(p_all.var(0), 1e-30))
        n_all = np.concatenate([n[:, idx] for n in noise])
        a = response_scale(s_all, s_all + p_all * p_scale, n_all, target_r[idx])
        for e in range(len(lens)):
            signal[e][:, idx] = a * (S[e] + P[e] * p_scale)
            shared_out[e][:, idx] = a * S[e]
    baseline = rng.uniform(400.0, 1200.0, size=n_vox)
    sd_noise = np.concatenate(noise).std(0)
    scale = NOISE_PERCENT / 100 * baseline / sd_noise
    bold = [(baseline + scale * (s + n)).astype(np.float32) for s, n in zip(signal, noise)]
    b_all = np.concatenate(bold).astype(np.float64)
    sh_all = np.concatenate(shared_out)
    for idx in (roi_index[r] for r in regressors):
        for v in idx:
            ceiling[v] = np.corrcoef(sh_all[:, v], b_all[:, v])[0, 1]
    return SubjectBold(bold, [s * scale for s in shared_out], ceiling)
