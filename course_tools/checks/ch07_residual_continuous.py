"""Visible tests of chapter 7 (residual and continuous-time flows).

Each test says what was expected. They are small: the hidden tests, run when grading, use other inputs (random
parameters, batches, other dimensions) and are decided outside the student's kernel.
"""

from __future__ import annotations

import functools
import math

import torch

from course_tools.check import expect, need, visible
from course_tools.checks._common import F64, close, fmt, tensor, tensors

_tensor = functools.partial(tensor, dtype=F64, why="keep the input dtype")


def _planar_case():
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3], [0.0, 0.0]], dtype=F64)
    w = torch.tensor([1.0, 2.0], dtype=F64)
    u = torch.tensor([0.5, -0.2], dtype=F64)
    b = torch.tensor(0.1, dtype=F64)
    return x, w, u, b


# u^T w = -2.5 < -1: the planar map is not invertible, and det J = 1 + h'(a) u^T w < 0 at the third point
_U_FOLD = torch.tensor([-1.5, -0.5], dtype=F64)


# ---------------------------------------------------------------- Q1 planar layer
@visible("ch07.q1.map", "Q1 planar map z = x + u tanh(w^T x + b) on 3 points in 2-d")
def _q1_map(ns):
    planar_forward = need(ns, "planar_forward")
    x, w, u, b = _planar_case()
    z, _ = tensors(planar_forward(x.clone(), w.clone(), u.clone(), b.clone()), "planar_forward")
    z = _tensor(z, "z", (3, 2))
    want = torch.tensor(
        [[0.057324175898868734, -0.8229296703595474], [2.495503726839059, 0.10179850926437645],
         [0.04983399731247791, -0.019933598924991164]],
        dtype=F64,
    )
    expect(
        close(z, want),
        f"expected z = {[[round(v, 4) for v in r] for r in want.tolist()]}, got "
        f"{[[round(v, 4) for v in r] for r in z.tolist()]} (tanh of the scalar w^T x + b, times the vector u)",
    )


@visible("ch07.q1.logdet", "Q1 planar log-det log|1 + h'(a) u^T w| equals slogdet of the Jacobian")
def _q1_logdet(ns):
    planar_forward = need(ns, "planar_forward")
    x, w, u, b = _planar_case()
    # slogdet of the autograd Jacobian of the map at each point, computed once
    for u_, want in (
        (u, [0.02138494917862927, 0.0017888217793318709, 0.09440670732753619]),
        (_U_FOLD, [-0.7773577146230467, -0.04579325462265393, 0.3887703408487089]),
    ):
        _, ld = tensors(planar_forward(x.clone(), w.clone(), u_.clone(), b.clone()), "planar_forward")
        ld = _tensor(ld, "logdet", (3,))
        expect(
            close(ld, want),
            f"for u = {u_.tolist()} expected log|det J| = {fmt(want, 6)}, got {fmt(ld, 6)} "
            "(h'(a) = 1 - tanh(a)^2; did you use tanh(a) instead, or forget the log? With u^T w = -2.5 "
            "det J is negative at x = 0: the log of its absolute value)",
        )


# ---------------------------------------------------------------- Q2 u_hat
@visible("ch07.q2.constraint", "Q2 u_hat: w^T u_hat = -1 + softplus(w^T u), only the w-component changes")
def _q2(ns):
    planar_u_hat = need(ns, "planar_u_hat")
    w = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    u = torch.tensor([-2.0, 1.0, 0.5], dtype=F64)
    uh = _tensor(planar_u_hat(w.clone(), u.clone()), "u_hat", (3,))
    m = -1 + math.log1p(math.exp(-2.0))
    expect(close(uh @ w, m), f"expected w^T u_hat = -1 + softplus(-2) = {m:.6f}, got {float(uh @ w):.6f}")
    expect(close(uh[1:], u[1:]), "the components of u orthogonal to w must not change")
    big = planar_u_hat(w.clone(), torch.tensor([1000.0, 0.0, 0.0], dtype=F64))
    expect(
        bool(torch.isfinite(big).all()),
        "got inf or nan for w^T u = 1000: compute log(1 + e^s) with torch.nn.functional.softplus",
    )


