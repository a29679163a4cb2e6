"""Tests of fr_fast.spectral.analyses: filters, perturbation analyses, Fourier heat maps and plots."""
import functools

import numpy as np
import pytest
import torch
from torch import nn

from fr_fast.spectral import analyses as sp
from fr_fast.spectral import fourier, plots


# ---------------------------------------------------------------------------- helpers
def numpy_filter(x: np.ndarray, k: int, keep_low: bool, clip: bool) -> np.ndarray:
    """Independent filter: mask the *shifted* spectrum, shift back, inverse FFT (numpy)."""
    h, w = x.shape[-2:]
    spec = np.fft.fftshift(np.fft.fft2(x, axes=(-2, -1)), axes=(-2, -1))
    mask = np.zeros((h, w), dtype=bool)
    r0, c0 = h // 2 - k // 2, w // 2 - k // 2
    mask[r0 : r0 + k, c0 : c0 + k] = True
    if not keep_low:
        mask = ~mask
    out = np.fft.ifft2(np.fft.ifftshift(spec * mask, axes=(-2, -1)), axes=(-2, -1)).real
    return np.clip(out, 0, 1) if clip else out


class MeanBrightness(nn.Module):
    """Two classes decided only by the mean intensity (the DC term) of the image."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], dim=1)


class ConstantModel(nn.Module):
    """Ignores its input entirely."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.logits = nn.Parameter(torch.arange(num_classes, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def tiny_cnn(channels=1, classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(classes)
    )


def make_tiny(channels, size, classes, seed=0):
    model = tiny_cnn(channels, classes, seed)
    model(torch.zeros(1, channels, size, size))  # materialise the lazy layer
    return model.eval()


# ---------------------------------------------------------------------------- filters
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 1, 7, 7), (2, 2, 6, 9), (4, 5)])
@pytest.mark.parametrize("clip", [True, False])
def test_filters_match_numpy(shape, clip):
    torch.manual_seed(0)
    x = torch.rand(shape, dtype=torch.float64)
    for k in range(1, min(shape[-2:]) + 1):
        for keep_low, fn in ((True, sp.low_pass), (False, sp.high_pass)):
            ref = numpy_filter(x.numpy(), k, keep_low, clip)
            out = fn(x, k, clip=clip)
            assert out.shape == x.shape and out.dtype == x.dtype
            np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("size", [(8, 8), (7, 7), (6, 10)])
def test_lpf_plus_hpf_is_identity_before_clipping(size):
    x = torch.randn(3, 2, *size)  # also outside [0, 1]: no clipping involved
    for k in range(1, min(size) + 1):
        total = sp.low_pass(x, k, clip=False) + sp.high_pass(x, k, clip=False)
        torch.testing.assert_close(total, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [8, 7])
