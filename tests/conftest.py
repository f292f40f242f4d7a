"""Test tiers: the fast default tier runs with `pytest`; `pytest --slow` adds the tests marked `slow`
(subprocess, DDP, kill-and-resume, full-size golden and OpenMMLab end-to-end runs). CI runs both."""
import pytest
import torch

import toy_family  # noqa: F401  (a throw-away fifth model family: the shared suite must pick it up by the contract)
from helpers import create_tiny


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption('--slow', action='store_true', help='also run the tests marked slow')


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'slow: subprocess/DDP/full-size/end-to-end tests (run with --slow)')


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
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
