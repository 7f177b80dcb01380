"""cellulus-fast: fast, exact CELLULUS (self-supervised cell instance segmentation with object-centric
embeddings) as a C++/CUDA PyTorch extension."""
from . import ops
from ._extension import cuda_built

__version__ = "0.1.0"
__all__ = ["ops", "cuda_built", "__version__"]
