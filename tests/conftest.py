"""Test tiers: the fast default tier runs with `pytest`; `pytest --slow` adds the tests marked `slow`
(subprocess, DDP, kill-and-resume, full-size golden and OpenMMLab end-to-end runs). CI runs both. Tests marked
`gpu` (tests/test_gpu.py: `pytest -m gpu tests/test_gpu.py`) are skipped where torch sees no CUDA device."""
import pytest
import torch

import toy_family  # noqa: F401  (a throw-away fifth model family: the shared suite must pick it up by the contract)
from helpers import create_tiny


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption('--slow', action='store_true', help='also run the tests marked slow')
    parser.addoption('--full-faults', action='store_true',
                     help='tests/test_fault_matrix.py: every case of the fault matrix, not a cross-section')


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'slow: subprocess/DDP/full-size/end-to-end tests (run with --slow)')
    config.addinivalue_line('markers', 'gpu: needs a CUDA device (skipped without one): pytest -m gpu')


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if not torch.cuda.is_available():
        no_gpu = pytest.mark.skip(reason='gpu tier: torch sees no CUDA device (run on a GPU node: pytest -m gpu)')
        for item in items:
            if 'gpu' in item.keywords:
                item.add_marker(no_gpu)
    if config.getoption('--slow'):
        return
    skip = pytest.mark.skip(reason='slow tier: run with --slow')
    for item in items:
        if 'slow' in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_tiny().eval()
