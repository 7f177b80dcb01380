"""Self-supervised training of the CELLULUS U-Net with the fused OCE loss (paper App. A defaults)."""
from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from . import checkpoint as ckpt
from ._progress import progress_bar
from ._validate import check_device, check_output_folder
from .config import TrainConfig
from .data import CropSampler, load_images, normalize, rescale
from .models import UNet
from .ops import oce_loss


# The files that make a folder hold a run (finished or started): train() neither overwrites nor resumes
# one unless asked. config.toml is written with the first checkpoint, never before it.
RUN_FILES = ("checkpoint.pt", "config.toml")
# Options a resumed run may change: they only extend the run (epochs) or say where and how it is computed.
# Every other option changes the trajectory, so it must equal the checkpoint's (else resume is refused):
# the resumed run then continues exactly the run that was interrupted, and config.toml stays a true record.
RESUMABLE = ("epochs", "device", "num_workers", "checkpoint_every", "resume")


class TrainingDiverged(FloatingPointError):
    """The loss or the weights became NaN or infinite; the last finite checkpoint is kept."""


@dataclass
class TrainResult:
    model: UNet
    checkpoint: Path
    losses: List[float]


def step_seed(seed: int, rank: int, step: int) -> int:
    """The random stream of one optimiser step of one process: crops and loss pairs are functions of
    (seed, rank, step) only, so a resumed run (or a prefetching worker) reproduces them exactly."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> np.uint64(2))


class StepBatches(torch.utils.data.Dataset):
    """Item s = the batch of crops of optimiser step s (map-style, so DataLoader workers can prefetch)."""

    def __init__(self, images: Sequence[np.ndarray], batch_size: int, crop_size: int, seed: int, rank: int):
        self.sampler = CropSampler(images, crop_size=crop_size)
        self.batch_size, self.seed, self.rank = batch_size, seed, rank

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> torch.Tensor:
        # Re-seed per step instead of carrying the sampler's state from step to step.
        rng = np.random.default_rng(step_seed(self.seed, self.rank, step))
        self.sampler.load_state_dict(rng.bit_generator.state)
        return self.sampler.batch(self.batch_size)


def images_fingerprint(images: Sequence[np.ndarray]) -> str:
    """A hash of the training images as loaded (their number, shapes and every value; ~1 s per GB, small
    beside the percentile normalisation): a resumed run must train on the same images."""
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        digest.update(repr((image.shape, image.dtype.str)).encode())
        digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def _distributed() -> tuple:
    """(rank, world size), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _device(requested: Optional[str], rank: int) -> torch.device:
    device = check_device(requested)  # a bad or absent device fails here, before any work
    if device is not None:
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def _check_output(output_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuses, writing nothing, an output_dir that is a file (or inside one), or that holds a run (one of
    :data:`RUN_FILES`) which this run would overwrite without ``resume`` or ``overwrite``."""
    check_output_folder(output_dir)
    found = [name for name in RUN_FILES if (output_dir / name).exists()]
    if found and not (resume or overwrite):
        raise FileExistsError(f"{output_dir} holds a run ({', '.join(found)}): pass resume=True (--resume true) "
                              "to continue it, overwrite=True (--overwrite) to replace it, or choose another "
                              "output_dir")


def _prepare_output(output_dir: Path) -> None:
    """Creates output_dir and proves it writable before any work, so a failure leaves nothing behind."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"output_dir {output_dir} is not writable: {error}") from error


def _resume_state(path: Path, config: TrainConfig, model: UNet, steps_per_epoch: int, total_steps: int,
                  fingerprint: str) -> Optional[Dict[str, Any]]:
    """The checkpoint to continue from (None: there is none yet, start afresh). ValueError if the run it
    holds is not this one: a different model, options outside :data:`RESUMABLE` changed, other images, or
    a step past this run's total."""
    if not path.exists():
        warnings.warn(f"resume=True but {path} does not exist: starting from scratch")
        return None
    state = ckpt.read(path, needs=("optimizer", "scheduler", "step", "losses", "config", "steps_per_epoch"))
    if state["model_config"] != model.config.to_dict():
        raise ValueError(f"cannot resume: {path} holds a different model ({state['model_config']})")
    try:
        before = TrainConfig.from_dict(state["config"]).run_options()
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot resume {path}: its options are not this version's ({error})") from error
    changed = {name: (before.get(name), value) for name, value in config.run_options().items()
               if name not in (*RESUMABLE, "steps_per_epoch") and before.get(name) != value}
    if state["steps_per_epoch"] != steps_per_epoch:  # compared as computed: None means "from the images"
        changed["steps_per_epoch"] = (state["steps_per_epoch"], steps_per_epoch)
    if "images" not in state:
        warnings.warn(f"{path} predates image fingerprints: cannot check that the images are the same")
    elif state["images"] != fingerprint:
        changed["images"] = ("the checkpoint's", "others")
    if changed:
        raise ValueError(f"cannot resume {path}: " + ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new)
                                                             in changed.items())
                         + f"; a resumed run may only change {', '.join(RESUMABLE[:-1])} (start a new run, in "
                         "another output_dir or with overwrite=True, to change the others)")
    if state["step"] > total_steps:
        raise ValueError(f"cannot resume {path}: it is at step {state['step']}, past the {total_steps} steps of "
                         f"this run ({config.epochs} epochs of {steps_per_epoch}); raise epochs instead")
    return state


