"""Checkpoints and the other files of a run: written atomically (a reader never sees a partial file), the
folder locked while a process writes it, loaded back into a model with its configuration checked."""
from __future__ import annotations

import dataclasses
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Union

import torch

from .models import UNet, UNetConfig

FORMAT = "cellulus-fast-checkpoint-1"


class FolderInUseError(RuntimeError):
    """Another process (or another run in this one) is writing the folder."""


@contextmanager
def locked_folder(folder: Union[str, Path]) -> Iterator[None]:
    """Holds an exclusive lock on ``folder`` while the block runs; a second holder, in this process or
    another, gets a :class:`FolderInUseError` naming the folder at once (it does not wait).

    The lock is ``flock`` on the folder itself, so no lock file is left behind, and the operating system
    releases it when the process ends, however it ends (crash, kill -9; data-loader workers forked while it
    is held keep it until they exit, a few seconds later). It is advisory and local to one machine: it keeps
    cellulus-fast runs on this machine apart, not other programs, nor runs on other machines sharing the
    folder over NFS. Without ``fcntl`` (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(f"{folder} is being written by another cellulus-fast run (it holds the "
                                   "folder's lock); wait for it to finish or choose another folder") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def write_text_atomic(path: Union[str, Path], text: str) -> None:
    """Writes ``text`` to a temporary file in the same folder, then renames it over ``path`` (atomic within
    one file system), with the permissions a plain write would give."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, plain_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
            f.flush()
            os.fsync(f.fileno())  # on disk before it replaces the last good checkpoint
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read(path: Union[str, Path], needs: Iterable[str] = ()) -> Dict[str, Any]:
    """The checkpoint's contents; ValueError if it is not a cellulus-fast checkpoint of this version: the
    model, its ``model_config`` (exactly the fields of :class:`~cellulus_fast.models.UNetConfig`) and the
    keys in ``needs`` must be there."""
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
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    missing = sorted({"model", "model_config", *needs} - set(state))
    config = state.get("model_config")
    if missing or not isinstance(config, dict) or set(config) != fields:
        what = (f"it lacks {', '.join(missing)}" if missing else
                f"its model_config has the keys {sorted(config) if isinstance(config, dict) else config!r}, "
                f"expected {sorted(fields)}")
        raise ValueError(f"{path} is not a cellulus-fast checkpoint of this version: {what}")
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
    # the scale its images were resized by (recorded since object_diameter can choose it; before, the
    # configuration's scale): segment(scale=None) applies it
    model.training_scale = float(state.get("training_scale", state.get("config", {}).get("scale") or 1.0))
    return model.to(device or "cpu").eval()
