"""Hidden checks of the chapter 6 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
References are computed independently of the model solution (no flowlib import, which keeps grading cheap):
strided slicing for the squeeze, ``torch.nn.BatchNorm2d`` and autograd on the reference maps, ``torch.nn`` modules
for Glow's parameter count (checked against flowlib's ``GlowStep`` when written), closed-form covariances. Every
Jacobian of a student's map is computed here from returned values (``central_differences``).
"""

import math

import torch

from course_tools.hidden import (
    Checks,
    Generator,
    Source,
    central_differences,
    expect,
    expect_close,
    expect_float,
    expect_tensor,
    jacobian_from_differences,
)

checks = Checks("ch06_image_flows")
F64 = torch.float64


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _rand(*shape, seed, low=0.0, high=1.0):
    return low + (high - low) * torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---------------------------------------------------------------- Q1 squeeze (diagnose)
def ref_squeeze(x):
    """By strided slicing: channel 4c + 2p + q is x[:, c, p::2, q::2] (a route other than reshape/permute)."""
    b, c, h, w = x.shape
    parts = [x[:, :, p::2, q::2] for p in (0, 1) for q in (0, 1)]  # each (b, c, h/2, w/2)
    return torch.stack(parts, dim=2).reshape(b, 4 * c, h // 2, w // 2)


@checks.cell("q1_squeeze_test")
def q1_squeeze(student):
    """squeeze of random batches with several channels and rectangular images"""
    xs = [_randn(3, 2, 4, 6, seed=101), _randn(2, 3, 6, 2, seed=102), _randn(1, 5, 2, 2, seed=103)]
    got = [student.squeeze(x) for x in xs]
    for x, z in zip(xs, got):
        b, c, h, w = x.shape
        z = expect_tensor(z, f"squeeze(x) for x of shape {tuple(x.shape)}", shape=(b, 4 * c, h // 2, w // 2),
                          dtype=F64)
        expect_close(z, ref_squeeze(x), f"squeeze of a {c}-channel batch puts pixels in the wrong channels",
                     rtol=0, atol=0)


@checks.cell("q1_unsqueeze_test")
def q1_unsqueeze(student):
    """unsqueeze of given (B, 4C, H, W) tensors with several channels"""
    zs = [_randn(2, 12, 3, 2, seed=104), _randn(1, 8, 1, 3, seed=105)]
    got = [student.unsqueeze(z) for z in zs]
    for z, x in zip(zs, got):
        b, c4, h, w = z.shape
        x = expect_tensor(x, f"unsqueeze(z) for z of shape {tuple(z.shape)}", shape=(b, c4 // 4, 2 * h, 2 * w),
                          dtype=F64)
        expect_close(ref_squeeze(x), z, f"unsqueeze of a {tuple(z.shape)} tensor is not the inverse of the "
                     "lecture's squeeze", rtol=0, atol=0)


# ---------------------------------------------------------------- Q2 sigmoid-scale coupling (derive)
COND = Source(
    "lambda h, W=torch.randn(6, 12, dtype=torch.float64): (1.5 * torch.tanh(h @ W[:, :6]) - 1.0, h @ W[:, 6:])",
    seed=201,
)


def ref_forward(x, mask, cond):
    r, t = cond(torch.where(mask, x, torch.zeros_like(x)))
    scale = 1.0 / (1.0 + torch.exp(-(r + 2.0)))
    z = torch.where(mask, x, (x + t) * scale)
    return z, torch.where(mask, torch.zeros_like(r), torch.log(scale)).sum(1)


def ref_inverse(z, mask, cond):
    # the copied entries are unchanged, so the conditioner sees the same input; solve z_b = (x_b + t) s for x_b
    r, t = cond(torch.where(mask, z, torch.zeros_like(z)))
    scale = 1.0 / (1.0 + torch.exp(-(r + 2.0)))
    x = torch.where(mask, z, z / scale - t)
    return x, ref_forward(x, mask, cond)[1].neg()


@checks.cell("q2_forward_test")
def q2_forward(student):
    """the forward map and its log-det against the reference and against the Jacobian of your own map"""
    x = _randn(5, 6, seed=202) * 1.5
    mask = torch.tensor([True, False, False, True, True, False])
    x0 = _randn(1, 6, seed=203)
    out = student.sigmoid_coupling(x, mask, COND)
    # the Jacobian is computed here, from your z at a fresh point and its +-h neighbours
    near = student.sigmoid_coupling(central_differences(x0), mask, COND)
    z = expect_tensor(out[0], "z", shape=(5, 6), dtype=F64)
    logdet = expect_tensor(out[1], "logdet", shape=(5,), dtype=F64)
    want_z, want_ld = ref_forward(x, mask, COND.build())
    expect_close(z, want_z, "z is wrong for a random conditioner (shift first, then the sigmoid scale; copied "
                 "entries unchanged)")
    expect_close(logdet, want_ld, "the log-det is wrong for a random conditioner (transformed entries only)")
    zn = expect_tensor(near[0], "z", shape=(13, 6), dtype=F64)
    ld0 = expect_tensor(near[1], "logdet", shape=(13,), dtype=F64)[:1]
    J = jacobian_from_differences(zn)
    expect_close(torch.linalg.slogdet(J).logabsdet.reshape(1), ld0,
                 "your log-det does not match log|det J| of your own map (J from your z at nearby points)",
                 rtol=1e-6, atol=1e-6)


@checks.cell("q2_inverse_test")
def q2_inverse(student):
    """the inverse and its log-det on given outputs"""
    z = _randn(4, 6, seed=204) * 2
    mask = torch.tensor([False, True, False, True, False, True])
    out = student.sigmoid_coupling_inverse(z, mask, COND)
    x = expect_tensor(out[0], "x", shape=(4, 6), dtype=F64)
    logdet = expect_tensor(out[1], "logdet", shape=(4,), dtype=F64)
    want_x, want_ld = ref_inverse(z, mask, COND.build())
    expect_close(x, want_x, "the inverse is wrong for given outputs z (undo the scale first, then the shift)")
    expect_close(logdet, want_ld, "the inverse's log-det is wrong (it is minus the forward log-det at x)")


# ---------------------------------------------------------------- Q3 batch normalisation as a flow (derive)
def _bn_params(c, seed):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(c, generator=g, dtype=F64) * 2
    var = torch.rand(c, generator=g, dtype=F64) * 3 + 0.05
    log_gamma = torch.randn(c, generator=g, dtype=F64) * 0.7
    beta = torch.randn(c, generator=g, dtype=F64)
    return mean, var, log_gamma, beta


def ref_batchnorm(mean, var, log_gamma, beta, eps):
    """torch.nn.BatchNorm2d in evaluation mode with these running statistics, weight e^log_gamma and bias beta."""
    bn = torch.nn.BatchNorm2d(len(mean), eps=eps).double().eval().requires_grad_(False)
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    bn.weight.copy_(torch.exp(log_gamma))
    bn.bias.copy_(beta)
    return bn


def ref_bn_logdet(params, eps, shape):
    """log|det J| of the reference layer by autograd on one image of this shape (the layer is affine)."""
    bn = ref_batchnorm(*params, eps)
    x0 = torch.zeros(1, *shape, dtype=F64)
    J = torch.autograd.functional.jacobian(lambda v: bn(v.reshape(1, *shape)).reshape(-1), x0.reshape(-1))
    return torch.linalg.slogdet(J).logabsdet


@checks.cell("q3_map_test")
def q3_map(student):
    """the forward map and the inverse map with random running statistics"""
    px, pz = _bn_params(3, 301), _bn_params(2, 302)
    x = _randn(3, 3, 2, 4, seed=303) * 2
    z = _randn(2, 2, 3, 3, seed=304)
    fwd = student.batchnorm_flow(x, *px, 1e-3)
    inv = student.batchnorm_flow_inverse(z, *pz, 0.5)
    zs = expect_tensor(fwd[0], "z of batchnorm_flow", shape=(3, 3, 2, 4), dtype=F64)
    xs = expect_tensor(inv[0], "x of batchnorm_flow_inverse", shape=(2, 2, 3, 3), dtype=F64)
    expect_close(zs, ref_batchnorm(*px, 1e-3)(x), "z is wrong (evaluation mode: the given running mean and "
                 "variance, eps inside the square root, then e^log_gamma and beta)")
    expect_close(ref_batchnorm(*pz, 0.5)(xs), z, "batchnorm_flow_inverse(z) is not the x that the layer maps to z")


@checks.cell("q3_logdet_test")
def q3_logdet(student):
    """the log-dets against autograd on the reference layer and against the Jacobian of your own map"""
    pa, pb, pc = _bn_params(2, 311), _bn_params(3, 312), _bn_params(2, 313)
    xa = _randn(2, 2, 3, 5, seed=314)
    x0 = _randn(1, 3, 2, 2, seed=315)
    zc = _randn(3, 2, 4, 1, seed=316)
    fa = student.batchnorm_flow(xa, *pa, 0.1)
    fb = student.batchnorm_flow(central_differences(x0), *pb, 0.01)
    fc = student.batchnorm_flow_inverse(zc, *pc, 1e-5)
    lda = expect_tensor(fa[1], "logdet of batchnorm_flow", shape=(2,), dtype=F64)
    expect_close(lda, ref_bn_logdet(pa, 0.1, (2, 3, 5)).expand(2),
                 "the log-det of batchnorm_flow is wrong for 3 x 5 images (every pixel of a channel counts)",
                 rtol=1e-8)
    zb = expect_tensor(fb[0], "z", shape=(25, 3, 2, 2), dtype=F64)
    ldb = expect_tensor(fb[1], "logdet", shape=(25,), dtype=F64)[:1]
    J = jacobian_from_differences(zb)
    expect_close(torch.linalg.slogdet(J).logabsdet.reshape(1), ldb,
                 "your log-det does not match log|det J| of your own map (J from your z at nearby points)",
                 rtol=1e-6, atol=1e-6)
    ldc = expect_tensor(fc[1], "logdet of batchnorm_flow_inverse", shape=(3,), dtype=F64)
    expect_close(ldc, -ref_bn_logdet(pc, 1e-5, (2, 4, 1)).expand(3),
                 "the log-det of batchnorm_flow_inverse is wrong", rtol=1e-8)


# ---------------------------------------------------------------- Q4 parameters of a multi-scale Glow (predict)
def ref_glow_free_params(image_shape, num_levels, steps_per_level, hidden):
    """Counted on torch modules built on the meta device (no memory), level by level: the conditioner's three
    convolutions as torch.nn builds them, ActNorm's shift and log-scale, and the free entries of L, U and log|s|
    counted from triangular masks. The level shapes follow the squeeze / factor-out rule step by step."""
    nn = torch.nn
    c, side = image_shape[0], image_shape[1:]
    total = 0
    for level in range(num_levels):
        assert all(n % 2**(level + 1) == 0 for n in side), "author error: image size not divisible"
        c *= 4
        with torch.device("meta"):
            net = nn.Sequential(nn.Conv2d(c // 2, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1),
                                nn.ReLU(), nn.Conv2d(hidden, c, 3, padding=1))
            actnorm = [nn.Parameter(torch.empty(c)), nn.Parameter(torch.empty(c))]
        conditioner = sum(p.numel() for p in net.parameters())
        lu = int(torch.ones(c, c).tril(-1).sum() + torch.ones(c, c).triu(1).sum()) + c
        total += steps_per_level * (sum(p.numel() for p in actnorm) + lu + conditioner)
        if level < num_levels - 1:
            c //= 2
    return total


@checks.cell("q4_test")
def q4(student):
    """free parameters of multi-scale Glows on new image shapes, counted on torch modules"""
    cases = [((3, 32, 32), 3, 8, 64), ((1, 28, 28), 2, 4, 32), ((2, 16, 8), 3, 2, 16), ((3, 4, 4), 1, 3, 8)]
    got = [student.glow_num_params(shape, L, K, H) for shape, L, K, H in cases]
    for (shape, L, K, H), v in zip(cases, got):
        v = expect_float(v, f"glow_num_params({shape}, {L}, {K}, {H})")
        expect(v == ref_glow_free_params(shape, L, K, H),
               f"the number of free parameters is wrong for {shape} images, {L} levels of {K} steps, {H} hidden "
               "channels")


# ---------------------------------------------------------------- Q5 bits per dimension after rescaling (diagnose)
def ref_bpd(log_p, num_dims, num_levels, scale):
    """-log2 of the discrete bound: the integer image's cell has volume (scale / L)^D in y-space."""
    log_prob_x = log_p + num_dims * math.log(scale / num_levels)
    return -(log_prob_x / (num_dims * math.log(2))).mean()


@checks.cell("q5_uniform_test")
def q5_uniform(student):
    """uniform densities on rescaled cubes: log2 L bits/dim whatever the scale"""
    cases = [(64, 17, 2.0), (3072, 256, 0.5), (10, 5, 4.0)]
    # the uniform density on [b, b + scale)^D has log p = -D log(scale)
    got = [student.bits_per_dim(torch.full((3,), -d * math.log(s), dtype=F64), d, L, s) for d, L, s in cases]
    for (d, L, s), v in zip(cases, got):
        v = expect_tensor(v, f"bits_per_dim(log_p, {d}, {L}, {s})", shape=(), dtype=F64)
        expect_close(v, torch.tensor(math.log2(L), dtype=F64),
                     f"the uniform density on a cube of side {s} with {L} levels is wrong (it should cost log2 L "
                     "bits per dimension)", rtol=1e-12, atol=1e-12)


@checks.cell("q5_batch_test")
def q5_batch(student):
    """random log-densities, batch average, several scales and numbers of levels"""
    cases = [(_randn(7, seed=501) * 20 + 90, 64, 17, 2.0), (_randn(5, seed=502) * 50 - 700, 784, 256, 1.0),
             (_randn(6, seed=503) * 3 + 10, 12, 32, 0.25)]
    got = [student.bits_per_dim(lp, d, L, s) for lp, d, L, s in cases]
    for (lp, d, L, s), v in zip(cases, got):
        v = expect_tensor(v, f"bits_per_dim(log_p, {d}, {L}, {s})", shape=(), dtype=F64)
        expect_close(v, ref_bpd(lp, d, L, s), f"bits/dim of a random batch with {L} levels and scale {s} is wrong",
                     rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- Q6 sampling at a temperature (sample)
def _linear_flow(c, seed):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(c, generator=g, dtype=F64) * 2
    log_scale = torch.randn(c, generator=g, dtype=F64) * 0.5
    W = torch.randn(c, c, generator=g, dtype=F64) + 1.5 * torch.eye(c, dtype=F64)
    return loc, log_scale, W


def _expect_samples(x, loc, log_scale, W, T, what):
    """Per-pixel channel vectors of x: mean loc and covariance T^2 A A^T with A = diag(e^-log_scale) W^-1, each
    statistic within 6 of its standard errors (a correct sampler fails with probability below 1e-7)."""
    c = loc.shape[0]
    v = x.permute(0, 2, 3, 1).reshape(-1, c)
    n = v.shape[0]
    A = torch.exp(-log_scale)[:, None] * torch.linalg.inv(W)
    cov = T**2 * A @ A.T
    d = cov.diagonal()
    mean_se = (d / n).sqrt()
    expect(bool(torch.isfinite(v).all()), f"{what}: your samples contain nan or inf")
    expect(bool(((v.mean(0) - loc).abs() <= 6 * mean_se).all()),
           f"{what}: the mean of your samples is far from the flow's (more than 6 standard errors)")
    emp = torch.cov(v.T)
    cov_se = ((d[:, None] * d[None, :] + cov**2) / n).sqrt()
    expect(bool(((emp - cov) ** 2 <= (6 * cov_se) ** 2).all()),
           f"{what}: the covariance of your samples is far from the flow's at this temperature "
           "(more than 6 standard errors)")


@checks.cell("q6_stats_test")
def q6_stats(student):
    """mean and covariance of 6000 sampled pixels, 3 channels, T = 0.6"""
    loc, log_scale, W = _linear_flow(3, 601)
    x = student.sample_at_temperature(loc, log_scale, W, 1500, (2, 2), 0.6, Generator(602))
    x = expect_tensor(x, "sample_at_temperature(...)", shape=(1500, 3, 2, 2), dtype=F64)
    _expect_samples(x, loc, log_scale, W, 0.6, "3 channels at T = 0.6")


@checks.cell("q6_temperature_test")
def q6_temperature(student):
    """T = 1.7 (statistics of 7200 pixels) and T = 0 (every pixel at the mode)"""
    hot, cold = _linear_flow(2, 611), _linear_flow(4, 612)
    xh = student.sample_at_temperature(*hot, 1200, (3, 2), 1.7, Generator(613))
    xc = student.sample_at_temperature(*cold, 3, (2, 1), 0.0, Generator(614))
    xh = expect_tensor(xh, "sample_at_temperature(...)", shape=(1200, 2, 3, 2), dtype=F64)
    _expect_samples(xh, *hot, 1.7, "2 channels at T = 1.7")
    xc = expect_tensor(xc, "sample_at_temperature(..., T=0, ...)", shape=(3, 4, 2, 1), dtype=F64)
    expect_close(xc, cold[0].view(1, 4, 1, 1).expand(3, 4, 2, 1),
                 "at T = 0 every pixel should be the point that the flow maps to z = 0", rtol=1e-10, atol=1e-12)
