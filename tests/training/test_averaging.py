"""Weight averaging (Eq. 3), AWP perturb/restore and BN recalibration, each against a hand computation."""
from __future__ import annotations

import torch
from torch import nn

from fr_fast.training.averaging import AWP, WeightAverage, recalibrate_bn


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 6 * 6, 5))


def _randomise(model: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                values = torch.randn(t.shape, generator=generator)
                t.copy_(values.abs() + 0.1 if name.endswith("running_var") else values)


def test_weight_average_is_the_mean_of_the_weights_after_n_updates():
    model = _net()
    g = torch.Generator().manual_seed(1)
    snapshots = []
    average = None
    for _ in range(5):
        _randomise(model, g)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        if average is None:
            average = WeightAverage(model, average_buffers=True)
        average.update(model)
    assert average.n_averaged == 5
    averaged = average.module.module.state_dict()
    for name, _ in model.named_parameters():
        expected = torch.stack([s[name] for s in snapshots]).mean(0)  # Eq. 3 unrolled: the plain mean
        torch.testing.assert_close(averaged[name], expected, rtol=1e-6, atol=1e-6)
    for name in ("1.running_mean", "4.running_var"):  # average_buffers=True averages BN statistics too
        torch.testing.assert_close(averaged[name], torch.stack([s[name] for s in snapshots]).mean(0),
                                   rtol=1e-6, atol=1e-6)
    assert all(not p.requires_grad for p in average.module.parameters())


def test_weight_average_without_buffer_averaging_starts_from_the_current_buffers():
    model = _net()
    average = WeightAverage(model, average_buffers=False)
    _randomise(model, torch.Generator().manual_seed(2))
    average.update(model)  # the first update copies weights and (current) buffers
    for (name, own), cur in zip(average.module.module.state_dict().items(), model.state_dict().values()):
        assert torch.equal(own, cur), name


def test_awp_perturb_then_restore_gives_bit_identical_weights():
    torch.manual_seed(0)
    model = _net()
    with torch.no_grad():  # weights of very different magnitudes: plain w + d - d would round
        model[0].weight.mul_(1e-6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    awp = AWP(model, gamma=0.5)
    x, y = torch.rand(8, 2, 6, 6), torch.randint(0, 5, (8,))
    diff = awp.perturbation(lambda m: nn.functional.cross_entropy(m(x), y))
    assert set(diff) == {"0.weight", "3.weight", "6.weight"}  # only weights with >= 2 dimensions
    awp.perturb(diff)
    changed = [k for k in diff if not torch.equal(model.state_dict()[k], before[k])]
    assert changed == sorted(diff)
    awp.restore(diff)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_awp_restore_after_a_step_removes_exactly_the_perturbation():
    torch.manual_seed(0)
    model = _net()
    awp = AWP(model, gamma=0.1)
    x, y = torch.rand(8, 2, 6, 6), torch.randint(0, 5, (8,))
    w0 = model[3].weight.detach().clone()
    diff = awp.perturbation(lambda m: nn.functional.cross_entropy(m(x), y))
    awp.perturb(diff)
    with torch.no_grad():
        model[3].weight.add_(0.25)  # stands in for the optimiser step taken at the perturbed point
    awp.restore(diff)
    torch.testing.assert_close(model[3].weight, w0 + 0.25, rtol=0, atol=1e-6)
    # The perturbation is gamma times each layer's weight norm along the proxy's ascent direction.
    torch.testing.assert_close(diff["3.weight"].norm(), w0.norm(), rtol=1e-5, atol=0)


def test_bn_recalibration_reproduces_the_statistics_of_a_full_pass():
    model = _net()
    _randomise(model, torch.Generator().manual_seed(3))
    data = torch.rand(24, 2, 6, 6) * 3 + 1
    bn_inputs: dict[nn.Module, list[torch.Tensor]] = {model[1]: [], model[4]: []}
    hooks = [m.register_forward_pre_hook(lambda m, args: bn_inputs[m].append(args[0].detach()))
             for m in bn_inputs]
    momenta = [m.momentum for m in bn_inputs]
    model.eval()
    used = recalibrate_bn(model, [(data, None)], "cpu")  # one batch holding the whole data set
    for h in hooks:
        h.remove()
    assert used == 1 and not model.training and [m.momentum for m in bn_inputs] == momenta
    for bn, inputs in bn_inputs.items():
        full = torch.cat(inputs).transpose(0, 1).flatten(1)  # (C, N*H*W) of the statistics' pass
        torch.testing.assert_close(bn.running_mean, full.mean(1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_var, full.var(1, unbiased=True), rtol=1e-4, atol=1e-5)


def test_bn_recalibration_over_equal_batches_is_the_cumulative_average():
    model = _net()
    data = torch.rand(24, 2, 6, 6)
    recalibrate_bn(model, [(b, None) for b in data.split(8)], "cpu")
    split = _net()
    split.load_state_dict(model.state_dict())
    stats = []
    for b in data.split(8):  # each batch's own statistics, one at a time
        recalibrate_bn(split, [(b, None)], "cpu")
        stats.append((split[1].running_mean.clone(), split[1].running_var.clone()))
    torch.testing.assert_close(model[1].running_mean, torch.stack([m for m, _ in stats]).mean(0))
    torch.testing.assert_close(model[1].running_var, torch.stack([v for _, v in stats]).mean(0))
    assert recalibrate_bn(model, [(b, None) for b in data.split(8)], "cpu", max_batches=2) == 2


def test_bn_recalibration_weights_batches_by_their_size():
    """Unequal batches (a short last batch): the average of the per-batch statistics weighted by batch size,
    as the authors' bn_update, not the plain mean over batches."""
    model = _net()
    data = torch.rand(20, 2, 6, 6) * torch.linspace(1, 3, 20).view(20, 1, 1, 1)
    sizes = [16, 4]
    recalibrate_bn(model, [(b, None) for b in data.split(sizes)], "cpu")
    single = _net()
    single.load_state_dict(model.state_dict())
    stats = []
    for b in data.split(sizes):
        recalibrate_bn(single, [(b, None)], "cpu")
        stats.append((single[1].running_mean.clone(), single[1].running_var.clone()))
    weights = torch.tensor(sizes, dtype=torch.float32).view(-1, 1) / sum(sizes)
    weighted_mean = (torch.stack([m for m, _ in stats]) * weights).sum(0)
    torch.testing.assert_close(model[1].running_mean, weighted_mean)
    torch.testing.assert_close(model[1].running_var, (torch.stack([v for _, v in stats]) * weights).sum(0))
    assert not torch.allclose(model[1].running_mean, torch.stack([m for m, _ in stats]).mean(0), atol=1e-3)
