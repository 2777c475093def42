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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny torch models: one intra-op thread is faster and does not spin on a busy 2-core CI box.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes-long install test (deselect: -m 'not slow')")


def placeholder_stimuli(cfg, text=None):
    """Tests that fake the stimulus loader still need the files to exist: the extract/mlm stage keys
    fingerprint them. Writes a small distinct file at each episode's video/audio/transcript path."""
    st = cfg.data.stimuli
    for ep in cfg.data.episodes:
        for template in (st.video, st.audio, st.transcript):
            if template:
                p = cfg.path(template, episode=ep)
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text or f"placeholder {ep}\n")
