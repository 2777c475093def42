"""Brain data: BIDS/fMRIPrep BOLD lookup, NIfTI/HDF5 BOLD readers, masks, ROI atlases, NIfTI writers."""
from .bids import bold_name, find_bold
from .volumes import (Mask, find_hdf5_dataset, load_mask, load_rois, read_bold_run, read_hdf5_bold,
                      read_roi_names, write_nifti, write_volume)

__all__ = ["Mask", "bold_name", "find_bold", "find_hdf5_dataset", "load_mask", "load_rois", "read_bold_run",
           "read_hdf5_bold", "read_roi_names", "write_nifti", "write_volume"]
