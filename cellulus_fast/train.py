"""Self-supervised training of the CELLULUS U-Net with the fused OCE loss (paper App. A defaults)."""
from __future__ import annotations

import csv
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch

from . import checkpoint as ckpt
from ._progress import progress_bar
from .config import TrainConfig
from .data import CropSampler, load_images, normalize, rescale
from .models import UNet
from .ops import oce_loss


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
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def _prepare_output(output_dir: Path) -> None:
    """Creates output_dir and proves it writable before any work, so a failure leaves nothing behind."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"output_dir {output_dir} is not writable: {error}") from error


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


def train(images: Any, output_dir: Union[str, Path], *, preset: Optional[str] = None,
          config: Optional[TrainConfig] = None, axes: Optional[str] = None, progress: bool = True,
          **options: Any) -> TrainResult:
    """Trains a CELLULUS U-Net on unlabelled images and returns it with its checkpoint.

    Args:
        images: anything :func:`cellulus_fast.data.load_images` reads: a TIFF file, a folder or glob of
            TIFFs, a Cell Tracking Challenge folder, a numpy array or a list of arrays. Each image is
            normalised (1st percentile -> 0, 99.8th -> 1).
        output_dir: receives ``checkpoint.pt`` (model, optimiser, scheduler, step, configuration; written
            atomically every ``checkpoint_every`` steps, by default at the end of every epoch, and at the
            end), ``loss.csv``, ``loss.png`` (at the end) and ``config.toml``.
        preset: a named schedule (:data:`cellulus_fast.config.PRESETS`): ``"paper"`` (the default: the
            paper's options, sized for a GPU) or ``"fast"`` (for a CPU: 16 feature maps, 2000 steps, ~5 min on
            2 cores).
        config: a :class:`TrainConfig` instead of a preset; keyword ``options`` override its fields (same
            names).
        axes: how to read the arrays (see :func:`~cellulus_fast.data.load_images`), e.g. ``"CYX"`` for
            channels-first multi-channel images; by default 2-D arrays are grey images and 3-D ones stacks.
        progress: show a tqdm progress bar with the running loss.

    With ``resume=True`` training continues from ``output_dir/checkpoint.pt``; with a fixed seed the resumed
    run reproduces the uninterrupted run's losses exactly (batches and pairs depend on (seed, step) only).
    Under ``torchrun --nproc_per_node N`` the model is wrapped in DistributedDataParallel (NCCL on GPUs, gloo
    on CPUs); every process draws its own crops and rank 0 writes the outputs.
    """
    if preset is not None and config is not None:
        raise ValueError("give a preset or a config, not both")
    config = (config or TrainConfig.preset(preset or "paper")).replace(**options)
    late = [m for m in config.milestones if m >= config.epochs]
    if late:
        warnings.warn(f"milestones {late} are not before the last epoch ({config.epochs}): the learning rate "
                      "is not lowered there")
    output_dir = Path(output_dir)
    rank, world = _distributed()
    device = _device(config.device, rank)

    # Everything that can fail on bad input happens before anything is written.
    model = UNet(num_fmaps=1, fmap_inc_factor=1, depth=config.depth)  # the geometry only depends on depth
    field_of_view = model.context + 2
    data = [rescale(normalize(image), config.scale)
            for image in load_images(images, axes=axes, min_size=field_of_view if config.scale == 1 else 0)]
    small = [i for i, image in enumerate(data) if min(image.shape[1:]) < field_of_view]
    if small:
        raise ValueError(f"image {small[0]} is {'x'.join(map(str, data[small[0]].shape[1:]))} px after scale "
                         f"{config.scale:g}, smaller than the network's field of view ({field_of_view} px)")
    channels = data[0].shape[0]
    crop = model.valid_size(config.crop_size)
    if crop != config.crop_size:
        raise ValueError(f"crop_size {config.crop_size} is not a valid U-Net input size; use {crop}")
    if model.output_size(crop) <= 2 * math.floor(config.kappa):
        raise ValueError(f"crop_size {crop} leaves an output of {model.output_size(crop)} px, which must exceed "
                         f"2 * kappa = {2 * math.floor(config.kappa)}")
    if rank == 0:
        _prepare_output(output_dir)

    torch.manual_seed(config.seed)
    model = UNet(in_channels=channels, num_fmaps=config.num_fmaps, fmap_inc_factor=config.fmap_inc_factor,
                 depth=config.depth).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=0.1)
    pixels = sum(int(np.prod(image.shape[1:])) for image in data)
    steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(pixels / (config.batch_size * crop**2)))
    total_steps = config.epochs * steps_per_epoch
    path = output_dir / "checkpoint.pt"
    losses: List[float] = []
    start = 0
    if config.resume and path.exists():
        state = ckpt.read(path)
        if state["model_config"] != model.config.to_dict():
            raise ValueError(f"cannot resume: {path} holds a different model ({state['model_config']})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, losses = state["step"], list(state["losses"])
    elif config.resume:
        warnings.warn(f"resume=True but {path} does not exist: starting from scratch")

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    use_amp = config.amp
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and device.type == "cuda")
    batches = torch.utils.data.DataLoader(StepBatches(data, config.batch_size, crop, config.seed, rank),
                                          sampler=range(start, total_steps), batch_size=None,
                                          num_workers=config.num_workers)
    checkpoint_every = config.checkpoint_every or steps_per_epoch

    def save(step: int) -> None:
        if rank != 0:
            return
        ckpt.save_atomic({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "step": step, "epoch": step // steps_per_epoch, "losses": losses, "config": config.to_dict(),
            "model_config": model.config.to_dict(), "steps_per_epoch": steps_per_epoch,
            "torch_rng_state": torch.get_rng_state(),
        }, path)
        with open(output_dir / "loss.csv.tmp", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "epoch", "loss"])
            writer.writerows((i + 1, i // steps_per_epoch, f"{v:.9g}") for i, v in enumerate(losses))
        os.replace(output_dir / "loss.csv.tmp", output_dir / "loss.csv")

    if rank == 0:
        (output_dir / "config.toml").write_text(config.to_toml())
    bar = progress_bar(total=total_steps, initial=start, desc="training", disable=not progress or rank != 0,
               unit="step")
    model.train()
    step = start
    for step, batch in enumerate(batches, start=start):
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16,
                            enabled=use_amp):
            offsets = net(batch)
        loss = oce_loss(offsets.float(), density=config.density, kappa=config.kappa,
                        num_references=config.num_references, tau=config.tau, lambda_reg=config.lambda_reg,
                        nonlinearity=config.nonlinearity, detach_reference=config.detach_reference,
                        seed=step_seed(config.seed, rank, step))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
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
    model.training_scale = config.scale  # segment() applies it by default, as for a loaded checkpoint
    return TrainResult(model=model, checkpoint=path, losses=losses)
