"""Hidden checks of the chapter 7 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
"""

import math

import torch

from course_tools.hidden import Checks, Generator, Source, expect, expect_close, expect_tensor

checks = Checks("ch07_residual_continuous")
F64 = torch.float64


def _pair(out, what):
    expect(isinstance(out, (tuple, list)) and len(out) == 2, f"{what} should return a tuple of two tensors")
    return out


def _planar_inputs(seed, B=7, d=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g, dtype=F64)
    w = torch.randn(d, generator=g, dtype=F64)
    u = torch.randn(d, generator=g, dtype=F64)
    b = torch.randn((), generator=g, dtype=F64)
    return x, w, u, b


# ---------------------------------------------------------------- Q1 planar layer
@checks.cell("q1_map_test")
def q1_map(student):
    """planar map on a batch of 7 points in 5-d with random parameters"""
    x, w, u, b = _planar_inputs(101)
    out = _pair(student.planar_forward(x, w, u, b), "planar_forward")
    z = expect_tensor(out[0], "z", shape=(7, 5), dtype=F64)
    expect_close(z, x + torch.tanh(x @ w + b)[:, None] * u, "the planar map z on random 5-d inputs is wrong")


@checks.cell("q1_logdet_test")
def q1_logdet(student):
    """planar log-det against the autograd Jacobian, including a negative determinant"""
    x, w, u, b = _planar_inputs(102)
    # a second case whose determinant is negative at some points (w^T u < -1): log|det| is still defined
    x2, w2, _, b2 = _planar_inputs(103, B=6, d=3)
    u2 = -3.0 * w2 / (w2 @ w2)
    out = student.planar_forward(x, w, u, b)
    out2 = student.planar_forward(x2, w2, u2, b2)
    out, out2 = _pair(out, "planar_forward"), _pair(out2, "planar_forward")
    ld = expect_tensor(out[1], "logdet", shape=(7,), dtype=F64)
    ld2 = expect_tensor(out2[1], "logdet", shape=(6,), dtype=F64)

    def ref(x, w, u, b):
        J = torch.func.vmap(torch.func.jacrev(lambda y: y + torch.tanh(y @ w + b) * u))(x)
        return torch.linalg.slogdet(J).logabsdet

    expect_close(ld, ref(x, w, u, b), "the planar log-det on random 5-d inputs does not match the Jacobian")
    expect_close(ld2, ref(x2, w2, u2, b2),
                 "the planar log-det is wrong when 1 + h'(a) u^T w < 0 (use the absolute value)")


# ---------------------------------------------------------------- Q2 u_hat
@checks.cell("q2_test", chaining="one w with three u, each u_hat checked against the reference")
def q2_constraint(student):
    """u_hat for random w and u, for w^T u far below -1, and for a large w^T u"""
    g = torch.Generator().manual_seed(201)
    w = torch.randn(6, generator=g, dtype=F64)
    u = torch.randn(6, generator=g, dtype=F64)
    u_bad = u - (w @ u + 4.0) * w / (w @ w)                     # w^T u_bad = -4
    u_big = u + (50.0 - w @ u) * w / (w @ w)                     # w^T u_big = 50
    got = student.planar_u_hat(w, u)
    got_bad = student.planar_u_hat(w, u_bad)
    got_big = student.planar_u_hat(w, u_big)

    def ref(w, u):
        wu = w @ u
        return u + (torch.nn.functional.softplus(wu) - 1 - wu) * w / (w @ w)

    for out, uu, what in ((got, u, "random u"), (got_bad, u_bad, "w^T u = -4"), (got_big, u_big, "w^T u = 50")):
        out = expect_tensor(out, f"planar_u_hat for {what}", shape=(6,), dtype=F64)
        expect_close(out, ref(w, uu), f"u_hat is wrong for {what}")
    expect(float(got_bad @ w) > -1, "w^T u_hat must be above -1")


