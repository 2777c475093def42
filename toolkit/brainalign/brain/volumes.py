"""NIfTI BOLD runs, brain masks, ROI atlases and map writing; Algonauts-style HDF5 BOLD.

Voxel order everywhere is the order of ``np.nonzero(mask.data)`` (C order over x, y, z).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..h5io import atomic_path
from ..log import get_logger

log = get_logger("brain")

_AFFINE_TOL = 1e-3


def _load_img(path, what):
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return nib.load(str(path), keep_file_open=True) if str(path).endswith(".gz") else nib.load(str(path))
    except Exception as e:
        raise DataError(f"{what} {path} is not a readable NIfTI image: {e}") from None


@dataclass
class Mask:
    data: np.ndarray           # bool (X, Y, Z)
    affine: np.ndarray         # float64 (4, 4) voxel -> world (mm)
    path: str = ""

    @property
    def n_voxels(self) -> int:
        return int(self.data.sum())

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    def apply(self, img_4d: np.ndarray) -> np.ndarray:
        """(X, Y, Z, T) or (X, Y, Z) array -> (T, n_voxels) or (n_voxels,), same dtype."""
        img_4d = np.asarray(img_4d)
        if img_4d.shape[:3] != self.shape:
            raise DataError(f"image of shape {img_4d.shape} does not match mask {self.path} of shape {self.shape}")
        return img_4d[self.data].T if img_4d.ndim == 4 else img_4d[self.data]

    def unmask(self, values: np.ndarray) -> np.ndarray:
        """(n_voxels,) -> float32 (X, Y, Z); (n_voxels, k) -> float32 (X, Y, Z, k); zero outside the mask."""
        values = np.asarray(values)
        if values.shape[0] != self.n_voxels or values.ndim not in (1, 2):
            raise DataError(f"values of shape {values.shape} do not fit mask {self.path} "
                            f"({self.n_voxels} voxels; expected (n_voxels,) or (n_voxels, k))")
        out = np.zeros(self.shape + values.shape[1:], dtype=np.float32)
        out[self.data] = values
        return out


def _same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(affine_a, affine_b, atol=_AFFINE_TOL)


def load_mask(path) -> Mask:
    """A brain mask NIfTI (non-zero = in the brain) as a Mask; DataError if not 3D or empty."""
    img = _load_img(path, "mask")
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"mask {path}: expected a 3D image, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise DataError(f"mask {path}: contains NaN/inf")
    mask = data != 0
    if not mask.any():
        raise DataError(f"mask {path}: no voxel is non-zero")
    return Mask(mask, np.asarray(img.affine, dtype=np.float64), str(path))


def header_tr(img) -> float:
    """The TR in seconds from a NIfTI header (4th zoom, honouring the time unit)."""
    zooms = img.header.get_zooms()
    if len(zooms) < 4:
        return float("nan")
    tr = float(zooms[3])
    try:
        unit = img.header.get_xyzt_units()[1]
    except Exception:  # pragma: no cover - non-NIfTI headers
        unit = "sec"
    return tr / 1000.0 if unit == "msec" else tr * 1e-6 if unit == "usec" else tr


def _check_values(data: np.ndarray, where: str) -> np.ndarray:
    """data (T, V): DataError on non-finite values; warn about constant columns; returns float32."""
    bad = ~np.isfinite(data).all(axis=0)
    if bad.any():
        raise DataError(f"{where}: {int(bad.sum())} voxel(s) contain NaN/inf values")
    data = data.astype(np.float32, copy=False)
    if data.shape[0] > 1:
        const = int((data.max(axis=0) == data.min(axis=0)).sum())
        if const:
            log.warning("%s: %d constant voxel(s) (they will score NaN)", where, const)
    return data


def read_bold_run(path, mask: Mask, tr: float | None = None, chunk: int = 64) -> np.ndarray:
    """float32 (n_trs, n_voxels) of a 4D BOLD NIfTI on the mask's grid, read in chunks of ``chunk`` volumes.

    Checks: 4D, grid (shape and affine) equal to the mask's, header TR equal to ``tr`` (tolerance 1e-3 s)
    when given, finite values. Constant voxels are returned (and counted in a warning).
    """
    img = _load_img(path, "BOLD run")
    shape = img.shape
    if len(shape) != 4:
        raise DataError(f"BOLD run {path}: expected a 4D image, got shape {shape}")
    if not _same_grid(shape, img.affine, mask.shape, mask.affine):
        raise DataError(f"BOLD run {path} (shape {shape[:3]}) is not on the grid of mask {mask.path} "
                        f"(shape {mask.shape}; shapes or affines differ)")
    if tr is not None:
        htr = header_tr(img)
        if not abs(htr - float(tr)) <= 1e-3:
            raise DataError(f"BOLD run {path}: header TR {htr:g} s differs from data.bold.tr {float(tr):g} s")
    n = shape[3]
    out = np.empty((n, mask.n_voxels), dtype=np.float32)
    try:
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            block = np.asanyarray(img.dataobj[..., a:b])
            out[a:b] = block[mask.data].T
    except Exception as e:
        raise DataError(f"BOLD run {path}: reading failed (truncated or corrupt?): {e}") from None
    return _check_values(out, f"BOLD run {path}")


def read_hdf5_bold(path, dataset: str) -> np.ndarray:
    """float32 (n_trs, n_parcels) from an Algonauts-style HDF5 file (one 2D dataset per run)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"BOLD HDF5 file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if dataset not in f:
                names = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                raise DataError(f"BOLD HDF5 {path}: no dataset {dataset!r} (has: {shown or 'none'})")
            data = f[dataset][()]
    except OSError as e:
        raise DataError(f"BOLD HDF5 {path} is not a readable HDF5 file: {e}") from None
    if data.ndim != 2:
        raise DataError(f"BOLD HDF5 {path}:{dataset}: expected 2D (TRs, parcels), got shape {data.shape}")
    return _check_values(np.asarray(data), f"BOLD HDF5 {path}:{dataset}")


