"""Checks of user input shared by the Python API and the command line, run before any work so that bad
input fails fast, with a message naming the problem, and leaves nothing behind."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch


def check_device(device: Any, name: str = "device", *, available: bool = True) -> Optional[torch.device]:
    """``device`` as a :class:`torch.device` (None stays None: the caller's default), or a ValueError /
    TypeError naming it. Only CPU and CUDA devices are accepted (the extension has no other kernels); with
    ``available`` a CUDA device must also exist on this machine (a configuration may be written elsewhere)."""
    if device is None:
        return None
    if isinstance(device, torch.device):
        parsed: Optional[torch.device] = device
    elif isinstance(device, str):
        try:
            parsed = torch.device(device)
        except RuntimeError:  # not a device string at all ("banana")
            parsed = None
    else:  # e.g. `device = 0` in a TOML file: torch would read it as cuda:0, which is rarely what was meant
        raise TypeError(f"{name} must be a string such as 'cpu', 'cuda' or 'cuda:0', got {device!r}")
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if available and parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {device!r}: no CUDA GPU is available on this machine (use 'cpu')")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return parsed


def check_output_folder(path: Any, name: str = "output_dir") -> Path:
    """``path`` as a Path if it can become a folder: it is a folder already, or it does not exist and its
    nearest existing ancestor is a folder. Otherwise a FileExistsError naming the file in the way (found before
    any work, not after it). Nothing is created."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is" if candidate == path else f"is inside {candidate}, which is"
                raise FileExistsError(f"{name} {path} {where} an existing file, not a folder")
            break
    return path
