import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def one_thread():
    """Small CPU work on one intra-op thread: on a shared 2-core machine a second thread
    mostly waits for the first (results do not depend on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def two_threads():
    """Two intra-op threads for one test, the count before restored after it: a test of
    code that must give the thread count back starts from a count that it changes."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private scenes cache, shared by a module's tests."""
    return tmp_path_factory.mktemp("scenes_cache")
