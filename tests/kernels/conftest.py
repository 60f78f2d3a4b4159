import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded(request):
    """Fresh but reproducible inputs: every test draws from a seed of its own id."""
    torch.manual_seed(sum(map(ord, request.node.nodeid)))
