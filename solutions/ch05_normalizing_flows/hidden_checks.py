"""Hidden checks of the chapter 5 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
"""

import math

import torch

from course_tools.hidden import Checks, Source, expect, expect_close, expect_tensor

checks = Checks("ch05_normalizing_flows")
F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)


def _normal_log_prob(z):
    return -0.5 * z**2 - 0.5 * LOG_2PI


def _pair(out, what):
    expect(isinstance(out, tuple) and len(out) == 2, f"{what} should return a tuple of two tensors")
    return out


# ---------------------------------------------------------------- Q1 change of variables in 1-D
@checks.cell("q1_increasing_test")
def q1_increasing(student):
    """1-D change of variables for increasing maps (log and sinh)"""
    g = torch.Generator().manual_seed(11)
    x_pos = torch.rand(9, generator=g, dtype=F64) * 5 + 0.05
    x_any = torch.randn(9, generator=g, dtype=F64) * 1.5
    got_log = student.cov_log_prob_1d(x_pos, Source("lambda x: torch.log(x)"))
    got_sinh = student.cov_log_prob_1d(x_any, Source("lambda x: torch.sinh(x)"))
    got_log = expect_tensor(got_log, "cov_log_prob_1d(x, log)", shape=(9,), dtype=F64)
    expect_close(got_log, _normal_log_prob(x_pos.log()) - x_pos.log(), "the log-normal density is wrong")
    got_sinh = expect_tensor(got_sinh, "cov_log_prob_1d(x, sinh)", shape=(9,), dtype=F64)
    ref = _normal_log_prob(torch.sinh(x_any)) + torch.log(torch.cosh(x_any))
    expect_close(got_sinh, ref, "the density for the increasing map f = sinh is wrong")


@checks.cell("q1_decreasing_test")
def q1_decreasing(student):
    """1-D change of variables for a decreasing nonlinear map"""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(11, generator=g, dtype=F64)
    got = student.cov_log_prob_1d(x, Source("lambda x: -x ** 3 - 2 * x"))
    got = expect_tensor(got, "cov_log_prob_1d(x, f)", shape=(11,), dtype=F64)
    expect(not torch.isnan(got).any(), "nan for a decreasing map: use the absolute value of the derivative")
    ref = _normal_log_prob(-x**3 - 2 * x) + torch.log(3 * x**2 + 2)
    expect_close(got, ref, "the density for a decreasing nonlinear map is wrong")


# ---------------------------------------------------------------- Q2 LU log-det
@checks.cell("q2_test")
def q2_lu(student):
    """log|det(P L U)| for a random 7x7 LU factorisation with signed diagonal"""
    g = torch.Generator().manual_seed(21)
    d = 7
    perm = torch.randperm(d, generator=g)
    L = torch.tril(torch.randn(d, d, generator=g, dtype=F64), -1) + torch.eye(d, dtype=F64)
    diag = torch.exp(torch.randn(d, generator=g, dtype=F64)) * torch.tensor([1, -1, 1, 1, -1, 1, -1], dtype=F64)
    U = torch.triu(torch.randn(d, d, generator=g, dtype=F64), 1) + torch.diag(diag)
    got = expect_tensor(student.lu_logabsdet(perm, L, U), "lu_logabsdet(perm, L, U)", shape=(), dtype=F64)
    W = (L @ U)[perm]
    expect_close(got, torch.linalg.slogdet(W).logabsdet, "log|det W| of a random LU factorisation is wrong")


# ---------------------------------------------------------------- Q3 affine autoregressive layer
COND = Source(
    "(lambda A, B, c, sign: (lambda x: (sign * torch.exp(c + 0.7 * torch.tanh(x @ A.T)), x @ B.T - c)))("
    "torch.randn(5, 5, dtype=torch.float64).tril(-1), torch.randn(5, 5, dtype=torch.float64).tril(-1), "
    "0.3 * torch.randn(5, dtype=torch.float64), torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0], dtype=torch.float64))",
    seed=31,
)


def _x3():
    return torch.randn(6, 5, generator=torch.Generator().manual_seed(32), dtype=F64)


@checks.cell("q3_forward_test")
def q3_forward(student):
    """ar_forward: z for a random 5-d autoregressive conditioner"""
    x = _x3()
    out = student.ar_forward(x, COND)
    z, _ = _pair(out, "ar_forward(x, conditioner)")
    z = expect_tensor(z, "z", shape=(6, 5), dtype=F64)
    alpha, beta = COND.build()(x)
    expect_close(z, alpha * x + beta, "z of the affine autoregressive layer is wrong")


