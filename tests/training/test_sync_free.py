"""The sync-free training step (``cuda_graph``) on the CPU: no host synchronisation, the eager step's weights,
a NaN batch skipped on the device and stopping the run, the weights cast once per step under autocast.

(Kill and resume in this mode: test_kill.py; capture and replay on a GPU: test_cuda_graph.py.)
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fr_fast.training.train as train_mod
from fr_fast.cli.train import main
from fr_fast.config.train_config import TrainConfig
from fr_fast.models import build_model
from fr_fast.training import sync_free
from fr_fast.training.state import TrainState
from fr_fast.training.train import make_step

aten = torch.ops.aten
SYNCS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default, aten.item.default,
         aten.nonzero.default}
BATCH, STEPS = 8, 4
TINY = ["fake_data=48", "epochs=2", "lr_milestones=[1]", "batch_size=16", "max_train_batches=2",
        "max_val_batches=1", "attack_steps=1", "eval_pgd_steps=1", "model_kwargs={width: 4}", "progress=false",
        "device=cpu", "cpu_threads=1", "amp=off", "bn_recalibrate_batches=1"]


class CountOps(TorchDispatchMode):
    """Counts the ATen operators of ``watched`` that run inside the block (all of them when None)."""

    def __init__(self, watched: set | None = None) -> None:
        super().__init__()
        self.watched, self.calls = watched, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.watched is None or func in self.watched:
            self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def _config(method: str, fr: str, **extra) -> TrainConfig:
    return TrainConfig(**{**dict(method=method, fr=fr, fr_start_epoch=0, wa_start_epoch=0, lr=0.05, amp="off",
                                 channels_last=False, device="cpu", attack_steps=2), **extra})


def _state(cfg: TrainConfig) -> TrainState:
    torch.manual_seed(0)
    state = TrainState(cfg, build_model("small_cnn", 10, 1, width=4))
    if cfg.uses_wa:
        state.start_average()
    return state


def _batches(n: int = STEPS, nan_at: tuple[int, ...] = ()) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        x = torch.rand(BATCH, 1, 28, 28, generator=g)
        if i in nan_at:
            x[0, 0, 0, 0] = float("nan")
        out.append((x, torch.randint(0, 10, (BATCH,), generator=g)))
    return out


def _run(cfg: TrainConfig, batches) -> TrainState:
    state = _state(cfg)
    step = make_step(cfg, state, epoch=0)
    torch.manual_seed(2)  # the attacks' random starts
    for x, y in batches:
        step(x, y)
    return state


def _momenta(state: TrainState) -> list[torch.Tensor]:
    return [state.optimizer.state[p].get("momentum_buffer") for p in state.model.parameters()]


CASES = [("natural", "fr"), ("at", "none"), ("at", "fr"), ("at", "frwa"), ("trades", "fr"), ("trades", "frwa"),
         ("mart", "fr"), ("mart", "frwa"), ("awp", "fr")]


@pytest.mark.parametrize("method, fr", CASES)
def test_sync_free_step_never_synchronises(method, fr):
    cfg = _config(method, fr, cuda_graph=True)
    state = _state(cfg)
    step = make_step(cfg, state, epoch=0)
    batches = _batches(3)
    with CountOps(SYNCS) as syncs:
        for x, y in batches:
            step(x, y)
    assert syncs.calls == [], [c[0] for c in syncs.calls]
    assert step.read().steps == 3
    # The counter sees the eager step's one sync per step (the loss read): the zero above is real.
    eager = make_step(dataclasses.replace(cfg, cuda_graph=False), _state(cfg), epoch=0)
    with CountOps(SYNCS) as syncs:
        for x, y in batches:
            eager(x, y)
    assert len(syncs.calls) >= 3


@pytest.mark.parametrize("method, fr", [("at", "fr"), ("trades", "frwa"), ("awp", "fr")])
def test_sync_free_step_trains_the_eager_weights(method, fr):
    batches = _batches()
    eager = _run(_config(method, fr), batches)
    fast = _run(_config(method, fr, cuda_graph=True), batches)
    for (name, a), b in zip(eager.model.state_dict().items(), fast.model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=name)
    for a, b in zip(_momenta(eager), _momenta(fast)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    assert any(not torch.equal(a, b) for a, b in zip(eager.model.parameters(), _state(_config(method, fr))
                                                     .model.parameters()))  # it did train


@pytest.mark.parametrize("nan_at", [0, 2])
def test_nan_batch_skips_the_update_on_the_device(nan_at):
    cfg = _config("at", "fr", cuda_graph=True)
    state = _state(cfg)
    step = make_step(cfg, state, epoch=0)
    batches = _batches(nan_at=(nan_at,))
    torch.manual_seed(2)
    for i, (x, y) in enumerate(batches):
        if i == nan_at:
            weights = [p.detach().clone() for p in state.model.parameters()]
            momenta = [m.clone() for m in _momenta(state)]
        step(x, y)
        if i == nan_at:  # bit-identical: the kernel skipped the update (the first step: zero momentum)
            assert all(torch.equal(a, b) for a, b in zip(weights, state.model.parameters()))
            assert all(torch.equal(a, b) for a, b in zip(momenta, _momenta(state)))
            assert nan_at > 0 or all(not m.any() for m in momenta)
    totals = step.read()
    assert (totals.steps, totals.skipped, totals.first_bad_step) == (STEPS, 1, nan_at)
    assert totals.first_bad_loss != totals.first_bad_loss  # NaN
    assert torch.isfinite(torch.tensor(totals.loss_sum))


def test_nan_loss_stops_the_cli_run_with_exit_1(tmp_path: Path, monkeypatch, capsys):
    real_loss = train_mod.training_loss
    calls = {"n": 0}

    def nan_on_second(*args, **kwargs):
        calls["n"] += 1
        loss, logits = real_loss(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 2 else loss), logits

    monkeypatch.setattr(train_mod, "training_loss", nan_on_second)
    assert main(["mnist_cnn_at_fr", *TINY, "--cuda_graph", "--log_every=5", f"--out_dir={tmp_path}"]) == 1
    out, err = capsys.readouterr()
    assert "cuda_graph: sync-free step, no capture on cpu" in out
    assert err.count("\n") == 1, err
    assert "loss became nan at epoch 1 (index 0), step 1 (its update was skipped): stopping" in err, err
    assert not list(tmp_path.glob("*.pt"))


def test_cli_run_with_cuda_graph_on_cpu(tmp_path: Path, capsys):
    assert main(["mnist_cnn_at_fr", *TINY, "--cuda_graph", "--log_every=1", f"--out_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "cuda_graph: sync-free step, no capture on cpu" in out
    assert (tmp_path / "last.pt").is_file()


def test_refusals_are_one_line_user_errors(tmp_path: Path, capsys):
    assert main(["mnist_cnn_at_fr", *TINY, "--cuda_graph", "--amp=fp16", f"--out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "cuda_graph needs amp bf16 or off" in err.splitlines()[-1] and "Traceback" not in err, err
    with pytest.raises(ValueError, match="does not run under DDP"):
        sync_free.check_supported(_config("at", "fr", cuda_graph=True), torch.device("cpu"), None, world=2)


def test_autocast_casts_each_weight_once_per_step():
    """Under bf16 autocast the attack's forwards reuse one cast of each weight (autocast's cache)."""
    cfg = dataclasses.replace(_config("at", "fr", cuda_graph=True), amp="bf16")
    state = _state(cfg)
    step = make_step(cfg, state, epoch=0)
    from fr_fast.models import ClassifierHead
    head = {p.data_ptr() for m in state.model.modules() if isinstance(m, ClassifierHead) for p in m.parameters()}
    # the classifier head stays float32 under autocast: its weight is never cast to bf16
    weights = {p.data_ptr() for p in state.model.parameters() if p.dim() > 1} - head
    assert head
    x, y = _batches(1)[0]

    def weight_casts(run) -> int:
        with CountOps({aten._to_copy.default}) as ops:
            run()
        return sum(1 for _, args, kwargs in ops.calls
                   if args[0].data_ptr() in weights and kwargs.get("dtype") == torch.bfloat16)

    with torch.autocast("cpu", torch.bfloat16):
        one_forward = weight_casts(lambda: state.model(x))
    assert one_forward == len(weights)
    assert weight_casts(lambda: step(x, y)) == one_forward  # attack (2 steps) + training forward


class _Stream:
    """Stand-in for torch.cuda.Stream (the CPU has one ordered stream)."""

    def __init__(self, device=None) -> None:
        pass

    def wait_stream(self, other) -> None:
        pass


def test_captured_step_logic_with_a_stand_in_graph(monkeypatch):
    """CapturedStep's warm-up, capture, replay and eager last batch, on the CPU: the stand-in for
    torch.cuda.graph runs the body while "capturing" and then rolls back all it changed (a real capture runs
    nothing), and a replay runs the body on the static buffers (what a real replay computes)."""
    cfg = _config("at", "fr", cuda_graph=True)
    state = _state(cfg)
    body = make_step(cfg, state, epoch=0)
    step = sync_free.CapturedStep(body)

    def mutable() -> list[torch.Tensor]:
        return [*state.model.state_dict().values(), *_momenta(state), body.totals]

    class Graph:
        def replay(self) -> None:
            body(*step.static)

    @contextlib.contextmanager
    def capture(graph):
        saved, rng = [t.clone() for t in mutable()], torch.get_rng_state()
        yield
        for t, before in zip(mutable(), saved):
            t.copy_(before)
        torch.set_rng_state(rng)

    for name, value in dict(CUDAGraph=Graph, graph=capture, Stream=_Stream, current_stream=_Stream,
                            stream=lambda s: contextlib.nullcontext()).items():
        monkeypatch.setattr(torch.cuda, name, value)
    batches = _batches(sync_free.WARMUP_BATCHES + 3)
    batches.append((batches[-1][0][:3], batches[-1][1][:3]))  # the smaller last batch
    torch.manual_seed(2)
    for x, y in batches:
        step(x, y)
    assert step.graph is not None and step.eager_batches == 1 and step.read().steps == len(batches)
    eager = _run(_config("at", "fr"), batches)
    for (name, a), b in zip(eager.model.state_dict().items(), state.model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=name)
