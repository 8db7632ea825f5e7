"""Visible tests of chapter 6 (NICE, RealNVP, Glow, bits per dimension).

Each test says what was expected. They are small on purpose: the hidden checks, run by the grader outside the
student's kernel, use other shapes, random inputs and edge cases.
"""

from __future__ import annotations

import math

import torch

from course_tools.check import expect, need, visible
from course_tools.checks._common import F64, close, tensor


# ---------------------------------------------------------------- Q1 checkerboard
@visible("ch06.q1.basic", "Q1 the 4 x 4 checkerboard of parity 0 starts with 1.0 at the top left")
def _q1_basic(ns):
    checkerboard = need(ns, "checkerboard")
    m = tensor(checkerboard(4, 4, 0), "checkerboard(4, 4, 0)", shape=(4, 4), dtype=F64)
    want = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]
    expect(m.tolist() == want, f"expected 1.0 where (i + j) % 2 == 0, i.e. {want[0]} in row 0; got {m.tolist()[0]}")


@visible("ch06.q1.shapes", "Q1 a 3 x 5 mask of parity 1 is the complement of parity 0")
def _q1_shapes(ns):
    checkerboard = need(ns, "checkerboard")
    m0 = tensor(checkerboard(3, 5, 0), "checkerboard(3, 5, 0)", shape=(3, 5), dtype=F64)
    m1 = tensor(checkerboard(3, 5, 1), "checkerboard(3, 5, 1)", shape=(3, 5), dtype=F64)
    expect(bool(((m0 + m1) == 1).all()), "parity 0 and parity 1 should be complements (they add up to ones)")
    expect(m1[0, 1].item() == 1.0 and m1[0, 0].item() == 0.0, "for parity 1, pixel (0, 1) is 1.0 and pixel (0, 0) 0.0")


# ---------------------------------------------------------------- Q2 squeeze
@visible("ch06.q2.squeeze", "Q2 squeeze of a numbered 1 x 1 x 4 x 4 image: channel 0 holds pixels 0, 2, 8, 10")
def _q2_squeeze(ns):
    squeeze = need(ns, "squeeze")
    x = torch.arange(16, dtype=F64).reshape(1, 1, 4, 4)
    z = tensor(squeeze(x.clone()), "squeeze(x)", shape=(1, 4, 2, 2), dtype=F64)
    want = [[[0.0, 2.0], [8.0, 10.0]], [[1.0, 3.0], [9.0, 11.0]],
            [[4.0, 6.0], [12.0, 14.0]], [[5.0, 7.0], [13.0, 15.0]]]
    expect(
        z[0].tolist() == want,
        "channel 2p + q should hold the pixels at offset (p, q) of every 2 x 2 block: expected channels "
        f"{want}, got {z[0].tolist()} (did you permute the block offsets before the block positions?)",
    )


@visible("ch06.q2.inverse", "Q2 unsqueeze(squeeze(x)) == x for a 2 x 3 x 4 x 6 batch")
def _q2_inverse(ns):
    squeeze, unsqueeze = need(ns, "squeeze"), need(ns, "unsqueeze")
    x = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    z = tensor(squeeze(x.clone()), "squeeze(x)", shape=(2, 12, 2, 3))
    back = tensor(unsqueeze(z.clone()), "unsqueeze(squeeze(x))", shape=(2, 3, 4, 6))
    expect(torch.equal(back, x), "unsqueeze(squeeze(x)) should give x back exactly")


# ---------------------------------------------------------------- Q3 affine coupling
def _conditioner(h):
    return 0.5 * h.roll(1, dims=1), h.roll(1, dims=1) + 1.0


@visible("ch06.q3.map", "Q3 copied entries unchanged; transformed ones x * exp(s) + t (a fixed conditioner)")
def _q3_map(ns):
    affine_coupling = need(ns, "affine_coupling")
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=F64)
    mask = torch.tensor([True, False, True, False])
    z, _ = affine_coupling(x.clone(), mask, _conditioner)
    z = tensor(z, "z", shape=(1, 4), dtype=F64)
    # masked input [1, 0, 3, 0]; rolled [0, 1, 0, 3]: s = [0, .5, 0, 1.5], t = [1, 2, 1, 4]
    want = [1.0, 2.0 * math.exp(0.5) + 2.0, 3.0, 4.0 * math.exp(1.5) + 4.0]
    expect(
        all(close(a, b) for a, b in zip(z[0].tolist(), want)),
        f"expected z = {[round(v, 4) for v in want]}, got {[round(v, 4) for v in z[0].tolist()]} "
        "(mask True = copied; the conditioner takes mask * x)",
    )


def _uniform_scale(h):
    """s = a quarter of the sum of the copied entries, the same for every entry (copied ones too)."""
    return (0.25 * h.sum(1))[:, None].expand_as(h), h.roll(1, dims=1) + 1.0


