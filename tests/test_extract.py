"""Extract stage: per-episode features, shards, the virtual features.h5, resume, and read errors."""
import os
import shutil

import h5py
import numpy as np
import pytest

from brainalign import extract
from brainalign.config import Config, TinyModelConfig, WindowsConfig
from brainalign.errors import ConfigError, DataError
from brainalign.features import read_features
from brainalign.h5io import COMPLETE_ATTR, read_str_attr
from brainalign.models import get_backbone
from brainalign.models.synthetic import synthetic_stimuli
from conftest import placeholder_stimuli

N_WINDOWS = {"e1": 7, "e2": 9, "e3": 5}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def cfg(tmp_path):
    c = Config()
    c.output = str(tmp_path / "out")
    c.data.root = str(tmp_path / "data")
    c.data.episodes = list(N_WINDOWS)
    c.data.bold.tr = 1.0
    c.model.tiny = TinyModelConfig(hidden=32, layers=3, heads=4, vocab=512, patch=8, n_mels=16)
    c.model.conditions = ["joint", "no_vision", "language_only"]
    c.model.batch_size = 4
    c.windows = WindowsConfig(context=2.0, frames=2, image_size=32, audio_rate=8000)
    c.text = "name: extract-test\n"
    placeholder_stimuli(c)          # the loader is faked; the stage key fingerprints the files
    return c


@pytest.fixture
def loads(monkeypatch):
    """Replace the stimulus loader by synthetic episodes; returns the list of episodes loaded."""
    calls = []

    def fake(cfg, episode):
        calls.append(episode)
        return synthetic_stimuli(episode, n_windows=N_WINDOWS[episode], tr=1.0, frames=2, image_size=32,
                                 audio_rate=8000, context=2.0, seed=int(episode[1:]))

    monkeypatch.setattr("brainalign.stimuli.windows.load_episode_stimuli", fake)
    return calls


def direct(cfg, episode, condition):
    """Reference: the backbone on the whole episode in one batch, every layer."""
    bb = get_backbone(cfg.model, cfg.windows)
    s = synthetic_stimuli(episode, n_windows=N_WINDOWS[episode], tr=1.0, frames=2, image_size=32,
                          audio_rate=8000, context=2.0, seed=int(episode[1:]))
    return bb.encode(s, slice(None), condition).numpy()


def test_extract_episode_features_shapes_layers_and_values(cfg, loads):
    out = extract.extract_episode_features(cfg, "e2")
    assert list(out) == cfg.model.conditions
    for c, x in out.items():
        assert x.shape == (3, 9, 32) and x.dtype == np.float32
        np.testing.assert_allclose(x, direct(cfg, "e2", c), atol=1e-5)   # batches of 4 == one batch
    cfg.model.layers = [-1, 0]
    sub = extract.extract_episode_features(cfg, "e2", conditions=["no_audio"])
    assert list(sub) == ["no_audio"] and sub["no_audio"].shape == (2, 9, 32)
    np.testing.assert_allclose(sub["no_audio"], direct(cfg, "e2", "no_audio")[[2, 0]], atol=1e-5)


def test_bad_settings_and_stimuli_are_one_line_errors(cfg, loads, monkeypatch):
    cfg.model.layers = [0, 3]
    with pytest.raises(ConfigError, match=r"model.layers\[1\]: layer 3 out of range for backbone 'tiny' with 3"):
        extract.extract_episode_features(cfg, "e1")
    cfg.model.layers = [1, -2]
    with pytest.raises(ConfigError, match=r"model.layers\[1\]: layer -2 is listed twice"):
        extract.extract_episode_features(cfg, "e1")
    cfg.model.layers = None
    with pytest.raises(ConfigError, match="unknown condition 'both'"):
        extract.extract_episode_features(cfg, "e1", conditions=["both"])
    with pytest.raises(ConfigError, match="episodes: e9 not in data.episodes"):
        extract.run_extract(cfg, episodes=["e9"])

    def short_audio(cfg, episode):
        s = synthetic_stimuli(episode, n_windows=4, image_size=32, audio_rate=8000)
        s.audio = s.audio[:3]
        return s

    monkeypatch.setattr("brainalign.stimuli.windows.load_episode_stimuli", short_audio)
    with pytest.raises(DataError, match=r"episode e1: stimuli disagree on the number of windows \(windows 4, "
                                        r"frames 4, words 4, audio 3"):
        extract.extract_episode_features(cfg, "e1")

    def nan_audio(cfg, episode):
        s = synthetic_stimuli(episode, n_windows=4, image_size=32, audio_rate=8000)
        s.audio[2, 5] = np.nan
        return s

    monkeypatch.setattr("brainalign.stimuli.windows.load_episode_stimuli", nan_audio)
    with pytest.raises(DataError, match=r"episode e1: audio has non-finite samples \(first in window 2\)"):
        extract.extract_episode_features(cfg, "e1")


