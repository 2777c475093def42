"""features.h5 as the extract stage lays it out (attrs, windows/{ep}, {condition}/{ep}), for tests that feed
align with features they construct themselves."""
import numpy as np

from brainalign.h5io import atomic_h5, str_attr


def write_features_h5(path, feats, episodes, tr, backbone="sim"):
    """feats: {condition: [per episode float (n_layers, n_windows, hidden)]}; windows end at (i + 1) * tr."""
    first = next(iter(feats.values()))[0]
    with atomic_h5(path, "extract") as f:
        f.attrs["conditions"] = str_attr(list(feats))
        f.attrs["episodes"] = str_attr(episodes)
        for k, v in dict(layers=np.arange(first.shape[0]), tr=tr, hidden=first.shape[2], n_layers=first.shape[0],
                         backbone=backbone, window_context=tr, frames_per_window=1).items():
            f.attrs[k] = v
        for i, ep in enumerate(episodes):
            ends = (np.arange(feats[next(iter(feats))][i].shape[1]) + 1.0) * tr
            f[f"windows/{ep}"] = np.stack([ends - tr, ends], 1)
            for c, runs in feats.items():
                f[f"{c}/{ep}"] = np.asarray(runs[i], np.float32)
