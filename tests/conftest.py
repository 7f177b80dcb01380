import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (run them with `pytest -m cuda`)")
    config.addinivalue_line("markers", "slow: longer end-to-end checks")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The README demo with its quick schedule, run once per session: ({set: {method: scores}}, output_dir)."""
    from cellulus_fast.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, quick=True, progress=False), out


@pytest.fixture
def tiny_images():
    """Four small synthetic cell images (float32, 96 x 96)."""
    from cellulus_fast.datasets import synthetic

    return synthetic(num_images=4, size=96, num_cells=6, diameter=30.0, seed=3)


@pytest.fixture
def tiny():
    """Small, fast training options for tests (the paper's defaults would take hours on a CPU)."""
    return dict(epochs=1, steps_per_epoch=3, batch_size=2, crop_size=64, num_fmaps=4, learning_rate=1e-3,
                milestones=(), kappa=5.0)
