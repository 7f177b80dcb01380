"""cellulus_fast operators: the fused OCE loss with its pair sampler, and mean-shift clustering."""
from .mean_shift import bin_seeds, mean_shift, mean_shift_labels
from .oce_loss import num_anchors, oce_loss, sample_pairs

__all__ = ["bin_seeds", "mean_shift", "mean_shift_labels", "num_anchors", "oce_loss", "sample_pairs"]
