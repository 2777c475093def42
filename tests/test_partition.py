"""Variance partitioning: set algebra against a direct Venn construction, the fit stage's banded-ridge subset
models against himalaya on a fixture, and the group tests of stats against scipy."""
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).parent))
from test_fit import _zscore_runs, write_align_outputs  # noqa: E402

from brainalign.config import parse_config  # noqa: E402
from brainalign.partition import regions_from_r2, region_names, subsets  # noqa: E402

RUNS = (40, 36, 44, 38)
SUBJECTS = ("01", "02", "03", "04", "05")
ALPHAS = [1.0, 10.0, 100.0, 1000.0]
N_ITER = 5
ROIS = {1: "A", 2: "B", 3: "Z", 4: "none"}     # driven by band A only, B only, the latent both carry, nothing


# ---- set algebra -------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [2, 3, 4])
def test_regions_invert_the_union_measure(m):
    """Draw the measure of every Venn region; a model of bands S explains the union of S's regions. The
    Möbius inversion must give back every region, and the 2-band formulas of de Heer et al. (2017)."""
    rng = np.random.default_rng(m)
    subs = subsets(m)
    rho = rng.uniform(-0.05, 0.3, size=(len(subs), 7))            # regions may be negative (noise)
    r2 = np.array([sum(rho[j] for j, t in enumerate(subs) if set(t) & set(s)) for s in subs])
    np.testing.assert_allclose(regions_from_r2(r2, axis=0), rho, atol=1e-12)
    if m == 2:
        a, b, ab = r2
        np.testing.assert_allclose(regions_from_r2(r2)[0], ab - b)            # unique a
        np.testing.assert_allclose(regions_from_r2(r2)[1], ab - a)            # unique b
        np.testing.assert_allclose(regions_from_r2(r2)[2], a + b - ab)        # shared
    assert region_names(["x", "y", "z"])[:4] == ["unique x", "unique y", "unique z", "shared x+y"]


# ---- the fit stage on a fixture, against himalaya ------------------------------------------------------

def make_partition_fixture(out: Path, seed=0):
    """design.h5 / bold.h5 in align's layout: bands no_vision (A) and no_language (B) of 6 features, both
    carrying a 2-d latent Z; ROI A voxels follow A's own features, B's follow B's, Z's follow Z."""
    rng = np.random.default_rng(seed)
    runs = np.concatenate([np.full(n, i, np.int32) for i, n in enumerate(RUNS)])
    n = runs.size
    Z = rng.standard_normal((n, 2))
    A = np.concatenate([Z @ rng.standard_normal((2, 2)), rng.standard_normal((n, 4))], 1)
    B = np.concatenate([Z @ rng.standard_normal((2, 2)), rng.standard_normal((n, 4))], 1)
    A, B = _zscore_runs(A, runs), _zscore_runs(B, runs)
    labels = np.repeat([1, 2, 3, 4], 15).astype(np.int32)
    mask = np.ones((labels.size, 1, 1), bool)
    bold = {}
    for s in SUBJECTS:
        drive = np.zeros((n, labels.size))
        drive[:, labels == 1] = A[:, 2:] @ rng.standard_normal((4, 15))
        drive[:, labels == 2] = B[:, 2:] @ rng.standard_normal((4, 15))
        drive[:, labels == 3] = Z @ rng.standard_normal((2, 15))
        Y = drive / np.maximum(drive.std(0), 1e-12) + rng.standard_normal(drive.shape) * 1.2
        bold[s] = _zscore_runs(Y, runs).astype(np.float32)
    episodes = [f"e{i + 1}" for i in range(len(RUNS))]
    write_align_outputs(out, runs, episodes, {"no_vision": (A[None], 0), "no_language": (B[None], 0)}, bold, mask,
                        labels, ROIS, 1, [0], chunk=20)
    return {"runs": runs, "A": A.astype(np.float32), "B": B.astype(np.float32), "bold": bold, "labels": labels}


