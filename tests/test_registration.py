"""Which kernels the built extension registered. With CELLULUS_FAST_EXPECT_CUDA=1 (the CUDA build check in
.ci/cuda-build) every op must also have a CUDA kernel, even on a machine without a GPU."""
import os

import pytest
import torch

import cellulus_fast
from cellulus_fast._extension import has_kernel

OPS = ["oce_loss", "oce_loss_backward", "oce_loss_and_grad", "sample_pairs", "mean_shift_modes", "mean_shift_dedup",
       "nearest_center"]


@pytest.mark.parametrize("op", OPS)
def test_cpu_kernel_registered(op):
    assert has_kernel(op, "CPU")


@pytest.mark.parametrize("op", OPS)
def test_cuda_kernel_registered_when_expected(op):
    if os.environ.get("CELLULUS_FAST_EXPECT_CUDA") != "1":
        pytest.skip("CUDA build not expected (set CELLULUS_FAST_EXPECT_CUDA=1)")
    assert torch.version.cuda is not None
    assert has_kernel(op, "CUDA"), f"cellulus_fast::{op} has no CUDA kernel"
    assert cellulus_fast.cuda_built()


def test_cpu_op_runs():
    x = torch.randn(1, 2, 24, 24, requires_grad=True)
    cellulus_fast.ops.oce_loss(x, kappa=3, seed=0).backward()
    assert torch.isfinite(x.grad).all()
