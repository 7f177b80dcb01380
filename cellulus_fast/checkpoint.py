"""Checkpoints: written atomically, loaded back into a model with its configuration checked."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import torch

from .models import UNet, UNetConfig

FORMAT = "cellulus-fast-checkpoint-1"


def plain_file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` gives a new file (0666 less the umask). Temporary files
    are created 0600; files renamed into place get this instead, so colleagues on a shared server can read
    the results whenever they could read a plainly written file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_atomic(state: Dict[str, Any], path: Union[str, Path]) -> Path:
    """torch.save to a temporary file in the same folder, then rename: readers never see a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, plain_file_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read(path: Union[str, Path]) -> Dict[str, Any]:
    """The checkpoint's contents; ValueError if it is not a cellulus-fast checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"{path} is not a readable checkpoint: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cellulus-fast checkpoint")
    return state


def load(path: Union[str, Path], device: Union[str, torch.device, None] = None) -> UNet:
    """The trained U-Net stored in a checkpoint file (or in ``<dir>/checkpoint.pt``), in eval mode, with
    the scale its training images were resized by as ``model.training_scale``."""
    state = read(path)
    model = UNet(**UNetConfig(**state["model_config"]).to_dict())
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path} does not match its model configuration: {error}") from error
    model.training_scale = float(state.get("config", {}).get("scale", 1.0))  # see segment(scale=None)
    return model.to(device or "cpu").eval()