def _config(out):
    data = {"name": "partition-test", "output": str(out),
            "data": {"episodes": [f"e{i + 1}" for i in range(len(RUNS))], "bold": {"subjects": list(SUBJECTS)}},
            "model": {"conditions": ["no_vision", "no_language"]},
            "fit": {"alphas": ALPHAS, "chunk_voxels": 20, "feature_sets": ["no_vision"], "write_maps": False,
                    "partitions": [{"name": "ab", "bands": ["no_vision", "no_language"], "n_iter": N_ITER}]},
            "stats": {"contrasts": [{"name": "nv0", "a": "no_vision"}], "noise_ceiling": "none"}}
    return parse_config(data, text=yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from brainalign.fit import run_fit
    from brainalign.stats import run_stats

    out = tmp_path_factory.mktemp("partition") / "out"
    out.mkdir()
    data = make_partition_fixture(out)
    cfg = _config(out)
    run_fit(cfg)
    run_stats(cfg)
    return cfg, data


def himalaya_partition(data, subject):
    """Unique/shared variance with himalaya: per outer fold RidgeCV (one band) and BandedRidgeCV (both
    bands, the same band weights), intercept fitted, inner folds leaving one training run out, inner
    criterion R²; held-out sklearn r2_score; mean over folds; the two-band formulas."""
    himalaya_ridge = pytest.importorskip("himalaya.ridge")
    from himalaya.backend import set_backend
    from himalaya.scoring import r2_score
    from sklearn.metrics import r2_score as sk_r2

    from brainalign.partition import band_weights

    set_backend("numpy", on_error="raise")
    runs, Y = data["runs"], data["bold"][subject]
    X = {"a": data["A"], "b": data["B"], "ab": np.concatenate([data["A"], data["B"]], 1)}
    r2 = {k: [] for k in X}
    for k in np.unique(runs):
        tr, te = runs != k, runs == k
        inner = [(np.flatnonzero(runs[tr] != j), np.flatnonzero(runs[tr] == j)) for j in np.unique(runs[tr])]
        for name, Xk in X.items():
            if name == "ab":
                model = himalaya_ridge.BandedRidgeCV(
                    groups=np.repeat([0, 1], 6), fit_intercept=True, cv=inner,
                    solver_params=dict(n_iter=band_weights(2, N_ITER), alphas=np.asarray(ALPHAS),
                                       score_func=r2_score, progress_bar=False))
            else:
                model = himalaya_ridge.RidgeCV(alphas=np.asarray(ALPHAS), fit_intercept=True, cv=inner,
                                               solver_params=dict(score_func=r2_score))
            model.fit(Xk[tr], Y[tr])
            r2[name].append(sk_r2(Y[te], np.asarray(model.predict(Xk[te])), multioutput="raw_values"))
    a, b, ab = (np.mean(r2[k], axis=0) for k in ("a", "b", "ab"))
    return np.stack([a, b, ab]), np.stack([ab - b, ab - a, a + b - ab])


def test_partition_units_match_himalaya(fitted):
    cfg, data = fitted
    with h5py.File(cfg.out / "scores.h5", "r") as f:
        assert list(f.attrs["partition_models"]) == ["ab:no_vision", "ab:no_language", "ab:no_vision+no_language"]
        assert f["partition/r2"].shape == (len(SUBJECTS), 3, 1, len(RUNS), data["labels"].size)
        g = f["partition/ab"]
        assert list(g.attrs["regions"]) == ["unique no_vision", "unique no_language",
                                            "shared no_vision+no_language"]
        ours_r2, ours_var = g["r2"][()], g["variance"][()]           # (S, 3, L, V)
        # a one-band model is ordinary ridge: its held-out r agrees with the feature set's own fit
        assert np.corrcoef(ours_r2[:, 0, 0].ravel(), f["r_mean"][:, 0, 0].ravel())[0, 1] > 0.9
    for si in (0, 3):
        ref_r2, ref_var = himalaya_partition(data, SUBJECTS[si])
        close = np.abs(ours_r2[si, :, 0] - ref_r2) < 1e-4
        assert close.mean() >= 0.95, close.mean()                    # float32 near-ties may pick another alpha
        assert np.abs(ours_var[si, :, 0] - ref_var).max() < 0.02
        np.testing.assert_allclose(np.median(ours_var[si, :, 0], axis=1), np.median(ref_var, axis=1), atol=1e-4)


def test_partition_recovers_planted_unique_and_shared_variance(fitted):
    cfg, data = fitted
    with h5py.File(cfg.out / "scores.h5", "r") as f:
        var = f["partition/ab/variance"][:, :, 0]                     # (S, 3, V)
    labels = data["labels"]
    mean = {roi: var[:, :, labels == rid].mean(axis=(0, 2)) for rid, roi in ROIS.items()}
    assert mean["A"][0] > 0.1 and mean["A"][0] > 5 * abs(mean["A"][1])          # unique A in ROI A
    assert mean["B"][1] > 0.1 and mean["B"][1] > 5 * abs(mean["B"][0])          # unique B in ROI B
    assert mean["Z"][2] > 0.1 and mean["Z"][2] > 3 * max(abs(mean["Z"][0]), abs(mean["Z"][1]))  # shared
    assert np.all(np.abs(mean["none"]) < 0.03)


def test_stats_group_tests_of_partitions(fitted):
    cfg, data = fitted
    from brainalign.stats import roi_means

    out = cfg.out
    with h5py.File(out / "scores.h5", "r") as f:
        var = f["partition/ab/variance"][()].astype(np.float64)       # (S, M, L, V)
    roi_value = roi_means(var, data["labels"], list(ROIS))              # (S, M, L, R)
    ref = sps.ttest_1samp(roi_value, 0.0, axis=0, alternative="greater")      # only variance > 0 is a finding
    with h5py.File(out / "stats.h5", "r") as g:
        gp = g["partition/ab"]
        np.testing.assert_allclose(gp["roi/value"][()], roi_value, rtol=1e-10)
        np.testing.assert_allclose(gp["roi/t"][()], ref.statistic, rtol=1e-9)
        np.testing.assert_allclose(gp["roi/p"][()], ref.pvalue, rtol=1e-9)
        # default family: each region's layers x ROIs corrected together (the contrast's family is separate)
        for m in range(3):
            np.testing.assert_allclose(gp["roi/q"][m].ravel(), sps.false_discovery_control(ref.pvalue[m].ravel()),
                                       rtol=1e-9)
        sig = gp["roi/significant"][:, 0]                              # (M, R) at the one layer
        assert sig[0, 0] and sig[1, 1] and sig[2, 2]                  # unique A in A, unique B in B, shared in Z
        assert not sig[:, 3].any()                                    # nothing in the null ROI
        assert np.all(gp["roi/mean"][:, 0, 3] < 0.01)                # (held-out R² of noise is slightly < 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            refv = sps.ttest_1samp(var, 0.0, axis=0, nan_policy="omit")
        np.testing.assert_allclose(gp["voxel/t"][()], np.asarray(refv.statistic), rtol=1e-4)
    rows = (out / "roi_partitions.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["partition", "region", "layer", "roi"] and len(rows) == 1 + 3 * 1 * 4


def test_report_shows_the_partition_table_with_its_fdr_family(fitted):
    import html as _html

    from brainalign.report import run_report

    cfg, _ = fitted
    text = _html.unescape((run_report(cfg) / "index.html").read_text())
    i = text.index("Variance partitioning 'ab'")
    block = text[i:text.index("</table>", i)]
    assert "unique no_vision" in block and "shared no_vision+no_language" in block
    assert "stats.fdr_family: contrast" in block and block.count("<tr>") == 1 + 4
    assert 'href="../roi_partitions.csv"' in text