# ---------------------------------------------------------------- Q3 Hutchinson
def _hutch_ref(A, n, seed):
    eps = torch.randint(0, 2, (n, A.shape[0]), generator=torch.Generator().manual_seed(seed)).to(A.dtype) * 2 - 1
    v = ((eps @ A) * eps).sum(1)
    return v.mean(), v.std() / math.sqrt(n)


def _hutch_matrix(seed, d):
    return torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


@checks.cell("q3_estimate_test")
def q3_estimate(student):
    """Hutchinson estimate of a random 6x6 (non-symmetric) matrix with 200 probes"""
    A = _hutch_matrix(301, 6)
    out = _pair(student.hutchinson_trace(A, 200, Generator(302)), "hutchinson_trace")
    est = expect_tensor(out[0], "the estimate", shape=(), dtype=F64)
    expect_close(est, _hutch_ref(A, 200, 302)[0], "the Hutchinson estimate with the specified probes is wrong")


@checks.cell("q3_stderr_test")
def q3_stderr(student):
    """standard error of the Hutchinson estimate of a random 4x4 matrix with 30 probes"""
    A = _hutch_matrix(311, 4)
    out = _pair(student.hutchinson_trace(A, 30, Generator(312)), "hutchinson_trace")
    se = expect_tensor(out[1], "the standard error", shape=(), dtype=F64)
    expect_close(se, _hutch_ref(A, 30, 312)[1], "the standard error (s with n - 1, over sqrt(n)) is wrong")