def _plot_losses(losses: Sequence[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("OCE loss")
    ax.set_yscale("log" if min(losses) > 0 else "linear")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _loss_csv(losses: Sequence[float], steps_per_epoch: int) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["step", "epoch", "loss"])
    writer.writerows((i + 1, i // steps_per_epoch, f"{v:.9g}") for i, v in enumerate(losses))
    return text.getvalue()


def train(images: Any, output_dir: Union[str, Path], *, preset: Optional[str] = None,
          config: Optional[TrainConfig] = None, axes: Optional[str] = None, progress: bool = True,
          overwrite: bool = False, **options: Any) -> TrainResult:
    """Trains a CELLULUS U-Net on unlabelled images and returns it with its checkpoint.

    Args:
        images: anything :func:`cellulus_fast.data.load_images` reads: a TIFF file, a folder or glob of
            TIFFs, a Cell Tracking Challenge folder, a numpy array or a list of arrays. Each image is
            normalised (1st percentile -> 0, 99.8th -> 1).
        output_dir: receives ``checkpoint.pt`` (model, optimiser, scheduler, step, configuration, a
            fingerprint of the images; written atomically every ``checkpoint_every`` steps, by default at the
            end of every epoch, and at the end), with each checkpoint ``loss.csv`` and ``config.toml`` (the
            options of the run, written with the first checkpoint, never before), and ``loss.png`` at the end.
        preset: a named schedule (:data:`cellulus_fast.config.PRESETS`): ``"paper"`` (the default: the
            paper's options, sized for a GPU) or ``"fast"`` (for a CPU: 16 feature maps, 2000 steps, ~5 min on
            2 cores).
        config: a :class:`TrainConfig` instead of a preset; keyword ``options`` override its fields (same
            names).
        axes: how to read the arrays (see :func:`~cellulus_fast.data.load_images`), e.g. ``"CYX"`` for
            channels-first multi-channel images; by default 2-D arrays are grey images and 3-D ones stacks.
        progress: show a tqdm progress bar with the running loss.
        overwrite: replace the run an ``output_dir`` holds (it holds one if ``checkpoint.pt`` or
            ``config.toml`` is there, from a finished or an interrupted run). Without it (or ``resume=True``)
            such a folder is refused before any work. The old files stay until the new run's first checkpoint
            replaces them.

    Everything that can fail on bad input (options, device, images, output_dir) fails before anything is
    written, with a ValueError / TypeError / FileExistsError naming the problem. While a run writes
    ``output_dir`` it holds a lock on it: a second run into the same folder is refused
    (:class:`~cellulus_fast.checkpoint.FolderInUseError`); the lock goes with the process, however it ends.

    With ``resume=True`` training continues from ``output_dir/checkpoint.pt``; with a fixed seed the resumed
    run reproduces the uninterrupted run's losses exactly (batches and pairs depend on (seed, step) only).
    So the options that shape the run (all but :data:`RESUMABLE`: ``epochs``, ``device``, ``num_workers``,
    ``checkpoint_every``) and the images must be the checkpoint's, and ``epochs`` may only grow (the
    checkpoint's step must not be past the new total): otherwise resuming is refused, naming what differs.

    If the loss (or a weight) becomes NaN or infinite, training stops with :class:`TrainingDiverged` (a
    FloatingPointError) naming the step; the last finite checkpoint is kept, a non-finite one never written.

    Under ``torchrun --nproc_per_node N`` the model is wrapped in DistributedDataParallel (NCCL on GPUs, gloo
    on CPUs); every process draws its own crops and rank 0 writes the outputs.
    """
    if preset is not None and config is not None:
        raise ValueError("give a preset or a config, not both")
    config = (config or TrainConfig.preset(preset or "paper")).replace(**options)
    if config.resume and overwrite:
        raise ValueError("give resume=True or overwrite=True, not both")
    late = [m for m in config.milestones if m >= config.epochs]
    if late:
        warnings.warn(f"milestones {late} are not before the last epoch ({config.epochs}): the learning rate "
                      "is not lowered there")
    output_dir = Path(output_dir)
    rank, world = _distributed()
    device = _device(config.device, rank)
    _check_output(output_dir, resume=config.resume, overwrite=overwrite)
    if rank == 0 and output_dir.is_dir():
        with ckpt.locked_folder(output_dir):  # a folder in use fails now, not after loading the images
            pass

    # Everything that can fail on bad input happens before anything is written.
    model = UNet(num_fmaps=1, fmap_inc_factor=1, depth=config.depth)  # the geometry only depends on depth
    field_of_view = model.context + 2
    raw = load_images(images, axes=axes, min_size=field_of_view if config.training_scale == 1 else 0)
    fingerprint = images_fingerprint(raw)
    data = [rescale(normalize(image), config.training_scale) for image in raw]
    del raw
    small = [i for i, image in enumerate(data) if min(image.shape[1:]) < field_of_view]
    if small:
        raise ValueError(f"image {small[0]} is {'x'.join(map(str, data[small[0]].shape[1:]))} px after scale "
                         f"{config.training_scale:g}, smaller than the network's field of view ({field_of_view} px)")
    crop = model.valid_size(config.crop_size)
    if crop != config.crop_size:
        raise ValueError(f"crop_size {config.crop_size} is not a valid U-Net input size; use {crop}")
    if model.output_size(crop) <= 2 * math.floor(config.kappa):
        raise ValueError(f"crop_size {crop} leaves an output of {model.output_size(crop)} px, which must exceed "
                         f"2 * kappa = {2 * math.floor(config.kappa)}")
    if rank != 0:  # rank 0 alone writes output_dir
        return _fit(data, output_dir, config, device, rank, world, fingerprint, progress)
    created = not output_dir.exists()
    _prepare_output(output_dir)
    with ckpt.locked_folder(output_dir):
        # Checked again under the lock: another run may have written the folder since the first check.
        _check_output(output_dir, resume=config.resume, overwrite=overwrite)
        try:
            return _fit(data, output_dir, config, device, rank, world, fingerprint, progress)
        except BaseException:
            if created and not any(output_dir.iterdir()):
                output_dir.rmdir()  # a new run that failed before its first checkpoint leaves no trace
            raise


def _fit(data: List[np.ndarray], output_dir: Path, config: TrainConfig, device: torch.device, rank: int,
         world: int, fingerprint: str, progress: bool) -> TrainResult:
    """The training loop of :func:`train`, on checked inputs (rank 0 holding the lock on output_dir)."""
    crop = config.crop_size
    torch.manual_seed(config.seed)
    model = UNet(in_channels=data[0].shape[0], num_fmaps=config.num_fmaps, fmap_inc_factor=config.fmap_inc_factor,
                 depth=config.depth).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=0.1)
    pixels = sum(int(np.prod(image.shape[1:])) for image in data)
    steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(pixels / (config.batch_size * crop**2)))
    total_steps = config.epochs * steps_per_epoch
    path = output_dir / "checkpoint.pt"
    losses: List[float] = []
    start = 0
    state = (_resume_state(path, config, model, steps_per_epoch, total_steps, fingerprint)
             if config.resume else None)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, losses = state["step"], list(state["losses"])

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    use_amp = config.amp
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and device.type == "cuda")
    if state is not None and state.get("grad_scaler"):  # the fp16 loss scale: an exact resume continues it
        scaler.load_state_dict(state["grad_scaler"])
    batches = torch.utils.data.DataLoader(StepBatches(data, config.batch_size, crop, config.seed, rank),
                                          sampler=range(start, total_steps), batch_size=None,
                                          num_workers=config.num_workers)
    checkpoint_every = config.checkpoint_every or steps_per_epoch
    saved = start if state is not None else None  # the step of the last checkpoint (kept if training diverges)
    recorded = False  # config.toml is written with this run's first checkpoint

    def diverged(what: str, step: int) -> TrainingDiverged:
        kept = f"the checkpoint of step {saved} is kept" if saved is not None else "no checkpoint was written"
        return TrainingDiverged(f"training diverged: {what} at step {step} ({kept}); try a lower learning_rate "
                                f"than {config.learning_rate:g}")

    def save(step: int) -> None:
        nonlocal saved, recorded
        if rank != 0:
            return
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise diverged("the weights are not finite", step)
        ckpt.save_atomic({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "step": step, "epoch": step // steps_per_epoch, "losses": losses, "config": config.to_dict(),
            "model_config": model.config.to_dict(), "steps_per_epoch": steps_per_epoch, "images": fingerprint,
            "torch_rng_state": torch.get_rng_state(), "grad_scaler": scaler.state_dict(),
            # recorded, not re-derived on loading: segment() applies it by default
            "training_scale": config.training_scale,
        }, path)
        if not recorded:  # this run's first checkpoint: its record replaces an older run's
            ckpt.write_text_atomic(output_dir / "config.toml", config.to_toml()
                                   + f"# images resized by {config.training_scale:g} (training_scale)\n")
            (output_dir / "loss.png").unlink(missing_ok=True)  # the older run's; redrawn at the end
            recorded = True
        ckpt.write_text_atomic(output_dir / "loss.csv", _loss_csv(losses, steps_per_epoch))
        saved = step

    bar = progress_bar(total=total_steps, initial=start, desc="training", disable=not progress or rank != 0,
                       unit="step")
    model.train()
    for step, batch in enumerate(batches, start=start):
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16,
                            enabled=use_amp):
            offsets = net(batch)
        loss = oce_loss(offsets.float(), density=config.density, kappa=config.kappa,
                        num_references=config.num_references, tau=config.tau, lambda_reg=config.lambda_reg,
                        nonlinearity=config.nonlinearity, detach_reference=config.detach_reference,
                        seed=step_seed(config.seed, rank, step))
        value = float(loss.detach())
        if not math.isfinite(value):  # stop before the step spreads it into the weights
            bar.close()
            raise diverged(f"the loss is {value}", step + 1)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(value)
        if (step + 1) % steps_per_epoch == 0:
            scheduler.step()
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4g}", epoch=(step + 1) // steps_per_epoch)
        if (step + 1) % checkpoint_every == 0 and step + 1 < total_steps:
            save(step + 1)
    bar.close()
    save(total_steps)
    if rank == 0 and losses:
        _plot_losses(losses, output_dir / "loss.png")
    model.eval()
    model.training_scale = config.training_scale  # segment() applies it by default, as for a loaded checkpoint
    return TrainResult(model=model, checkpoint=path, losses=losses)
