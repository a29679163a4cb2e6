"""Two-process DistributedDataParallel training on CPU with the gloo backend (torch.multiprocessing.spawn)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    from fr_fast.config.train_config import load_config
    from fr_fast.training.train import train

    cfg = load_config("mnist_cnn_at_frwa", [
        "fake_data=64", "epochs=2", "lr_milestones=[1]", "batch_size=16", "max_train_batches=2",
        "max_val_batches=1", "attack_steps=2", "eval_pgd_steps=2", "model_kwargs={width: 4}",
        "bn_recalibrate_batches=1", "device=cpu", "progress=false", "fft=2d",  # the gathered 2-D FR term
        f"out_dir={out_dir}"])
    summary = train(cfg)
    torch.save({k: v.clone() for k, v in summary["model"].state_dict().items()}, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
def test_two_process_gloo_ddp(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # Gradients are all-reduced and BN statistics broadcast: both replicas end with the same weights.
    for k in w0:
        if w0[k].is_floating_point() and "running" not in k:
            torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=1e-6, msg=k)
    # Rank 0 alone logged and checkpointed: one metrics line per epoch.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    from fr_fast.runs.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2 and state["average"] is not None
    for k, v in state["model"].items():
        if v.is_floating_point() and "running" not in k:
            torch.testing.assert_close(v, w0[k], rtol=0, atol=0, msg=k)


B_LOCAL, FEATURES, CLASSES, LAM = 4, 6, 10, 0.1


def _fr_problem():
    """A linear model and a global batch (WORLD * B_LOCAL rows) of natural and adversarial inputs."""
    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURES, CLASSES).double()
    x_nat = torch.randn(WORLD * B_LOCAL, FEATURES, dtype=torch.float64)
    x_adv = x_nat + 0.3 * torch.randn_like(x_nat)
    return model, x_nat, x_adv


def _fr_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from fr_fast.training.losses import make_fr

    try:
        results = {}
        for fft in ("1d", "2d"):
            model, x_nat, x_adv = _fr_problem()
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
            # FR with the model itself as teacher: gradients flow through both branches.
            term = make_fr(LAM, "l1", fft)(ddp(x_nat[rows]), ddp(x_adv[rows]))
            term.backward()
            results[fft] = {"value": term.detach(), **{n: p.grad.clone() for n, p in model.named_parameters()}}
        torch.save(results, Path(out_dir) / f"fr_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
def test_fr_term_under_ddp_equals_one_process_with_the_global_batch(tmp_path):
    """Both FR forms: value and DDP-averaged gradient on 2 gloo ranks == one process on the global batch."""
    from fr_fast.training.losses import make_fr

    mp.spawn(_fr_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"fr_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for fft in ("1d", "2d"):
        model, x_nat, x_adv = _fr_problem()
        term = make_fr(LAM, "l1", fft)(model(x_nat), model(x_adv))
        term.backward()
        if fft == "2d":  # the global term is what every rank reports (1d: each rank its local mean)
            for r in ranks:
                torch.testing.assert_close(r[fft]["value"], term.detach())
        for name, p in model.named_parameters():
            for r in ranks:  # DDP leaves the all-reduced average on every rank
                torch.testing.assert_close(r[fft][name], p.grad, msg=f"{fft} {name}")
