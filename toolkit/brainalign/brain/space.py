"""The space the fitted units live in, and how a value per unit becomes an image.

- ``volume``: voxels of a brain mask (C order of ``np.nonzero(mask)``); maps are NIfTI on the mask's grid.
- ``parcels``: columns of parcel data (Algonauts HDF5) with a parcellation image (``data.bold.rois``); column j
  is the j-th smallest non-zero label of the atlas (nilearn's ``NiftiLabelsMasker`` order, which the Algonauts
  development kit uses to project parcels back to the brain); maps are NIfTI on the atlas grid, every voxel of
  parcel j holding column j's value.
- ``grayordinates``: CIFTI-2 dense columns; maps are CIFTI-2 dscalar files on the same brain models.
- ``none``: parcel data without an atlas; no maps.

Stage files store a space as ``/mask`` (the volume mask, or an all-ones (n, 1, 1) array with attr
``volumetric = 0``), ``/atlas`` (parcels: int32 atlas volume, attrs ``affine`` and ``parcel_labels``) and
``/cifti`` (grayordinates: the brain-model axis as arrays), so stats and report need no input file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError


@dataclass
class MapSpace:
    kind: str                                # volume | parcels | grayordinates | none
    n: int                                   # units (voxels, parcels, grayordinates)
    mask: np.ndarray | None = None           # volume: bool (X, Y, Z)
    affine: np.ndarray | None = None         # volume/parcels: (4, 4)
    atlas: np.ndarray | None = None          # parcels: int32 (X, Y, Z)
    parcel_labels: np.ndarray | None = None  # parcels: (n,) atlas label of each column
    axis: object = None                      # grayordinates: nibabel BrainModelAxis

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def volume_of(cls, mask: np.ndarray, affine) -> "MapSpace":
        mask = np.asarray(mask, bool)
        return cls("volume", int(mask.sum()), mask=mask, affine=np.asarray(affine, np.float64))

    @classmethod
    def parcels_of(cls, atlas: np.ndarray, affine, n_columns: int, where: str = "atlas") -> "MapSpace":
        """Parcel space; the atlas must have exactly ``n_columns`` distinct non-zero labels."""
        atlas = np.asarray(atlas, np.int32)
        labels = np.unique(atlas[atlas != 0])
        if labels.size != n_columns:
            raise DataError(f"{where} has {labels.size} parcels (non-zero labels) but the BOLD has {n_columns} "
                            "parcel columns; column j must be the atlas's j-th label")
        return cls("parcels", int(n_columns), affine=np.asarray(affine, np.float64), atlas=atlas,
                   parcel_labels=labels.astype(np.int64))

    # ---- images --------------------------------------------------------------------------------------
    @property
    def has_maps(self) -> bool:
        return self.kind in ("volume", "parcels", "grayordinates")

    @property
    def volumetric(self) -> bool:
        """True when maps are volumes (can be sliced and projected)."""
        return self.kind in ("volume", "parcels")

    def map_name(self, stem: str) -> str:
        """File name of a map: ``{stem}_bold.nii.gz`` (volumes) or ``{stem}.dscalar.nii`` (CIFTI)."""
        return f"{stem}.dscalar.nii" if self.kind == "grayordinates" else f"{stem}_bold.nii.gz"

    def volume(self, values, fill=np.nan) -> np.ndarray:
        """values (n,) or (n, k) -> float32 (X, Y, Z[, k]) with ``fill`` outside the mask / parcels."""
        values = np.asarray(values, np.float32)
        if values.shape[0] != self.n or values.ndim not in (1, 2):
            raise DataError(f"values of shape {values.shape} do not fit this {self.kind} space of {self.n} units")
        if self.kind == "volume":
            out = np.full(self.mask.shape + values.shape[1:], fill, np.float32)
            out[self.mask] = values
            return out
        if self.kind == "parcels":
            size = int(max(self.atlas.max(initial=0), self.parcel_labels.max(initial=0))) + 1
            lut = np.full((size,) + values.shape[1:], fill, np.float32)
            lut[self.parcel_labels] = values
            out = lut[np.clip(self.atlas, 0, None)]
            out[self.atlas <= 0] = fill
            return out
        raise DataError(f"a {self.kind} space has no volume")

    @property
    def brain(self) -> np.ndarray:
        """bool (X, Y, Z): the voxels maps cover (mask, or the atlas's parcels)."""
        if self.kind == "volume":
            return self.mask
        if self.kind == "parcels":
            return np.isin(self.atlas, self.parcel_labels)
        raise DataError(f"a {self.kind} space has no volume")

    def write_map(self, path, values, names=None, fill=np.nan, descrip: str = "") -> Path:
        """Write values (n,) or (n, k) as a map: NIfTI (volume, parcels) or CIFTI-2 dscalar (``names`` label
        the k maps), atomically."""
        values = np.asarray(values, np.float32)
        if self.kind == "grayordinates":
            from .cifti import write_cifti_dscalar

            return write_cifti_dscalar(path, values.T if values.ndim == 2 else values, self.axis, names)
        from .volumes import write_nifti

        return write_nifti(path, self.volume(values, fill), self.affine,
                           extra_header={"descrip": descrip[:79]} if descrip else None)

    # ---- stage files -------------------------------------------------------------------------------
    def to_h5(self, f):
        """Write ``/mask`` (+ ``/atlas`` or ``/cifti``) into an open HDF5 file."""
        mdata = self.mask if self.kind == "volume" else np.ones((self.n, 1, 1), bool)
        m = f.create_dataset("mask", data=mdata.astype(np.uint8))
        m.attrs["affine"] = np.asarray(self.affine if self.kind == "volume" else np.eye(4), np.float64)
        m.attrs["volumetric"] = int(self.kind == "volume")
        m.attrs["space"] = self.kind
        if self.kind == "parcels":
            a = f.create_dataset("atlas", data=self.atlas, compression="gzip", shuffle=True)
            a.attrs["affine"] = self.affine
            a.attrs["parcel_labels"] = self.parcel_labels
        elif self.kind == "grayordinates":
            from .cifti import brain_models_to_h5

            brain_models_to_h5(f.create_group("cifti"), self.axis)

    @classmethod
    def from_h5(cls, f, where="") -> "MapSpace":
        m = f["mask"]
        kind = m.attrs.get("space", "volume" if int(m.attrs.get("volumetric", 1)) else "none")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        mask = m[()].astype(bool)
        n = int(mask.sum())
        if kind == "volume":
            return cls.volume_of(mask, m.attrs.get("affine", np.eye(4)))
        if kind == "parcels":
            if "atlas" not in f:
                raise DataError(f"{where}: parcel space without /atlas")
            a = f["atlas"]
            return cls("parcels", n, affine=np.asarray(a.attrs["affine"], np.float64), atlas=a[()].astype(np.int32),
                       parcel_labels=np.asarray(a.attrs["parcel_labels"], np.int64))
        if kind == "grayordinates":
            from .cifti import brain_models_from_h5

            return cls("grayordinates", n, axis=brain_models_from_h5(f["cifti"]))
        return cls("none", n)

    @staticmethod
    def copy_h5(src, dst):
        """Copy a stored space (``/mask``, ``/atlas``, ``/cifti``) from one open HDF5 file to another."""
        for name in ("mask", "atlas", "cifti"):
            if name in src:
                src.copy(src[name], dst, name)