def test_full_bandwidth_keeps_everything(n):
    x = torch.rand(2, 3, n, n)
    torch.testing.assert_close(sp.low_pass(x, n), x, atol=1e-6, rtol=0)
    assert sp.high_pass(x, n, clip=False).abs().max() < 1e-6


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 1, 7, 7), (2, 2, 6, 9)])
def test_paper_high_pass_keeps_the_centre_of_the_unshifted_spectrum(shape):
    """Sec. 3: "after a FFT, only the k x k patch in the center (viz. high frequencies) is preserved"."""
    torch.manual_seed(0)
    x = torch.rand(shape, dtype=torch.float64)
    h, w = shape[-2:]
    spec = np.fft.fft2(x.numpy(), axes=(-2, -1))
    for k in range(1, min(h, w) + 1):
        mask = np.zeros((h, w), dtype=bool)
        mask[h // 2 - k // 2: h // 2 - k // 2 + k, w // 2 - k // 2: w // 2 - k // 2 + k] = True  # no fftshift
        ref = np.real(np.fft.ifft2(spec * mask, axes=(-2, -1)))
        out = sp.high_pass(x, k, clip=False, definition="paper")
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    if h == w:  # the full bandwidth keeps everything; k = 1 on an even side keeps only the Nyquist checkerboard
        torch.testing.assert_close(sp.high_pass(x, h, clip=False, definition="paper"), x)
    if h == w and h % 2 == 0:
        out = sp.high_pass(x, 1, clip=False, definition="paper")
        checker = torch.tensor([[(-1.0) ** (i + j) for j in range(w)] for i in range(h)], dtype=torch.float64)
        torch.testing.assert_close(out / out[..., :1, :1], checker.expand_as(out))
    with pytest.raises(ValueError, match="high-pass definition"):
        sp.high_pass(x, 2, definition="shifted")


def test_low_pass_of_bandwidth_one_is_the_image_mean():
    x = torch.rand(2, 3, 8, 8)
    out = sp.low_pass(x, 1)
    torch.testing.assert_close(out, x.mean(dim=(-2, -1), keepdim=True).expand_as(x), atol=1e-6, rtol=0)


def test_filter_removes_exactly_the_frequencies_outside_the_square():
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    k = 5
    spec = sp.centered_spectrum(sp.low_pass(x, k, clip=False))[0, 0]
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[8 - 2 : 8 + 3, 8 - 2 : 8 + 3] = True
    assert spec[~inside].max() < 1e-10
    torch.testing.assert_close(spec[inside], sp.centered_spectrum(x)[0, 0][inside])


@pytest.mark.parametrize("bad", [0, -1, 9, 2.5, True, "4", None])
def test_bad_bandwidth_raises(bad):
    x = torch.rand(1, 1, 8, 12)
    with pytest.raises(ValueError, match="bandwidth"):
        sp.low_pass(x, bad)
    with pytest.raises(ValueError, match="bandwidth"):
        sp.high_pass(x, bad)


def test_non_square_uses_min_side_and_bad_inputs_raise():
    x = torch.rand(1, 1, 8, 12)
    assert sp.low_pass(x, 8).shape == x.shape
    assert sp.low_pass(x, np.int64(4)).shape == x.shape
    with pytest.raises(ValueError, match="shape"):
        sp.low_pass(torch.rand(5), 1)
    with pytest.raises(ValueError, match="real"):
        sp.low_pass(torch.rand(4, 4, dtype=torch.complex64), 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_keep_their_dtype(dtype):
    x = torch.rand(2, 3, 8, 8)
    out = sp.low_pass(x.to(dtype), 4)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), sp.low_pass(x, 4), atol=1e-2, rtol=0)


def test_filtered_accuracy_matches_manual_evaluation():
    torch.manual_seed(1)
    model = make_tiny(1, 8, 3)
    x = torch.rand(10, 1, 8, 8)
    y = torch.randint(0, 3, (10,))
    loader = [(x[:4], y[:4]), (x[4:], y[4:])]
    paper_hpf = functools.partial(sp.high_pass, definition="paper")
    for mode, hpf, fn in (("low", "paper", sp.low_pass), ("high", "complement", sp.high_pass),
                          ("high", "paper", paper_hpf)):
        acc = sp.filtered_accuracy(model, loader, [2, 4, 8], mode=mode, n_images=7, hpf=hpf)
        for k in (2, 4, 8):
            with torch.no_grad():
                expect = (model(fn(x[:7], k)).argmax(1) == y[:7]).float().mean().item()
            assert acc[k] == pytest.approx(expect)
    with pytest.raises(ValueError, match="mode"):
        sp.filtered_accuracy(model, loader, [2], mode="band")


