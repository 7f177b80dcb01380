"""Segmentation of one image end to end (noise passes, foreground, mean-shift, post-processing): the
package's pipeline vs the same pipeline with scikit-learn's mean-shift (the public reference pipeline's
clustering), same model weights, the paper's foreground rule and a given diameter on both sides, outputs
checked equal. (segment()'s default "auto" foreground and measured diameter cost more clustering: timed
by stage in benchmarks/QUALITY.md.)"""
import numpy as np
import pytest

from cellulus_fast.data import normalize
from cellulus_fast.datasets import synthetic
from cellulus_fast.predict import predict
from cellulus_fast.reference import sklearn_mean_shift_labels
from cellulus_fast.segment import derive_parameters, instances, segment
from cellulus_fast.train import train

DIAMETER = 40.0
NOISE_PASSES = 4  # per value (8 forward passes per tile); the default 16 only scales the shared U-Net part
CASES = {512: 64, 1024: 256}  # image size -> cells


@pytest.fixture(scope="module")
def model(tmp_path_factory, quick):
    images, _ = synthetic(num_images=4, size=256, num_cells=16, diameter=DIAMETER, seed=0)
    steps = 60 if quick else 150
    return train(images, tmp_path_factory.mktemp("model"), epochs=1, steps_per_epoch=steps, batch_size=4,
                 crop_size=128, num_fmaps=16, learning_rate=1e-3, milestones=(), progress=False).model


def reference_pipeline(model, image):
    prediction = predict(model, normalize(image[None]), num_noise_passes=NOISE_PASSES)
    return instances(prediction, derive_parameters(DIAMETER), foreground="uncertainty",
                     clusterer=sklearn_mean_shift_labels)[0]


def fused_pipeline(model, image):
    return segment(model, image, object_diameter=DIAMETER, foreground="uncertainty", num_noise_passes=NOISE_PASSES,
                   progress=False, device="cpu")


@pytest.mark.parametrize("size", [512, 1024])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_segment(benchmark, quick, model, impl, size):
    if quick and size > 512:
        pytest.skip("full mode only")
    image = synthetic(num_images=1, size=size, num_cells=CASES[size], diameter=DIAMETER, seed=5)[0][0]
    benchmark.group = f"segment {size}x{size}"
    benchmark.extra_info.update(op="segment", impl=impl, size=size, pixels=size * size,
                                noise_passes=NOISE_PASSES)
    run = fused_pipeline if impl == "fused" else reference_pipeline
    labels = benchmark.pedantic(run, args=(model, image), rounds=1 if impl == "reference" else 2,
                                warmup_rounds=0)
    if impl == "reference":  # same model, same subsample: the same labels
        assert np.array_equal(fused_pipeline(model, image), labels)
