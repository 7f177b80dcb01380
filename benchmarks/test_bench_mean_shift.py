"""Mean-shift on CELLULUS-like embeddings: the fused op vs scikit-learn used as the public reference
pipeline uses it (MeanShift(bandwidth, cluster_all=False) fitted on a random 10% of the foreground, every
fitted point a seed, then predict for all foreground pixels), and with bin seeding."""
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from cellulus_fast.datasets import synthetic_embeddings
from cellulus_fast.ops import mean_shift_labels
from cellulus_fast.reference import sklearn_mean_shift_labels

CASES = {512: 125, 1024: 500}   # image size -> number of cells (diameter 24 px)
DIAMETER = 24.0
BANDWIDTH = 0.5 * DIAMETER      # the reference pipeline's default rule
FRACTION = 0.1                  # its reduction_probability


def pipeline(clusterer, emb, mask, seed, fraction=FRACTION, bin_seeding=False):
    g = torch.Generator().manual_seed(seed)  # the same subsample on both sides
    return clusterer(emb, mask, BANDWIDTH, fit_fraction=fraction, generator=g, bin_seeding=bin_seeding).numpy()


@pytest.fixture(scope="module")
def data():
    return {size: synthetic_embeddings(size, cells, DIAMETER, seed=1)[:2] for size, cells in CASES.items()}


@pytest.mark.parametrize("bin_seeding", [False, True])
@pytest.mark.parametrize("size", [512, 1024])
@pytest.mark.parametrize("impl", ["fused", "sklearn"])
def test_mean_shift(benchmark, quick, data, impl, size, bin_seeding):
    if quick and size > 512:
        pytest.skip("full mode only")
    emb, mask = data[size]
    clusterer = sklearn_mean_shift_labels if impl == "sklearn" else mean_shift_labels
    benchmark.group = f"mean_shift {size}x{size} bin_seeding={bin_seeding}"
    benchmark.extra_info.update(op="mean_shift", impl=impl, size=size, bin_seeding=bin_seeding,
                                points=int(mask.sum()))
    result = benchmark.pedantic(pipeline, args=(clusterer, emb, mask, 0, FRACTION, bin_seeding),
                                rounds=1 if impl == "sklearn" else 5, warmup_rounds=0 if impl == "sklearn" else 1)
    # Same labels as scikit-learn on the same subsample: checked where scikit-learn ran (the fused side is
    # cheap to recompute), so every size is checked once per run.
    if impl == "sklearn":
        fused = pipeline(mean_shift_labels, emb, mask, 0, FRACTION, bin_seeding)
        ari = adjusted_rand_score(result[mask.numpy()], fused[mask.numpy()])
        benchmark.extra_info["adjusted_rand_index"] = ari
        assert ari >= 0.999


@pytest.mark.parametrize("size", [512, 1024])
def test_mean_shift_all_pixels(benchmark, quick, data, size):
    """Every foreground pixel fitted and used as a seed (no subsampling): only the fused op is timed here,
    scikit-learn would take minutes."""
    if quick and size > 512:
        pytest.skip("full mode only")
    emb, mask = data[size]
    benchmark.group = f"mean_shift all pixels {size}x{size}"
    benchmark.extra_info.update(op="mean_shift_all", impl="fused", size=size, points=int(mask.sum()))
    labels = benchmark.pedantic(pipeline, args=(mean_shift_labels, emb, mask, 0, None), rounds=3, warmup_rounds=1)
    assert labels.max() >= 0.95 * CASES[size]


