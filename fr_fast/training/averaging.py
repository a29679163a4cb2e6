"""Weight averaging (the FR/WA teacher, Eq. 3 of the paper) and adversarial weight perturbation (AWP).

WeightAverage: ``W_wa <- (W_wa * k + W) / (k + 1)``, updated once per epoch by the trainer from
``wa_start_epoch`` on (``torch.optim.swa_utils.AveragedModel`` with its default running mean). An
averaged network's batch-norm statistics are not the average of anything useful, so either
  * ``bn_recalibrate=True`` (the authors' public code): after each averaging step the statistics are
    re-estimated on natural training batches (cumulative average, as ``swa_utils.update_bn``), or
  * ``bn_recalibrate=False``: the BN buffers are averaged along with the weights (cheaper; not in the paper).

AWP (Wu et al. 2020): a proxy copy of the model takes one SGD ascent step on the training loss; the
per-layer weight difference, rescaled to the norm of that layer's weight and multiplied by ``gamma``, is
added to the model before its own step and removed after it (exactly: the weights before the perturbation
plus the step). As in the authors' code only weights with at least two dimensions (convolution and linear
kernels) are perturbed.
"""
from __future__ import annotations

import copy
import itertools
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from fr_fast.models.modes import train_mode

_NORM_EPS = 1e-20


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, device: torch.device | str,
                   max_batches: int | None = None, channels_last: bool = False) -> int:
    """Re-estimate the BN running statistics of ``model`` from natural batches ``(x, y)``.

    Statistics are reset and accumulated over at most ``max_batches`` batches as an average weighted by batch
    size (momentum b / (n + b) for a batch of b after n images, as the authors' ``bn_update``: a short last
    batch counts for its images, not as a whole batch); under torch.distributed they are averaged over
    ranks afterwards. Returns the number of batches used (0 when the model has no BN layer).
    """
    layers = _bn_layers(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
    used = seen = 0
    with train_mode(model):
        for x, _ in itertools.islice(batches, max_batches):
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for m in layers:
                m.momentum = x.shape[0] / (seen + x.shape[0])
            model(x)
            used, seen = used + 1, seen + x.shape[0]
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        for m in layers:
            for buf in (m.running_mean, m.running_var):
                if buf is not None:
                    dist.all_reduce(buf)
                    buf.div_(world)
    return used


class WeightAverage:
    """Running average of a model's weights over epochs (Eq. 3), used as the FR/WA teacher.

    Parameters
    ----------
    model : the student (unwrapped: not DDP, not compiled); it is deep-copied.
    average_buffers : True -> BN buffers are averaged with the weights; False -> they are left for
        :meth:`recalibrate_bn` to re-estimate.
    """

    def __init__(self, model: nn.Module, average_buffers: bool = False) -> None:
        self.module = AveragedModel(model, use_buffers=average_buffers)
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @property
    def n_averaged(self) -> int:
        return int(self.module.n_averaged.item())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights in: the first call copies them, later calls take the running mean."""
        self.module.update_parameters(model)
        if not self.module.use_buffers and self.n_averaged == 1:
            # The copy made at construction holds the buffers of that moment; start from the current ones.
            for own, cur in zip(self.module.module.buffers(), model.buffers()):
                own.copy_(cur)

    def recalibrate_bn(self, batches: Iterable, device: torch.device | str, max_batches: int | None = None,
                       channels_last: bool = False) -> int:
        used = recalibrate_bn(self.module.module, batches, device, max_batches, channels_last)
        self.module.eval()
        return used

    def __call__(self, x: Tensor) -> Tensor:
        return self.module(x)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


def _named_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.dim() > 1 and "weight" in n}


class AWP:
    """Adversarial weight perturbation with a proxy model (perturb -> step -> restore).

    Parameters
    ----------
    model : the student (unwrapped).
    gamma : size of the perturbation relative to each layer's weight norm (AT-AWP code: 0.01,
        TRADES-AWP code: 0.005).
    proxy_lr : learning rate of the proxy's single ascent step (AT-AWP code: 0.01; TRADES-AWP: the lr).

    Usage
    -----
    ``diff = awp.perturbation(lambda m: loss_of(m)); awp.perturb(diff); <loss, backward, step>; awp.restore(diff)``
    """

    def __init__(self, model: nn.Module, gamma: float, proxy_lr: float = 0.01) -> None:
        if gamma < 0:
            raise ValueError(f"awp gamma must be >= 0, got {gamma}")
        self.model, self.gamma = model, gamma
        self.proxy = copy.deepcopy(model)
        self.proxy_optim = torch.optim.SGD(self.proxy.parameters(), lr=proxy_lr)
        self._saved: dict[str, tuple[Tensor, Tensor]] = {}

    def perturbation(self, loss_fn: Callable[[nn.Module], Tensor]) -> dict[str, Tensor]:
        """One ascent step of ``loss_fn(proxy)`` from the current weights; returns the rescaled weight direction."""
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        for p in self.proxy.parameters():
            p.requires_grad_(True)
        self.proxy_optim.zero_grad(set_to_none=True)
        (-loss_fn(self.proxy)).backward()
        self.proxy_optim.step()
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        diff = {}
        proxy_weights = _named_weights(self.proxy)
        with torch.no_grad():
            for name, w in _named_weights(self.model).items():
                d = proxy_weights[name] - w
                if distributed:  # every rank must perturb identically or the replicas drift apart
                    dist.all_reduce(d)
                    d.div_(dist.get_world_size())
                diff[name] = d * (w.norm() / (d.norm() + _NORM_EPS))
        return diff

    @torch.no_grad()
    def perturb(self, diff: dict[str, Tensor]) -> None:
        """Add ``gamma * diff`` to the model's weights (remembering them before and after)."""
        self._saved = {}
        for name, p in self.model.named_parameters():
            if name in diff:
                before = p.detach().clone()
                p.add_(diff[name], alpha=self.gamma)
                self._saved[name] = (before, p.detach().clone())

    @torch.no_grad()
    def restore(self, diff: dict[str, Tensor]) -> None:
        """Remove the perturbation, keeping what the optimiser step changed since :meth:`perturb`.

        ``w = w_before + (w_now - w_perturbed)``: the weights before the perturbation plus the step, so
        without a step in between they come back bit-identical (``w - gamma * diff`` would round).
        """
        for name, p in self.model.named_parameters():
            if name in diff:
                before, perturbed = self._saved[name]
                p.sub_(perturbed).add_(before)
        self._saved = {}