def hdf5_datasets(path) -> list[str]:
    """The names of every dataset in an HDF5 file (DataError naming the file if it is missing or unreadable)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"BOLD HDF5 file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            names = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    except OSError as e:
        raise DataError(f"BOLD HDF5 {path} is not a readable HDF5 file: {e}") from None
    return names


def find_hdf5_dataset(path, task: str, rescans: str = "error", session: str | None = None, names=None) -> str:
    """The dataset of an HDF5 BOLD file whose name contains ``task-{task}`` (or equals ``task``), e.g.
    Algonauts' ``ses-003_task-s01e01a`` or ``ses-010_task-figures01_run-1``. MissingRunError when none;
    several that differ only in ``ses-`` (a re-scan) are chosen by ``rescans``/``session`` (bids.choose_rescan)."""
    from .bids import MissingRunError, choose_rescan

    names = hdf5_datasets(path) if names is None else names
    pat = re.compile(rf"(^|_)task-{re.escape(task)}(_|$)")
    hits = [n for n in names if n.split("/")[-1] == task or pat.search(n.split("/")[-1])]
    if not hits:
        raise MissingRunError(f"BOLD HDF5 {path}: no dataset for task-{task} (has: {', '.join(names[:8])}"
                              f"{' ...' if len(names) > 8 else ''})")
    return hits[choose_rescan(hits, f"datasets for task-{task} in BOLD HDF5 {path}", rescans, session)]


def read_roi_names(path) -> dict[int, str]:
    """{index: name} of an atlas: BIDS dseg TSV, colour LUT or labels list (see brain.atlas)."""
    from .atlas import read_label_names

    return read_label_names(path)


def load_label_image(path):
    """A 3D integer label image (dseg NIfTI; a trailing length-1 4th axis is dropped) as a nibabel image."""
    import nibabel as nib

    img = _load_img(path, "ROI label image")
    if len(img.shape) == 4 and img.shape[3] == 1:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
    if len(img.shape) != 3:
        raise DataError(f"ROI label image {path}: expected 3D, got shape {img.shape}")
    return img


def label_data(img, path) -> np.ndarray:
    """int32 labels of a label image; DataError naming ``path`` if they are not integers."""
    data = np.asanyarray(img.dataobj)
    if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
        raise DataError(f"ROI label image {path}: labels must be integers")
    return data.astype(np.int32)


def load_rois(labels_path, names_tsv, mask: Mask) -> tuple[np.ndarray, dict[int, str]]:
    """int32 (n_voxels,) ROI label of each mask voxel (0 = none) and {label: name} from a dseg image + names
    file (``None``: every label named by its number).

    A label image on another grid is resampled onto the mask's with nearest-neighbour interpolation
    (needs nilearn). Labels used inside the mask must all be named in the names file.
    """
    img = load_label_image(labels_path)
    names = read_roi_names(names_tsv) if names_tsv is not None else None
    if not _same_grid(img.shape, img.affine, mask.shape, mask.affine):
        try:
            from nilearn.image import resample_to_img
        except ImportError:
            raise DataError(f"ROI label image {labels_path} is not on the grid of mask {mask.path} and resampling "
                            f"needs nilearn (pip install nilearn)") from None
        import nibabel as nib

        target = nib.Nifti1Image(mask.data.astype(np.uint8), mask.affine)
        log.info("resampling ROI labels %s onto the mask grid (nearest neighbour)", labels_path)
        img = resample_to_img(img, target, interpolation="nearest", force_resample=True, copy_header=True)
    labels = label_data(img, labels_path)[mask.data]
    if names is None:
        names = {int(k): str(int(k)) for k in np.unique(labels) if k != 0}
    unnamed = sorted(set(np.unique(labels).tolist()) - set(names) - {0})
    if unnamed:
        raise DataError(f"ROI label image {labels_path}: label(s) {unnamed} have no row in {names_tsv}")
    empty = sorted(k for k in names if k != 0 and not (labels == k).any())
    if empty:
        log.warning("ROIs with no voxel inside the mask: %s", ", ".join(names[k] for k in empty))
    return labels, {k: v for k, v in names.items() if k != 0}


def write_nifti(path, data: np.ndarray, affine: np.ndarray, tr: float | None = None,
                extra_header: dict | None = None, dtype=np.float32) -> Path:
    """Write (X, Y, Z[, T]) as a ``dtype`` NIfTI-1 image atomically; ``tr`` sets the 4th zoom (seconds)."""
    import nibabel as nib

    path = Path(path)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(dtype)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    hdr = img.header
    hdr.set_xyzt_units("mm", "sec")
    if tr is not None and data.ndim == 4:
        hdr.set_zooms(hdr.get_zooms()[:3] + (float(tr),))
    for k, v in (extra_header or {}).items():
        try:
            hdr[k] = v
        except (ValueError, KeyError) as e:
            raise DataError(f"NIfTI header field {k!r} cannot be set to {v!r}: {e}") from None
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix or ".nii"
    return save_image(img, path, suffix)


def save_image(img, path, suffix: str) -> Path:
    """Save a nibabel image atomically; the temporary name ends in ``suffix`` because nibabel picks the
    format (and gzip) from it (e.g. ".nii.gz", ".dscalar.nii")."""
    import nibabel as nib

    path = Path(path)
    with atomic_path(path) as tmp:
        named = tmp.with_name(tmp.name + suffix)
        try:
            nib.save(img, str(named))
            os.replace(named, tmp)
        finally:
            if named.exists():
                named.unlink()
    return path


def write_volume(path, values: np.ndarray, mask: Mask, extra_header: dict | None = None) -> Path:
    """values (n_voxels,) -> 3D or (n_voxels, k) -> 4D float32 NIfTI on the mask's grid, written atomically."""
    return write_nifti(path, mask.unmask(values), mask.affine, extra_header=extra_header)
