"""brainalign: how multimodal video transformers' representations align with the brain."""
__version__ = "0.1.0"
