"""Checks for the GPU run that are not unit tests: small calls for compute-sanitizer, and a huge tensor.

    compute-sanitizer --tool memcheck python benchmarks/gpu_checks.py calls   # every kernel, fp32 + bf16
    python benchmarks/gpu_checks.py large                                     # > 2**31 elements, bf16 step

``calls`` runs the FR loss forward and backward, the PGD step and the random start once per dtype on
small, odd-sized inputs (fused path, compared with the reference so a wrong result fails too), then every
other path: per-sample alpha/eps, misaligned and strided inputs, float16/float64, the 2-D FR, double
backward and the C entry point.
``large`` runs one bf16 PGD step on a tensor of more than 2**31 elements (64-bit indexing) and compares
it with the reference clamp chain, slice by slice. Both exit non-zero on a mismatch; on a machine
without CUDA they run on the CPU (a dry run of the script itself).
"""
from __future__ import annotations

import argparse
import sys

import torch

import fr_fast
from fr_fast.ops import reference


def _check(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> bool:
    err = ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()
    ok = err <= tol and bool(torch.isfinite(got).all())
    print(f"{'ok  ' if ok else 'FAIL'} {name}: relative error {err:.2e} (tolerance {tol:.0e})", flush=True)
    return ok


def small_calls(device: str) -> bool:
    """One call of every fused kernel per dtype on small odd shapes, each checked against its reference."""
    ok = True
    g = torch.Generator(device="cpu").manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        for batch, classes in ((7, 10), (33, 100)):
            a = torch.randn(batch, classes, generator=g).to(device, dtype).requires_grad_()
            b = torch.randn(batch, classes, generator=g).to(device, dtype).requires_grad_()
            loss = fr_fast.fr_loss(a, b)
            loss.backward()
            a_ref, b_ref = a.detach().float().requires_grad_(), b.detach().float().requires_grad_()
            loss_ref = reference.fr_loss(a_ref, b_ref)
            loss_ref.backward()
            tag = f"{str(dtype)[6:]} B={batch} C={classes}"
            ok &= _check(f"fr_loss forward {tag}", loss.detach(), loss_ref.detach(), tol)
            ok &= _check(f"fr_loss backward (teacher) {tag}", a.grad, a_ref.grad, tol)
            ok &= _check(f"fr_loss backward (adv) {tag}", b.grad, b_ref.grad, tol)
        shape = (5, 3, 17, 13)  # odd sizes: tails of the vectorised loops
        x_nat = torch.rand(shape, generator=g).to(device, dtype)
        x_adv = (x_nat + 0.03 * torch.randn(shape, generator=g).to(device, dtype)).clamp(0, 1)
        grad = torch.randn(shape, generator=g).to(device, dtype)
        want = reference.pgd_step_(x_adv.clone(), grad, x_nat, 2 / 255, 8 / 255)
        got = fr_fast.pgd_step_(x_adv.clone(), grad, x_nat, 2 / 255, 8 / 255)
        # the kernel rounds once, the clamp chain after every op: 16-bit results one or two ulps apart
        max_diff = (got.float() - want.float()).abs().max().item()
        step_ok = max_diff <= (0.0 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps)
        print(f"{'ok  ' if step_ok else 'FAIL'} pgd_step_ {str(dtype)[6:]}: max |diff| {max_diff:.1e}", flush=True)
        ok &= step_ok
        start = fr_fast.random_start_(torch.empty_like(x_nat), x_nat, 8 / 255)
        inside = bool(((start.float() - x_nat.float()).abs() <= 8 / 255 + 1e-2).all()
                      and (start >= 0).all() and (start <= 1).all())
        print(f"{'ok  ' if inside else 'FAIL'} random_start_ {str(dtype)[6:]}: inside the eps-ball and [0, 1]",
              flush=True)
        ok &= inside
    return ok


def path_calls(device: str) -> bool:
    """The other paths of the kernels, each against the reference: per-sample alpha/eps, misaligned and strided
    inputs, float16/float64, the 2-D FR, double backward, and the C entry point next to torch.ops."""
    ok = True
    g = torch.Generator(device="cpu").manual_seed(1)
    shape = (6, 3, 9, 7)
    for dtype in (torch.float16, torch.float64):
        x_nat = torch.rand(shape, generator=g).to(device, dtype)
        grad = torch.randn(shape, generator=g).to(device, dtype)
        want = reference.pgd_step_(x_nat.clone(), grad, x_nat, 2 / 255, 8 / 255)
        got = fr_fast.pgd_step_(x_nat.clone(), grad, x_nat, 2 / 255, 8 / 255)
        ok &= _check(f"pgd_step_ {str(dtype)[6:]}", got, want, 2 * torch.finfo(dtype).eps)
        a = torch.randn(9, 10, generator=g).to(device, dtype).requires_grad_()
        b = torch.randn(9, 10, generator=g).to(device, dtype)
        ok &= _check(f"fr_loss {str(dtype)[6:]}", fr_fast.fr_loss(a, b).detach(),
                     reference.fr_loss(a.double(), b.double()).to(dtype), 1e-2 if dtype == torch.float16 else 1e-10)
    x_nat = torch.rand(shape, generator=g).to(device)
    grad = torch.randn(shape, generator=g).to(device)
    alpha = torch.rand(shape[0], generator=g).to(device) / 100
    eps = torch.rand(shape[0], generator=g).to(device) / 20
    want = reference.pgd_step_(x_nat.clone(), grad, x_nat, alpha, eps)
    ok &= _check("pgd_step_ per-sample alpha/eps", fr_fast.pgd_step_(x_nat.clone(), grad, x_nat, alpha, eps), want, 0)
    start = fr_fast.random_start_(torch.empty_like(x_nat), x_nat, eps)
    inside = bool(((start - x_nat).abs() <= eps.view(-1, 1, 1, 1) + 1e-6).all())
    print(f"{'ok  ' if inside else 'FAIL'} random_start_ per-sample eps: inside each sample's ball", flush=True)
    ok &= inside
    flat = torch.rand(x_nat.numel() + 1, generator=g).to(device)
    misaligned = flat[1:].view(shape)  # storage offset 1: not 16-byte aligned (the vector loads' tail path)
    strided = torch.rand(shape[0], shape[1], shape[2], 2 * shape[3], generator=g).to(device)[..., ::2]
    for name, x in (("misaligned", misaligned), ("strided", strided)):
        want = reference.pgd_step_(x.clone(), grad, x_nat, 2 / 255, 8 / 255)
        ok &= _check(f"pgd_step_ {name} x_adv", fr_fast.pgd_step_(x.clone(), grad, x_nat, 2 / 255, 8 / 255), want, 0)
        want = reference.pgd_step_(x_nat.clone(), grad, x, 2 / 255, 8 / 255)
        ok &= _check(f"pgd_step_ {name} x_nat", fr_fast.pgd_step_(x_nat.clone(), grad, x, 2 / 255, 8 / 255), want, 0)
    wide = torch.randn(33, 20, generator=g).to(device)
    for batch, classes in ((7, 10), (33, 100)):
        a = torch.randn(batch, classes, generator=g).to(device).requires_grad_()
        b = torch.randn(batch, classes, generator=g).to(device)
        loss = fr_fast.fr_loss(a, b, fft="2d")
        (got,) = torch.autograd.grad(loss, a)
        a_ref = a.detach().double().requires_grad_()
        loss_ref = reference.fr_loss(a_ref, b.double(), fft="2d")
        (want,) = torch.autograd.grad(loss_ref, a_ref)
        ok &= _check(f"fr_loss 2d B={batch} C={classes}", loss.detach(), loss_ref.detach().float(), 1e-5)
        ok &= _check(f"fr_loss 2d backward B={batch} C={classes}", got, want.float(), 1e-5)
    ok &= _check("fr_loss strided input", fr_fast.fr_loss(wide[:, ::2], wide[:, 1::2]),
                 reference.fr_loss(wide[:, ::2], wide[:, 1::2]), 1e-5)
    a = torch.randn(8, 10, generator=g).to(device).requires_grad_()
    try:  # double backward: a gradient of FR's gradient (torch.fft gives one; the fused op may refuse)
        (first,) = torch.autograd.grad(fr_fast.fr_loss(a, torch.zeros_like(a)), a, create_graph=True)
        first.sum().backward()
        print("ok   fr_loss double backward runs", flush=True)
    except RuntimeError as error:
        print(f"note fr_loss double backward refused: {str(error).splitlines()[0][:100]}", flush=True)
    entry = getattr(getattr(fr_fast, "_C", None), "pgd_step_", None)
    if entry is not None:  # the C entry point beside the dispatcher op, same inputs
        x1, x2 = x_nat.clone(), x_nat.clone()
        entry(x1, grad, x_nat, 2 / 255, 8 / 255, 0.0, 1.0)
        torch.ops.fr_fast.pgd_step_(x2, grad, x_nat, 2 / 255, 8 / 255, 0.0, 1.0, None, None)
        ok &= _check("C entry pgd_step_ vs torch.ops", x1, x2, 0)
    else:
        print("note no C entry point for pgd_step_ in this build", flush=True)
    return ok


def large_step(device: str, numel: int) -> bool:
    """One bf16 PGD step on ``numel`` elements against the reference, compared in slices."""
    dtype = torch.bfloat16
    free = torch.cuda.mem_get_info()[0] if device == "cuda" else None
    need = numel * 2 * 3 + (1 << 30)
    if free is not None and free < need:
        print(f"skip large: {free / 2**30:.1f} GiB free, need {need / 2**30:.1f}", flush=True)
        return True
    g = torch.Generator(device=device).manual_seed(1)
    x_nat = torch.rand(numel, generator=g, device=device, dtype=torch.float32).to(dtype)
    grad = torch.randn(numel, generator=g, device=device, dtype=torch.float32).to(dtype)
    x_adv = x_nat.clone()
    fr_fast.pgd_step_(x_adv, grad, x_nat, 2 / 255, 8 / 255)
    if device == "cuda":
        torch.cuda.synchronize()
    ok = True
    chunk = 1 << 28
    for lo in range(0, numel, chunk):  # the reference on slices: its temporaries fit in memory
        hi = min(numel, lo + chunk)
        want = reference.pgd_step_(x_nat[lo:hi].clone(), grad[lo:hi], x_nat[lo:hi], 2 / 255, 8 / 255)
        diff = (x_adv[lo:hi].float() - want.float()).abs()
        if diff.max() > 2 * torch.finfo(dtype).eps:  # one rounding vs the chain's several: <= 2 ulps
            bad = (diff > 2 * torch.finfo(dtype).eps).nonzero()[0].item() + lo
            print(f"FAIL large bf16 step: first mismatch at element {bad} of {numel}", flush=True)
            ok = False
            break
    if ok:
        print(f"ok   large bf16 step: {numel} elements (> 2**31: {numel > 2**31}) within 2 ulps of the reference",
              flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("calls", "large"))
    p.add_argument("--numel", type=int, default=2**31 + 3 * 2**20 + 7, help="elements of the large case")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"gpu_checks {args.what} on {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'} "
          f"(backend {fr_fast.backend(device)})", flush=True)
    ok = (small_calls(device) & path_calls(device)) if args.what == "calls" else large_step(device, args.numel)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
