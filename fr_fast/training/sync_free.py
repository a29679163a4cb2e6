"""The training step without host synchronisation (``cuda_graph``) and, on CUDA, its capture in one CUDA graph.

The eager step reads its loss on the host after every batch (NaN guard, progress bar): one synchronisation
per step, so the GPU waits for the host at small batches. :class:`SyncFreeStep` runs the same attack, loss and
backward pass, but nothing in it reads a tensor on the host:

* the SGD update is ``torch._fused_sgd_`` with the learning rate in a device tensor and ``found_inf`` set
  on the device when the loss is NaN or infinite: a non-finite loss skips the update inside the kernel
  (weights and momentum stay bit-identical). The momentum buffers exist as zeros before the first step
  (``0 * momentum + g`` is ``g`` exactly: the first update equals torch.optim.SGD's);
* the loss sum, the correct adversarial predictions, the steps, the skipped updates and the first skipped
  step (with its loss) accumulate in one device tensor that the epoch loop reads every ``log_every`` steps
  (:meth:`SyncFreeStep.read`): a skipped update then stops the run as the eager step's NaN guard does.

On CUDA, :class:`CapturedStep` runs the first :data:`WARMUP_BATCHES` batches eagerly on a side stream
(cuDNN autotuning, lazy allocations), captures the next batch into one CUDA graph over static input
buffers (the loader already pins and copies the batches to the device) and replays the graph for every
later batch of that shape; a batch of another shape (the smaller last batch of an epoch) runs the same
body eagerly, so no image is dropped. Random numbers (attack starts) come from the default CUDA generator,
which graphs advance as eager code does. One step object serves every epoch with the same switches (FR,
AWP, the teacher object; :func:`step_key`): a new key builds a new step and a new capture.
"""
from __future__ import annotations

from typing import Callable, Hashable, NamedTuple

import torch
from torch import Tensor

from fr_fast.config.train_config import TrainConfig
from fr_fast.training.state import TrainState

# Eager batches before the capture (the torch.cuda.graphs guide uses 3; cuDNN benchmark tunes in the first).
WARMUP_BATCHES = 3
# Layout of SyncFreeStep.totals (float64: exact counts).
LOSS_SUM, CORRECT, STEPS, SKIPPED, FIRST_BAD_STEP, FIRST_BAD_LOSS = range(6)

Forward = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (x, y) -> (loss, adv_logits), before backward


class StepTotals(NamedTuple):
    """One read of the device statistics (since the last reset)."""

    loss_sum: float        # sum over images of the batch loss (finite steps only)
    correct: float         # correct adversarial predictions
    steps: int
    skipped: int           # updates skipped because the loss was not finite
    first_bad_step: int    # index (since the reset) of the first skipped step, -1 if none
    first_bad_loss: float  # its loss (nan or inf)


def check_supported(cfg: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None, world: int) -> None:
    """Refuse, in one line, what the sync-free step does not run (ValueError: a user error)."""
    if not cfg.cuda_graph:
        return
    if world > 1:
        raise ValueError("cuda_graph does not run under DDP: capturing DDP's gradient all-reduce needs its "
                         "static-graph mode, which fr_fast does not set up; train with one process or drop "
                         "--cuda_graph")
    if amp_dtype == torch.float16:
        raise ValueError("cuda_graph needs amp bf16 or off: the fp16 GradScaler decides on the host whether "
                         "each step is applied; use --amp bf16 (or --amp off)")
    if cfg.compile and cfg.compile_mode == "reduce-overhead" and device.type == "cuda":
        raise ValueError("compile_mode=reduce-overhead makes its own CUDA graphs, which cannot sit inside the "
                         "captured step; with --cuda_graph use compile_mode default or max-autotune")


def describe(device: torch.device) -> str:
    """The banner line of a cuda_graph run."""
    if device.type != "cuda":
        return f"cuda_graph: sync-free step, no capture on {device.type}"
    return (f"cuda_graph: sync-free step captured in one CUDA graph after {WARMUP_BATCHES} eager warm-up batches; "
            "the smaller last batch of an epoch runs eagerly")


def step_key(fr_on: bool, awp_on: bool, teacher: object | None) -> Hashable:
    """What a captured step depends on besides tensors updated in place (the lr lives in a device tensor)."""
    return fr_on, awp_on, id(teacher) if teacher is not None else None


def ensure_momentum_buffers(optimizer: torch.optim.SGD) -> None:
    """Give every parameter a zero momentum buffer before its first step (a skipped first step then leaves
    zeros, never uninitialised memory; a fused first step from zeros equals SGD's first step exactly)."""
    for group in optimizer.param_groups:
        if group["momentum"] == 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