def test_run_extract_writes_shards_and_virtual_features(cfg, loads):
    path = extract.run_extract(cfg)
    assert path == cfg.out / "features.h5" and sorted(loads) == ["e1", "e2", "e3"]
    with h5py.File(path, "r") as f:
        assert read_str_attr(f, "conditions") == cfg.model.conditions
        assert read_str_attr(f, "episodes") == list(N_WINDOWS)
        assert f.attrs["layers"].tolist() == [0, 1, 2] and f.attrs["n_layers"] == 3
        assert (f.attrs["hidden"], f.attrs["backbone"], f.attrs["backbone_layers"]) == (32, "tiny", 3)
        assert (f.attrs["tr"], f.attrs["window_context"], f.attrs["frames_per_window"]) == (1.0, 2.0, 2)
        assert f.attrs["stage"] == "extract" and f.attrs["config"] == cfg.text and f.attrs[COMPLETE_ATTR] == 1
        for ep, n in N_WINDOWS.items():
            with h5py.File(cfg.out / "features" / f"{ep}.h5", "r") as shard:
                assert shard.attrs[COMPLETE_ATTR] == 1 and shard.attrs["episode"] == ep
                np.testing.assert_array_equal(f[f"windows/{ep}"][()], shard["windows"][()])
                assert f[f"windows/{ep}"].dtype == np.float64
                np.testing.assert_allclose(f[f"windows/{ep}"][()],
                                           np.stack([np.arange(n) - 1.0, np.arange(n) + 1.0], 1))
                for c in cfg.model.conditions:
                    ds = f[f"{c}/{ep}"]
                    assert ds.is_virtual and ds.shape == (3, n, 32) and ds.dtype == np.float32
                    (src,) = ds.virtual_sources()
                    assert (src.file_name, src.dset_name) == (f"features/{ep}.h5", c)   # relative
                    np.testing.assert_array_equal(ds[()], shard[c][()])
                    if ep == "e1":
                        np.testing.assert_allclose(ds[()], direct(cfg, ep, c), atol=1e-5)


def test_read_features_after_moving_the_output_directory(cfg, loads, tmp_path, monkeypatch):
    extract.run_extract(cfg)
    ref = read_features(cfg.out / "features.h5").get("no_vision", "e3")
    moved = tmp_path / "elsewhere" / "results"
    shutil.move(cfg.out, moved)
    monkeypatch.chdir(tmp_path / "elsewhere")         # relative shard names resolve against the file, not cwd
    store = read_features("results/features.h5")
    assert (store.conditions, store.episodes, store.layers, store.tr) == (cfg.model.conditions, list(N_WINDOWS),
                                                                          [0, 1, 2], 1.0)
    x = store.get("no_vision", "e3")
    assert x.shape == (3, 5, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x, ref)
    assert store.windows("e1").shape == (7, 2)
    with pytest.raises(DataError, match=r"has no condition 'no_audio' \(has: joint, no_vision, language_only\)"):
        store.get("no_audio", "e1")
    with pytest.raises(DataError, match="has no episode 'e7'"):
        store.get("joint", "e7")


def test_resume_skips_complete_shards_and_redoes_bad_ones(cfg, loads):
    extract.run_extract(cfg)
    shards = {ep: cfg.out / "features" / f"{ep}.h5" for ep in N_WINDOWS}
    mtimes = {ep: p.stat().st_mtime_ns for ep, p in shards.items()}
    with h5py.File(shards["e1"], "r") as f:
        e1 = f["joint"][()]
    loads.clear()
    extract.run_extract(cfg)
    assert loads == [] and {ep: p.stat().st_mtime_ns for ep, p in shards.items()} == mtimes

    shards["e1"].write_bytes(b"\x89HDF garbage: a truncated write")          # corrupt
    with h5py.File(shards["e2"], "a") as f:                                   # incomplete (no marker)
        del f.attrs[COMPLETE_ATTR]
    extract.run_extract(cfg)
    assert sorted(loads) == ["e1", "e2"] and shards["e3"].stat().st_mtime_ns == mtimes["e3"]
    with h5py.File(shards["e1"], "r") as f:
        np.testing.assert_array_equal(f["joint"][()], e1)

    loads.clear()
    cfg.model.seed = 5                       # other settings: every shard is stale
    extract.run_extract(cfg)
    assert sorted(loads) == ["e1", "e2", "e3"]
    loads.clear()
    extract.run_extract(cfg, force=True)
    assert sorted(loads) == ["e1", "e2", "e3"]


