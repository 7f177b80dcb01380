"""pytest-benchmark suite: every accelerated path raced against its reference in the same run.

    pytest benchmarks/ --benchmark-only            # full
    pytest benchmarks/ --benchmark-only --quick    # reduced sizes (CI-like conditions, a few minutes)
"""
import pytest


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="smaller problem sizes and fewer rounds")


@pytest.fixture
def quick(request) -> bool:
    return request.config.getoption("--quick")
