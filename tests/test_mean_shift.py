"""mean_shift against scikit-learn's MeanShift and the dense reference; edge cases; bad input."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.cluster import MeanShift
from sklearn.datasets import make_blobs

from cellulus_fast import reference
from cellulus_fast.ops import mean_shift, mean_shift_labels


def sklearn_fit(X, bandwidth, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ms = MeanShift(bandwidth=bandwidth, **kw).fit(X)
    return ms.labels_, ms.cluster_centers_


def assert_same_clustering(X, bandwidth, **kw):
    labels, centers = mean_shift(torch.from_numpy(X), bandwidth, **{k: (torch.from_numpy(v) if k == "seeds" else v)
                                                                   for k, v in kw.items()})
    sk_labels, sk_centers = sklearn_fit(X, bandwidth, **kw)
    assert centers.shape == sk_centers.shape
    np.testing.assert_allclose(centers.numpy(), sk_centers, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), sk_labels)


def blobs(n, dims, centers, std, seed):
    X, _ = make_blobs(n_samples=n, centers=centers, n_features=dims, cluster_std=std, random_state=seed,
                      center_box=(-40, 40))
    return X


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("bandwidth", [1.3, 2.7, 6.1])
@pytest.mark.parametrize("bin_seeding", [False, True])
@pytest.mark.parametrize("cluster_all", [True, False])
def test_matches_sklearn_on_blobs(dims, bandwidth, bin_seeding, cluster_all):
    X = blobs(700, dims, 12, 1.0, seed=dims)
    assert_same_clustering(X, bandwidth, bin_seeding=bin_seeding, cluster_all=cluster_all)


def test_matches_sklearn_min_bin_freq_explicit_seeds_and_max_iter():
    X = blobs(800, 2, 6, 1.0, seed=3)
    assert_same_clustering(X, 2.0, bin_seeding=True, min_bin_freq=5)
    assert_same_clustering(X, 2.0, seeds=X[::37].copy())
    assert_same_clustering(X, 2.0, max_iter=2)


@pytest.mark.parametrize("dims", [2, 3])
def test_matches_dense_reference(dims):
    X = torch.from_numpy(blobs(600, dims, 8, 1.5, seed=1))
    for kw in (dict(), dict(bin_seeding=True), dict(cluster_all=False), dict(seeds=X[::11])):
        labels, centers = mean_shift(X, 2.2, **kw)
        ref_labels, ref_centers = reference.mean_shift(X, 2.2, **kw)
        torch.testing.assert_close(centers, ref_centers, rtol=0, atol=1e-9)
        assert torch.equal(labels, ref_labels)


def test_float32_points():
    X = blobs(1000, 2, 10, 1.0, seed=5).astype(np.float32)
    labels, centers = mean_shift(torch.from_numpy(X), 2.5)
    sk_labels, sk_centers = sklearn_fit(X, 2.5)
    assert centers.dtype == torch.float32 and centers.shape == sk_centers.shape
    np.testing.assert_allclose(centers.numpy(), sk_centers, atol=1e-4)
    np.testing.assert_array_equal(labels.numpy(), sk_labels)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points=st.lists(st.tuples(st.floats(-8, 8), st.floats(-8, 8)), min_size=1, max_size=40),
       bandwidth=st.sampled_from([0.37, 1.13, 2.91, 7.3]), bin_seeding=st.booleans(), cluster_all=st.booleans())
def test_fuzz_small_inputs_against_sklearn(points, bandwidth, bin_seeding, cluster_all):
    X = np.asarray(points, dtype=np.float64)
    assert_same_clustering(X, bandwidth, bin_seeding=bin_seeding, cluster_all=cluster_all)


def test_edge_cases():
    empty_labels, empty_centers = mean_shift(torch.empty(0, 2, dtype=torch.float64), 1.0)
    assert empty_labels.shape == (0,) and empty_centers.shape == (0, 2)
    labels, centers = mean_shift(torch.tensor([[1.0, 2.0]]), 1.0)
    assert labels.tolist() == [0] and centers.tolist() == [[1.0, 2.0]]
    same = torch.full((50, 3), 4.25, dtype=torch.float64)
    labels, centers = mean_shift(same, 0.5)
    assert (labels == 0).all() and centers.tolist() == [[4.25] * 3]
    far = torch.arange(20, dtype=torch.float64)[:, None] * torch.tensor([[100.0, -50.0]])
    labels, centers = mean_shift(far, 1.0)
    assert len(centers) == 20 and sorted(labels.tolist()) == list(range(20))
    # far points keep their own cluster: each centre is its point
    assert torch.equal(centers[labels], far)


def test_seeds_far_from_every_point_raise():
    with pytest.raises(ValueError, match="bandwidth"):
        mean_shift(torch.zeros(5, 2), 1.0, seeds=torch.full((2, 2), 100.0))


@pytest.mark.parametrize("points,bandwidth,kw,error,match", [
    (torch.zeros(4, 2), 0.0, {}, ValueError, "bandwidth"),
    (torch.zeros(4, 2), -1.0, {}, ValueError, "bandwidth"),
    (torch.zeros(4, 2), float("nan"), {}, ValueError, "bandwidth"),
    (torch.zeros(4, 2), float("inf"), {}, ValueError, "bandwidth"),
    (torch.tensor([[0.0, float("nan")]]), 1.0, {}, ValueError, "points"),
    (torch.tensor([[0.0, float("inf")]]), 1.0, {}, ValueError, "points"),
    (torch.zeros(4), 1.0, {}, ValueError, "points"),
    (torch.zeros(4, 5), 1.0, {}, ValueError, "points"),
    (torch.zeros(4, 2, dtype=torch.int64), 1.0, {}, TypeError, "points"),
    (np.zeros((4, 2)), 1.0, {}, TypeError, "points"),
    (torch.zeros(4, 2), 1.0, {"seeds": torch.zeros(3, 3)}, ValueError, "seeds"),
    (torch.zeros(4, 2), 1.0, {"min_bin_freq": 0}, ValueError, "min_bin_freq"),
    (torch.zeros(4, 2), 1.0, {"max_iter": -1}, ValueError, "max_iter"),
])
def test_bad_input(points, bandwidth, kw, error, match):
    with pytest.raises(error, match=match):
        mean_shift(points, bandwidth, **kw)


def synthetic_embeddings(size=96, cells=12, seed=0):
    """Embeddings of a label image: every pixel of a cell embeds near its cell's centre."""
    rng = np.random.default_rng(seed)
    from skimage.draw import disk
    labels = np.zeros((size, size), dtype=np.int64)
    centres = rng.uniform(10, size - 10, size=(cells, 2))
    for i, c in enumerate(centres, 1):
        labels[disk(tuple(c), 6, shape=labels.shape)] = i
    emb = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij")).astype(np.float64)
    for i, c in enumerate(centres, 1):
        emb[:, labels == i] = c[:, None] + rng.normal(0, 0.7, size=(2, (labels == i).sum()))
    return torch.from_numpy(emb), torch.from_numpy(labels > 0)


