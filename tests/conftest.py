import pytest
import torch

# The suite's workloads are tiny: one thread avoids OpenMP spin-up and oversubscription on small CI
# machines. tests/test_ops.py checks the multi-threaded kernel paths explicitly.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
