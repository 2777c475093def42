"""Window features -> TR grid: Lanczos against analytic sinusoids and the Huth lab's lanczosinterp2D, averaging
against a loop, and input errors."""
import numpy as np
import pytest

from brainalign.errors import ConfigError, DataError
from brainalign.resample import average_weights, lanczos_kernel, resample_features

TR = 1.49


def huth_lanczosinterp2D(data, oldtime, newtime, window=3, cutoff_mult=1.0):
    """Transcription of the Huth lab's interpdata.lanczosinterp2D (reference loop)."""
    cutoff = 1 / np.mean(np.diff(newtime)) * cutoff_mult
    sincmat = np.zeros((len(newtime), len(oldtime)))
    for ndi in range(len(newtime)):
        t = (newtime[ndi] - oldtime) * cutoff
        val = window * np.sin(np.pi * t) * np.sin(np.pi * t / window) / (np.pi ** 2 * t ** 2 + 1e-300)
        val[t == 0] = 1.0
        val[np.abs(t) > window] = 0.0
        sincmat[ndi, :] = val
    return sincmat @ data


def test_lanczos_upsamples_coarse_windows_of_a_sinusoid_to_analytic_values():
    wt = np.arange(0, 600, 5.0) + 2.5                    # MERLOT-like 5 s windows (centres)
    tt = np.arange(0, 600, TR) + TR / 2                  # TR centres
    f = np.array([0.01, 0.02])                           # Hz, well below the windows' Nyquist (0.1 Hz)
    feats = np.sin(2 * np.pi * f[None, :] * wt[:, None] + [0.0, 1.0])
    out = resample_features(feats, wt, tt, "lanczos", window=3)
    truth = np.sin(2 * np.pi * f[None, :] * tt[:, None] + [0.0, 1.0])
    inner = (tt > 20) & (tt < 580)                       # away from the edges (3 lobes of 5 s)
    assert out.shape == (tt.size, 2)
    np.testing.assert_allclose(out[inner], truth[inner], atol=0.01)


def test_lanczos_downsampling_matches_analytic_and_huth_reference():
    wt = np.arange(0, 300, 0.25)                         # dense windows, e.g. one per frame
    tt = np.arange(0, 300, TR) + TR
    feats = np.stack([np.sin(2 * np.pi * 0.1 * wt), np.cos(2 * np.pi * 0.05 * wt)], axis=1)
    out = resample_features(feats, wt, tt, "lanczos")
    inner = (tt > 10) & (tt < 290)
    truth = np.stack([np.sin(2 * np.pi * 0.1 * tt), np.cos(2 * np.pi * 0.05 * tt)], axis=1)
    np.testing.assert_allclose(out[inner], truth[inner], atol=0.01)
    # unnormalised = Huth's lanczosinterp2D exactly (downsampling: both use the TR rate as cutoff)
    raw = resample_features(feats, wt, tt, "lanczos", normalize=False)
    np.testing.assert_allclose(raw, huth_lanczosinterp2D(feats, wt, tt), rtol=1e-12, atol=1e-12)
    # ... whose gain is the window rate per TR; the normalised version preserves constants
    const = resample_features(np.ones((wt.size, 1)), wt, tt, "lanczos")
    np.testing.assert_allclose(const[inner], 1.0, atol=1e-12)


def test_lanczos_kernel_values():
    t = np.array([0.0, 0.5, 1.0, 2.5, 3.0, 3.5, -0.5])
    k = lanczos_kernel(t, cutoff=1.0, window=3)
    x = 0.5
    assert k[0] == 1.0 and k[1] == pytest.approx(np.sinc(x) * np.sinc(x / 3), rel=1e-12) and k[6] == k[1]
    assert abs(k[2]) < 1e-15 and abs(k[4]) < 1e-15 and k[5] == 0.0
    assert k[3] == pytest.approx(np.sinc(2.5) * np.sinc(2.5 / 3), rel=1e-12)


