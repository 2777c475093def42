"""Reading features.h5 (the extract stage's output) for the stages downstream of it."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .errors import DataError
from .h5io import check_float, is_complete, open_h5, read_str_attr


class FeatureStore:
    """Read access to features.h5: ``get(condition, episode)`` -> float32 (n_layers, n_windows, hidden).

    Attributes: path, conditions, episodes, layers (backbone layer indices of axis 0), tr, hidden,
    n_layers, backbone, window_context, frames_per_window. The file is opened per call (no handle kept).
    """

    def __init__(self, path):
        self.path = Path(path)
        with open_h5(self.path, "features file", require=("windows",)) as f:
            try:
                self.conditions = read_str_attr(f, "conditions")
                self.episodes = read_str_attr(f, "episodes")
                self.layers = [int(x) for x in np.atleast_1d(f.attrs["layers"])]
                self.tr = float(f.attrs["tr"])
                self.hidden = int(f.attrs["hidden"])
                self.n_layers = int(f.attrs["n_layers"])
                self.backbone = str(f.attrs["backbone"])
                self.window_context = float(f.attrs["window_context"])
                self.frames_per_window = int(f.attrs["frames_per_window"])
            except KeyError as e:
                raise DataError(f"features file {self.path} lacks attribute {e} (not written by extract?)") from None
            seen = {}
            for c in self.conditions:
                for ep in self.episodes:
                    self._check(f, c, ep, seen)

    def _check(self, f, c, ep, seen):
        """Dataset c/ep exists with the right shape; a virtual one's shard exists, is complete and fits."""
        name = f"{c}/{ep}"
        if name not in f or f"windows/{ep}" not in f:
            raise DataError(f"features file {self.path} lacks dataset '{name}' or 'windows/{ep}'")
        ds = check_float(f[name], self.path, "features file")
        if ds.shape != (self.n_layers, f[f"windows/{ep}"].shape[0], self.hidden):
            raise DataError(f"features file {self.path}: '{name}' has shape {ds.shape}, expected "
                            f"({self.n_layers}, n_windows, {self.hidden})")
        if not ds.is_virtual:
            return
        for src in ds.virtual_sources():
            shard = Path(src.file_name)
            shard = shard if shard.is_absolute() else self.path.parent / shard
            if shard not in seen:
                seen[shard] = ("is missing" if not shard.exists() else
                               None if is_complete(shard) else "is incomplete or corrupt")
            problem = seen[shard]
            if problem is None:
                with h5py.File(shard, "r") as s:
                    ok = src.dset_name in s and s[src.dset_name].shape == ds.shape
                problem = None if ok else f"does not match (no '{src.dset_name}' of shape {ds.shape})"
            if problem:
                raise DataError(f"features file {self.path}: shard {shard} for '{name}' {problem} "
                                "(re-run `brainalign extract`)")

    def get(self, condition, episode) -> np.ndarray:
        if condition not in self.conditions:
            raise DataError(f"features file {self.path} has no condition {condition!r} "
                            f"(has: {', '.join(self.conditions)})")
        if episode not in self.episodes:
            raise DataError(f"features file {self.path} has no episode {episode!r} "
                            f"(has: {', '.join(self.episodes)})")
        with h5py.File(self.path, "r") as f:
            return f[f"{condition}/{episode}"][()].astype(np.float32, copy=False)

    def windows(self, episode) -> np.ndarray:
        """float64 (n_windows, 2): [start, end) seconds of each window of ``episode``."""
        if episode not in self.episodes:
            raise DataError(f"features file {self.path} has no episode {episode!r} "
                            f"(has: {', '.join(self.episodes)})")
        with h5py.File(self.path, "r") as f:
            return f[f"windows/{episode}"][()]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __repr__(self):
        return (f"<FeatureStore {self.path}: {len(self.conditions)} conditions x {len(self.episodes)} episodes, "
                f"layers {self.layers}, hidden {self.hidden}>")


def read_features(path) -> FeatureStore:
    """Open features.h5 for reading, checking it and every shard it points at (one-line DataError)."""
    return FeatureStore(path)
