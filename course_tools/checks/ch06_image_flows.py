"""Visible tests of chapter 6 (squeeze, couplings, batch norm as a flow, Glow's size, bits/dim, temperature).

Each test says what was expected. They are small on purpose: the hidden checks, run by the grader outside the
student's kernel, use other shapes, random inputs and edge cases. Expected values are literals worked out by hand
(and confirmed with autograd or torch.nn.BatchNorm2d) or properties checked by another route.
"""

from __future__ import annotations

import math

import torch

from course_tools.check import expect, need, visible
from course_tools.checks._common import F64, close, fmt, tensor, tensors


# ---------------------------------------------------------------- Q1 squeeze (diagnose)
@visible("ch06.q1.squeeze", "Q1 squeeze of a numbered 1 x 2 x 2 x 2 image: channel 4c + 2p + q holds x[c, p, q]")
def _q1_squeeze(ns):
    squeeze = need(ns, "squeeze")
    x = torch.arange(8, dtype=F64).reshape(1, 2, 2, 2)  # channel 0 holds 0..3, channel 1 holds 4..7
    z = tensor(squeeze(x.clone()), "squeeze(x)", shape=(1, 8, 1, 1), dtype=F64)
    got = z.reshape(-1).tolist()
    expect(
        got == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        "the four pixels of input channel c should become channels 4c..4c+3, in the order top-left, top-right, "
        f"bottom-left, bottom-right: expected [0, 1, ..., 7], got {got} (with one channel every order looks right)",
    )


@visible("ch06.q1.unsqueeze", "Q1 unsqueeze of 8 numbered channels, and unsqueeze(squeeze(x)) == x for 3 channels")
def _q1_unsqueeze(ns):
    squeeze, unsqueeze = need(ns, "squeeze"), need(ns, "unsqueeze")
    z = torch.arange(8, dtype=F64).reshape(1, 8, 1, 1)
    x = tensor(unsqueeze(z.clone()), "unsqueeze(z)", shape=(1, 2, 2, 2), dtype=F64)
    expect(x.reshape(-1).tolist() == [float(v) for v in range(8)],
           f"channels 0-3 should fill the 2 x 2 block of channel 0, channels 4-7 that of channel 1; got {x.tolist()}")
    y = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    back = tensor(unsqueeze(squeeze(y.clone())), "unsqueeze(squeeze(x))", shape=(2, 3, 4, 6))
    expect(torch.equal(back, y), "unsqueeze(squeeze(x)) should give a 3-channel x back exactly")


# ---------------------------------------------------------------- Q2 sigmoid-scale coupling (derive)
def _conditioner(h):
    """r = (masked input rolled by one) - 2, so that r + 2 is the rolled input; t = half of it."""
    rolled = h.roll(1, dims=1)
    return rolled - 2.0, 0.5 * rolled


def _sig(a):
    return 1.0 / (1.0 + math.exp(-a))


@visible("ch06.q2.forward", "Q2 z = (x + t) sigmoid(r + 2) on the transformed entries, and its log-det (by hand)")
def _q2_forward(ns):
    sigmoid_coupling = need(ns, "sigmoid_coupling")
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=F64)
    mask = torch.tensor([True, False, True, False])
    z, logdet = tensors(sigmoid_coupling(x.clone(), mask, _conditioner), "sigmoid_coupling(x, mask, conditioner)")
    z = tensor(z, "z", shape=(1, 4), dtype=F64)
    logdet = tensor(logdet, "logdet", shape=(1,), dtype=F64)
    # masked input [1, 0, 3, 0], rolled [0, 1, 0, 3]: r + 2 = [0, 1, 0, 3], t = [0, 0.5, 0, 1.5]
    want = [1.0, 2.5 * _sig(1.0), 3.0, 5.5 * _sig(3.0)]
    expect(close(z[0], want), f"expected z = {fmt(want)}, got {fmt(z)} (mask True = copied; shift by t, then "
                              "multiply by sigmoid(r + 2))")
    want_ld = math.log(_sig(1.0)) + math.log(_sig(3.0))
    expect(close(logdet[0].item(), want_ld), f"expected log-det {want_ld:.6f} (two transformed entries), "
                                             f"got {logdet[0].item():.6f}")