@visible("ch06.q3.logdet", "Q3 log-det = sum of s over the transformed entries only, one per sample")
def _q3_logdet(ns):
    affine_coupling = need(ns, "affine_coupling")
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([True, False, True, False])
    _, logdet = affine_coupling(x.clone(), mask, _uniform_scale)
    logdet = tensor(logdet, "logdet", shape=(2,), dtype=F64)
    # masked input [1, 0, 3, 0]: s = (1 + 3) / 4 = 1 on each entry, two of them transformed
    expect(
        close(logdet[0].item(), 2.0) and close(logdet[1].item(), 0.0),
        f"expected log-dets [2.0, 0.0] (s = 1 on each of the 2 transformed entries), got {logdet.tolist()} "
        "(did you sum s over the copied entries too?)",
    )


# ---------------------------------------------------------------- Q4 ActNorm
@visible("ch06.q4.output", "Q4 after initialisation every channel has mean 0 and std 1 over batch and pixels")
def _q4_output(ns):
    actnorm_init = need(ns, "actnorm_init")
    g = torch.Generator().manual_seed(1)
    x = torch.tensor([3.0, -1.0]).view(1, 2, 1, 1) + torch.tensor([2.0, 0.5]).view(1, 2, 1, 1) * torch.randn(
        8, 2, 3, 3, generator=g, dtype=F64
    )
    z, _ = actnorm_init(x.clone())
    z = tensor(z, "z", shape=(8, 2, 3, 3), dtype=F64)
    per_channel = z.transpose(0, 1).reshape(2, -1)  # channel k: all its values over batch, height and width
    mean = per_channel.mean(1)
    std = (per_channel - mean[:, None]).pow(2).mean(1).sqrt()
    expect(bool(mean.abs().max() < 1e-10), f"per-channel means should be 0, got {mean.tolist()}")
    expect(
        bool((std - 1).abs().max() < 1e-10),
        f"per-channel (population) stds should be 1, got {std.tolist()} (average over batch, height and width)",
    )


@visible("ch06.q4.logdet", "Q4 log-det = h w sum_k log S_k: a 4 x 5 image with channel stds 2 and 1/4")
def _q4_logdet(ns):
    actnorm_init = need(ns, "actnorm_init")
    # channel 0 takes the values +-2 (std 2), channel 1 the values +-1/4 (std 1/4)
    signs = torch.tensor([1.0, -1.0], dtype=F64).repeat(10).reshape(1, 1, 4, 5).expand(2, 1, 4, 5)
    x = torch.cat([2.0 * signs, 0.25 * signs], dim=1).clone()
    _, logdet = actnorm_init(x)
    logdet = tensor(logdet, "logdet", shape=(2,), dtype=F64)
    want = -20 * (math.log(2.0) + math.log(0.25))
    expect(
        all(close(v, want) for v in logdet.tolist()),
        f"expected h w sum_k log S_k = -20 (log 2 + log 1/4) = {want:.4f} for both images, got {logdet.tolist()} "
        "(did you forget the factor h w, or use S = std instead of 1 / std?)",
    )


# ---------------------------------------------------------------- Q5 1x1 conv
@visible("ch06.q5", "Q5 h w log|det W| from the diagonal of U (with a negative entry), P a swap")
def _q5(ns):
    conv1x1_logdet = need(ns, "conv1x1_logdet")
    P = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    L = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [-1.0, 2.0, 1.0]], dtype=F64)
    U = torch.tensor([[2.0, 1.0, -1.0], [0.0, -3.0, 0.5], [0.0, 0.0, 0.5]], dtype=F64)
    got = tensor(conv1x1_logdet(P, L, U, 4, 2), "conv1x1_logdet(P, L, U, 4, 2)", shape=())
    want = 8 * math.log(3.0)
    expect(
        close(got.item(), want),
        f"expected h w sum_i log|U_ii| = 8 log 3 = {want:.4f}, got {got.item():.4f} "
        "(take the absolute value of the diagonal; det P = -1 and det L = 1 do not change |det W|)",
    )


# ---------------------------------------------------------------- Q6 bits per dimension
@visible("ch06.q6.uniform", "Q6 the uniform density (log p = 0) scores log2 L bits/dim: 8 for 256 levels")
def _q6_uniform(ns):
    bits_per_dim = need(ns, "bits_per_dim")
    got = tensor(bits_per_dim(torch.zeros(5, dtype=F64), 64, 256), "bits_per_dim(...)", shape=(), dtype=F64)
    expect(close(got.item(), 8.0), f"expected exactly 8.0 bits/dim for log p = 0 with 256 levels, got {got.item()}")


@visible("ch06.q6.levels", "Q6 17 levels (the digits): offset log2 17, and the average over the batch")
def _q6_levels(ns):
    bits_per_dim = need(ns, "bits_per_dim")
    log_p = torch.tensor([100.0, 140.0], dtype=F64)
    got = tensor(bits_per_dim(log_p, 64, 17), "bits_per_dim(...)", shape=(), dtype=F64).item()
    want = 1.3824096395835332  # log2 17 - 120 / (64 ln 2)
    expect(
        close(got, want),
        f"expected (-120 + 64 log 17) / (64 log 2) = {want:.4f}, got {got:.4f} (is the offset D log L, in nats?)",
    )