def _blob_points(n):
    from sklearn.datasets import make_blobs

    # ~n/400 cells of 400 embedded pixels each, spread like cell centres in an image
    points, _ = make_blobs(n_samples=n, centers=max(1, n // 400), n_features=2, cluster_std=1.5,
                           center_box=(0, 4 * (n // 400) ** 0.5 * 24), random_state=0)
    return torch.from_numpy(points)


@pytest.mark.parametrize("n", [10_000, 100_000, 1_000_000])
@pytest.mark.parametrize("impl", ["fused", "reference", "sklearn"])
def test_mean_shift_points(benchmark, quick, impl, n):
    """Every point a seed, bandwidth 12: the fused op vs the dense pure-PyTorch reference (10k points
    only: it is quadratic) and vs scikit-learn with bin seeding (without, it would take hours at 1M)."""
    from cellulus_fast import reference
    from cellulus_fast.ops import mean_shift

    if (quick and n > 100_000) or (impl == "reference" and n > 10_000) or (impl == "sklearn" and n > 100_000):
        pytest.skip("too slow for this implementation / mode")
    points = _blob_points(n)
    benchmark.group = f"mean_shift {n} points"
    benchmark.extra_info.update(op="mean_shift_points", impl=impl, points=n)
    if impl == "fused":
        labels, centers = benchmark.pedantic(mean_shift, args=(points, BANDWIDTH), rounds=3, warmup_rounds=1)
        if n <= 10_000:  # same result as the reference
            ref_labels, ref_centers = reference.mean_shift(points, BANDWIDTH)
            assert torch.equal(labels, ref_labels)
            torch.testing.assert_close(centers, ref_centers, rtol=0, atol=1e-9)
    elif impl == "reference":
        benchmark.pedantic(reference.mean_shift, args=(points, BANDWIDTH), rounds=1)
    else:
        import warnings

        from sklearn.cluster import MeanShift

        def fit():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return MeanShift(bandwidth=BANDWIDTH, bin_seeding=True).fit(points.numpy())

        model = benchmark.pedantic(fit, rounds=1)
        labels, centers = mean_shift(points, BANDWIDTH, bin_seeding=True)
        assert adjusted_rand_score(model.labels_, labels.numpy()) >= 0.999


def _pathological_points(case, n):
    """Worst cases of mean-shift's cost (issue 14), bandwidth 12: every seed's neighbourhood is large."""
    g = torch.Generator().manual_seed(0)
    if case == "ordinary":  # the blobs of test_mean_shift_points, for comparison
        return _blob_points(n)
    if case == "one_blob":  # collapsed embeddings (a diverged model): all points within 0.25 bandwidth
        return 100 + 0.05 * BANDWIDTH * torch.randn(n, 2, generator=g, dtype=torch.float64)
    if case == "tight_blobs":  # 1000 tight blobs (n / 1000 points each, spread 0.01 bandwidth)
        centres = torch.rand(1000, 2, generator=g, dtype=torch.float64) * 1000**0.5 * 2 * BANDWIDTH
        return centres.repeat_interleave(n // 1000, 0) + 0.01 * BANDWIDTH * torch.randn(
            n // 1000 * 1000, 2, generator=g, dtype=torch.float64)
    # "disk": uniform in a disk of diameter = bandwidth: every point within one bandwidth of every other
    r = 0.5 * BANDWIDTH * torch.rand(n, generator=g, dtype=torch.float64).sqrt()
    t = 2 * torch.pi * torch.rand(n, generator=g, dtype=torch.float64)
    return torch.stack([r * t.cos(), r * t.sin()], 1)


@pytest.mark.parametrize("n", [10_000, 100_000])
@pytest.mark.parametrize("case", ["ordinary", "one_blob", "tight_blobs", "disk"])
def test_mean_shift_pathological(benchmark, quick, case, n):
    """Every point a seed on point sets where each seed's neighbourhood is (nearly) every point: the fused op
    must stay within ~10x of the ordinary case. Checked against the dense reference at 10k points (full mode)."""
    from cellulus_fast import reference
    from cellulus_fast.ops import mean_shift

    if quick and n > 10_000:
        pytest.skip("full mode only")
    points = _pathological_points(case, n)
    benchmark.group = f"mean_shift pathological {n} points"
    benchmark.extra_info.update(op="mean_shift_pathological", impl=case, points=n)
    labels, centers = benchmark.pedantic(mean_shift, args=(points, BANDWIDTH), rounds=3, warmup_rounds=1)
    if case in ("one_blob", "disk"):
        assert len(centers) == 1 and (labels == 0).all()
    if n <= 10_000 and not quick:
        ref_labels, ref_centers = reference.mean_shift(points, BANDWIDTH)
        assert torch.equal(labels, ref_labels)
        torch.testing.assert_close(centers, ref_centers, rtol=0, atol=1e-9)
