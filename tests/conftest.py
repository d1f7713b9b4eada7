import os

import pytest
import torch

# Two cores: keep intra-op threads low so tests and their subprocesses do not oversubscribe.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
