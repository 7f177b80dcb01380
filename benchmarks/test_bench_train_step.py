"""One training step on CPU (forward, fused loss, backward, Adam) and the share of it spent in the loss op."""
import time

import pytest
import torch

from cellulus_fast.models import UNet
from cellulus_fast.ops import oce_loss


def _setup(quick):
    # full: the paper's App. A network and batch; quick: a narrower network and a smaller batch
    fmaps, batch = (16, 4) if quick else (64, 8)
    torch.manual_seed(0)
    model = UNet(num_fmaps=fmaps)
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-5)
    return model, optimizer, torch.rand(batch, 1, 252, 252), fmaps, batch


def _step(model, optimizer, batch, seed):
    offsets = model(batch)
    loss = oce_loss(offsets, seed=seed)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def _loss_only(offsets, seed):
    x = offsets.detach().requires_grad_()
    oce_loss(x, seed=seed).backward()


def test_train_step(benchmark, quick):
    model, optimizer, batch, fmaps, size = _setup(quick)
    offsets = model(batch).detach()
    _loss_only(offsets, 0)
    rounds = 3 if quick else 2
    loss_times = []
    for r in range(rounds):
        start = time.perf_counter()
        _loss_only(offsets, r)
        loss_times.append(time.perf_counter() - start)
    benchmark.group = "train step"
    benchmark.pedantic(_step, args=(model, optimizer, batch, 1), rounds=rounds, warmup_rounds=1)
    share = min(loss_times) / benchmark.stats.stats.min
    benchmark.extra_info.update(op="train_step", impl="fused", num_fmaps=fmaps, batch=size, crop=252,
                                loss_seconds=min(loss_times), loss_share=share)
    print(f"\ntrain step (fmaps {fmaps}, batch {size}, 252 px): {benchmark.stats.stats.min:.2f} s, "
          f"loss op forward+backward {min(loss_times) * 1e3:.1f} ms = {100 * share:.2f}% of the step")
    assert 0 < share < 1