def test_mean_shift_labels_matches_sklearn_pipeline():
    emb, mask = synthetic_embeddings()
    out = mean_shift_labels(emb, mask, 4.0, fit_fraction=0.3, generator=torch.Generator().manual_seed(0))
    expected = reference.sklearn_mean_shift_labels(emb, mask, 4.0, fit_fraction=0.3,
                                                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, expected)
    assert out.max() >= 10 and (out[~mask] == 0).all()


def test_mean_shift_labels_empty_mask_and_bad_shapes():
    emb, mask = synthetic_embeddings(size=32, cells=2)
    assert (mean_shift_labels(emb, torch.zeros_like(mask), 3.0) == 0).all()
    with pytest.raises(ValueError, match="embeddings"):
        mean_shift_labels(emb[:1], mask, 3.0)
    with pytest.raises(TypeError, match="mask"):
        mean_shift_labels(emb, mask.long(), 3.0)


def test_opcheck():
    X = torch.from_numpy(blobs(200, 2, 4, 1.0, seed=2))
    ops = torch.ops.cellulus_fast
    torch.library.opcheck(ops.mean_shift_modes, (X, X[::5].clone(), 2.0, 300))
    torch.library.opcheck(ops.mean_shift_dedup, (X[::10].clone(), 2.0))
    torch.library.opcheck(ops.nearest_center, (X, X[::50].clone(), 2.0, False))


@pytest.mark.cuda
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dims, dtype):
    X = torch.from_numpy(blobs(3000, dims, 20, 1.0, seed=4)).to(dtype)
    for kw in (dict(), dict(bin_seeding=True), dict(cluster_all=False)):
        labels, centers = mean_shift(X, 2.5, **kw)
        gpu_labels, gpu_centers = mean_shift(X.cuda(), 2.5, **kw)
        torch.testing.assert_close(gpu_centers.cpu(), centers, rtol=0, atol=1e-9 if dtype == torch.float64 else 1e-4)
        assert torch.equal(gpu_labels.cpu(), labels)


def test_kernels_check_their_arguments():
    ops = torch.ops.cellulus_fast
    with pytest.raises(ValueError, match="same D"):
        ops.nearest_center(torch.zeros(4, 2), torch.zeros(2, 3), 1.0, True)
    with pytest.raises(ValueError, match="empty"):
        ops.nearest_center(torch.zeros(4, 2), torch.zeros(0, 2), 1.0, True)
    with pytest.raises(ValueError, match="same D"):
        ops.mean_shift_modes(torch.zeros(4, 2), torch.zeros(2, 3), 1.0, 300)
    with pytest.raises(ValueError, match="max_iter"):
        ops.mean_shift_modes(torch.zeros(4, 2), torch.zeros(2, 2), 1.0, -1)


