"""Backbones: a registry of models that encode stimulus windows, and the input conditions."""
from .conditions import CONDITION_MODALITIES, MODALITIES, modalities
from .registry import Backbone, available_backbones, get_backbone, register_backbone, resolve_device

__all__ = ["Backbone", "get_backbone", "register_backbone", "available_backbones", "resolve_device",
           "modalities", "MODALITIES", "CONDITION_MODALITIES"]
