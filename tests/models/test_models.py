"""Model registry, shapes, channels_last equivalence, parameter counts, in-model normalisation."""
import pytest
import torch

import fr_fast
from fr_fast.models import Normalize, build_model, list_models

SMALL = ["small_cnn", "preact_resnet18", "resnet18"]
# Parameter counts for 10 classes from the paper (Appendix A.5, Table 4).
PAPER_PARAMS = {"resnet18": 11.174e6, "wrn34_10": 46.160e6, "resnet152": 58_156_618, "wrn34_15": 103_819_674}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_all_required_names():
    assert {"small_cnn", "preact_resnet18", "resnet18", "wrn", "wrn34_10", "wrn34_15", "resnet152"} <= set(list_models())


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnet18.*small_cnn|small_cnn"):
        build_model("resnet19", 10)


@pytest.mark.parametrize("bad", [dict(num_classes=0), dict(num_classes=10, in_channels=0),
                                 dict(num_classes=10, mean=[0.1, 0.2]), dict(num_classes=10, std=0.0),
                                 dict(num_classes=10, no_such_option=3)])
def test_bad_arguments_raise_value_error(bad):
    with pytest.raises(ValueError):
        build_model("small_cnn", **bad)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (1, 32), (3, 28)])
def test_output_shape(name, channels, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=channels).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_larger_input_size():
    model = build_model("resnet18", num_classes=200, in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 200)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("train_mode", [False, True])
def test_channels_last_matches_contiguous(name, train_mode):
    torch.manual_seed(0)
    model = build_model(name, 10, in_channels=3, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    model.train(train_mode)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_channels_last_backward_input_gradient():
    # Attacks need input gradients through channels_last models.
    torch.manual_seed(0)
    model = build_model("resnet18", 10).eval()
    x = torch.rand(2, 3, 32, 32)
    x1 = x.clone().requires_grad_(True)
    model(x1).logsumexp(1).sum().backward()
    model = model.to(memory_format=torch.channels_last)
    x2 = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    model(x2).logsumexp(1).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name,expected", list(PAPER_PARAMS.items()))
def test_parameter_counts_match_paper(name, expected):
    with torch.device("meta"):  # count only: no memory, no init time for the 100M-parameter models
        model = build_model(name, num_classes=10)
    assert abs(n_params(model) - expected) / expected < 0.01


def test_wrn_depth_and_width_kwargs():
    with torch.device("meta"):
        assert n_params(build_model("wrn", 10, depth=34, widen=10)) == n_params(build_model("wrn34_10", 10))
        assert n_params(build_model("wrn", 10, depth=16, widen=2)) < n_params(build_model("wrn", 10, depth=28, widen=2))
    with pytest.raises(ValueError, match="depth"):
        build_model("wrn", 10, depth=33)


def test_big_models_forward_once():
    torch.manual_seed(0)
    for name, kwargs in [("wrn", dict(depth=10, widen=1, dropout=0.3)), ("resnet152", {})]:
        model = build_model(name, 10, in_channels=1, **kwargs).eval()
        with torch.no_grad():
            assert model(torch.rand(1, 1, 28, 28)).shape == (1, 10)


def test_normalize_is_parameter_free_and_correct():
    model = build_model("small_cnn", 10, in_channels=3, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0])
    norm = model[0]
    assert isinstance(norm, Normalize)
    assert n_params(norm) == 0
    assert set(dict(norm.named_buffers())) == {"mean", "std"}
    assert "normalize.mean" in model.state_dict()
    x = torch.rand(2, 3, 5, 5)
    expected = (x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    out_cl = norm(x.contiguous(memory_format=torch.channels_last))
    assert out_cl.is_contiguous(memory_format=torch.channels_last)


def test_normalize_defaults_to_identity_and_broadcasts_scalars():
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(build_model("small_cnn", 10)[0](x), x)
    torch.testing.assert_close(Normalize(0.5, 0.5, channels=3)(x), (x - 0.5) / 0.5)


def test_normalize_rejects_wrong_channels():
    model = build_model("small_cnn", 10, in_channels=1)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(2, 3, 28, 28))