# --- hardening (issue 14): non-finite values, bad inputs, CPU == CUDA bit for bit, the collapsed case ------

def test_mean_shift_labels_rejects_any_non_finite_pixel_with_a_count():
    # The fit uses a 10% subsample, but every foreground pixel is labelled: a NaN outside the subsample used
    # to reach the kernels (floor of NaN, undefined behaviour) and got a label anyway.
    emb, mask = synthetic_embeddings(size=48, cells=4)
    emb = emb.clone()
    fg = mask.nonzero()
    for y, x in fg[:3].tolist():
        emb[0, y, x] = float("nan")
    emb[1, fg[5, 0], fg[5, 1]] = float("inf")
    with pytest.raises(ValueError, match=r"4 of its \d+ values are NaN or inf"):
        mean_shift_labels(emb, mask, 3.0, fit_fraction=0.1, generator=torch.Generator().manual_seed(0))
    # outside the mask a NaN does not matter
    emb2, _ = synthetic_embeddings(size=48, cells=4)
    emb2[:, ~mask] = float("nan")
    assert mean_shift_labels(emb2, mask, 3.0).max() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_raw_ops_non_finite_points_are_never_neighbours_or_centres(dtype):
    # The ops themselves define non-finite input (on CPU and CUDA alike): such a point is in no neighbourhood,
    # a seed with a NaN coordinate finds nothing (count 0: dropped), and such a point's label is -1, also
    # with cluster_all. Finite points are clustered as if the others were absent (the grid is not poisoned).
    ops = torch.ops.cellulus_fast
    nan, inf = float("nan"), float("inf")
    points = torch.tensor([[0.0, 0.0], [nan, 1.0], [0.5, 0.0], [inf, 0.0], [-inf, nan], [10.0, 10.0]], dtype=dtype)
    seeds = torch.tensor([[0.0, 0.0], [nan, 0.0], [10.0, 10.0]], dtype=dtype)
    modes, counts, iterations = ops.mean_shift_modes(points, seeds, 1.0, 300)
    finite = points[[0, 2, 5]]
    ref_modes, ref_counts, _ = ops.mean_shift_modes(finite, seeds[[0, 2]], 1.0, 300)
    assert counts.tolist() == [2, 0, 1] and iterations[1] == 0
    assert torch.equal(modes[[0, 2]], ref_modes) and torch.equal(counts[[0, 2]], ref_counts)
    centers = torch.tensor([[0.25, 0.0], [nan, nan], [10.0, 10.0]], dtype=dtype)
    for cluster_all in (True, False):
        labels = ops.nearest_center(points, centers, 1.0, cluster_all)
        assert labels.tolist() == [0, -1, 0, -1, -1, 2]


def test_points_that_require_grad_meta_and_huge_values():
    X = torch.from_numpy(blobs(300, 2, 3, 1.0, seed=6))
    labels, centers = mean_shift(X.clone().requires_grad_(), 2.0)  # detached, not an internal error
    ref_labels, ref_centers = mean_shift(X, 2.0)
    assert torch.equal(labels, ref_labels) and torch.equal(centers, ref_centers) and not centers.requires_grad
    with pytest.raises(ValueError, match="meta tensor"):
        mean_shift(torch.empty(10, 2, device="meta"), 1.0)
    with pytest.raises(ValueError, match="meta tensor"):
        mean_shift_labels(torch.empty(2, 8, 8, device="meta"), torch.ones(8, 8, dtype=torch.bool), 1.0)
    emb, mask = synthetic_embeddings(size=32, cells=2)
    out = mean_shift_labels(emb.clone().requires_grad_(), mask, 3.0)
    assert torch.equal(out, mean_shift_labels(emb, mask, 3.0))
    # 1e30: a correct result (in float32 too)
    for dtype in (torch.float32, torch.float64):
        far = torch.tensor([[0.0, 0.0], [1e30, 1e30], [1.0, 1.0], [1e30, -1e30]], dtype=dtype)
        labels, centers = mean_shift(far, 2.0)
        ref_labels, ref_centers = reference.mean_shift(far, 2.0)
        assert torch.equal(labels, ref_labels) and torch.equal(centers, ref_centers)
    # coordinates whose differences overflow float64: a clear error, not undefined behaviour
    with pytest.raises(ValueError, match="float64 range"):
        mean_shift(torch.tensor([[-1e308, 0.0], [1e308, 0.0]], dtype=torch.float64), 1.0)


# A pair at distance ~bandwidth where an FMA-contracted sum of squares, fma(d1, d1, d0 * d0), rounds above
# bandwidth^2 while the separately rounded d0 * d0 + d1 * d1 (CPU, NumPy, scikit-learn, the reference) stays
# within: CUDA with nvcc's default contraction counted one point less here.
FMA_PAIR = (0.5757620794426401, 0.8176172869233423)


