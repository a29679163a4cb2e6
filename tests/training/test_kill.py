"""Real kills: `fr-fast train` in a subprocess, SIGKILLed at several points (two of them inside a checkpoint
save), SIGINTed once, resumed with --resume=auto each time; the final last.pt and best.pt must equal, tensor
for tensor, those of an uninterrupted run. Also: a second run into the busy folder is refused, naming the
holder's pid. (A fresh run into a finished run's folder: test_train_reliability.py.)

Tiny on purpose (random images, width-4 CNN, 2 batches per epoch): each process spends most of its time
importing torch.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import torch

from fr_fast.config.train_config import load_config
from fr_fast.runs.checkpoint import PAUSE_SAVE_ENV, load_checkpoint
from fr_fast.training.train import train

REPO = Path(__file__).resolve().parents[2]
RUN = ["mnist_cnn_at", "fake_data=96", "batch_size=16", "max_train_batches=2", "max_val_batches=1", "attack_steps=2",
       "eval_pgd_steps=2", "model_kwargs={width: 4}", "epochs=3", "lr_milestones=[2]", "progress=false",
       "device=cpu", "cpu_threads=1", "deterministic=true", "amp=off", "bn_recalibrate_batches=1"]
TIMING = {"images_per_s", "epoch_time_s"}  # the only values allowed to differ between the runs


class _Train:
    """``python -m fr_fast train`` in a subprocess whose merged stdout/stderr lines are read by a thread."""

    def __init__(self, out_dir: Path, *extra: str, pause: str | None = None):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop(PAUSE_SAVE_ENV, None)
        if pause:
            env[PAUSE_SAVE_ENV] = pause
        self.proc = subprocess.Popen([sys.executable, "-m", "fr_fast", "train", *RUN, f"out_dir={out_dir}", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 240) -> str:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s; got:\n" + "\n".join(self.lines))
            if line is None:
                raise AssertionError(f"exited ({self.proc.wait()}) before {pattern!r}; output:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def kill(self, sig: int = signal.SIGKILL) -> int:
        os.kill(self.proc.pid, sig)
        return self.finish()

    def finish(self, timeout: float = 240) -> int:
        rc = self.proc.wait(timeout=timeout)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return rc


def _assert_same(a, b, where: str = "") -> None:
    """Every tensor equal (bitwise) and every other value equal, recursively; timing values excepted."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        keys = set(a) - TIMING
        assert keys == set(b) - TIMING, where
        for k in keys:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}.{i}")
    else:
        assert a == b, where


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def _comparable(state: dict) -> dict:
    return {**state, "config": {k: v for k, v in state["config"].items() if k not in ("out_dir", "resume")}}


def test_sigkill_anywhere_then_resume_equals_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    train(load_config(RUN[0], [*RUN[1:], f"out_dir={reference}"]))
    run = tmp_path / "killed"

    # 1. Killed inside the very first save (last.pt of epoch 1): only an orphaned temporary file remains.
    first = _Train(run, "--resume=auto", pause="last.pt@1")
    first.wait_for(r"pausing inside the save of .*last\.pt")
    # ... meanwhile a second run into the same folder is refused at once, naming the holder.
    second = _Train(run)
    assert second.finish() == 2
    assert any(f"in use by process {first.proc.pid}" in line for line in second.lines), second.lines
    assert first.kill() == -signal.SIGKILL
    assert not (run / "last.pt").exists() and len(_temps(run)) == 1

    # 2. --resume=auto finds no last.pt and starts afresh; killed inside the save of best.pt of epoch 1,
    #    i.e. after last.pt (which records best epoch 1) and before best.pt exists.
    p = _Train(run, "--resume=auto", pause="best.pt@1")
    p.wait_for(r"pausing inside the save of .*best\.pt")
    assert p.kill() == -signal.SIGKILL
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and not (run / "best.pt").exists()
    assert [t.split(".")[1] for t in _temps(run)] == ["best"]  # the first orphan was cleared at start

    # 3. Resumed (best.pt is rebuilt from last.pt), killed between epochs 2 and 3 (while training epoch 3).
    p = _Train(run, "--resume=auto")
    p.wait_for(r"^epoch +2/3")
    assert p.kill() == -signal.SIGKILL
    assert any("best.pt repaired" in line for line in p.lines), p.lines
    assert load_checkpoint(run / "last.pt")["epoch"] == 2 and load_checkpoint(run / "best.pt")["epoch"] == 1
    assert _temps(run) == []

    # 4. Resumed and interrupted with SIGINT: stops after the current step with one line, exit 130.
    p = _Train(run, "--resume=auto")
    p.wait_for(r"resumed from .* after epoch 2")
    rc = p.kill(signal.SIGINT)
    assert rc == 130, p.lines
    assert re.fullmatch(r"fr-fast train: interrupted by SIGINT after step \d+ of epoch 3; resume with --resume",
                        p.lines[-1]), p.lines
    assert not any("Traceback" in line for line in p.lines)

    # 5. Resumed, killed inside the save of the final last.pt.
    p = _Train(run, "--resume=auto", pause="last.pt@3")
    p.wait_for(r"pausing inside the save of .*last\.pt")
    assert p.kill() == -signal.SIGKILL
    assert load_checkpoint(run / "last.pt")["epoch"] == 2

    # 6. Resumed to the end.
    p = _Train(run, "--resume=auto")
    assert p.finish() == 0, p.lines
    for name in ("last.pt", "best.pt"):
        _assert_same(_comparable(load_checkpoint(reference / name)), _comparable(load_checkpoint(run / name)), name)
    assert _temps(run) == []
    metrics = [[json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
               for folder in (reference, run)]
    assert len(metrics[0]) == 3
    _assert_same(*metrics, "metrics.jsonl")



def test_sigkill_then_resume_is_bit_exact_with_the_sync_free_step(tmp_path):
    """cuda_graph (the sync-free step on the CPU): killed inside the save of epoch 2, resumed, equal to a run
    never interrupted (momentum buffers, skipped-update counters and device statistics included)."""
    graph = ["--cuda_graph", "log_every=1"]
    reference = tmp_path / "reference"
    train(load_config(RUN[0], [*RUN[1:], *graph, f"out_dir={reference}"]))
    run = tmp_path / "killed"
    p = _Train(run, *graph, "--resume=auto", pause="last.pt@2")
    p.wait_for(r"pausing inside the save of .*last\.pt")
    assert p.kill() == -signal.SIGKILL
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    p = _Train(run, *graph, "--resume=auto")
    assert p.finish() == 0, p.lines
    assert any("resumed from" in line and "after epoch 1" in line for line in p.lines), p.lines
    for name in ("last.pt", "best.pt"):
        _assert_same(_comparable(load_checkpoint(reference / name)), _comparable(load_checkpoint(run / name)), name)
    metrics = [(folder / "metrics.jsonl").read_text().splitlines() for folder in (reference, run)]
    _assert_same(*[[json.loads(line) for line in lines] for lines in metrics], "metrics.jsonl")