@pytest.mark.parametrize("anchor", ["centre", "end"])
@pytest.mark.parametrize("step", [0.4, 5.0])              # finer and coarser windows than the TR
def test_average_equals_overlap_loop(anchor, step):
    rng = np.random.default_rng(0)
    wt = np.arange(0, 60, step) + (step if anchor == "end" else step / 2)
    tt = np.arange(0, 60, TR) + (TR if anchor == "end" else TR / 2)
    feats = rng.standard_normal((wt.size, 3))
    out = resample_features(feats, wt, tt, "average", anchor=anchor)
    for i, t in enumerate(tt):
        t0, t1 = (t - TR, t) if anchor == "end" else (t - TR / 2, t + TR / 2)
        acc, tot = np.zeros(3), 0.0
        for j, w in enumerate(wt):
            w0, w1 = (w - step, w) if anchor == "end" else (w - step / 2, w + step / 2)
            ov = max(0.0, min(t1, w1) - max(t0, w0))
            acc += ov * feats[j]
            tot += ov
        np.testing.assert_allclose(out[i], acc / tot if tot > 0 else 0.0, rtol=1e-10, atol=1e-12)
    if step == 0.4:                                      # fine windows: a plain mean of those inside the TR
        inside = (wt - 0.2 >= tt[5] - TR / 2) & (wt + 0.2 <= tt[5] + TR / 2) if anchor == "centre" else None
        if inside is not None:
            assert np.allclose(average_weights(wt, tt)[5][inside], 0.4 / TR)


def test_bad_inputs():
    wt, tt = np.arange(10.0), np.arange(0, 10, TR)
    with pytest.raises(DataError, match="contain NaN"):
        resample_features(np.full((10, 2), np.nan), wt, tt)
    with pytest.raises(DataError, match=r"features \(9, 2\) and window times \(10,\)"):
        resample_features(np.zeros((9, 2)), wt, tt)
    with pytest.raises(DataError, match="window times must be strictly increasing"):
        resample_features(np.zeros((10, 2)), wt[::-1], tt)
    with pytest.raises(ConfigError, match="unknown method 'cubic'"):
        resample_features(np.zeros((10, 2)), wt, tt, "cubic")
    with pytest.raises(ConfigError, match="windows.resample: none needs"):
        resample_features(np.zeros((10, 2)), wt, tt, "none")
    np.testing.assert_array_equal(resample_features(np.eye(10), wt, wt, "none"), np.eye(10))
    far = resample_features(np.ones((10, 1)), wt, tt + 1000, "lanczos")
    assert np.all(far == 0)                              # no window within reach -> 0, never NaN


@pytest.mark.parametrize("step", [0.25, 0.5])
def test_lanczos_with_end_anchor_uses_no_stimulus_after_the_tr(step):
    """anchor='end' (align's windows and TRs end at their times): row i describes TR i, so no window that
    ends after TR i's end may contribute, and the weights' centre of mass sits at the TR's centre."""
    wt = np.arange(1, int(120 / step) + 1) * step           # window ends
    tt = np.arange(1, 80) * TR                               # TR ends
    W = resample_features(np.eye(wt.size), wt, tt, "lanczos", anchor="end")    # the (n_trs, n_windows) map
    assert np.all(W[wt[None, :] > tt[:, None] + 1e-9] == 0)
    # a feature that switches on at 60 s leaves every TR ending by 60 s at exactly 0
    feats = (wt > 60.0).astype(float)[:, None]
    out = resample_features(feats, wt, tt, "lanczos", anchor="end")
    assert np.all(out[tt <= 60.0] == 0) and out[-1, 0] == pytest.approx(1.0)
    inner = (tt > 15) & (tt < 100)
    lag = W @ (wt - step / 2) - (tt - TR / 2)                # weighted window centre − TR centre
    assert np.all(np.abs(lag[inner]) < 0.25), lag[inner].min()   # (the symmetric kernel: +0.5 s ahead)
    # a slow sinusoid comes out as its mean over each TR, within a few percent of its amplitude
    f = 0.05
    truth = (np.cos(2 * np.pi * f * (tt - TR)) - np.cos(2 * np.pi * f * tt)) / (2 * np.pi * f * TR)
    got = resample_features(np.sin(2 * np.pi * f * (wt - step / 2))[:, None], wt, tt, "lanczos", anchor="end")
    assert np.abs(got[inner, 0] - truth[inner]).max() < 0.07


def test_lanczos_end_anchor_refuses_windows_coarser_than_the_tr():
    wt = np.arange(1, 40) * 5.0
    with pytest.raises(ConfigError, match=r"windows\.step <= data\.bold\.tr"):
        resample_features(np.zeros((wt.size, 1)), wt, np.arange(1, 100) * TR, "lanczos", anchor="end")
