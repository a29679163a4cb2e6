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
    from fr_fast.config import load_config
    from fr_fast.train import train

    cfg = load_config("mnist_cnn_at_frwa", [
        "fake_data=64", "epochs=2", "lr_milestones=[1]", "batch_size=16", "max_train_batches=2",
        "max_val_batches=1", "attack_steps=2", "eval_pgd_steps=2", "model_kwargs={width: 4}",
        "bn_recalibrate_batches=1", "device=cpu", "progress=false", f"out_dir={out_dir}"])
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
    from fr_fast.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2 and state["teacher"] is not None
    for k, v in state["model"].items():
        if v.is_floating_point() and "running" not in k:
            torch.testing.assert_close(v, w0[k], rtol=0, atol=0, msg=k)