# ---------------------------------------------------------------- Q3 Hutchinson
# the mean of the 50 probe values eps_i^T A eps_i from seed 0 and their sample std over sqrt(50), computed once
# (and checked against plain Python sums over the same probes)
_HUTCH_ESTIMATE, _HUTCH_STDERR = 3.696, 0.3970190968521615


@visible("ch07.q3.estimate", "Q3 Hutchinson estimate with 50 probes drawn by torch.randint as specified")
def _q3_estimate(ns):
    hutchinson_trace = need(ns, "hutchinson_trace")
    A = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 0.3], [0.0, 2.0, 3.0]], dtype=F64)
    out = tensors(hutchinson_trace(A.clone(), 50, torch.Generator().manual_seed(0)), "hutchinson_trace")
    est = _tensor(out[0], "the estimate", ())
    want = _HUTCH_ESTIMATE
    diag = torch.eye(3, dtype=F64)
    expect(
        close(est, want),
        f"expected {want:.6f}, got {est.item():.6f} (tr A = {torch.trace(A).item():.1f}; draw the probes "
        "exactly as torch.randint(0, 2, (n, d), generator=generator).to(A.dtype) * 2 - 1 and average "
        "eps_i^T A eps_i over the rows)",
    )
    out_d = hutchinson_trace(diag.clone(), 10, torch.Generator().manual_seed(1))
    expect(close(out_d[0], 3.0), "for the identity matrix every probe gives exactly tr I = d = 3")


@visible("ch07.q3.stderr", "Q3 standard error s / sqrt(n) of the same 50 probe values")
def _q3_stderr(ns):
    hutchinson_trace = need(ns, "hutchinson_trace")
    A = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 0.3], [0.0, 2.0, 3.0]], dtype=F64)
    out = tensors(hutchinson_trace(A.clone(), 50, torch.Generator().manual_seed(0)), "hutchinson_trace")
    se = _tensor(out[1], "the standard error", ())
    want = _HUTCH_STDERR
    expect(
        close(se, want),
        f"expected {want:.6f}, got {se.item():.6f} (sample standard deviation with n - 1, divided by sqrt(n))",
    )


# ---------------------------------------------------------------- Q4 fixed-point inverse
@visible("ch07.q4.inverse", "Q4 fixed-point inverse of x + 0.5 tanh(x): exact iterate count and round trip")
def _q4(ns):
    fixed_point_inverse = need(ns, "fixed_point_inverse")

    def g(y):
        return 0.5 * torch.tanh(y)

    z = torch.tensor([[1.0, -2.0], [0.3, 0.0]], dtype=F64)
    x0 = _tensor(fixed_point_inverse(g, z.clone(), 0), "fixed_point_inverse(g, z, 0)", (2, 2))
    expect(close(x0, z), "with n_iter = 0 the result is the starting point x_0 = z")
    x2 = _tensor(fixed_point_inverse(g, z.clone(), 2), "fixed_point_inverse(g, z, 2)", (2, 2))
    want = torch.tensor([[0.7247135935410074, -1.5458269623831045], [0.22343516496949822, 0.0]], dtype=F64)
    expect(close(x2, want), "after 2 iterations expected x_2 = z - g(z - g(z)); do exactly n_iter updates")
    x60 = fixed_point_inverse(g, z.clone(), 60)
    expect(close(x60 + g(x60), z, 1e-10), "after 60 iterations x + g(x) should equal z (Lip(g) = 0.5)")