@visible("ch06.q2.inverse", "Q2 the inverse undoes the forward on a random batch, and the log-dets cancel")
def _q2_inverse(ns):
    sigmoid_coupling, inverse = need(ns, "sigmoid_coupling"), need(ns, "sigmoid_coupling_inverse")
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    mask = torch.tensor([False, True, True, False])
    z, ld = tensors(sigmoid_coupling(x.clone(), mask, _conditioner), "sigmoid_coupling(...)")
    back, ld_inv = tensors(inverse(z.clone(), mask, _conditioner), "sigmoid_coupling_inverse(...)")
    back = tensor(back, "x", shape=(3, 4), dtype=F64)
    ld_inv = tensor(ld_inv, "logdet of the inverse", shape=(3,), dtype=F64)
    expect(close(back, x), "sigmoid_coupling_inverse(sigmoid_coupling(x)) should give x back "
                           "(the conditioner sees mask * z, which equals mask * x)")
    expect(close(ld_inv, -ld), f"the inverse's log-det should be minus the forward's: got {fmt(ld_inv)} and "
                               f"{fmt(ld)}")


# ---------------------------------------------------------------- Q3 batch norm as a flow (derive)
# channel 0: mean 1, var + eps = 4, gamma = 4 -> z = 2 (x - 1) - 1; channel 1: mean 0, var + eps = 1/4, gamma = 1/2
# -> z = x + 1/2. Confirmed with torch.nn.BatchNorm2d in evaluation mode.
def _bn():
    return (torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([3.99, 0.24], dtype=F64),
            torch.tensor([math.log(4.0), math.log(0.5)], dtype=F64), torch.tensor([-1.0, 0.5], dtype=F64), 0.01)


@visible("ch06.q3.map", "Q3 a 2-channel layer whose scales are 2 and 1: forward values by hand, inverse round trip")
def _q3_map(ns):
    forward, inverse = need(ns, "batchnorm_flow"), need(ns, "batchnorm_flow_inverse")
    x = torch.tensor([[[[1.0, 3.0]], [[0.5, -1.0]]]], dtype=F64)
    z, _ = tensors(forward(x.clone(), *_bn()), "batchnorm_flow(...)")
    z = tensor(z, "z", shape=(1, 2, 1, 2), dtype=F64)
    want = [-1.0, 3.0, 1.0, -0.5]
    expect(close(z.reshape(-1), want), f"expected z = {want} (channel by channel), got {fmt(z)} "
                                       "(eps goes inside the square root; gamma = exp(log_gamma))")
    y = torch.randn(2, 2, 3, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    zy, _ = tensors(forward(y.clone(), *_bn()), "batchnorm_flow(...)")
    back, _ = tensors(inverse(zy.clone(), *_bn()), "batchnorm_flow_inverse(...)")
    expect(close(tensor(back, "x", shape=(2, 2, 3, 2), dtype=F64), y),
           "batchnorm_flow_inverse(batchnorm_flow(x)) should give x back")


@visible("ch06.q3.logdet", "Q3 log-det of the same layer on 3 x 2 images: 6 (log 2 + log 1); the inverse: minus it")
def _q3_logdet(ns):
    forward, inverse = need(ns, "batchnorm_flow"), need(ns, "batchnorm_flow_inverse")
    y = torch.randn(2, 2, 3, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    _, ld = tensors(forward(y.clone(), *_bn()), "batchnorm_flow(...)")
    _, ld_inv = tensors(inverse(y.clone(), *_bn()), "batchnorm_flow_inverse(...)")
    ld = tensor(ld, "logdet", shape=(2,), dtype=F64)
    ld_inv = tensor(ld_inv, "logdet of the inverse", shape=(2,), dtype=F64)
    want = 6 * math.log(2.0)
    expect(close(ld, [want, want]), f"expected {want:.4f} for both images (h w = 6 pixels per channel, scales 2 and "
                                    f"1), got {fmt(ld)} (did you forget the factor h w?)")
    expect(close(ld_inv, [-want, -want]), f"expected {-want:.4f} for the inverse, got {fmt(ld_inv)}")


# ---------------------------------------------------------------- Q4 Glow's size (predict)
@visible("ch06.q4", "Q4 one step on 1 x 2 x 2 images with 4 hidden channels: 268; the chapter's digits Glow: 149,136")
def _q4(ns):
    glow_num_params = need(ns, "glow_num_params")
    small = glow_num_params((1, 2, 2), 1, 1, 4)
    # squeezed to 4 channels: ActNorm 8, LU 6 + 6 + 4 = 16, conditioner (2*9 + 1)*4 + (4 + 1)*4 + (4*9 + 1)*4 = 244
    expect(small == 268, f"glow_num_params((1, 2, 2), 1, 1, 4): expected 8 + 16 + 244 = 268, got {small} "
                         "(L and U count only their free entries; every convolution has a bias)")
    digits = glow_num_params((1, 8, 8), 3, 4, 64)
    expect(digits == 149136, f"glow_num_params((1, 8, 8), 3, 4, 64): expected 149136, got {digits} (levels work on "
                             "4, 8 and 16 channels: squeeze, then factor out half before the next level)")


# ---------------------------------------------------------------- Q5 bits/dim after rescaling (diagnose)
@visible("ch06.q5.uniform", "Q5 the uniform density on [-1, 1)^D (scale 2) scores log2 L bits/dim: 8 for 256 levels")
def _q5_uniform(ns):
    bits_per_dim = need(ns, "bits_per_dim")
    log_p = torch.full((5,), -64 * math.log(2.0), dtype=F64)  # density 2^-D on [-1, 1)^D
    got = tensor(bits_per_dim(log_p, 64, 256, 2.0), "bits_per_dim(...)", shape=(), dtype=F64).item()
    expect(close(got, 8.0), f"expected 8.0 bits/dim (every cell of the 256^D grid is equally likely), got {got:.4f}")


@visible("ch06.q5.batch", "Q5 scale 1 is the lecture's case: log p = [100, 140], 64 pixels, 17 levels")
def _q5_batch(ns):
    bits_per_dim = need(ns, "bits_per_dim")
    log_p = torch.tensor([100.0, 140.0], dtype=F64)
    got = tensor(bits_per_dim(log_p, 64, 17, 1.0), "bits_per_dim(...)", shape=(), dtype=F64).item()
    want = 1.3824096395835332  # log2 17 - 120 / (64 ln 2)
    expect(close(got, want), f"expected log2 17 - 120 / (64 ln 2) = {want:.4f}, got {got:.4f}")


# ---------------------------------------------------------------- Q6 sampling at a temperature (sample)
# loc (1, -2), scales e^-log_scale = (1, 1/2), W = [[2, 0], [1, 1]]: x - loc = diag(1, 1/2) W^-1 T eps, covariance
# T^2 [[1/4, -1/8], [-1/8, 5/16]]; at T = 2: [[1, -1/2], [-1/2, 5/4]].
def _flow():
    return (torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.0, math.log(2.0)], dtype=F64),
            torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64))