@checks.cell("q3_logdet_test")
def q3_logdet(student):
    """ar_forward: the log-det with negative scales, against the autograd Jacobian"""
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(33), dtype=F64)  # fresh: not q3_forward's x
    out = student.ar_forward(x, COND)
    _, ld = _pair(out, "ar_forward(x, conditioner)")
    ld = expect_tensor(ld, "logdet", shape=(6,), dtype=F64)
    cond = COND.build()

    def fz(v):
        a, b = cond(v)
        return a * v + b

    ref = torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(fz, x[i : i + 1])[0, :, 0]).logabsdet
                       for i in range(x.shape[0])])
    expect(not torch.isnan(ld).any(), "the log-det is nan: some alpha are negative (log of the absolute value)")
    expect_close(ld, ref, "the log-det of the affine autoregressive layer is wrong")


def _ar_inverse_ref(z, cond):
    """Solve z = alpha(x) x + beta(x) one coordinate at a time (alpha_i, beta_i depend on x_<i only)."""
    x = torch.zeros_like(z)
    for i in range(z.shape[1]):
        alpha, beta = cond(x)
        x[:, i] = (z[:, i] - beta[:, i]) / alpha[:, i]
    alpha, _ = cond(x)
    return x, -alpha.abs().log().sum(1)


@checks.cell("q3_inverse_test")
def q3_inverse(student):
    """ar_inverse: x and the generating log-det for fresh random z"""
    # a fresh z, not the image of an earlier input: an inverse that only remembers ar_forward's answers gets 0
    z = 1.5 * torch.randn(6, 5, generator=torch.Generator().manual_seed(34), dtype=F64)
    out = student.ar_inverse(z, COND)
    xr, ld = _pair(out, "ar_inverse(z, conditioner)")
    xr = expect_tensor(xr, "x", shape=(6, 5), dtype=F64)
    x, ref_ld = _ar_inverse_ref(z, COND.build())
    expect_close(xr, x, "ar_inverse(z) is wrong for random z (solve the coordinates in order)", atol=1e-8)
    ld = expect_tensor(ld, "logdet", shape=(6,), dtype=F64)
    expect_close(ld, ref_ld, "the log-det of ar_inverse is wrong (log|det dx/dz|)")


# ---------------------------------------------------------------- Q4 MADE masks
def _made_ref(degrees):
    masks = [(hi[:, None] >= lo[None, :]).to(F64) for lo, hi in zip(degrees[:-1], degrees[1:])]
    return masks + [(degrees[0][:, None] > degrees[-1][None, :]).to(F64)]


def _degrees():
    g = torch.Generator().manual_seed(41)
    d = 6
    m_in = torch.randperm(d, generator=g) + 1
    h1 = torch.randint(1, d, (10,), generator=g)
    h2 = torch.randint(1, d, (8,), generator=g)
    return [m_in, h1, h2]


def _masks(out, n):
    expect(isinstance(out, (list, tuple)), f"made_masks should return a list of masks, got {type(out).__name__}")
    expect(len(out) == n, f"for 2 hidden layers made_masks should return 3 masks, got {len(out)}")
    return out


@checks.cell("q4_hidden_test")
def q4_hidden(student):
    """MADE hidden masks for a random ordering and two hidden layers"""
    degrees = _degrees()
    out = _masks(student.made_masks(degrees), 3)
    ref = _made_ref(degrees)
    for k in range(2):
        m = expect_tensor(out[k], f"mask {k + 1}", shape=tuple(ref[k].shape), dtype=F64)
        expect(torch.equal(m, ref[k]), f"hidden mask {k + 1} (random ordering, two hidden layers) is wrong")


@checks.cell("q4_output_test")
def q4_output(student):
    """MADE output mask, and the autoregressive property of the whole network"""
    degrees = _degrees()
    out = _masks(student.made_masks(degrees), 3)
    ref = _made_ref(degrees)
    m = expect_tensor(out[2], "the output mask", shape=tuple(ref[2].shape), dtype=F64)
    expect(torch.equal(m, ref[2]), "the output mask (random ordering, two hidden layers) is wrong")
    paths = out[2] @ out[1] @ out[0]
    m_in = degrees[0]
    forbidden = m_in[None, :] >= m_in[:, None]
    expect(bool((paths[forbidden] == 0).all()), "some output can see an input that is not before it in the ordering")


