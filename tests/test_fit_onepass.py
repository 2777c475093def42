"""fit reads each voxel chunk of each subject's BOLD once per (feature set, layer), not once per outer fold."""
import h5py
import numpy as np

from test_fit import N_LAYERS, RUN_LENGTHS, SUBJECTS, fit_config, make_fit_fixture, read_scores


def test_each_bold_chunk_is_read_once_per_feature_set_and_layer(tmp_path, monkeypatch):
    from brainalign import fit

    out = tmp_path / "out"
    data = make_fit_fixture(out)
    reads = []
    real = h5py.Dataset.__getitem__

    def counting(self, key):
        if self.name.startswith("/bold/sub-"):
            reads.append((self.name, repr(key)))
        return real(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    cfg = fit_config(out, chunk_voxels=10)
    s = read_scores(fit.run_fit(cfg))
    monkeypatch.setattr(h5py.Dataset, "__getitem__", real)
    n_chunks = -(-data["n_vox"] // 10)
    n_fs = s["r"].shape[1]
    # today's engine read every chunk once per outer fold: K times as many
    assert len(reads) == len(SUBJECTS) * n_fs * N_LAYERS * n_chunks
    assert len(set(reads)) == len(SUBJECTS) * n_chunks           # the same chunk once per (feature set, layer)
    assert s["r"].shape[3] == len(RUN_LENGTHS) and np.isfinite(s["r"][..., 0]).all()
