"""pytest-benchmark suite: every accelerated path raced against its reference in the same run.

    pytest benchmarks/ --benchmark-only            # full
    pytest benchmarks/ --benchmark-only --quick    # reduced sizes (CI-like conditions, a few minutes)
"""
import pytest


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="smaller problem sizes and fewer rounds")


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return request.config.getoption("--quick")


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
