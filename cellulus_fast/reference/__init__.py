"""Pure-PyTorch / NumPy references of the accelerated operators: simple, obviously correct, slow.
Tests compare the fused kernels against them; benchmarks race them."""
from .mean_shift import mean_shift, sklearn_mean_shift_labels
from .oce_loss import lattice_disk, oce_loss, sample_pairs

__all__ = ["lattice_disk", "mean_shift", "oce_loss", "sample_pairs", "sklearn_mean_shift_labels"]
