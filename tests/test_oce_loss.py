"""The fused OCE-loss op against the pure-PyTorch reference, its sampler's statistics, and its contract."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import cellulus_fast as cf
from cellulus_fast import reference
from cellulus_fast.ops import num_anchors, oce_loss, sample_pairs

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def random_offsets(shape, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


def fused_and_reference(offsets, **kw):
    """Loss and gradient of the fused op and of the reference on the pairs the fused op drew."""
    sampling = {k: kw[k] for k in ("density", "kappa", "num_references", "seed")}
    anchors, references = sample_pairs(offsets, **sampling)
    loss_kw = {k: v for k, v in kw.items() if k not in sampling}
    x = offsets.clone().requires_grad_()
    fused = oce_loss(x, **kw)
    fused.backward()
    y = offsets.clone().requires_grad_()
    ref = reference.oce_loss(y, anchors, references, **loss_kw)
    ref.backward()
    return fused, x.grad, ref, y.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nonlinearity", ["sigmoid", "gaussian"])
@pytest.mark.parametrize("detach_reference", [False, True])
@pytest.mark.parametrize("batch,spatial,kappa,refs", [
    (1, (23, 31), 10.0, 1), (3, (40, 27), 4.0, 5), (8, (29, 29), 10.0, 31), (2, (12, 17, 15), 3.5, 3)])
def test_matches_reference(dtype, nonlinearity, detach_reference, batch, spatial, kappa, refs):
    offsets = random_offsets((batch, len(spatial), *spatial), dtype)
    fused, grad, ref, ref_grad = fused_and_reference(
        offsets, density=0.3, kappa=kappa, num_references=refs, seed=7, tau=10.0, lambda_reg=0.1,
        nonlinearity=nonlinearity, detach_reference=detach_reference, reduction="sum")
    assert fused.dtype == dtype and fused.shape == ()
    torch.testing.assert_close(fused, ref, **TOL[dtype])
    torch.testing.assert_close(grad, ref_grad, **TOL[dtype])


@pytest.mark.parametrize("nonlinearity", ["sigmoid", "gaussian"])
@pytest.mark.parametrize("detach_reference", [False, True])
@pytest.mark.parametrize("batch,spatial,refs", [(1, (21, 22), 1), (2, (33, 26), 6), (3, (30, 41), 40)])
def test_float32_2d_matches_reference(nonlinearity, detach_reference, batch, spatial, refs):
    # float32 2-D runs its own kernels on x86 with AVX2 (8 anchors per vector, masked last group, sums
    # flushed to double every 32 references): anchor counts that are not multiples of 8, R not a multiple
    # of 4 and R > 32, a strong regulariser, and some offsets exactly 0 (subgradient 0 of ||r||).
    offsets = random_offsets((batch, 2, *spatial), torch.float32)
    offsets[:, :, ::3] = 0
    fused, grad, ref, ref_grad = fused_and_reference(
        offsets, density=0.37, kappa=10.0, num_references=refs, seed=11, tau=6.0, lambda_reg=0.2,
        nonlinearity=nonlinearity, detach_reference=detach_reference, reduction="sum")
    assert num_anchors(spatial, 0.37, 10.0) % 8 != 0
    torch.testing.assert_close(fused, ref, **TOL[torch.float32])
    torch.testing.assert_close(grad, ref_grad, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_offsets_give_a_nan_loss(dtype):
    # NaN only in the border rows, which are never anchors but are references of some pairs: the loss must
    # be NaN like the reference's (a clamped exp could turn it into a finite value), so divergence shows.
    offsets = random_offsets((2, 2, 20, 21), dtype)
    offsets[:, :, :3] = float("nan")
    kw = dict(density=1.0, kappa=3.0, num_references=8, seed=1)
    anchors, references = sample_pairs(offsets, **kw)
    assert (anchors[..., 0] >= 3).all() and (references[..., 0] < 3).any()
    assert torch.isnan(reference.oce_loss(offsets, anchors, references))
    assert torch.isnan(oce_loss(offsets, **kw))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reduction_and_options(reduction):
    offsets = random_offsets((2, 2, 30, 33), torch.float64)
    fused, grad, ref, ref_grad = fused_and_reference(
        offsets, density=1.0, kappa=2.0, num_references=2, seed=3, tau=2.5, lambda_reg=0.5,
        nonlinearity="sigmoid", detach_reference=False, reduction=reduction)
    torch.testing.assert_close(fused, ref, **TOL[torch.float64])
    torch.testing.assert_close(grad, ref_grad, **TOL[torch.float64])


def test_known_answer_zero_offsets():
    # r = 0: every pair contributes sigma(||o||^2) of its lattice offset and nothing else.
    offsets = torch.zeros(1, 2, 25, 25, dtype=torch.float64)
    _, refs = sample_pairs(offsets, density=0.5, kappa=3, num_references=4, seed=11)
    anchors, _ = sample_pairs(offsets, density=0.5, kappa=3, num_references=4, seed=11)
    sq = ((refs - anchors[:, :, None]) ** 2).sum(-1).double()
    expected = (1 - torch.exp(-sq / 10.0)).sum()
    loss = oce_loss(offsets, density=0.5, kappa=3, num_references=4, seed=11, nonlinearity="gaussian")
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("nonlinearity", ["sigmoid", "gaussian"])
def test_gradcheck(nonlinearity):
    # (detach_reference=True is a stop-gradient, which finite differences cannot see: it is checked against
    # the reference's .detach() in test_matches_reference instead.)
    offsets = random_offsets((2, 2, 13, 11), torch.float64, scale=1.5).requires_grad_()
    fn = lambda x: oce_loss(x, density=0.5, kappa=4, num_references=3, seed=5, lambda_reg=0.3,
                            nonlinearity=nonlinearity)
    assert torch.autograd.gradcheck(fn, (offsets,))


def test_gradcheck_3d():
    offsets = random_offsets((1, 3, 9, 8, 7), torch.float64, scale=1.5).requires_grad_()
    fn = lambda x: oce_loss(x, density=0.5, kappa=3, num_references=2, seed=9, reduction="mean")
    assert torch.autograd.gradcheck(fn, (offsets,))


@pytest.mark.parametrize("spatial,density,kappa", [((236, 236), 0.2, 10), ((31, 40), 0.05, 10.7),
                                                   ((20, 21, 22), 0.1, 3)])
def test_anchor_count_and_range(spatial, density, kappa):
    anchors, refs = sample_pairs((2, len(spatial), *spatial), density=density, kappa=kappa, num_references=2,
                                 seed=1)
    margin = math.floor(kappa)
    valid = math.prod(s - 2 * margin for s in spatial)
    assert anchors.shape == (2, max(1, math.floor(density * valid)), len(spatial))
    assert refs.shape == anchors.shape[:2] + (2, len(spatial))
    size = torch.tensor(spatial)
    assert (anchors >= margin).all() and (anchors < size - margin).all()
    assert (refs >= 0).all() and (refs < size).all()


def test_reference_offsets_uniform_over_lattice_disk():
    kappa = 10.0
    anchors, refs = sample_pairs((4, 2, 60, 60), density=1.0, kappa=kappa, num_references=31, seed=123)
    offsets = (refs - anchors[:, :, None]).reshape(-1, 2)
    disk = reference.lattice_disk(kappa, 2)
    assert len(disk) == 316  # lattice points with 0 < |o| <= 10
    key = lambda o: (o[:, 0] + 20) * 41 + (o[:, 1] + 20)
    counts = torch.bincount(key(offsets), minlength=41 * 41)
    in_disk = torch.zeros(41 * 41, dtype=torch.bool)
    in_disk[key(disk)] = True
    assert counts[~in_disk].sum() == 0  # no draw outside the disk or at the anchor itself
    observed = counts[in_disk].numpy()
    assert stats.chisquare(observed).pvalue > 1e-4
    # The fused sampler must be uniform, not merely supported on the disk: a radially biased sampler fails.
    radius = torch.linalg.vector_norm(offsets.double(), dim=1)
    expected_mean = torch.linalg.vector_norm(disk.double(), dim=1).mean()
    assert abs(radius.mean() - expected_mean) < 4 * radius.std() / math.sqrt(len(radius))


def test_anchors_uniform_over_valid_region():
    anchors, _ = sample_pairs((8, 2, 40, 50), density=1.0, kappa=10, seed=5)
    for axis, size in ((0, 40), (1, 50)):
        counts = np.bincount(anchors[..., axis].flatten().numpy() - 10, minlength=size - 20)
        assert len(counts) == size - 20 and stats.chisquare(counts).pvalue > 1e-4


def test_seed_determinism_and_thread_independence():
    offsets = random_offsets((4, 2, 64, 64), torch.float32)
    kw = dict(density=0.2, kappa=10, num_references=31, seed=42)
    a1, r1 = sample_pairs(offsets, **kw)
    a2, r2 = sample_pairs(offsets, **kw)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)
    a3, _ = sample_pairs(offsets, **{**kw, "seed": 43})
    assert not torch.equal(a1, a3)
    threads = torch.get_num_threads()
    results = []
    try:
        for dtype in (torch.float32, torch.float64):
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                # B = 3: each image's anchors are split in two tasks whose gradients are merged.
                x = random_offsets((3, 2, 64, 64), dtype).requires_grad_()
                loss = oce_loss(x, **kw)  # one pass: loss and gradient (oce_loss_and_grad)
                loss.backward()
                with torch.no_grad():  # the loss alone (oce_loss), other kernels, the same sum
                    assert torch.equal(oce_loss(x, **kw), loss)
                results.append((dtype, loss, x.grad))
    finally:
        torch.set_num_threads(threads)
    for dtype, loss, grad in results:
        first = next(r for r in results if r[0] == dtype)
        assert torch.equal(first[1], loss) and torch.equal(first[2], grad)


@pytest.mark.parametrize("dtype,spatial,kappa", [
    (torch.float32, (45, 50), 10.0),  # 225 anchors per image: the last of each image's 64 chunks is partial
    (torch.float32, (30, 33), 10.0),  # 30: fewer than 64, most chunks empty
    (torch.float32, (22, 23), 10.0),  # 1: fewer than 8, the first half of every image empty
    (torch.float64, (45, 50), 10.0), (torch.float32, (20, 22, 21), 4.0)])  # the forward and backward kernels
@pytest.mark.parametrize("nonlinearity", ["sigmoid", "gaussian"])
@pytest.mark.parametrize("detach_reference", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_and_grad_equals_forward_and_backward(dtype, spatial, kappa, nonlinearity, detach_reference,
                                                   reduction):
    # What autograd uses gives bit for bit the loss of the forward op and the gradient of the backward op,
    # which regenerates the pairs (float32 2-D: one pass, its own instantiation of the kernels, the same
    # summation order).
    ops = torch.ops.cellulus_fast
    offsets = random_offsets((3, len(spatial), *spatial), dtype)
    args = (0.3, kappa, 33, 8.0, 0.1, nonlinearity, detach_reference, 5, reduction)
    loss, grad = ops.oce_loss_and_grad(offsets, *args)
    assert torch.equal(loss, ops.oce_loss(offsets, *args))
    assert torch.equal(grad, ops.oce_loss_backward(torch.ones((), dtype=dtype), offsets, *args))


def test_backward_scales_the_kept_gradient():
    # Autograd multiplies the gradient kept from the forward pass by the upstream gradient, and leaves the
    # kept one intact (a second backward through a retained graph adds the same gradient again).
    offsets = random_offsets((2, 2, 40, 40), torch.float32)
    kw = dict(density=0.3, kappa=10.0, num_references=5, seed=3, lambda_reg=0.1)
    x = offsets.clone().requires_grad_()
    loss = 2.5 * oce_loss(x, **kw)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    expected = torch.ops.cellulus_fast.oce_loss_backward(torch.tensor(2.5), offsets, 0.3, 10.0, 5, 10.0, 0.1,
                                                         "sigmoid", False, 3, "sum")
    torch.testing.assert_close(first, expected, **TOL[torch.float32])
    loss.backward()
    assert torch.equal(x.grad, first + first)


@pytest.mark.parametrize("requires_grad", [True, False])
def test_no_second_derivative(requires_grad):
    # Neither backward is differentiable: asking for a second derivative is an error, not a silent None.
    x = random_offsets((1, 2, 30, 30), torch.float64).requires_grad_()
    if requires_grad:
        loss = oce_loss(x, kappa=4.0, seed=0)  # oce_loss_and_grad
    else:
        loss = torch.ops.cellulus_fast.oce_loss(x, 0.2, 4.0, 1, 10.0, 1e-5, "sigmoid", False, 0, "sum")
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad.sum().backward()


def test_seed_none_follows_torch_manual_seed():
    offsets = random_offsets((1, 2, 30, 30), torch.float64)
    torch.manual_seed(0)
    first = oce_loss(offsets)
    torch.manual_seed(0)
    assert torch.equal(first, oce_loss(offsets))


def test_torch_compile_fullgraph():
    def step(x):
        return oce_loss(x * 2.0, density=0.2, kappa=5, num_references=3, seed=1) + x.square().mean()

    offsets = random_offsets((2, 2, 24, 24), torch.float32).requires_grad_()
    eager = step(offsets)
    (eager_grad,) = torch.autograd.grad(eager, offsets)
    compiled = torch.compile(step, fullgraph=True)(offsets)
    (compiled_grad,) = torch.autograd.grad(compiled, offsets)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)


def test_opcheck():
    offsets = random_offsets((2, 2, 16, 15), torch.float64)
    args = (0.3, 4.0, 2, 10.0, 1e-2, "sigmoid", False, 3, "sum")
    torch.library.opcheck(torch.ops.cellulus_fast.oce_loss, (offsets.requires_grad_(),) + args)
    torch.library.opcheck(torch.ops.cellulus_fast.oce_loss_backward,
                          (torch.tensor(1.0, dtype=torch.float64), offsets.detach()) + args)
    torch.library.opcheck(torch.ops.cellulus_fast.oce_loss_and_grad, (offsets,) + args)
    # float32 2-D: the one-pass kernels.
    torch.library.opcheck(torch.ops.cellulus_fast.oce_loss_and_grad,
                          (offsets.detach().float().requires_grad_(),) + args)
    torch.library.opcheck(torch.ops.cellulus_fast.sample_pairs, (offsets.detach(), 0.3, 4.0, 2, 3))


@pytest.mark.parametrize("offsets,kwargs,error,match", [
    (torch.zeros(2, 40, 40), {}, ValueError, "offsets"),
    (torch.zeros(1, 3, 40, 40), {}, ValueError, "channels"),
    (torch.zeros(1, 2, 40, 40, dtype=torch.int32), {}, TypeError, "offsets"),
    ([[0.0]], {}, TypeError, "offsets"),
    (torch.zeros(1, 2, 20, 40), {}, ValueError, "spatial size"),
    (torch.zeros(1, 2, 40, 40), {"density": 0.0}, ValueError, "density"),
    (torch.zeros(1, 2, 40, 40), {"density": 1.5}, ValueError, "density"),
    (torch.zeros(1, 2, 40, 40), {"kappa": 0.5}, ValueError, "kappa"),
    (torch.zeros(1, 2, 40, 40), {"num_references": 0}, ValueError, "num_references"),
    (torch.zeros(1, 2, 40, 40), {"num_references": 1.5}, TypeError, "num_references"),
    (torch.zeros(1, 2, 40, 40), {"tau": 0.0}, ValueError, "tau"),
    (torch.zeros(1, 2, 40, 40), {"lambda_reg": -1.0}, ValueError, "lambda_reg"),
    (torch.zeros(1, 2, 40, 40), {"nonlinearity": "relu"}, ValueError, "nonlinearity"),
    (torch.zeros(1, 2, 40, 40), {"reduction": "max"}, ValueError, "reduction"),
    (torch.zeros(1, 2, 40, 40), {"seed": -1}, ValueError, "seed"),
])
def test_bad_input(offsets, kwargs, error, match):
    with pytest.raises(error, match=match):
        oce_loss(offsets, **kwargs)


def test_kernel_checks_direct_calls():
    # The C++ kernels check their arguments too (for callers of torch.ops.cellulus_fast directly).
    with pytest.raises(ValueError, match="kappa"):
        torch.ops.cellulus_fast.oce_loss(torch.zeros(1, 2, 40, 40), 0.2, 0.5, 1, 10.0, 0.0, "sigmoid", False, 0,
                                         "sum")
    with pytest.raises(ValueError, match="nonlinearity"):
        torch.ops.cellulus_fast.oce_loss(torch.zeros(1, 2, 40, 40), 0.2, 10, 1, 10.0, 0.0, "relu", False, 0, "sum")



@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spatial", [(60, 53), (20, 22, 25)])
def test_cuda_matches_cpu(dtype, spatial):
    offsets = random_offsets((3, len(spatial), *spatial), dtype)
    kw = dict(density=0.2, kappa=5, num_references=7, seed=99, lambda_reg=0.1)
    cpu_pairs = sample_pairs(offsets, density=0.2, kappa=5, num_references=7, seed=99)
    gpu_pairs = sample_pairs(offsets.cuda(), density=0.2, kappa=5, num_references=7, seed=99)
    for cpu, gpu in zip(cpu_pairs, gpu_pairs):
        assert torch.equal(cpu, gpu.cpu())
    for detach in (False, True):
        x = offsets.clone().requires_grad_()
        y = offsets.cuda().requires_grad_()
        cpu_loss = oce_loss(x, detach_reference=detach, **kw)
        gpu_loss = oce_loss(y, detach_reference=detach, **kw)
        cpu_loss.backward()
        gpu_loss.backward()
        torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, **TOL[dtype])
        torch.testing.assert_close(y.grad.cpu(), x.grad, **TOL[dtype])


@pytest.mark.cuda
def test_cuda_opcheck_and_compile():
    offsets = random_offsets((2, 2, 32, 32), torch.float32).cuda().requires_grad_()
    for op in (torch.ops.cellulus_fast.oce_loss, torch.ops.cellulus_fast.oce_loss_and_grad):
        torch.library.opcheck(op, (offsets, 0.3, 4.0, 2, 10.0, 1e-2, "gaussian", True, 3, "mean"))
    fn = torch.compile(lambda x: oce_loss(x, kappa=4, seed=2), fullgraph=True)
    compiled, eager = fn(offsets), oce_loss(offsets, kappa=4, seed=2)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(torch.autograd.grad(compiled, offsets)[0], torch.autograd.grad(eager, offsets)[0])


GENERIC_CHECK = """
import os, sys, torch
from cellulus_fast import reference
from cellulus_fast.ops import oce_loss, sample_pairs
x = (3 * torch.randn(3, 2, 41, 37, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
kw = dict(density=0.3, kappa=6.0, num_references=9, seed=4)
for options in (dict(nonlinearity="gaussian"), dict(detach_reference=True, lambda_reg=0.1)):
    a, r = sample_pairs(x, **kw)
    fused_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    fused, ref = oce_loss(fused_x, **kw, **options), reference.oce_loss(ref_x, a, r, **options)
    fused.backward(), ref.backward()
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused_x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)
torch.save(oce_loss(x.float(), **kw), sys.argv[1])
sys.path.insert(0, sys.argv[2])  # this path's accuracy on collapsed embeddings and far pairs
from test_oce_loss import check_accuracy
check_accuracy()
"""


@pytest.mark.parametrize("capability", ["generic", "default"])
def test_every_cpu_path_matches_the_reference(capability, tmp_path):
    # The CPU kernels are chosen at load time: AVX2+FMA kernels where the CPU has them (hand-written ones for
    # float32 2-D, blocked ones otherwise), else the baseline blocked ones ("default", also for float32 2-D);
    # "generic" runs the per-anchor code the CUDA kernels run. Each must
    # match the reference (checked in a fresh process, since the choice is made once per process).
    import os
    import subprocess
    import sys

    env = dict(os.environ, CELLULUS_FAST_CPU_CAPABILITY=capability)
    subprocess.run([sys.executable, "-c", GENERIC_CHECK, str(tmp_path / "loss"), os.path.dirname(__file__)],
                   check=True, env=env)
    offsets = (3 * torch.randn(3, 2, 41, 37, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    here = oce_loss(offsets.float(), density=0.3, kappa=6.0, num_references=9, seed=4)
    torch.testing.assert_close(torch.load(tmp_path / "loss"), here, rtol=1e-5, atol=0)


# --- hardening (issue 14) ------------------------------------------------------------------------------------

def collapsed_offsets(batch, spatial, dtype, seed=0):
    """Offsets r = -x + k / 1024, k = +-4 in a checkerboard: every embedding within ~1e-2 of the origin, every
    difference e_i - e_j exact in float32 and either 0 or of one length (d^2 / tau ~ 1e-5), so that only the
    nonlinearity's evaluation can differ from float64, by the same error in every pair (no averaging out)."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in spatial], indexing="ij")
    coords = torch.stack(grids)
    k = 4.0 * (1 - 2 * (sum(grids) % 2))
    return (-coords + k / 1024).expand(batch, *coords.shape).contiguous().to(dtype)


ACCURACY_CASES = [(torch.float32, (30, 33)), (torch.float64, (30, 33)), (torch.float32, (14, 15, 13)),
                  (torch.float64, (14, 15, 13))]


def check_accuracy(device="cpu"):
    """The loss and gradient of the fused op against the float64 reference at rtol 1e-4, where a naive
    formula is far off: collapsed embeddings (gaussian 1 - exp(-x), x ~ 1e-5) and far pairs (sigmoid slope
    s (1 - s) with x ~ 20, which is 0 in float32)."""
    for dtype, spatial in ACCURACY_CASES:
        offsets = collapsed_offsets(2, spatial, dtype)
        kw = dict(density=0.5, kappa=3.0, num_references=9, seed=3)
        a, r = sample_pairs(offsets, **kw)
        x = offsets.to(device, copy=True).requires_grad_()
        loss = oce_loss(x, nonlinearity="gaussian", lambda_reg=0.0, **kw)
        loss.backward()
        y = offsets.double().clone().requires_grad_()
        ref = reference.oce_loss(y, a, r, nonlinearity="gaussian", lambda_reg=0.0)
        ref.backward()
        assert 0 < ref.item() / (2 * num_anchors(spatial, 0.5, 3.0) * 9) < 1e-4  # d^2 / tau ~ 1e-5
        torch.testing.assert_close(loss.cpu().double(), ref.detach(), rtol=1e-4, atol=0)
        torch.testing.assert_close(x.grad.cpu().double(), y.grad, rtol=1e-4, atol=1e-9)
        # sigmoid with d^2 / tau ~ 20: kappa = 1 (every lattice offset of length 1), tau = 1 / 20
        far = random_offsets((2, len(spatial), *spatial), dtype, seed=4, scale=0.003)
        kw = dict(density=0.5, kappa=1.0, num_references=4, seed=5)
        a, r = sample_pairs(far, **kw)
        x = far.to(device, copy=True).requires_grad_()
        oce_loss(x, tau=0.05, lambda_reg=0.0, **kw).backward()
        y = far.double().clone().requires_grad_()
        reference.oce_loss(y, a, r, tau=0.05, lambda_reg=0.0).backward()
        error = torch.linalg.vector_norm(x.grad.cpu().double() - y.grad) / torch.linalg.vector_norm(y.grad)
        assert error < 1e-4, (dtype, spatial, error.item())


def test_collapsed_embeddings_and_far_pairs_accurate():
    check_accuracy()


def test_refuses_more_than_int32_anchors():
    # 70000^2 anchor positions: > 2^32, which the kernels' 32-bit counters used to wrap (to 605M anchors and a
    # 39 GB allocation). An expanded tensor: no memory is used.
    huge = torch.zeros(1, 2, 1, 1).expand(1, 2, 70_000, 70_000)
    with pytest.raises(ValueError, match="anchors per image"):
        oce_loss(huge, density=1.0, kappa=3.0, seed=0)
    with pytest.raises(ValueError, match="anchors per image"):
        sample_pairs(huge, density=1.0, kappa=3.0, seed=0)
    with pytest.raises(ValueError, match="anchors per image"):
        torch.ops.cellulus_fast.oce_loss(huge, 1.0, 3.0, 1, 10.0, 0.0, "sigmoid", False, 0, "sum")
    with pytest.raises(ValueError, match="anchors per image"):
        torch.ops.cellulus_fast.sample_pairs(huge, 1.0, 3.0, 1, 0)
    with pytest.raises(ValueError, match="num_references"):
        torch.ops.cellulus_fast.oce_loss(torch.zeros(1, 2, 30, 30), 0.1, 3.0, 2**32 + 1, 10.0, 0.0, "sigmoid",
                                         False, 0, "sum")
    with pytest.raises(ValueError, match="num_references"):
        oce_loss(torch.zeros(1, 2, 30, 30), kappa=3.0, num_references=2**31, seed=0)


@pytest.mark.parametrize("seed", [2**63, 2**64, -1])
def test_seed_out_of_range_is_a_clear_error(seed):
    with pytest.raises(ValueError, match="seed must be"):
        oce_loss(torch.zeros(1, 2, 30, 30), kappa=3.0, seed=seed)
    with pytest.raises(ValueError, match="seed must be"):
        sample_pairs((1, 2, 30, 30), kappa=3.0, seed=seed)
    assert torch.isfinite(oce_loss(torch.zeros(1, 2, 30, 30), kappa=3.0, seed=2**63 - 1))


def autocast_step(device, dtype):
    """A bfloat16/float16 network output under torch.autocast: the loss (float32) and the input's gradient,
    and the same computed in float32 from the same half-precision offsets."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 2, 40, 36, generator=g).to(device)
    weight = (0.5 * torch.randn(2, 2, 3, 3, generator=g)).to(device).requires_grad_()
    with torch.autocast(device, dtype=dtype):
        offsets = torch.nn.functional.conv2d(image, weight, padding=1)
        assert offsets.dtype == dtype
        loss = oce_loss(offsets, kappa=5.0, num_references=3, seed=1)
        loss_no_grad = oce_loss(offsets.detach(), kappa=5.0, num_references=3, seed=1)
        anchors, _ = sample_pairs(offsets, kappa=5.0, num_references=3, seed=1)
    (grad,) = torch.autograd.grad(loss, weight, retain_graph=True)
    half = offsets.detach().float().requires_grad_()
    expected = oce_loss(half, kappa=5.0, num_references=3, seed=1)
    (expected_offsets_grad,) = torch.autograd.grad(expected, half)
    (expected_grad,) = torch.autograd.grad(offsets, weight, expected_offsets_grad.to(dtype))
    assert loss.dtype == torch.float32 and torch.equal(loss, expected) and torch.equal(loss_no_grad, expected)
    assert torch.equal(anchors, sample_pairs(half, kappa=5.0, num_references=3, seed=1)[0])
    torch.testing.assert_close(grad, expected_grad)
    # The ops themselves (what torch.compile and direct callers see) under autocast:
    ops = torch.ops.cellulus_fast
    args = (0.2, 5.0, 3, 10.0, 1e-5, "sigmoid", False, 1, "sum")
    with torch.autocast(device, dtype=dtype):
        assert torch.equal(ops.oce_loss(offsets.detach(), *args), expected)
        back = ops.oce_loss_backward(torch.ones((), device=device), offsets.detach(), *args)
        assert back.dtype == dtype
        torch.testing.assert_close(back, expected_offsets_grad.to(dtype))
    # Outside autocast half precision is computed in float32 as well (by the Python layer).
    assert torch.equal(oce_loss(offsets.detach(), kappa=5.0, num_references=3, seed=1), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu(dtype):
    autocast_step("cpu", dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cuda(dtype):
    autocast_step("cuda", dtype)


def test_deterministic_mode_allows_the_cpu_kernels():
    # The CPU backward is deterministic (fixed chunks, no atomics): no alert there.
    x = random_offsets((2, 2, 30, 30), torch.float32).requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        oce_loss(x, kappa=4.0, seed=0).backward()
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.cuda
def test_cuda_backward_alerts_deterministic_mode():
    # Float atomics in the CUDA backward: torch.use_deterministic_algorithms(True) must refuse it (and warn
    # with warn_only), while the forward alone (deterministic block sums) is allowed.
    x = random_offsets((2, 2, 30, 30), torch.float32).cuda().requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        with torch.no_grad():
            oce_loss(x, kappa=4.0, seed=0)
        with pytest.raises(RuntimeError, match="oce_loss_backward_cuda"):
            oce_loss(x, kappa=4.0, seed=0)  # the loss-and-gradient op
        with pytest.raises(RuntimeError, match="oce_loss_backward_cuda"):
            torch.ops.cellulus_fast.oce_loss(x, 0.2, 4.0, 1, 10.0, 1e-5, "sigmoid", False, 0, "sum").backward()
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="oce_loss_backward_cuda"):
            oce_loss(x, kappa=4.0, seed=0).backward()
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.cuda
def test_cuda_training_step_never_synchronises():
    # The lattice-disk table used to be copied from pageable host memory on every call (a host-GPU sync, and
    # illegal under CUDA graph capture). Now it is built on the GPU: a step raises nothing in sync-debug mode
    # "error", even the first with a new kappa.
    weight = torch.randn(1, 2, 1, 1, device="cuda", requires_grad=True)
    image = torch.randn(2, 1, 48, 44, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for kappa in (4.5, 4.5, 3.25):
            offsets = image * weight
            oce_loss(offsets, kappa=kappa, num_references=3, seed=2).backward()  # loss and gradient op
            with torch.no_grad():
                loss = oce_loss(offsets, kappa=kappa, seed=2)  # the forward op
            torch.ops.cellulus_fast.oce_loss(offsets, 0.2, kappa, 2, 10.0, 1e-5, "gaussian", True, 3,
                                             "mean").backward()  # forward op + its backward op
            sample_pairs(offsets, kappa=kappa, seed=2)
            with torch.no_grad():
                weight -= 1e-3 * weight.grad
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item() and torch.isfinite(weight).all().item()


@pytest.mark.cuda
def test_cuda_graph_capture():
    # What torch.compile(mode="reduce-overhead") needs: the ops can be captured into a CUDA graph and replayed.
    x = random_offsets((2, 2, 40, 40), torch.float32).cuda()
    static = x.clone()
    args = (0.2, 4.0, 3, 10.0, 1e-5, "sigmoid", False, 4, "sum")
    expected = torch.ops.cellulus_fast.oce_loss_and_grad(x, *args)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as the CUDA graphs docs do
        torch.ops.cellulus_fast.oce_loss_and_grad(static, *args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, grad = torch.ops.cellulus_fast.oce_loss_and_grad(static, *args)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(loss, expected[0])
    torch.testing.assert_close(grad, expected[1])


@pytest.mark.cuda
def test_cuda_accuracy():
    check_accuracy("cuda")