class SyncFreeStep:
    """``step(x, y) -> None``: attack, loss, backward and a device-guarded SGD update, with no host sync.

    ``forward`` maps a batch to (loss, adversarial logits) (the eager step's attack and objective, AWP's
    perturbation included); ``after_update`` (AWP's restore) runs after the update.
    """

    def __init__(self, forward: Forward, state: TrainState, device: torch.device,
                 after_update: Callable[[], None] | None = None) -> None:
        self.forward, self.after_update, self.optimizer = forward, after_update, state.optimizer
        if any(g.get("nesterov") or g.get("maximize") or g.get("dampening") for g in self.optimizer.param_groups):
            raise ValueError("the sync-free step implements plain SGD with momentum (no nesterov, dampening, maximize)")
        ensure_momentum_buffers(self.optimizer)
        # The update bypasses optimizer.step(); tell the lr scheduler that the optimiser does step (its
        # "scheduler.step() before optimizer.step()" warning reads this flag).
        self.optimizer._opt_called = True
        self.lr = torch.zeros((), dtype=torch.float64, device=device)
        self.totals = torch.zeros(6, dtype=torch.float64, device=device)
        self.set_lr()
        self.reset()

    def set_lr(self) -> None:
        """Copy the optimiser's learning rate into the device tensor the update reads (no sync)."""
        self.lr.fill_(self.optimizer.param_groups[0]["lr"])

    def reset(self) -> None:
        """Zero the statistics (in place: a captured graph keeps writing into the same tensor)."""
        self.totals.zero_()
        self.totals[FIRST_BAD_STEP] = -1.0

    def read(self) -> StepTotals:
        """The statistics since :meth:`reset`: the one host synchronisation, made every ``log_every`` steps."""
        v = self.totals.tolist()
        return StepTotals(v[LOSS_SUM], v[CORRECT], int(v[STEPS]), int(v[SKIPPED]), int(v[FIRST_BAD_STEP]),
                          v[FIRST_BAD_LOSS])

    def __call__(self, x: Tensor, y: Tensor) -> None:
        for group in self.optimizer.param_groups:  # zero_grad(set_to_none): backward allocates the grads
            for p in group["params"]:
                p.grad = None
        y = y.to(self.totals.device, non_blocking=True)
        loss, adv_logits = self.forward(x, y)
        loss.backward()
        with torch.no_grad():
            loss = loss.detach().double()
            bad = ~torch.isfinite(loss)
            self._update(bad)
            if self.after_update is not None:
                self.after_update()
            self._count(loss, bad, (adv_logits.argmax(1) == y).sum(), y.shape[0])

    def _update(self, bad: Tensor) -> None:
        """SGD with momentum and weight decay, skipped inside the kernel when ``bad`` (found_inf) is set."""
        found_inf = bad.float()
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            momentum = group["momentum"]
            buffers = [self.optimizer.state[p]["momentum_buffer"] for p in params] if momentum else []
            torch._fused_sgd_(params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"],
                              momentum=momentum, lr=self.lr, dampening=0.0, nesterov=False, maximize=False,
                              is_first_step=False, found_inf=found_inf)

    def _count(self, loss: Tensor, bad: Tensor, correct: Tensor, batch: int) -> None:
        t = self.totals
        first = bad & (t[FIRST_BAD_STEP] < 0)
        zero = torch.zeros((), dtype=t.dtype, device=t.device)
        t.copy_(torch.stack([t[LOSS_SUM] + torch.where(bad, zero, loss * batch), t[CORRECT] + correct,
                             t[STEPS] + 1, t[SKIPPED] + bad.to(t.dtype),
                             torch.where(first, t[STEPS], t[FIRST_BAD_STEP]),
                             torch.where(first, loss, t[FIRST_BAD_LOSS])]))


class CapturedStep:
    """A :class:`SyncFreeStep` captured in one CUDA graph: warm-up, capture, then one replay per batch."""

    def __init__(self, body: SyncFreeStep, warmup: int = WARMUP_BATCHES) -> None:
        self.body, self.warmup_left = body, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[Tensor, Tensor] | None = None
        self.eager_batches = 0  # batches of another shape than the captured one (run eagerly)

    # The statistics and the lr are the body's tensors, which the graph updates in place.
    def set_lr(self) -> None:
        self.body.set_lr()

    def reset(self) -> None:
        self.body.reset()

    def read(self) -> StepTotals:
        return self.body.read()

    def __call__(self, x: Tensor, y: Tensor) -> None:
        if self.graph is None and self.warmup_left > 0:
            self.warmup_left -= 1
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                self.body(x, y)
            torch.cuda.current_stream(x.device).wait_stream(side)
            return
        if self.graph is None:
            self.static = (x.clone(), y.clone())  # clone keeps x's memory format
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.body(*self.static)
        elif x.shape != self.static[0].shape:
            self.eager_batches += 1
            self.body(x, y)
            return
        else:
            self.static[0].copy_(x, non_blocking=True)
            self.static[1].copy_(y, non_blocking=True)
        self.graph.replay()


def build_step(forward: Forward, state: TrainState, device: torch.device,
               after_update: Callable[[], None] | None = None) -> SyncFreeStep | CapturedStep:
    """The sync-free step for ``device``: captured in a CUDA graph on CUDA, run as is elsewhere."""
    body = SyncFreeStep(forward, state, device, after_update)
    return CapturedStep(body) if device.type == "cuda" else body