# ---------------------------------------------------------------------------- perturbations
def test_perturbation_spectrum_of_a_known_perturbation():
    h = w = 8
    a = 0.05
    m = torch.arange(h, dtype=torch.float32)
    pattern = a * torch.cos(2 * torch.pi * m / h)[:, None].expand(h, w)  # vertical frequency 1

    def attack(model, x, y):
        return x + pattern

    x = torch.rand(6, 3, h, w)
    res = sp.perturbation_spectrum(ConstantModel(), [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(2))],
                                   eps=a, n_images=5, attack=attack, n_examples=3)
    expect = torch.zeros(h, w)
    expect[h // 2 - 1, w // 2] = expect[h // 2 + 1, w // 2] = a * h * w / 2
    torch.testing.assert_close(res.mean, expect, atol=1e-4, rtol=0)
    assert res.n_images == 5
    assert res.x.shape == (3, 3, h, w) and res.delta.shape == (3, 3, h, w)
    torch.testing.assert_close(res.spectra, expect.expand(3, h, w), atol=1e-4, rtol=0)


@pytest.mark.parametrize("hpf", ["paper", "complement"])
def test_band_accuracy_with_a_constant_perturbation(hpf):
    # a constant delta lives only at DC: every low-pass keeps it; the complement high-pass always removes it,
    # the paper's (centre of the unshifted spectrum) keeps it only at the full bandwidth 8
    torch.manual_seed(0)
    x = 0.4 + 0.15 * torch.rand(12, 1, 8, 8)
    y = torch.zeros(12, dtype=torch.long)  # MeanBrightness says class 0 (mean < 0.5)

    def attack(model, x, y):
        return x + 0.1

    res = sp.perturbation_band_accuracy(MeanBrightness(), [(x, y)], 0.1, [1, 4, 8], attack=attack, hpf=hpf)
    clean = (MeanBrightness()(x).argmax(1) == y).float().mean().item()
    robust = (MeanBrightness()(x + 0.1).argmax(1) == y).float().mean().item()
    assert res["clean"] == pytest.approx(clean) and res["robust"] == pytest.approx(robust)
    assert robust < clean  # the test is only meaningful if the attack does something
    for k in (1, 4, 8):
        assert res["lpf_delta"][k] == pytest.approx(robust)
        assert res["hpf_delta"][k] == pytest.approx(robust if hpf == "paper" and k == 8 else clean)
        assert res["lpf_input"][k] == pytest.approx(clean)  # LPF keeps the mean (no clipping here)
    assert res["n_images"] == 12


def test_default_attack_uses_fr_fast_pgd():
    pytest.importorskip("fr_fast.robustness.attacks")
    model = make_tiny(1, 8, 3)
    x = torch.rand(4, 1, 8, 8)
    y = torch.randint(0, 3, (4,))
    res = sp.perturbation_spectrum(model, [(x, y)], eps=0.1, n_images=4, steps=2)
    assert res.mean.shape == (8, 8) and torch.isfinite(res.mean).all()
    # |delta| <= eps everywhere  =>  |FFT(delta)| <= eps * H * W
    assert res.delta.abs().max() <= 0.1 + 1e-6
    assert res.mean.max() <= 0.1 * 64 + 1e-4


def test_bad_eps_raises():
    with pytest.raises(ValueError, match="eps"):
        sp.perturbation_spectrum(ConstantModel(), [], eps=-1.0, attack=lambda m, x, y: x)


# ---------------------------------------------------------------------------- heat maps
@pytest.mark.parametrize("h,w", [(6, 6), (5, 5), (4, 7)])
def test_fourier_basis_unit_norm_and_one_or_two_point_spectrum(h, w):
    for i in range(h):
        for j in range(w):
            b = sp.fourier_basis(i, j, h, w, dtype=torch.float64)
            assert b.norm().item() == pytest.approx(1.0)
            spec = sp.centered_spectrum(b)
            support = {tuple(p) for p in (spec > 1e-9).nonzero().tolist()}
            mirror = fourier.mirror(i, j, h, w)
            assert support == {(i, j), mirror}
            torch.testing.assert_close(b, sp.fourier_basis(*mirror, h, w, dtype=torch.float64))
    # DC (centre) is its own mirror: a constant image
    dc = sp.fourier_basis(h // 2, w // 2, h, w, dtype=torch.float64)
    torch.testing.assert_close(dc, torch.full((h, w), 1 / (h * w) ** 0.5, dtype=torch.float64))
    with pytest.raises(ValueError):
        sp.fourier_basis(h, 0, h, w)


def test_heatmap_signs_are_shared_by_mirror_points():
    g = torch.Generator().manual_seed(0)
    s = sp.heatmap_signs(5, 3, 6, 7, g)
    assert s.shape == (6, 7, 5, 3)
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    for i in range(6):
        for j in range(7):
            assert torch.equal(s[i, j], s[fourier.mirror(i, j, 6, 7)])


def test_heatmap_of_input_independent_model_is_flat():
    model = ConstantModel(3)  # always predicts class 2
    x = torch.rand(6, 3, 5, 5)
    y = torch.tensor([2, 0, 2, 1, 2, 2])
    heat = sp.fourier_heatmap(model, x, y, eps_norm=3.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(heat, torch.full((5, 5), 2 / 6))


@pytest.mark.parametrize("h,w,channels", [(6, 6, 1), (5, 7, 2)])
def test_fast_heatmap_equals_loop(h, w, channels):
    model = make_tiny(channels, h, 4, seed=3)
    if h != w:
        model = tiny_cnn(channels, 4, seed=3)
        model(torch.zeros(1, channels, h, w))
        model.eval()
    torch.manual_seed(5)
    x = torch.rand(8, channels, h, w)
    with torch.no_grad():
        y = model(x).argmax(1)  # error rate = fraction of predictions flipped by the noise
    signs = sp.heatmap_signs(8, channels, h, w, torch.Generator().manual_seed(1))
    slow = sp.fourier_heatmap_loop(model, x, y, 2.0, signs=signs)
    fast = sp.fourier_heatmap(model, x, y, 2.0, signs=signs, batch_size=50)
    assert slow.std() > 0  # the model must react to the noise for the comparison to mean anything
    torch.testing.assert_close(fast, slow)
    # the same seed through a generator gives the same map
    g1, g2 = (torch.Generator().manual_seed(9) for _ in range(2))
    torch.testing.assert_close(sp.fourier_heatmap(model, x, y, 2.0, generator=g1),
                               sp.fourier_heatmap_loop(model, x, y, 2.0, generator=g2))


def test_heatmap_bad_inputs_raise():
    model = ConstantModel()
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        sp.fourier_heatmap(model, x[0], torch.zeros(2, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="y"):
        sp.fourier_heatmap(model, x, torch.zeros(3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="eps"):
        sp.fourier_heatmap(model, x, torch.zeros(2, dtype=torch.long), -1.0)
    with pytest.raises(ValueError, match="signs"):
        sp.fourier_heatmap(model, x, torch.zeros(2, dtype=torch.long), 1.0, signs=torch.ones(4, 4, 2, 3))


# ---------------------------------------------------------------------------- plots and data files
def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plots_and_data_files_are_written(tmp_path):
    acc = {"natural (LPF)": {4: 0.3, 8: 0.9}, "AT (LPF)": {4: 0.5, 8: 0.7}}
    bands = {"m": {"bandwidths": [4, 8], "clean": 0.9, "robust": 0.1, "lpf_delta": {4: 0.8, 8: 0.2},
                   "hpf_delta": {4: 0.1, 8: 0.9}, "lpf_input": {4: 0.5, 8: 0.9}}}
    maps = {"a": torch.rand(8, 8), "b": torch.rand(8, 8)}
    x = torch.rand(2, 3, 8, 8)
    paths = [
        plots.plot_filtered_accuracy(acc, tmp_path / "f" / "lpf.png", high=acc),
        plots.plot_filtered_accuracy(acc, tmp_path / "lpf_only.png"),
        plots.plot_spectra(maps, tmp_path / "spec.png"),
        plots.plot_band_accuracy(bands, tmp_path / "bands.png"),
        plots.plot_fourier_heatmaps(maps, tmp_path / "heat.png"),
        plots.plot_panel(x, 0.03 * torch.randn_like(x), 4, tmp_path / "panel.png"),
        plots.plot_panel(x[:, :1], 0.03 * torch.randn(2, 1, 8, 8), 4, tmp_path / "panel_gray.png"),
    ]
    for p in paths:
        assert _is_png(p)
    csv_path = plots.save_accuracy_csv(acc, tmp_path / "lpf.csv")
    lines = open(csv_path).read().splitlines()
    assert lines[0] == "series,bw4_acc_pct,bw8_acc_pct" and lines[1].startswith("natural (LPF),30.00,90.00")
    js = plots.save_json({"heat": maps["a"], "bands": bands}, tmp_path / "d.json")
    import json

    data = json.load(open(js))
    assert len(data["heat"]) == 8 and data["bands"]["m"]["lpf_delta"]["4"] == 0.8