@visible("ch06.q6.stats", "Q6 T = 2: 8000 sampled pixels have channel means (1, -2), variances (1, 1.25), cov -0.5")
def _q6_stats(ns):
    sample = need(ns, "sample_at_temperature")
    x = tensor(sample(*_flow(), 2000, (2, 2), 2.0, torch.Generator().manual_seed(4)), "sample_at_temperature(...)",
               shape=(2000, 2, 2, 2), dtype=F64)
    v = x.permute(0, 2, 3, 1).reshape(-1, 2)
    mean, cov = v.mean(0), torch.cov(v.T)
    # standard errors: mean sqrt(var / n); variance and covariance sqrt((s_ii s_jj + s_ij^2) / n); 6 of them allowed
    n = v.shape[0]
    expect(abs(mean[0] - 1.0) < 6 * math.sqrt(1.0 / n) and abs(mean[1] + 2.0) < 6 * math.sqrt(1.25 / n),
           f"expected channel means near (1, -2) (the point that maps to z = 0), got {fmt(mean)}")
    want = torch.tensor([[1.0, -0.5], [-0.5, 1.25]], dtype=F64)
    se = ((want.diagonal()[:, None] * want.diagonal()[None, :] + want**2) / n).sqrt()
    expect(bool(((cov - want).abs() < 6 * se).all()),
           f"expected a covariance near {want.tolist()}, got {[fmt(r, 3) for r in cov]} (invert the 1x1 "
           "convolution, divide by the ActNorm scales, and scale z by T, not T^2)")


@visible("ch06.q6.cold", "Q6 T = 0: every sampled pixel is the mode, here the ActNorm shift loc")
def _q6_cold(ns):
    sample = need(ns, "sample_at_temperature")
    x = tensor(sample(*_flow(), 3, (1, 2), 0.0, torch.Generator().manual_seed(5)), "sample_at_temperature(...)",
               shape=(3, 2, 1, 2), dtype=F64)
    expect(close(x[:, 0], torch.ones(3, 2, dtype=F64)) and close(x[:, 1], -2 * torch.ones(3, 2, dtype=F64)),
           f"expected channel 0 all 1.0 and channel 1 all -2.0 at T = 0, got {fmt(x[0])} for the first sample")
