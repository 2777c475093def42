"""align reads every BOLD format into the same voxel matrix: CIFTI grayordinates and HDF5 parcels."""
import h5py
import numpy as np
import pytest

from brainalign.align import _read_run, _source
from brainalign.brain.runs import find_runs
from brainalign.brain.study import build_space
from brainalign.config import parse_config
from brainalign.errors import DataError

from test_cifti import write_dtseries


def _bold_sources(cfg):
    """{(subject, episode): (path, dataset, "cifti" or None)} of every run found, as align reads them."""
    return {key: _source(run) for key, run in find_runs(cfg).items()}


def _cfg(tmp_path, fmt, bold_dir):
    return parse_config({"data": {"root": str(tmp_path), "episodes": ["e1", "e2", "e3"],
                                  "bold": {"format": fmt, "dir": bold_dir, "subjects": ["01"], "space": "fsLR",
                                           "tr": 1.49}}})


def test_cifti_runs_and_structures_as_rois(tmp_path):
    rng = np.random.default_rng(0)
    data = {}
    for ep in ("e1", "e2", "e3"):
        d = tmp_path / "prep" / "sub-01" / "ses-001" / "func"
        d.mkdir(parents=True, exist_ok=True)
        data[ep] = rng.standard_normal((30, 36)).astype(np.float32)
        write_dtseries(d / f"sub-01_ses-001_task-{ep}_space-fsLR_den-91k_bold.dtseries.nii", data[ep])
    cfg = _cfg(tmp_path, "cifti", "{root}/prep")
    sources = _bold_sources(cfg)
    assert set(sources) == {("01", "e1"), ("01", "e2"), ("01", "e3")}
    study = build_space(cfg, find_runs(cfg))
    mask, labels, names = study.mask, study.labels, study.names
    assert mask is None and labels.shape == (36,) and study.space.kind == "grayordinates"
    assert names == {1: "CORTEX_LEFT", 2: "CORTEX_RIGHT", 3: "THALAMUS_LEFT"}
    np.testing.assert_array_equal(labels, np.repeat([1, 2, 3], [10, 18, 8]))
    np.testing.assert_array_equal(_read_run(cfg, sources[("01", "e2")], mask), data["e2"])
    bad = _cfg(tmp_path, "cifti", "{root}/prep")
    bad.data.bold.tr = 2.0
    with pytest.raises(DataError, match="TR"):
        _read_run(bad, sources[("01", "e1")], None)


def test_hdf5_parcels_one_dataset_per_run(tmp_path):
    rng = np.random.default_rng(1)
    with h5py.File(tmp_path / "sub-01.h5", "w") as f:
        for ep in ("e1", "e2", "e3"):
            f[f"sub-01_task-{ep}"] = rng.standard_normal((20, 7))
    cfg = _cfg(tmp_path, "hdf5", "{root}/sub-{subject}.h5")
    sources = _bold_sources(cfg)
    assert sources[("01", "e3")][1] == "sub-01_task-e3"
    y = _read_run(cfg, sources[("01", "e3")], None)
    with h5py.File(tmp_path / "sub-01.h5") as f:
        np.testing.assert_allclose(y, f["sub-01_task-e3"][()], rtol=1e-6)
    study = build_space(cfg, find_runs(cfg), n_columns=7)
    assert study.space.kind == "none" and study.names == {} and not study.labels.any()
    missing = _cfg(tmp_path, "hdf5", "{root}/sub-{subject}-nope.h5")
    with pytest.raises(Exception, match=r"data\.bold\.dir: BOLD HDF5 file of sub-01 not found"):
        _bold_sources(missing)


def test_cifti_runs_with_confounds_regress_them_once(tmp_path):
    """fMRIPrep writes one confounds TSV per run, shared by its volumetric and CIFTI outputs:
    sub-01_ses-001_task-e1_desc-confounds_timeseries.tsv beside ..._space-fsLR_den-91k_bold.dtseries.nii."""
    rng = np.random.default_rng(2)
    d = tmp_path / "prep" / "sub-01" / "ses-001" / "func"
    d.mkdir(parents=True)
    conf = {}
    for ep in ("e1", "e2", "e3"):
        y = rng.standard_normal((30, 36)).astype(np.float32)
        write_dtseries(d / f"sub-01_ses-001_task-{ep}_space-fsLR_den-91k_bold.dtseries.nii", y)
        c = rng.standard_normal((30, 2))
        conf[ep] = (y, c)
        (d / f"sub-01_ses-001_task-{ep}_desc-confounds_timeseries.tsv").write_text(
            "csf\twhite_matter\n" + "".join(f"{float(a)!r}\t{float(b)!r}\n" for a, b in c))
    cfg = _cfg(tmp_path, "cifti", "{root}/prep")
    cfg.data.bold.confounds = ["csf", "white_matter"]
    y, c = conf["e2"]
    got = _read_run(cfg, _bold_sources(cfg)[("01", "e2")], None)
    # independent reference: least-squares residual on [1, confounds], the run mean kept
    A = np.column_stack([np.ones(30), c])
    ref = y - A @ np.linalg.lstsq(A, y.astype(np.float64), rcond=None)[0] + y.mean(0)
    np.testing.assert_allclose(got, ref, atol=1e-4)
