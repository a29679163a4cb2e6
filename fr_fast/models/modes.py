"""Train/eval mode for the length of a block, each submodule's own flag restored afterwards."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn


@contextlib.contextmanager
def module_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put ``model`` in train (True) or eval (False) mode for the block; restore every submodule's flag."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train(training)
        yield model
    finally:
        for m, flag in modes:
            m.training = flag


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """``module_mode(model, False)``: attacks, evaluation, the TRADES/MART training attacks."""
    return module_mode(model, False)


def train_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """``module_mode(model, True)``: BN statistics re-estimation."""
    return module_mode(model, True)