# ---------------------------------------------------------------- Q5 affine coupling
NET = Source(
    "(lambda W1, W2, b: (lambda xa: (torch.tanh(xa @ W1 + b), xa @ W2)))("
    "torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), "
    "torch.randn(4, dtype=torch.float64))",
    seed=51,
)
MASK = torch.tensor([False, True, False, True, True, False, False])


def _x5():
    return torch.randn(5, 7, generator=torch.Generator().manual_seed(52), dtype=F64)


def _coupling_ref(x):
    s, t = NET.build()(x[:, MASK])
    z = x.clone()
    z[:, ~MASK] = x[:, ~MASK] * torch.exp(s) + t
    return z, s.sum(1)


@checks.cell("q5_forward_test")
def q5_forward(student):
    """coupling_forward with a scattered mask: z and the log-det"""
    x = _x5()
    out = student.coupling_forward(x, MASK, NET)
    z, ld = _pair(out, "coupling_forward(x, mask, net)")
    z = expect_tensor(z, "z", shape=(5, 7), dtype=F64)
    ld = expect_tensor(ld, "logdet", shape=(5,), dtype=F64)
    ref_z, ref_ld = _coupling_ref(x)
    expect_close(z, ref_z, "z of the coupling layer is wrong for a mask that is not a half split")
    expect_close(ld, ref_ld, "the log-det of the coupling layer is wrong")


@checks.cell("q5_inverse_test")
def q5_inverse(student):
    """coupling_inverse with a scattered mask: x and the log-det for fresh random z"""
    # a fresh z, not the image of an earlier input: an inverse that only remembers coupling_forward's answers gets 0
    z = torch.randn(5, 7, generator=torch.Generator().manual_seed(53), dtype=F64)
    out = student.coupling_inverse(z, MASK, NET)
    xr, ld = _pair(out, "coupling_inverse(z, mask, net)")
    xr = expect_tensor(xr, "x", shape=(5, 7), dtype=F64)
    ld = expect_tensor(ld, "logdet", shape=(5,), dtype=F64)
    s, t = NET.build()(z[:, MASK])
    x = z.clone()
    x[:, ~MASK] = (z[:, ~MASK] - t) * torch.exp(-s)
    expect_close(xr, x, "coupling_inverse does not invert the coupling for a mask that is not a half split")
    expect_close(ld, -s.sum(1), "the log-det of coupling_inverse is wrong (log|det dx/dz|)")


# ---------------------------------------------------------------- Q6 NLL of a flow
def _layers():
    return [
        Source("lambda h: (h * torch.tensor([2.0, 0.5, 3.0], dtype=h.dtype) - 1.0, "
               "torch.full((h.shape[0],), math.log(3.0), dtype=h.dtype))"),
        Source("(lambda W: (lambda h: (h @ W.T, torch.full((h.shape[0],), torch.linalg.slogdet(W).logabsdet.item(), "
               "dtype=h.dtype))))(torch.randn(3, 3, dtype=torch.float64) + 2 * torch.eye(3, dtype=torch.float64))",
               seed=61),
        Source("lambda h: (torch.sinh(h), torch.log(torch.cosh(h)).sum(1))"),
    ]


def _nll_ref(x, layers):
    h, total = x, torch.zeros(x.shape[0], dtype=F64)
    for layer in layers:
        h, ld = layer.build()(h)
        total = total + ld
    return -((-0.5 * h**2 - 0.5 * LOG_2PI).sum(1) + total).mean()


@checks.cell("q6_single_test")
def q6_single(student):
    """NLL of one elementwise affine layer on random points"""
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(62), dtype=F64)
    layers = _layers()[:1]
    got = expect_tensor(student.flow_nll(x, layers), "flow_nll(x, layers)", shape=(), dtype=F64)
    expect_close(got, _nll_ref(x, layers), "the NLL of a one-layer flow is wrong")


@checks.cell("q6_stack_test")
def q6_stack(student):
    """NLL of a three-layer flow (affine, linear, sinh) on random points"""
    x = 0.5 * torch.randn(20, 3, generator=torch.Generator().manual_seed(63), dtype=F64)
    layers = _layers()
    got = expect_tensor(student.flow_nll(x, layers), "flow_nll(x, layers)", shape=(), dtype=F64)
    expect_close(got, _nll_ref(x, layers), "the NLL of a three-layer flow is wrong")
