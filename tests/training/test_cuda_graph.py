"""The cuda_graph step on a GPU: warm-up, capture and replay train the eager step's weights, the smaller last
batch runs eagerly, a NaN batch replayed in the graph skips its update, one capture serves every epoch with
the same switches. Skipped without CUDA (the sync-free body itself is tested on the CPU: test_sync_free.py).
"""
from __future__ import annotations

import pytest
import torch

from fr_fast.config.train_config import TrainConfig
from fr_fast.models import build_model
from fr_fast.training import sync_free
from fr_fast.training.state import TrainState
from fr_fast.training.train import make_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BATCH = 16


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 (no TF32) so eager and replayed steps differ only by summation order."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _config(method: str, fr: str, **extra) -> TrainConfig:
    return TrainConfig(**{**dict(method=method, fr=fr, fr_start_epoch=0, wa_start_epoch=0, lr=0.05, amp="off",
                                 device="cuda", attack_steps=2), **extra})


def _state(cfg: TrainConfig) -> TrainState:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 3, width=8).to("cuda", memory_format=torch.channels_last)
    state = TrainState(cfg, model)
    if cfg.uses_wa:
        state.start_average()
    return state


def _batches(sizes: list[int], nan_at: int | None = None):
    g = torch.Generator().manual_seed(1)
    out = []
    for i, n in enumerate(sizes):
        x = torch.rand(n, 3, 32, 32, generator=g)
        if i == nan_at:
            x[0, 0, 0, 0] = float("nan")
        out.append((x.cuda(), torch.randint(0, 10, (n,), generator=g).cuda()))
    return out


def _run(cfg: TrainConfig, batches):
    state = _state(cfg)
    step = make_step(cfg, state, epoch=0)
    torch.manual_seed(2)
    for x, y in batches:
        step(x, y)
    torch.cuda.synchronize()
    return state, step


@pytest.mark.parametrize("method, fr", [("at", "fr"), ("trades", "frwa"), ("mart", "fr"), ("awp", "fr"),
                                        ("natural", "none")])
def test_capture_and_replay_train_the_eager_weights(method, fr):
    # 3 warm-up batches, the capture (and its replay), 3 replays, then a smaller last batch run eagerly.
    batches = _batches([BATCH] * (sync_free.WARMUP_BATCHES + 4) + [BATCH // 2])
    eager, _ = _run(_config(method, fr), batches)
    graphed, step = _run(_config(method, fr, cuda_graph=True), batches)
    assert isinstance(step, sync_free.CapturedStep) and step.graph is not None and step.eager_batches == 1
    assert step.read().steps == len(batches)
    for (name, a), b in zip(eager.model.state_dict().items(), graphed.model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4, msg=name)


def test_compiled_model_inside_the_capture():
    """compile (mode default) inside the captured step: compilation happens in the warm-up batches."""
    batches = _batches([BATCH] * (sync_free.WARMUP_BATCHES + 2))
    eager, _ = _run(_config("at", "fr", compile=True), batches)
    graphed, step = _run(_config("at", "fr", compile=True, cuda_graph=True), batches)
    assert step.graph is not None
    for (name, a), b in zip(eager.model.state_dict().items(), graphed.model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4, msg=name)


def test_nan_batch_replayed_in_the_graph_skips_its_update():
    nan_at = sync_free.WARMUP_BATCHES + 2  # a replay, not the capture
    cfg = _config("at", "fr", cuda_graph=True)
    state = _state(cfg)
    step = make_step(cfg, state, epoch=0)
    torch.manual_seed(2)
    for i, (x, y) in enumerate(_batches([BATCH] * (nan_at + 2), nan_at=nan_at)):
        if i == nan_at:
            weights = [p.detach().clone() for p in state.model.parameters()]
            momenta = [state.optimizer.state[p]["momentum_buffer"].clone() for p in state.model.parameters()]
        step(x, y)
        if i == nan_at:
            torch.cuda.synchronize()
            assert all(torch.equal(a, b) for a, b in zip(weights, state.model.parameters()))
            assert all(torch.equal(a, state.optimizer.state[p]["momentum_buffer"])
                       for a, p in zip(momenta, state.model.parameters()))
    totals = step.read()
    assert (totals.skipped, totals.first_bad_step) == (1, nan_at)


def test_one_capture_per_set_of_switches():
    cfg = _config("at", "fr", cuda_graph=True, fr_start_epoch=1, lr_milestones=[1])
    state = _state(cfg)
    cache: dict = {}
    first = make_step(cfg, state, 0, cache=cache)
    for x, y in _batches([BATCH] * (sync_free.WARMUP_BATCHES + 1)):
        first(x, y)
    assert first.graph is not None
    state.optimizer.param_groups[0]["lr"] = 0.005
    again = make_step(cfg, state, 0, cache=cache)
    assert again is first and again.body.lr.item() == pytest.approx(0.005)  # the lr tensor, no recapture
    assert make_step(cfg, state, 1, cache=cache) is not first  # FR switches on: a new step and capture
