"""cellulus-fast: fast, exact CELLULUS (self-supervised cell instance segmentation with object-centric
embeddings) as a C++/CUDA PyTorch extension.

    model = cellulus_fast.train(images, "run/", preset="fast").model   # preset="paper" (default) on a GPU
    labels = cellulus_fast.segment(model, images)   # object size and foreground measured on each image
    print(cellulus_fast.evaluate(ground_truth, labels).format_table())
"""
from . import ops
from ._extension import cuda_built
from .checkpoint import FolderInUseError, load
from .config import TrainConfig
from .evaluate import evaluate
from .models import UNet
from .segment import segment
from .train import TrainingDiverged, train

__version__ = "0.1.0"
__all__ = ["ops", "cuda_built", "load", "TrainConfig", "evaluate", "UNet", "segment", "train", "FolderInUseError",
           "TrainingDiverged", "__version__"]
