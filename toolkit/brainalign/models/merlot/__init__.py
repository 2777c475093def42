"""MERLOT Reserve in PyTorch: the model, a converter from the official Flax checkpoints (:mod:`.convert`), the
input layout.

``reference_numpy`` is an independent numpy forward used to test the port. The converter is not imported
here: ``python -m brainalign.models.merlot.convert`` runs it as ``__main__`` without importing it twice first
(runpy's "found in sys.modules" RuntimeWarning).
"""
from .inputs import WindowBatch, batch_windows
from .model import MerlotConfig, MerlotReserve, build_model

__all__ = ["MerlotConfig", "MerlotReserve", "build_model", "WindowBatch", "batch_windows"]
