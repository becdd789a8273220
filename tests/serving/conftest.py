import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # The machine is shared: keep each test process to one intra-op thread.
    torch.set_num_threads(1)
