"""Argument checks shared by the operator wrappers: clear errors naming the argument, before any kernel runs."""
import math
from numbers import Integral, Real
from typing import Optional

import torch


def check_float_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {value.dtype}")
    return value


def check_real(name: str, value: object, *, low: float, high: float = math.inf, low_open: bool = False,
               high_open: bool = False) -> float:
    """A finite real in the interval given by low/high (closed unless *_open)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (math.isfinite(value) and above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value}")
    return value


def check_int(name: str, value: object, *, low: int, high: Optional[int] = None, high_text: str = "") -> int:
    """An integer >= low (and <= high if given; ``high_text`` spells high in the message, e.g. "2**63 - 1")."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high_text or high}, got {value}")
    return int(value)


def count_non_finite(name: str, value: torch.Tensor) -> None:
    """A clear error if the tensor holds NaN or inf (how many, and where to look)."""
    bad = int((~torch.isfinite(value)).sum())
    if bad:
        raise ValueError(f"{name} must be finite: {bad} of its {value.numel()} values are NaN or inf "
                         "(a diverged model?)")


def check_choice(name: str, value: object, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