def test_normalize_keeps_low_precision_dtype():
    norm = Normalize([0.5], [0.25], channels=1)
    assert norm(torch.rand(2, 1, 4, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_small_cnn_learns():
    # A few SGD steps on a separable toy task must reduce the loss: the model is trainable end to end.
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, in_channels=1, width=8)
    x = torch.rand(32, 1, 28, 28)
    y = (x[:, 0, :14].mean((1, 2)) > x[:, 0, 14:].mean((1, 2))).long()
    x[y == 1, :, :14] += 0.5
    x = x.clamp(0, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_channels_last_autocast():
    model = build_model("resnet18", 10).cuda().to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------ L-model filter layer
def test_low_pass_layer_gives_the_logits_of_the_old_dataset_side_filter():
    """The L-model's LowPass layer gives the same clean logits as the former dataset hook, which fed the
    model ``low_pass(x, k, clip=True)`` of each loader batch, on the same images and weights."""
    from fr_fast.data import BatchLoader, load_dataset
    from fr_fast.spectral.fourier import low_pass

    x, _ = next(iter(BatchLoader(load_dataset("mnist", "test"), 32, train=False)))
    torch.manual_seed(0)
    l_model = build_model("small_cnn", 10, 1, low_pass_bandwidth=8, width=8).eval()
    plain = build_model("small_cnn", 10, 1, width=8).eval()
    assert l_model.state_dict().keys() == plain.state_dict().keys()  # the filter has no state
    plain.load_state_dict(l_model.state_dict())
    with torch.no_grad():
        assert torch.equal(l_model(x), plain(low_pass(x, 8, clip=True)))
        assert not torch.allclose(l_model(x), plain(x), atol=1e-3)  # the filter does change the input


def test_low_pass_layer_passes_gradients_and_keeps_the_memory_format():
    from fr_fast.models import LowPass
    from fr_fast.spectral.fourier import low_pass

    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = LowPass(6)(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    weights = torch.randn(2, 3, 16, 16)
    (out * weights).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    (low_pass(x_ref, 6, clip=True) * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="bandwidth must be an integer >= 1"):
        LowPass(0)
    with pytest.raises(ValueError, match="bandwidth must be in"):
        LowPass(20)(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("name", list_models())
def test_every_model_marks_a_float32_head(name):
    from fr_fast.models._registry import _MODELS
    from fr_fast.models.head import ClassifierHead, has_head
    with torch.device("meta"):  # no memory for the large ones
        network = _MODELS[name](num_classes=3, in_channels=1)
    assert has_head(network)
    heads = [m for m in network.modules() if isinstance(m, ClassifierHead)]
    assert len(heads) == 1 and heads[0].out_features == 3


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_logits_are_float32_under_bf16_autocast(name):
    model = build_model(name, num_classes=10).eval()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        logits = model(torch.rand(2, 3, 32, 32))
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("classes", [10, 100, 200])
def test_fr_gradient_through_the_head_under_bf16_matches_float32(classes):
    """Same (bf16-representable) features: the FR gradient of the marked head under bf16 autocast equals the
    float32 one, while a plain Linear (bf16 logits) is off by far more than the 12-15 % of rounding logits."""
    from fr_fast.models.head import ClassifierHead
    torch.manual_seed(classes)
    head = ClassifierHead(512, classes)
    plain = torch.nn.Linear(512, classes)
    plain.load_state_dict(head.state_dict())
    teacher = (2 * torch.rand(128, 512)).bfloat16().float()
    adv = (teacher + 0.05 * torch.randn_like(teacher)).bfloat16().float()

    def fr_grad(layer, amp):
        layer.zero_grad()
        with torch.autocast("cpu", torch.bfloat16, enabled=amp):
            loss = fr_fast.fr_loss(layer(teacher), layer(adv), fft="2d")
        loss.backward()  # outside autocast, as the trainer does
        return layer.weight.grad.clone()

    exact = fr_grad(head, amp=False)
    error = lambda g: ((g - exact).norm() / exact.norm()).item()  # noqa: E731
    assert error(fr_grad(head, amp=True)) < 1e-3
    assert error(fr_grad(plain, amp=True)) > 0.1  # the control: bf16 logits


def test_unmarked_model_is_rejected(monkeypatch):
    from fr_fast.models import _registry
    monkeypatch.setitem(_registry._MODELS, "bare_linear",
                        lambda num_classes, in_channels: torch.nn.Sequential(torch.nn.Flatten(),
                                                                             torch.nn.LazyLinear(num_classes)))
    with pytest.raises(ValueError, match="ClassifierHead"):
        build_model("bare_linear", num_classes=10)
