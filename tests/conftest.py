import pytest
import torch


def pytest_configure(config):
    # Tiny models: one thread is faster than two, and immune to OpenMP spin-waiting when the CPU is shared.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
