"""Training options: one dataclass, its defaults (the paper's, App. A), validation and TOML round trip."""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, fields
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from ._validate import check_device
from .data import check_scale


@dataclass
class TrainConfig:
    """Options of :func:`cellulus_fast.train` (keyword names are stable: scripts and TOML files use them).

    An *epoch* is ``steps_per_epoch`` optimiser steps; by default enough crops to cover the training
    images' total area once: ``ceil(total pixels / (batch_size * crop_size**2))`` steps (at least one).
    The learning rate is divided by 10 after each epoch listed in ``milestones``. ``scale`` resizes every
    image before training (the paper rescales data so objects are comfortably larger than the network's
    16 px field of view); the checkpoint records it and :func:`cellulus_fast.segment` applies the same
    scale by default. ``object_diameter`` (px of the images, optional) chooses ``scale`` when that is not
    given: :func:`scale_for_diameter` (1 for objects of 1-4x the field of view, else resized to the nearest
    end of that range); :attr:`training_scale` is the scale used.
    """

    epochs: int = 50
    steps_per_epoch: Optional[int] = None
    batch_size: int = 8
    crop_size: int = 252
    num_fmaps: int = 64
    fmap_inc_factor: int = 3
    depth: int = 1
    learning_rate: float = 4e-5
    milestones: Tuple[int, ...] = (20, 30)
    density: float = 0.2
    kappa: float = 10.0
    tau: float = 10.0
    lambda_reg: float = 1e-5
    num_references: int = 1
    nonlinearity: str = "sigmoid"
    detach_reference: bool = False
    seed: int = 0
    device: Optional[str] = None
    num_workers: int = 0
    resume: bool = False
    checkpoint_every: Optional[int] = None
    amp: bool = False
    scale: Optional[float] = None
    object_diameter: Optional[float] = None

    def __post_init__(self) -> None:
        # Numbers may come as numpy scalars (np.float32(20)); they are stored as Python ints and floats so
        # that the TOML record and the checkpoint hold plain values.
        self.milestones = _milestones(self.milestones)
        for name in ("epochs", "batch_size", "crop_size", "num_fmaps", "fmap_inc_factor", "num_references"):
            _require(name, int, lambda v: v >= 1, ">= 1", self)
        _require("depth", int, lambda v: v >= 0, ">= 0", self)
        # TOML integers (config.toml) are signed 64-bit, and so are torch's seeds.
        _require("seed", int, lambda v: 0 <= v < 2**63, "in [0, 2**63)", self)
        _require("num_workers", int, lambda v: v >= 0, ">= 0", self)
        for name in ("steps_per_epoch", "checkpoint_every"):
            if getattr(self, name) is not None:
                _require(name, int, lambda v: v >= 1, ">= 1 (or None)", self)
        _require("learning_rate", float, lambda v: v > 0, "> 0", self)
        _require("tau", float, lambda v: v > 0, "> 0", self)
        _require("lambda_reg", float, lambda v: v >= 0, ">= 0", self)
        _require("density", float, lambda v: 0 < v <= 1, "in (0, 1]", self)
        _require("kappa", float, lambda v: v >= 1, ">= 1", self)
        if self.object_diameter is not None:
            _require("object_diameter", float, lambda v: v > 0, "> 0 (px; or None)", self)
        if self.scale is not None:
            self.scale = check_scale(self.scale)
        if self.nonlinearity not in ("sigmoid", "gaussian"):
            raise ValueError(f"nonlinearity must be 'sigmoid' or 'gaussian', got {self.nonlinearity!r}")
        for name in ("detach_reference", "resume", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.device is not None:  # syntax only: a configuration may be written on another machine
            self.device = str(check_device(self.device, available=False))

    # --- serialisation ---------------------------------------------------------------------------------
    @property
    def training_scale(self) -> float:
        """The scale the images are resized by: ``scale`` if given, else from ``object_diameter``, else 1."""
        if self.scale is not None:
            return self.scale
        return 1.0 if self.object_diameter is None else scale_for_diameter(self.object_diameter, self.depth)

    def run_options(self) -> Dict[str, Any]:
        """:meth:`to_dict` with the scale as used (:attr:`training_scale`) in place of ``scale`` and
        ``object_diameter``: what decides the run, compared when a run is resumed or reused (a scale given
        directly or chosen from a diameter is the same run; checkpoints of versions without
        ``object_diameter`` recorded ``scale = 1.0`` for "not given")."""
        options = self.to_dict()
        options["scale"] = self.training_scale
        options.pop("object_diameter")
        return options

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)

    def to_toml(self) -> str:
        """Flat TOML (options left at None are omitted, TOML has no null)."""
        lines = []
        for key, value in self.to_dict().items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, path: Union[str, Path], base: Optional[Dict[str, Any]] = None,
                  **overrides: Any) -> "TrainConfig":
        """The file's options over ``base`` (e.g. a preset's, default: the dataclass defaults), with
        ``overrides`` (those not None) on top."""
        with open(path, "rb") as f:
            values = {**(base or {}), **tomllib.load(f)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TrainConfig":
        """The options of a named schedule (:data:`PRESETS`), with ``overrides`` on top."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}")
        return cls(**{**PRESETS[name], **overrides})


# Named schedules. "paper": the dataclass defaults (App. A: 64 feature maps, batches of 8 crops of 252 px,
# Adam 4e-5, 50 epochs of one pass over the data's area; hours per step-heavy dataset on a CPU). "fast": for
# a CPU: a 4x narrower network (16 feature maps; ~0.15 s per step on 2 cores), batches of 4 crops of 128 px
# and a 7.5x higher learning rate for a fixed 2000 steps (about 5 min on 2 cores), lr / 10 for the last
# quarter. Measured on the data zoo (benchmarks/QUALITY.md, docs in README "Training").
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": {},
    "fast": dict(num_fmaps=16, batch_size=4, crop_size=128, learning_rate=3e-4, epochs=20, steps_per_epoch=100,
                 milestones=(15,)),
}


def _require(name: str, kind: type, ok, what: str, config: "TrainConfig") -> None:
    """Checks ``config.<name>`` is an integer (``kind`` int) or a finite real number (``kind`` float) for
    which ``ok`` holds, and stores it as a plain Python ``kind``. TypeError / ValueError otherwise."""
    value = getattr(config, name)
    noun = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, Integral if kind is int else Real):
        raise TypeError(f"{name} must be {noun} {what}, got {value!r}")
    value = kind(value)
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name} must be {noun} {what}, got {value!r}")
    setattr(config, name, value)


def _milestones(value: Any) -> Tuple[int, ...]:
    """Epoch numbers (integers >= 1) as a tuple; a string or a bare number is refused rather than read as
    a sequence ("20" would otherwise become epochs 2 and 0)."""
    what = "a list of epoch numbers (integers >= 1)"
    if not isinstance(value, (list, tuple, range)):
        raise TypeError(f"milestones must be {what}, got {value!r}")
    for m in value:
        if isinstance(m, bool) or not isinstance(m, Integral):
            raise TypeError(f"milestones must be {what}, got {value!r}")
        if m < 1:
            raise ValueError(f"milestones must be {what}, got {value!r}")
    return tuple(int(m) for m in value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


# Objects the network segments at their own size, in multiples of its field of view (16 px at depth 1): the
# data zoo's conditions span 20-58 px (1.25-3.6x) and, at scale 1, reach F1@0.5 >= 0.91 with the true
# foreground (benchmarks/QUALITY.md, "oracle foreground"). Smaller objects get too few pixels for the
# network to tell their centre; larger ones let it see only part of the object from most of its pixels.
# Outside the range the images are resized to its nearest end (not measured beyond the zoo's range).
OBJECT_SIZE_RANGE = (1.0, 4.0)


def _unet_context(depth: int) -> int:
    from .models import UNet  # the geometry is the U-Net's; imported here (models does not need config)

    return UNet(num_fmaps=1, fmap_inc_factor=1, depth=depth).context


def object_size_range(field_of_view: int) -> Tuple[float, float]:
    """(smallest, largest) object diameter in px the network segments at its own size:
    :data:`OBJECT_SIZE_RANGE` times its ``field_of_view`` (16 px at depth 1: the input extent an output pixel
    depends on)."""
    return field_of_view * OBJECT_SIZE_RANGE[0], field_of_view * OBJECT_SIZE_RANGE[1]


def scale_for_diameter(object_diameter: float, depth: int = 1) -> float:
    """The scale that brings objects of ``object_diameter`` px into :data:`OBJECT_SIZE_RANGE` times the
    U-Net's field of view: 1 inside it, else the factor to its nearest end (within [1/16, 16])."""
    low, high = object_size_range(_unet_context(depth))
    target = min(max(float(object_diameter), low), high)
    return min(max(target / float(object_diameter), 1 / 16), 16.0)