# ---------------------------------------------------------------- Q4 fixed-point inverse
@checks.cell("q4_test", chaining="one z at four iteration counts, each iterate checked against the reference")
def q4_inverse(student):
    """fixed-point inverse of a small contractive MLP block: iterates 0, 1, 7 and the converged inverse"""
    src = Source("lambda y: 0.6 * torch.tanh(y @ torch.tensor([[0.5, -0.4, 0.2], [0.1, 0.6, -0.3], "
                 "[-0.2, 0.3, 0.5]], dtype=torch.float64).T + 0.1)")
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(401), dtype=F64)
    outs = [student.fixed_point_inverse(src, z, k) for k in (0, 1, 7, 80)]
    g = src.build()
    x = z.clone()
    for k, out in zip((0, 1, 7, 80), outs):
        out = expect_tensor(out, f"fixed_point_inverse(g, z, {k})", shape=(5, 3), dtype=F64)
        ref = z.clone()
        for _ in range(k):
            ref = z - g(ref)
        expect_close(out, ref, f"the iterate after n_iter = {k} steps is wrong (x_0 = z, x_(k+1) = z - g(x_k))")
        x = out
    expect_close(x + g(x), z, "after 80 iterations x + g(x) should equal z", rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------- Q5 series log-det
def _jacobians(seed, B, d, norm):
    J = torch.randn(B, d, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return norm * J / torch.linalg.matrix_norm(J, 2)[:, None, None]


def _series(J, n):
    total, Jk = torch.zeros(J.shape[0], dtype=J.dtype), torch.eye(J.shape[1], dtype=J.dtype).expand_as(J)
    for k in range(1, n + 1):
        Jk = Jk @ J
        total = total + (-1) ** (k + 1) * Jk.diagonal(dim1=1, dim2=2).sum(-1) / k
    return total


@checks.cell(
    "q5_terms_test",
    chaining="one batch of Jacobians truncated after 1, 2 and 5 terms, each checked against the reference",
)
def q5_terms(student):
    """truncated series with 1, 2 and 5 terms for a batch of random 4x4 Jacobians"""
    J = _jacobians(501, 6, 4, 0.8)
    outs = [student.series_logdet(J, n) for n in (1, 2, 5)]
    for n, out in zip((1, 2, 5), outs):
        out = expect_tensor(out, f"series_logdet(J, {n})", shape=(6,), dtype=F64)
        expect_close(out, _series(J, n), f"the series truncated after {n} term(s) is wrong")


@checks.cell("q5_converges_test")
def q5_converges(student):
    """with 80 terms the series matches log det(I + J) for contractive 5x5 Jacobians"""
    J = _jacobians(502, 4, 5, 0.6)
    out = expect_tensor(student.series_logdet(J, 80), "series_logdet(J, 80)", shape=(4,), dtype=F64)
    expect_close(out, torch.linalg.slogdet(torch.eye(5, dtype=F64) + J).logabsdet,
                 "with many terms the series should converge to log det(I + J)", rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------- Q6 Euler flow
@checks.cell("q6_test")
def q6_euler(student):
    """Euler flow of a nonlinear 3-d field with 5 steps, and of a linear field with many steps"""
    field = Source("lambda y: torch.tanh(y @ torch.tensor([[0.3, -1.0, 0.2], [1.0, 0.1, 0.0], "
                   "[0.4, 0.2, -0.5]], dtype=torch.float64).T) - 0.2 * y")
    linear = Source("lambda y: y @ torch.tensor([[0.5, 1.0], [-1.0, -0.2]], dtype=torch.float64).T")
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(601), dtype=F64)
    x2 = torch.randn(3, 2, generator=torch.Generator().manual_seed(602), dtype=F64)
    out = student.euler_flow(field, x, 0.8, 5)
    out2 = student.euler_flow(linear, x2, 1.0, 400)
    out, out2 = _pair(out, "euler_flow"), _pair(out2, "euler_flow")
    z = expect_tensor(out[0], "z", shape=(4, 3), dtype=F64)
    ld = expect_tensor(out[1], "logdet", shape=(4,), dtype=F64)
    ld2 = expect_tensor(out2[1], "logdet", shape=(3,), dtype=F64)
    g = field.build()
    h, ref_z, ref_ld = 0.8 / 5, x.clone(), torch.zeros(4, dtype=F64)
    for _ in range(5):
        J = torch.func.vmap(torch.func.jacrev(lambda y: g(y[None])[0]))(ref_z)
        ref_ld = ref_ld + torch.linalg.slogdet(torch.eye(3, dtype=F64) + h * J).logabsdet
        ref_z = ref_z + h * g(ref_z)
    expect_close(z, ref_z, "z after 5 Euler steps of a nonlinear field is wrong")
    expect_close(ld, ref_ld, "the summed log-det of 5 Euler steps of a nonlinear field is wrong")
    expect_close(ld2, _euler_linear_ld().expand(3), "the log-det of 400 Euler steps of a linear field is wrong")
    expect(abs(float(ld2[0]) - 0.3) < 0.01, "with many steps the log-det should approach T tr A (here 0.3)")


def _euler_linear_ld():
    A = torch.tensor([[0.5, 1.0], [-1.0, -0.2]], dtype=F64)
    return 400 * torch.linalg.slogdet(torch.eye(2, dtype=F64) + A / 400).logabsdet


# ---------------------------------------------------------------- Q7 linear CNF
@checks.cell("q7_test")
def q7_linear(student):
    """log-density of the flow dz/dt = A z for a random non-symmetric 3x3 A"""
    g = torch.Generator().manual_seed(701)
    A = 0.7 * torch.randn(3, 3, generator=g, dtype=F64)
    x = torch.randn(8, 3, generator=g, dtype=F64)
    got = expect_tensor(student.linear_cnf_log_prob(x, A, 1.5), "linear_cnf_log_prob", shape=(8,), dtype=F64)
    M = torch.linalg.matrix_exp(1.5 * A)
    ref = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)).log_prob(x @ M.T)
    ref = ref + torch.linalg.slogdet(M).logabsdet            # an independent route: slogdet of expm, not T tr A
    expect_close(got, ref, "the log-density of a linear continuous flow is wrong (z(T) = expm(T A) x)", rtol=1e-8)
