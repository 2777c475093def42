"""Confound regression: the fMRIPrep TSV layout, the minimal strategy, and an independent lstsq reference."""
import numpy as np
import pytest

from brainalign.brain.confounds import MINIMAL, confounds_path, read_confounds, regress_out
from brainalign.errors import DataError


def _tsv(path, cols, data):
    lines = ["\t".join(cols)] + ["\t".join("n/a" if np.isnan(v) else repr(float(v)) for v in row) for row in data]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_confounds_path_follows_fmriprep_naming():
    p = confounds_path("/d/sub-01/ses-003/func/sub-01_ses-003_task-s01e02a_space-T1w_res-2_desc-preproc_bold.nii.gz")
    assert str(p) == "/d/sub-01/ses-003/func/sub-01_ses-003_task-s01e02a_desc-confounds_timeseries.tsv"


def test_minimal_strategy_reads_motion_wm_csf_and_cosines(tmp_path):
    rng = np.random.default_rng(0)
    cols = list(MINIMAL) + ["global_signal", "trans_x_derivative1", "cosine00", "cosine01"]
    data = rng.normal(size=(30, len(cols)))
    data[0, cols.index("trans_x_derivative1")] = np.nan
    p = _tsv(tmp_path / "c.tsv", cols, data)
    C = read_confounds(p, "minimal")
    assert C.shape == (30, 10)
    np.testing.assert_allclose(C[:, :8], data[:, :8])
    np.testing.assert_allclose(C[:, 8:], data[:, -2:])
    D = read_confounds(p, ["trans_x_derivative1"])
    assert D[0, 0] == 0.0   # first-row n/a of a derivative becomes 0


def test_bad_confounds_name_file_and_column(tmp_path):
    p = _tsv(tmp_path / "c.tsv", ["trans_x"], np.ones((5, 1)))
    with pytest.raises(DataError, match=r"c\.tsv lacks column\(s\) trans_y"):
        read_confounds(p, ["trans_x", "trans_y"])
    data = np.ones((5, 1))
    data[3, 0] = np.nan
    p = _tsv(tmp_path / "d.tsv", ["csf"], data)
    with pytest.raises(DataError, match=r"d\.tsv line 5: column csf is not a finite number"):
        read_confounds(p, ["csf"])
    with pytest.raises(DataError, match="confounds file not found"):
        read_confounds(tmp_path / "none.tsv", "minimal")


def test_regress_out_matches_lstsq_with_intercept():
    rng = np.random.default_rng(1)
    C = rng.normal(size=(80, 4))
    Y = 5.0 + C @ rng.normal(size=(4, 6)) + rng.normal(size=(80, 6))
    out = regress_out(Y, C)
    A = np.column_stack([np.ones(80), C])
    beta = np.linalg.lstsq(A, Y, rcond=None)[0]
    ref = Y - (C - C.mean(0)) @ beta[1:]   # the fitted confound part, centred: the mean stays
    np.testing.assert_allclose(out, ref, atol=1e-10)
    np.testing.assert_allclose(out.mean(0), Y.mean(0), atol=1e-10)
    assert np.abs(np.corrcoef(out.T, C.T)[:6, 6:]).max() < 1e-8
    with pytest.raises(DataError, match="confounds have 79 rows but the BOLD run has 80 TRs"):
        regress_out(Y, C[:79])
