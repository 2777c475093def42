"""The demo's anatomy: a 4 mm MNI-like grid, an ellipsoid brain mask and compact ROI blobs."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError

VOXEL_MM = 4.0


def mni_affine(grid) -> np.ndarray:
    """4 mm RAS affine placing the grid centre near MNI (0, -18, 10)."""
    aff = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    centre = (np.asarray(grid, dtype=np.float64) - 1) / 2
    aff[:3, 3] = np.array([0.0, -18.0, 10.0]) - VOXEL_MM * centre
    return aff


def ellipsoid_mask(grid) -> np.ndarray:
    """bool (X, Y, Z): an ellipsoid with semi-axes 0.45 x the grid, centred."""
    grid = np.asarray(grid)
    c = (grid - 1) / 2
    idx = np.indices(tuple(grid)).astype(np.float64)
    d = sum(((idx[k] - c[k]) / (0.45 * grid[k])) ** 2 for k in range(3))
    return d <= 1.0


# preferred blob centres in ellipsoid coordinates ([-1, 1]; x left->right, y back->front, z down->up)
_CENTRES = {"language": (-0.65, 0.05, -0.2), "vision": (0.0, -0.75, 0.0), "interaction": (0.6, -0.4, 0.15),
            "null_1": (0.0, 0.7, 0.25), "null_2": (0.0, 0.0, 0.7), "null_3": (-0.45, 0.5, -0.35),
            "null_4": (0.5, 0.45, -0.35)}


def place_rois(mask: np.ndarray, names: list[str], n_voxels: int) -> np.ndarray:
    """int32 (X, Y, Z) labels 1..len(names) (0 = none): compact blobs of n_voxels mask voxels each.

    Each blob is the n_voxels free mask voxels nearest its preferred centre; a ROI without a preferred
    centre grows from the free voxel farthest from all ROIs placed so far.
    """
    total = int(mask.sum())
    if n_voxels < 1 or n_voxels * len(names) > 0.8 * total:
        raise ConfigError(f"simulate.roi_voxels: {len(names)} ROIs of {n_voxels} voxels do not fit in the "
                          f"{total}-voxel mask of simulate.grid (use at most {int(0.8 * total) // len(names)})")
    coords = np.argwhere(mask).astype(np.float64)
    grid = np.asarray(mask.shape, dtype=np.float64)
    c = (grid - 1) / 2
    labels = np.zeros(len(coords), dtype=np.int32)
    for k, name in enumerate(names, start=1):
        free = labels == 0
        if name in _CENTRES:
            centre = c + np.asarray(_CENTRES[name]) * 0.45 * grid
        else:
            taken = coords[labels > 0]
            dist = np.min(((coords[:, None] - taken[None]) ** 2).sum(-1), axis=1) if len(taken) else np.zeros(len(coords))
            centre = coords[np.argmax(np.where(free, dist, -1))]
        d = ((coords - centre) ** 2).sum(1)
        d[~free] = np.inf
        labels[np.argsort(d, kind="stable")[:n_voxels]] = k
    out = np.zeros(mask.shape, dtype=np.int32)
    out[mask] = labels
    return out