def test_fma_boundary_pair_is_a_neighbour():
    from fractions import Fraction

    d0, d1 = FMA_PAIR
    assert d0 * d0 + d1 * d1 <= 1.0
    assert float(Fraction(d1) * Fraction(d1) + Fraction(d0 * d0)) > 1.0  # what an FMA would give
    points = torch.tensor([[0.0, 0.0], list(FMA_PAIR)], dtype=torch.float64)
    _, counts, _ = torch.ops.cellulus_fast.mean_shift_modes(points, points[:1], 1.0, 300)
    assert counts.tolist() == [2]
    labels, centers = mean_shift(points, 1.0)
    ref_labels, ref_centers = reference.mean_shift(points, 1.0)
    assert torch.equal(labels, ref_labels) and torch.equal(centers, ref_centers)


@pytest.mark.cuda
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_modes_equal_cpu_bit_for_bit(dims, dtype):
    # Same double arithmetic on both devices (cell keys in the kernels, no FMA contraction): the modes, counts
    # and iteration counts are identical, so are the merging of identical modes and the labels.
    ops = torch.ops.cellulus_fast
    X = torch.from_numpy(blobs(4000, dims, 25, 1.2, seed=8)).to(dtype)
    cases = [(X, X, 2.5), (X, X[::7].clone(), 1.7)]
    boundary = torch.tensor([[0.0] * dims, list(FMA_PAIR) + [0.0] * (dims - 2)], dtype=dtype)
    cases.append((boundary, boundary, 1.0))
    for points, seeds, bandwidth in cases:
        cpu = ops.mean_shift_modes(points, seeds, bandwidth, 300)
        gpu = ops.mean_shift_modes(points.cuda(), seeds.cuda(), bandwidth, 300)
        for a, b in zip(cpu, gpu):
            assert torch.equal(a, b.cpu())
        centers = cpu[0][::5].contiguous()
        for cluster_all in (True, False):
            assert torch.equal(ops.nearest_center(points, centers, bandwidth, cluster_all),
                               ops.nearest_center(points.cuda(), centers.cuda(), bandwidth, cluster_all).cpu())


@pytest.mark.cuda
def test_cuda_non_finite_points_like_cpu():
    ops = torch.ops.cellulus_fast
    nan = float("nan")
    points = torch.tensor([[0.0, 0.0], [nan, 1.0], [0.5, 0.0], [10.0, 10.0]], dtype=torch.float64)
    seeds = torch.tensor([[0.0, 0.0], [nan, 0.0]], dtype=torch.float64)
    cpu = ops.mean_shift_modes(points, seeds, 1.0, 300)
    gpu = ops.mean_shift_modes(points.cuda(), seeds.cuda(), 1.0, 300)
    assert torch.equal(cpu[1], gpu[1].cpu()) and torch.equal(cpu[0][0], gpu[0][0].cpu())
    centers = points[[0, 3]]
    assert torch.equal(ops.nearest_center(points, centers, 1.0, True),
                       ops.nearest_center(points.cuda(), centers.cuda(), 1.0, True).cpu())


def _collapsed(n, spread, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 50.0 + spread * torch.randn(n, 2, generator=g, dtype=torch.float64)


def test_collapsed_embeddings_cost_like_ordinary_ones():
    # Every point within one bandwidth of every other (a diverged model's embeddings): each seed used to scan
    # every point at every step, O(N^2). Cells lying wholly inside a seed's ball now count at once (their
    # precomputed sums: the same additions, so the same modes bit for bit).
    import time

    n, bandwidth = 40_000, 12.0
    ordinary = torch.from_numpy(blobs(n, 2, n // 400, 1.5, seed=0) * 10)
    collapsed = _collapsed(n, 0.05 * bandwidth)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = {}
        for name, X in (("ordinary", ordinary), ("collapsed", collapsed)):
            start = time.perf_counter()
            labels, centers = mean_shift(X, bandwidth)
            times[name] = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert len(centers) == 1 and (labels == 0).all()
    assert times["collapsed"] <= 10 * times["ordinary"] + 0.5, times


@pytest.mark.parametrize("spread", [0.02, 0.3, 1.0])
def test_collapsed_embeddings_match_reference(spread):
    X = _collapsed(3000, spread * 2.5, seed=1)
    for kw in (dict(), dict(cluster_all=False), dict(seeds=X[::13])):
        labels, centers = mean_shift(X, 2.5, **kw)
        ref_labels, ref_centers = reference.mean_shift(X, 2.5, **kw)
        torch.testing.assert_close(centers, ref_centers, rtol=0, atol=1e-9)
        assert torch.equal(labels, ref_labels)
