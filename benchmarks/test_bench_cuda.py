"""CUDA variants (skipped without a GPU): the fused loss vs the reference on the GPU, and mean-shift on
the GPU vs the CPU op, each checked for the same result first."""
import pytest
import torch

from cellulus_fast import reference
from cellulus_fast.datasets import synthetic_embeddings
from cellulus_fast.ops import mean_shift_labels, oce_loss, sample_pairs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _sync(fn, *args):
    out = fn(*args)
    torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("refs", [1, 31])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_oce_loss_cuda(benchmark, impl, refs):
    offsets = torch.randn(8, 2, 236, 236, device="cuda")
    anchors, references = sample_pairs(offsets, num_references=refs, seed=0)
    x, y = offsets.clone().requires_grad_(), offsets.clone().requires_grad_()
    oce_loss(x, num_references=refs, seed=0).backward()
    reference.oce_loss(y, anchors, references).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-5)

    def fused():
        z = offsets.detach().requires_grad_()
        oce_loss(z, num_references=refs, seed=1).backward()

    def ref():
        z = offsets.detach().requires_grad_()
        a, r = reference.sample_pairs(tuple(z.shape), num_references=refs)
        reference.oce_loss(z, a.cuda(), r.cuda()).backward()

    benchmark.group = f"oce_loss CUDA B=8 236x236 refs={refs}"
    benchmark.extra_info.update(op="oce_loss_cuda", impl=impl, refs=refs)
    benchmark.pedantic(_sync, args=(fused if impl == "fused" else ref,), rounds=20, warmup_rounds=2)


@pytest.mark.parametrize("impl", ["fused", "cpu"])
def test_mean_shift_cuda(benchmark, impl):
    emb, mask, _ = synthetic_embeddings(1024, 500, 24.0, seed=1)
    g = lambda: torch.Generator().manual_seed(0)
    cpu = mean_shift_labels(emb, mask, 12.0, fit_fraction=0.1, generator=g())
    gpu = mean_shift_labels(emb.cuda(), mask.cuda(), 12.0, fit_fraction=0.1, generator=g())
    assert torch.equal(cpu, gpu.cpu())
    device = "cuda" if impl == "fused" else "cpu"
    benchmark.group = "mean_shift 1024x1024 GPU vs CPU"
    benchmark.extra_info.update(op="mean_shift_cuda", impl=impl)
    benchmark.pedantic(_sync, args=(lambda: mean_shift_labels(emb.to(device), mask.to(device), 12.0,
                                                              fit_fraction=0.1, generator=g()),),
                       rounds=5, warmup_rounds=1)
