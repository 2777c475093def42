"""The backbone registry: a name in ``model.backbone`` -> a :class:`Backbone` ready to encode windows.

Built-in backbones are registered lazily by import path (so heavy optional dependencies of one backbone
are imported only when it is asked for); plug-ins call :func:`register_backbone`::

    @register_backbone("my_model")
    def build(model_cfg, windows_cfg) -> Backbone: ...
"""
from __future__ import annotations

import abc
import contextlib
import importlib
from typing import Callable

import numpy as np
import torch

from ..config import CONDITIONS
from ..errors import ConfigError

#: name -> "module:function" of built-in factories, imported on first use
_BUILTIN = {
    "tiny": "brainalign.models.tiny:build_tiny",
    "merlot_reserve": "brainalign.models.merlot.backbone:build_merlot_reserve",
    "hf": "brainalign.models.hf:build_hf",
}
_FACTORIES: dict[str, Callable] = {}
#: name -> "module:function" of the QA model `brainalign finetune` trains on the backbone (cfg -> nn.Module)
_BUILTIN_QA = {
    "tiny": "brainalign.finetune_heads:tiny_qa_model",
    "merlot_reserve": "brainalign.finetune_heads:merlot_qa_model",
    "hf": "brainalign.finetune_heads:hf_qa_model",
}
_QA_FACTORIES: dict[str, Callable] = {}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Backbone(abc.ABC):
    """A model that turns stimulus windows into one pooled vector per window and layer.

    Attributes: ``name`` (registry name), ``n_layers``, ``hidden``, ``supported_conditions``,
    ``device`` (torch.device), ``precision`` ("float32" | "bfloat16" | "float16": autocast dtype).
    """

    name: str = ""
    n_layers: int = 0
    hidden: int = 0
    supported_conditions: tuple = CONDITIONS
    device: torch.device = torch.device("cpu")
    precision: str = "float32"
    #: what the stimulus loader must give this backbone (brainalign.stimuli.spec.StimulusSpec); None: defaults
    stimulus_spec = None

    @abc.abstractmethod
    def encode(self, stimuli, index, condition: str) -> torch.Tensor:
        """Pooled hidden states of the windows ``stimuli[index]`` under ``condition``.

        ``index`` is a slice or an integer array over windows. Returns float32 on the CPU,
        shape (n_layers, batch, hidden); row b is window index[b].
        """

    def to(self, device) -> "Backbone":
        """Move the model to ``device`` (a torch.device or a name such as "cuda:0"); returns self."""
        self.device = torch.device(device)
        return self

    def autocast(self):
        """The autocast context for ``precision`` on ``device`` (a no-op for float32)."""
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def check_condition(self, condition: str):
        if condition not in self.supported_conditions:
            raise ConfigError(f"model.conditions: backbone {self.name!r} does not support condition "
                              f"{condition!r} (supported: {', '.join(self.supported_conditions)})")

    def __repr__(self):
        return (f"<{type(self).__name__} {self.name!r}: {self.n_layers} layers x {self.hidden} hidden on "
                f"{self.device}, {self.precision}>")


def window_indices(index, n_windows: int) -> np.ndarray:
    """A slice or integer array over windows -> int64 indices (1-D), bounds-checked."""
    if isinstance(index, slice):
        return np.arange(n_windows)[index]
    idx = np.asarray(index).reshape(-1)
    if idx.size and (idx.dtype.kind not in "iu" or idx.min() < -n_windows or idx.max() >= n_windows):
        raise IndexError(f"window index out of range for {n_windows} windows: {idx.tolist()[:8]}")
    return idx.astype(np.int64) % max(n_windows, 1)


def register_backbone(name: str, qa: Callable | None = None):
    """Decorator registering ``factory(model_cfg, windows_cfg) -> Backbone`` under ``name`` (and ``qa(cfg) ->
    nn.Module``, the QA model ``brainalign finetune`` trains, when the backbone has one)."""
    def deco(factory):
        _FACTORIES[name] = factory
        if qa is not None:
            _QA_FACTORIES[name] = qa
        return factory
    return deco


def available_backbones() -> list[str]:
    return sorted(set(_BUILTIN) | set(_FACTORIES))


def resolve_device(name: str, key: str = "model.device") -> torch.device:
    """A torch.device for a config string ("cpu", "cuda", "cuda:1"); ConfigError if it is not usable here."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key}: not a torch device: {name!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {name!r} requested but CUDA is not available here (torch "
                              f"{torch.__version__}, {torch.cuda.device_count()} GPUs visible); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {name!r} requested but only {torch.cuda.device_count()} GPU(s) "
                              "are visible")
    elif dev.type != "cpu":
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"{key}: {name!r} requested but MPS is not available here")
    return dev


def get_backbone(model_cfg, windows_cfg) -> Backbone:
    """Build the backbone named by ``model_cfg.backbone`` on ``model_cfg.device`` with ``model_cfg.precision``.

    ``windows_cfg`` tells the backbone the window geometry (frames per window, image size, audio rate).
    """
    name = model_cfg.backbone
    device = resolve_device(model_cfg.device)
    if name not in _FACTORIES and name not in _BUILTIN:
        raise ConfigError(f"model.backbone: unknown backbone {name!r} (known: {', '.join(available_backbones())})")
    backbone = _factory(_FACTORIES, _BUILTIN, name)(model_cfg, windows_cfg)
    backbone.precision = model_cfg.precision
    return backbone.to(device)


def _factory(factories: dict, builtin: dict, name: str) -> Callable:
    """A registered factory, importing a built-in one ("module:function") on first use."""
    if name not in factories:
        module, func = builtin[name].split(":")
        try:
            factories[name] = getattr(importlib.import_module(module), func)
        except ImportError as e:
            raise ConfigError(f"model.backbone: backbone {name!r} is not usable here: {e}") from None
    return factories[name]


def build_qa_model(cfg):
    """The multiple-choice QA model ``brainalign finetune`` trains on ``model.backbone`` (weights from
    ``model.seed`` / ``model.checkpoint``); ConfigError for a backbone without one."""
    name = cfg.model.backbone
    known = list(dict.fromkeys([*_BUILTIN_QA, *_QA_FACTORIES]))
    if name not in known:
        raise ConfigError(f"model.backbone: finetune supports {', '.join(known)}, not {name!r}")
    return _factory(_QA_FACTORIES, _BUILTIN_QA, name)(cfg)
