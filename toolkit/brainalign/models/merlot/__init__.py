"""MERLOT Reserve in PyTorch: the model, a converter from the official Flax checkpoints, the input layout.

``reference_numpy`` is an independent numpy forward used to test the port.
"""
from .convert import convert, convert_flax_checkpoint, load_converted
from .inputs import WindowBatch, batch_windows
from .model import MerlotConfig, MerlotReserve, build_model

__all__ = ["MerlotConfig", "MerlotReserve", "build_model", "convert", "convert_flax_checkpoint",
           "load_converted", "WindowBatch", "batch_windows"]