def test_subset_writes_only_its_shards_and_assembly_needs_all(cfg, loads):
    out = extract.run_extract(cfg, episodes=["e2"])
    assert out == cfg.out / "features" and loads == ["e2"]
    assert not (cfg.out / "features.h5").exists()
    with pytest.raises(DataError, match=r"cannot assemble .*features.h5: shards under .*features missing: e1, "
                                        r"e3 \(run `brainalign extract`\)"):
        extract.assemble_features(cfg)
    extract.run_extract(cfg, episodes=["e1", "e3"])
    with h5py.File(cfg.out / "features" / "e3.h5", "a") as f:
        del f.attrs[COMPLETE_ATTR]
    with pytest.raises(DataError, match=r"shards under .*features incomplete: e3 \("):
        extract.assemble_features(cfg)
    loads.clear()
    assert extract.run_extract(cfg) == cfg.out / "features.h5" and loads == ["e3"]


def test_read_features_errors_name_the_file(cfg, loads, tmp_path):
    with pytest.raises(DataError, match="features file not found: .*nothing.h5"):
        read_features(tmp_path / "nothing.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="features file is not a readable HDF5 file .*bad.h5"):
        read_features(bad)
    path = extract.run_extract(cfg)
    with h5py.File(path, "a") as f:
        del f.attrs[COMPLETE_ATTR]
    with pytest.raises(DataError, match="features file is incomplete .*features.h5"):
        read_features(path)
    path = extract.run_extract(cfg)
    os.remove(cfg.out / "features" / "e2.h5")        # a shard vanished after assembly
    with pytest.raises(DataError, match=r"features.h5: shard .*e2.h5 for 'joint/e2' is missing \(re-run"):
        read_features(path)
    extract.run_extract(cfg)
    with h5py.File(cfg.out / "features" / "e3.h5", "a") as f:
        del f.attrs[COMPLETE_ATTR]
    with pytest.raises(DataError, match=r"shard .*e3.h5 for 'joint/e3' is incomplete or corrupt"):
        read_features(path)


def test_model_variants_add_condition_at_variant_feature_sets(cfg, loads, tmp_path):
    """A fine-tuned checkpoint as model.variants: features CONDITION@NAME from that checkpoint, same layout."""
    from brainalign.config import VariantConfig
    from brainalign.models.tiny import save_checkpoint

    other = Config()
    other.model.tiny, other.windows, other.model.seed = cfg.model.tiny, cfg.windows, 7
    ckpt = save_checkpoint(get_backbone(other.model, other.windows), tmp_path / "tuned.pt")
    cfg.model.variants = [VariantConfig(name="tuned", checkpoint=str(ckpt))]
    assert cfg.all_conditions == ["joint", "no_vision", "language_only",
                                  "joint@tuned", "no_vision@tuned", "language_only@tuned"]
    path = extract.run_extract(cfg)
    store = read_features(path)
    assert store.conditions == cfg.all_conditions
    s = synthetic_stimuli("e2", n_windows=N_WINDOWS["e2"], tr=1.0, frames=2, image_size=32, audio_rate=8000,
                          context=2.0, seed=2)
    tuned = get_backbone(other.model, other.windows)
    np.testing.assert_allclose(store.get("joint@tuned", "e2"), tuned.encode(s, slice(None), "joint").numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(store.get("joint", "e2"), direct(cfg, "e2", "joint"), atol=1e-5)
    assert not np.allclose(store.get("joint@tuned", "e2"), store.get("joint", "e2"))
    loads.clear()
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")     # the variant's checkpoint changed: only its units are redone
    states = extract.unit_states(cfg)
    assert {fs for fs, st in states["e2"].items() if not st.current} == {c + "@tuned" for c in cfg.model.conditions}
    assert "checkpoint of variant tuned changed (size)" in states["e2"]["joint@tuned"].reasons
    cfg.model.variants = []                         # dropped again: the base units are current, nothing is loaded
    extract.run_extract(cfg)
    assert loads == [] and read_features(path).conditions == cfg.model.conditions
