"""Hidden checks of the chapter 6 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
References are written independently of the model solution (flowlib's layers where they exist).
"""

import math

import torch

from course_tools.hidden import (
    Checks,
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


# ---------------------------------------------------------------- Q1 checkerboard
def ref_checkerboard(h, w, parity):
    return torch.tensor([[float((i + j) % 2 == parity) for j in range(w)] for i in range(h)], dtype=F64)


@checks.cell("q1_basic_test")
def q1_basic(student):
    """checkerboard masks of square and rectangular images, both parities"""
    cases = [(6, 6, 0), (6, 6, 1), (2, 8, 1), (8, 2, 0)]
    got = [student.checkerboard(h, w, p) for h, w, p in cases]
    for (h, w, p), m in zip(cases, got):
        m = expect_tensor(m, f"checkerboard({h}, {w}, {p})", shape=(h, w), dtype=F64)
        expect_close(m, ref_checkerboard(h, w, p), f"checkerboard({h}, {w}, parity={p}) is wrong", rtol=0, atol=0)


@checks.cell("q1_shapes_test")
def q1_shapes(student):
    """odd sizes and a single row"""
    cases = [(5, 7, 0), (7, 5, 1), (1, 9, 1), (3, 3, 0)]
    got = [student.checkerboard(h, w, p) for h, w, p in cases]
    for (h, w, p), m in zip(cases, got):
        m = expect_tensor(m, f"checkerboard({h}, {w}, {p})", shape=(h, w), dtype=F64)
        expect_close(m, ref_checkerboard(h, w, p), f"checkerboard with odd or unequal sizes ({h} x {w}) is wrong",
                     rtol=0, atol=0)


# ---------------------------------------------------------------- Q2 squeeze
def ref_squeeze(x):
    from flowlib.transforms import Squeeze

    return Squeeze(2)._forward(x)[0]


@checks.cell("q2_squeeze_test")
def q2_squeeze(student):
    """squeeze of random batches with several channels and rectangular images"""
    xs = [_randn(3, 2, 4, 6, seed=21), _randn(2, 3, 6, 2, seed=22), _randn(1, 1, 2, 2, seed=23)]
    got = [student.squeeze(x) for x in xs]
    for x, z in zip(xs, got):
        b, c, h, w = x.shape
        z = expect_tensor(z, f"squeeze(x) for x of shape {tuple(x.shape)}", shape=(b, 4 * c, h // 2, w // 2), dtype=F64)
        expect_close(z, ref_squeeze(x), f"squeeze of a {tuple(x.shape)} batch puts pixels in the wrong channels",
                     rtol=0, atol=0)


@checks.cell("q2_inverse_test")
def q2_inverse(student):
    """unsqueeze of given (B, 4C, H, W) tensors"""
    zs = [_randn(2, 8, 3, 2, seed=24), _randn(1, 4, 1, 1, seed=25)]
    got = [student.unsqueeze(z) for z in zs]
    for z, x in zip(zs, got):
        b, c4, h, w = z.shape
        x = expect_tensor(x, f"unsqueeze(z) for z of shape {tuple(z.shape)}", shape=(b, c4 // 4, 2 * h, 2 * w),
                          dtype=F64)
        expect_close(ref_squeeze(x), z, f"unsqueeze of a {tuple(z.shape)} tensor is not the inverse of the squeeze",
                     rtol=0, atol=0)


# ---------------------------------------------------------------- Q3 affine coupling
COND = Source(
    "lambda h, W=torch.randn(6, 12, dtype=torch.float64): (torch.tanh(h @ W[:, :6]), h @ W[:, 6:])", seed=31
)


def ref_coupling(x, mask, cond):
    m = mask.to(F64)
    s, t = cond(m * x)
    z = torch.where(mask, x, x * torch.exp(s) + t)
    return z, torch.where(mask, torch.zeros_like(s), s).sum(1)


@checks.cell("q3_map_test")
def q3_map(student):
    """the coupling's output with a random conditioner and an irregular mask"""
    x = _randn(5, 6, seed=32)
    mask = torch.tensor([True, False, False, True, True, False])
    out = student.affine_coupling(x, mask, COND)
    z = expect_tensor(out[0], "z", shape=(5, 6), dtype=F64)
    want, _ = ref_coupling(x, mask, COND.build())
    expect_close(z, want, "z is wrong for a random conditioner (copied entries unchanged? conditioner on mask * x?)")


@checks.cell("q3_logdet_test")
def q3_logdet(student):
    """the log-det against the reference and against the Jacobian of your own map"""
    x = _randn(4, 6, seed=33)
    mask = torch.tensor([False, True, False, True, False, True])
    # the Jacobian is computed here, from your returned z on a fresh point and its +-h neighbours (nothing in
    # your kernel can replace it): central differences in float64 are exact to ~1e-9 for this smooth map
    x0 = _randn(1, 6, seed=34)
    out = student.affine_coupling(x, mask, COND)
    near = student.affine_coupling(central_differences(x0), mask, COND)
    logdet = expect_tensor(out[1], "logdet", shape=(4,), dtype=F64)
    _, want = ref_coupling(x, mask, COND.build())
    expect_close(logdet, want, "the log-det is wrong for a random conditioner (sum s over transformed entries only)")
    z = expect_tensor(near[0], "z", shape=(13, 6), dtype=F64)
    ld0 = expect_tensor(near[1], "logdet", shape=(13,), dtype=F64)[:1]
    J = jacobian_from_differences(z)
    expect_close(torch.linalg.slogdet(J).logabsdet.reshape(1), ld0,
                 "your log-det does not match log|det J| of your own map (J from your z at nearby points)",
                 rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- Q4 ActNorm
def _images(seed):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(1, 3, 1, 1, generator=g, dtype=F64) * 3
    scale = torch.rand(1, 3, 1, 1, generator=g, dtype=F64) * 4 + 0.1
    return loc + scale * torch.randn(6, 3, 4, 5, generator=g, dtype=F64)


@checks.cell("q4_output_test")
def q4_output(student):
    """the initialised output on a random batch (3 channels, 4 x 5 pixels)"""
    x = _images(41)
    out = student.actnorm_init(x)
    z = expect_tensor(out[0], "z", shape=(6, 3, 4, 5), dtype=F64)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    expect_close(z, (x - mean) / std, "z is wrong (per-channel mean and population std over batch and pixels)")


@checks.cell("q4_logdet_test")
def q4_logdet(student):
    """the log-det against flowlib's ActNorm after the same initialisation"""
    from flowlib.transforms import ActNorm

    xs = [_images(42), _images(43)[:, :, :2, :3]]
    got = [student.actnorm_init(x) for x in xs]
    for x, out in zip(xs, got):
        b, c, h, w = x.shape
        logdet = expect_tensor(out[1], f"logdet for images of {h} x {w} pixels", shape=(b,), dtype=F64)
        layer = ActNorm(c, eps=1e-300).double()
        _, want = layer._forward(x)
        expect_close(logdet, want,
                     f"the log-det for {h} x {w} images is wrong (h w sum_k log S_k with S_k = 1 / std_k)", rtol=1e-8)


# ---------------------------------------------------------------- Q5 1x1 conv
def _lu(c, seed):
    g = torch.Generator().manual_seed(seed)
    P = torch.eye(c, dtype=F64)[torch.randperm(c, generator=g)]
    L = torch.tril(torch.randn(c, c, generator=g, dtype=F64), -1) + torch.eye(c, dtype=F64)
    U = torch.triu(torch.randn(c, c, generator=g, dtype=F64), 1)
    d = torch.rand(c, generator=g, dtype=F64) * 2 + 0.2
    d = d * torch.where(torch.rand(c, generator=g) < 0.5, -1.0, 1.0).to(F64)
    return P, L, U + torch.diag(d)


@checks.cell("q5_test")
def q5(student):
    """random LU factors with negative diagonal entries, several image sizes"""
    cases = [(_lu(5, 51), 3, 7), (_lu(8, 52), 1, 1), (_lu(2, 53), 16, 16)]
    got = [student.conv1x1_logdet(P, L, U, h, w) for (P, L, U), h, w in cases]
    for ((P, L, U), h, w), v in zip(cases, got):
        v = expect_float(v, f"conv1x1_logdet for {P.shape[0]} channels")
        want = h * w * torch.linalg.slogdet(P @ L @ U).logabsdet.item()
        expect(math.isfinite(v) and abs(v - want) <= 1e-8 * (1 + abs(want)),
               f"h w log|det W| is wrong for {P.shape[0]} channels on {h} x {w} images")


# ---------------------------------------------------------------- Q6 bits per dimension
@checks.cell("q6_uniform_test")
def q6_uniform(student):
    """log p = 0 (the uniform density) for several numbers of levels"""
    cases = [(64, 17), (3072, 256), (10, 2)]
    got = [student.bits_per_dim(torch.zeros(4, dtype=F64), d, L) for d, L in cases]
    for (d, L), v in zip(cases, got):
        v = expect_tensor(v, f"bits_per_dim(log_p, {d}, {L})", shape=(), dtype=F64)
        expect_close(v, torch.tensor(math.log2(L), dtype=F64),
                     f"the uniform density with {L} levels should score log2 L bits/dim", rtol=1e-12, atol=1e-12)


@checks.cell(
    "q6_levels_test",
    chaining="one batch of log-densities at two numbers of levels, each checked against flowlib",
)
def q6_levels(student):
    """random log-densities, batch average, 17 and 256 levels"""
    from flowlib.metrics import bits_per_dim as ref

    lp = _randn(7, seed=61) * 20 + 90
    cases = [(64, 17), (784, 256)]
    got = [student.bits_per_dim(lp, d, L) for d, L in cases]
    for (d, L), v in zip(cases, got):
        v = expect_tensor(v, f"bits_per_dim(log_p, {d}, {L})", shape=(), dtype=F64)
        expect_close(v, ref(lp, d, num_levels=L), f"bits/dim of a random batch with {L} levels is wrong "
                     "(offset D log L, in nats)", rtol=1e-10, atol=1e-10)