# ---------------------------------------------------------------- Q5 series log-det
@visible("ch07.q5.terms", "Q5 truncated series: 1 and 3 terms for a 2x2 Jacobian")
def _q5_terms(ns):
    series_logdet = need(ns, "series_logdet")
    J = torch.tensor([[[0.2, 0.1], [0.0, -0.3]]], dtype=F64)
    s1 = _tensor(series_logdet(J.clone(), 1), "series_logdet(J, 1)", (1,))
    expect(close(s1, [-0.1]), f"with one term the series is tr J = -0.1, got {s1.item():.6f}")
    s3 = series_logdet(J.clone(), 3)
    want = -257 / 1500  # J is triangular: tr J^k = 0.2^k + (-0.3)^k
    expect(
        close(s3, [want]),
        f"with three terms expected tr J - tr(J^2)/2 + tr(J^3)/3 = {want:.6f}, got {float(s3[0]):.6f} "
        "(alternating signs, divided by k)",
    )


@visible("ch07.q5.converges", "Q5 with 60 terms the series matches log det(I + J) for a contractive J")
def _q5_converges(ns):
    series_logdet = need(ns, "series_logdet")
    g = torch.Generator().manual_seed(5)
    J = torch.randn(3, 3, 3, generator=g, dtype=F64)
    J = 0.5 * J / torch.linalg.matrix_norm(J, 2)[:, None, None]
    s = _tensor(series_logdet(J.clone(), 60), "series_logdet(J, 60)", (3,))
    want = torch.linalg.slogdet(torch.eye(3, dtype=F64) + J).logabsdet
    expect(close(s, want, 1e-10), f"expected {[round(v, 6) for v in want.tolist()]}, got "
           f"{[round(v, 6) for v in s.tolist()]} for a batch of 3 Jacobians with spectral norm 0.5")


# ---------------------------------------------------------------- Q6 Euler flow
@visible("ch07.q6.euler", "Q6 Euler flow of the linear field g(z) = A z: (I + hA)^K x and K log det(I + hA)")
def _q6(ns):
    euler_flow = need(ns, "euler_flow")
    A = torch.tensor([[-1.0, 0.5], [0.0, 0.5]], dtype=F64)

    def g(y):
        return y @ A.T

    x = torch.tensor([[1.0, 2.0], [-0.5, 0.0], [0.3, 0.3]], dtype=F64)
    z, ld = tensors(euler_flow(g, x.clone(), 1.0, 4), "euler_flow")
    z, ld = _tensor(z, "z", (3, 2)), _tensor(ld, "logdet", (3,))
    # I + 0.25 A = [[0.75, 0.125], [0, 1.125]]: its 4th power applied to each x, and 4 log(0.75 * 1.125)
    want_z = torch.tensor(
        [[1.17333984375, 3.20361328125], [-0.158203125, 0.0], [0.2234619140625, 0.4805419921875]], dtype=F64
    )
    want_ld = -0.6795961471815898
    expect(close(z, want_z), "z should be x after 4 Euler steps z <- z + h A z with h = T / K = 0.25")
    expect(
        close(ld, [want_ld] * 3),
        f"expected 4 log det(I + 0.25 A) = {want_ld:.6f} for every point, got "
        f"{[round(v, 6) for v in ld.tolist()]} "
        f"(not T tr A = {torch.trace(A).item():.2f}: that is the K -> infinity limit)",
    )


# ---------------------------------------------------------------- Q7 linear CNF
@visible("ch07.q7.linear", "Q7 log-density of the flow dz/dt = A z, A diagonal, T = 2")
def _q7(ns):
    linear_cnf_log_prob = need(ns, "linear_cnf_log_prob")
    A = torch.tensor([[-1.0, 0.0], [0.0, 0.5]], dtype=F64)
    x = torch.tensor([[0.5, 1.0], [0.0, 0.0]], dtype=F64)
    lp = _tensor(linear_cnf_log_prob(x.clone(), A.clone(), 2.0), "linear_cnf_log_prob", (2,))
    # x = expm(-T A) z ~ N(0, diag(e^4, e^-2)): log_prob of torch.distributions.MultivariateNormal
    want = [-6.534694570735763, -2.8378770664093453]
    expect(
        close(lp, want),
        f"expected {[round(v, 6) for v in want]}, got {[round(v, 6) for v in lp.tolist()]} "
        "(z(T) = expm(T A) x; the log-det is + T tr A = -1 here)",
    )
