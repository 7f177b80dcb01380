"""cellulus_fast operators: fused OCE loss and pair sampler (mean-shift to follow)."""
from .oce_loss import num_anchors, oce_loss, sample_pairs

__all__ = ["num_anchors", "oce_loss", "sample_pairs"]
