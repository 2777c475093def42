import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))
os.environ.setdefault("BRAINALIGN_PROGRESS", "0")


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes-long install test (deselect: -m 'not slow')")
