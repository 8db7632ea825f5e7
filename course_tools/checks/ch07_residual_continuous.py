"""Visible tests of chapter 7 (residual and continuous-time flows).

Each test says what was expected. They are small: the hidden tests, run when grading, use other inputs (random
parameters, other dimensions) and are decided outside the student's kernel. Expected values are literals computed
once and confirmed by another route (the slogdet of an autograd Jacobian, a measurement, an enumeration of every
sign vector), written in the comments.
"""

from __future__ import annotations

import functools
import math

import torch

from course_tools.check import expect, need, visible
from course_tools.checks._common import F64, close, fmt, tensor, tensors

_tensor = functools.partial(tensor, dtype=F64, why="keep the input dtype")


def _rows(t):
    return [[round(v, 4) for v in r] for r in t.tolist()]


# ---------------------------------------------------------------- Q1 Sylvester layer, unconstrained factors
def _sylvester_case():
    x = torch.tensor([[0.5, -1.0, 0.2], [0.0, 0.3, -0.4]], dtype=F64)
    A = torch.tensor([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]], dtype=F64)
    B = torch.tensor([[0.3, -0.2, 1.0], [0.0, 0.5, 0.4]], dtype=F64)
    b = torch.tensor([0.1, -0.2], dtype=F64)
    return x, A, B, b


@visible("ch07.q1.map", "Q1 map z = x + A tanh(B x + b) on 2 points, d = 3, m = 2")
def _q1_map(ns):
    sylvester_forward = need(ns, "sylvester_forward")
    x, A, B, b = _sylvester_case()
    z, _ = tensors(sylvester_forward(x.clone(), A.clone(), B.clone(), b.clone()), "sylvester_forward")
    z = _tensor(z, "z", (2, 3))
    want = torch.tensor([[1.0716699660851172, -0.16303698841929448, -0.9022560570762939],
                         [-0.3452140341355209, 0.3343594826616922, -0.8139329994589053]], dtype=F64)
    expect(close(z, want),
           f"expected z = {_rows(want)}, got {_rows(z)} (tanh of the m-vector B x + b, then A times it)")


@visible("ch07.q1.logdet", "Q1 log|det J| equals slogdet of the 3x3 autograd Jacobian; m = 1 is the planar layer")
def _q1_logdet(ns):
    sylvester_forward = need(ns, "sylvester_forward")
    x, A, B, b = _sylvester_case()
    # log|det| of the 3x3 autograd Jacobian at each point, computed once; with -2 A both determinants are negative
    for scale, want in ((1.0, [0.10781807780987568, 0.048978169920310344]),
                        (-2.0, [-0.5013440864755572, 0.4568549307176081])):
        _, ld = tensors(sylvester_forward(x.clone(), scale * A, B.clone(), b.clone()), "sylvester_forward")
        ld = _tensor(ld, "logdet", (2,))
        expect(close(ld, want), f"for {scale:g} A expected log|det J| = {fmt(want, 6)}, got {fmt(ld, 6)} "
               "(Sylvester's identity turns det(I_d + A diag(h') B) into an m x m determinant; h' = 1 - tanh^2; "
               "with -2 A the determinants are negative: the log of their absolute value)")
    # m = 1 is a planar layer with u = A[:, 0], w = B[0]: log|1 + h'(a) u^T w| (lecture 7.1)
    u = torch.tensor([[0.4], [-1.0], [0.7]], dtype=F64)
    w = torch.tensor([[1.0, 0.5, -0.3]], dtype=F64)
    _, ld = tensors(sylvester_forward(x.clone(), u, w, torch.tensor([0.2], dtype=F64)), "sylvester_forward")
    want = [-0.36240923962034394, -0.28831456810009337]
    expect(close(ld, want), f"with m = 1 (a planar layer) expected {fmt(want, 6)}, got {fmt(ld, 6)}")


# ---------------------------------------------------------------- Q2 error of the Euler log-det
@visible("ch07.q2.error", "Q2 leading Euler log-det error for a rotation generator and a diagonal A")
def _q2(ns):
    euler_logdet_error = need(ns, "euler_logdet_error")
    rotation = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)
    got = _tensor(euler_logdet_error(rotation.clone(), 1.0, 10), "euler_logdet_error(A, 1.0, 10)", ())
    # exact: 10 log det(I + 0.1 A) - 0 = 10 log(1.01) = 0.0995033 (the leading term is 0.1)
    expect(close(got, 0.1), f"for A = [[0, 1], [-1, 0]], T = 1, K = 10 expected 0.1 (the measured error is "
           f"10 log 1.01 = {10 * math.log(1.01):.6f}), got {got.item():.6f} (tr(A^2) is not the sum of the squared "
           "entries of A unless A is symmetric; mind the sign)")
    diag = torch.diag(torch.tensor([1.0, -2.0], dtype=F64))
    got = _tensor(euler_logdet_error(diag.clone(), 2.0, 50), "euler_logdet_error(A, 2.0, 50)", ())
    # measured: 50 log det(I + 0.04 A) - 2 tr A = -0.208045
    expect(close(got, -0.2), f"for A = diag(1, -2), T = 2, K = 50 expected -0.2 (measured -0.208045), "
           f"got {got.item():.6f} (the error grows like T^2 / K)")


# ---------------------------------------------------------------- Q3 variance of the one-probe series
_J3 = [[0.2, 0.5], [0.0, -0.1]]


@visible("ch07.q3.rademacher", "Q3 Rademacher probes: a 2x2 J with 2 terms, and a diagonal J")
def _q3_rademacher(ns):
    series_probe_variance = need(ns, "series_probe_variance")
    J = torch.tensor(_J3, dtype=F64)
    got = _tensor(series_probe_variance(J.clone(), 2, "rademacher"), "the variance", ())
    # the 4 sign vectors (+-1, +-1) give the estimates 0.55, -0.4, -0.4, 0.55: population variance 0.225625
    expect(close(got, 0.225625), f"expected 0.225625, got {got.item():.6f} (the four equally likely probes give "
           "the estimates 0.55, -0.4, -0.4, 0.55; if you got 0.250625 you added the variances of the two terms "
           "as if each had its own probe)")
    diag = torch.diag(torch.tensor([0.5, -0.2], dtype=F64))
    got = _tensor(series_probe_variance(diag, 3, "rademacher"), "the variance", ())
    expect(close(got, 0.0), f"for a diagonal J every Rademacher probe gives the same estimate: expected 0, "
           f"got {got.item():.6f}")


@visible("ch07.q3.gaussian", "Q3 Gaussian probes: the same 2x2 J with 2 terms")
def _q3_gaussian(ns):
    series_probe_variance = need(ns, "series_probe_variance")
    got = _tensor(series_probe_variance(torch.tensor(_J3, dtype=F64), 2, "gaussian"), "the variance", ())
    expect(close(got, 0.312475), f"expected 0.312475, got {got.item():.6f} (Gaussian probes also see the diagonal)")


# ---------------------------------------------------------------- Q4 Russian roulette
_J4 = [[0.2, 0.1], [-0.3, 0.4]]
_EPS4 = [[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]]


@visible("ch07.q4.values", "Q4 three draws with N = 1, 2, 3 (p = 0.5), and N = 1 everywhere")
def _q4_values(ns):
    roulette_logdet = need(ns, "roulette_logdet")
    J, eps = torch.tensor(_J4, dtype=F64), torch.tensor(_EPS4, dtype=F64)
    ones = torch.ones(3, dtype=torch.int64)
    got = _tensor(roulette_logdet(J.clone(), eps.clone(), ones, 0.9), "roulette_logdet", (3,))
    expect(close(got, [0.4, 0.8, 0.8]), f"with N = 1 every estimate is the first term eps^T J eps = [0.4, 0.8, 0.8], "
           f"got {fmt(got, 4)} (every draw reaches term 1: P(N >= 1) = 1)")
    got = _tensor(roulette_logdet(J.clone(), eps.clone(), torch.tensor([1, 2, 3]), 0.5), "roulette_logdet", (3,))
    want = [0.4, 0.54, 0.6306666666666667]
    expect(close(got, want), f"for N = [1, 2, 3] and p = 0.5 expected {fmt(want, 6)}, got {fmt(got, 6)}")


@visible("ch07.q4.unbiased", "Q4 the average over 20 000 geometric draws is log det(I + J)")
def _q4_unbiased(ns):
    roulette_logdet = need(ns, "roulette_logdet")
    gen = torch.Generator().manual_seed(11)
    J = torch.tensor(_J4, dtype=F64)
    eps = torch.randint(0, 2, (20000, 2), generator=gen).to(F64) * 2 - 1
    N = 1 + torch.floor(torch.log(torch.rand(20000, generator=gen, dtype=F64)) / math.log(0.5)).long()
    r = _tensor(roulette_logdet(J, eps, N, 0.5), "roulette_logdet", (20000,))
    exact = torch.linalg.slogdet(torch.eye(2, dtype=F64) + J).logabsdet.item()
    se = (r.std() / math.sqrt(r.numel())).item()
    expect(abs(r.mean().item() - exact) < 5 * se, f"expected an average within 5 standard errors of "
           f"log det(I + J) = {exact:.4f}, got {r.mean().item():.4f} +- {se:.4f}")


# ---------------------------------------------------------------- Q5 linear CNF
@visible("ch07.q5.linear", "Q5 log-density of the flow dz/dt = A z, A diagonal, T = 2")
def _q5(ns):
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


# ---------------------------------------------------------------- Q6 fitting a linear CNF
def _fit_gap(ns, x, T):
    fit_linear_cnf = need(ns, "fit_linear_cnf")
    before = x.clone()
    A = _tensor(fit_linear_cnf(x, T), "fit_linear_cnf(x, T)", (x.shape[1], x.shape[1]))
    expect(not A.requires_grad, "return A.detach(): the fitted matrix should not require gradients")
    expect(torch.equal(x, before), "fit_linear_cnf changed its input x")
    M = torch.linalg.matrix_exp(T * A)
    base = torch.distributions.MultivariateNormal(torch.zeros(x.shape[1], dtype=F64), torch.eye(x.shape[1], dtype=F64))
    nll = -(base.log_prob(x @ M.T).mean() + torch.linalg.slogdet(M).logabsdet).item()
    cov = x.T @ x / x.shape[0]   # every linear flow is a zero-mean Gaussian; the best one has this covariance
    best = 0.5 * torch.linalg.slogdet(2 * math.pi * math.e * cov).logabsdet.item()
    return nll, best


@visible("ch07.q6.fit2d", "Q6 a fit on 200 correlated 2-d points, T = 1: within 0.01 nats of the best NLL")
def _q6_2d(ns):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(200, 2, generator=gen, dtype=F64) @ torch.tensor([[0.5, 0.0], [0.9, 1.1]], dtype=F64).T
    nll, best = _fit_gap(ns, x, 1.0)
    expect(nll - best < 0.01, f"mean NLL {nll:.4f} nats, but a linear flow reaches {best:.4f} on these points "
           "(more steps, or a larger step size? the loss is the mean of -log p_X over the data)")


@visible("ch07.q6.fit3d", "Q6 a fit on 200 3-d points with T = 0.5")
def _q6_3d(ns):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(200, 3, generator=gen, dtype=F64) * torch.tensor([0.6, 1.4, 0.9], dtype=F64)
    nll, best = _fit_gap(ns, x, 0.5)
    expect(nll - best < 0.01, f"mean NLL {nll:.4f} nats, but a linear flow reaches {best:.4f} on these points "
           "(T = 0.5 here: use T in the flow)")


# ---------------------------------------------------------------- Q8 reverse KL for an elementwise affine flow
def _q8_target(x):
    return -0.5 * (x**2).sum(1) - 0.5 * x[:, 0] * x[:, 1]


@visible("ch07.q8.estimate", "Q8 the estimate on 3 draws in 2-d; q equal to a normalised target gives exactly 0")
def _q8_estimate(ns):
    f = need(ns, "reverse_kl_estimate")
    eps = torch.tensor([[0.5, -1.0], [1.5, 0.2], [-0.3, 0.8]], dtype=F64)
    m = torch.tensor([0.2, -0.4], dtype=F64, requires_grad=True)
    log_s = torch.tensor([0.1, -0.5], dtype=F64, requires_grad=True)
    got = _tensor(f(eps.clone(), m, log_s, _q8_target), "reverse_kl_estimate(eps, m, log_s, log_target)", ())
    want = -1.5084554356514819  # the same draws through torch.distributions.Normal(m, s).log_prob in x-space
    expect(close(got, want), f"expected {want:.6f}, got {got.item():.6f} (x = m + s eps; log q(x) = log N(eps) "
           "- sum log s: the generating direction's log-det is subtracted)")
    expect(got.requires_grad, "the estimate should stay differentiable in m and log_s (it is a training loss)")
    # q = N(m, diag s^2) and the target its own normalised log-density: log q - log p = 0 for every draw
    m2, log_s2 = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.3, -0.2], dtype=F64)
    exact = torch.distributions.Normal(m2, torch.exp(log_s2))
    got = _tensor(f(eps.clone(), m2, log_s2, lambda x: exact.log_prob(x).sum(1)), "reverse_kl_estimate", ())
    expect(close(got, 0.0), f"when q is the target itself (normalised) every term is 0; got {got.item():.6g}")


@visible("ch07.q8.optimum", "Q8 the optimum for a 2-d Gaussian target with correlation 1/2")
def _q8_optimum(ns):
    f = need(ns, "reverse_kl_optimum")
    P = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=F64)
    mu = torch.tensor([1.0, -1.0], dtype=F64)
    m, log_s = tensors(f(P.clone(), mu.clone()), "reverse_kl_optimum(P, mu)")
    m, log_s = _tensor(m, "m", (2,)), _tensor(log_s, "log_s", (2,))
    expect(close(m, [1.0, -1.0]), f"expected m = [1, -1], got {fmt(m, 6)}")
    # found by minimising the closed-form KL over log_s numerically; the marginal variances (forward KL) would give
    # log_s = 0.5 log(2/3) = -0.2027 each
    want = [-0.34657359027997264, -0.34657359027997264]
    expect(close(log_s, want), f"expected log_s = {fmt(want, 6)}, got {fmt(log_s, 6)} (reverse KL does not match "
           "the marginal variances of the target)")


# ---------------------------------------------------------------- Q9 the exact NPE optimum
def _npe(ns, A, mu0, S0, Sn):
    f = need(ns, "npe_optimum")
    A, mu0, S0, Sn = (torch.tensor(v, dtype=F64) for v in (A, mu0, S0, Sn))
    W, c, C = tensors(f(A, mu0, S0, Sn), "npe_optimum(A, mu0, Sigma0, Sigma_n)", 3)
    k, p = A.shape[1], A.shape[0]
    return _tensor(W, "W", (k, p)), _tensor(c, "c", (k,)), _tensor(C, "C", (k, k))


_SIM2 = ([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]], [0.0, 1.0], [[1.0, 0.5], [0.5, 2.0]],
         [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5]])


@visible("ch07.q9.mean", "Q9 W and c for one parameter seen twice, and for two parameters seen three times")
def _q9_mean(ns):
    # one parameter, x = (theta, 2 theta) + noise: posterior precision 1 + 1/0.5 + 4/1 = 7 (by hand)
    W, c, _ = _npe(ns, [[1.0], [2.0]], [0.5], [[1.0]], [[0.5, 0.0], [0.0, 1.0]])
    expect(close(W, [[2 / 7, 2 / 7]]) and close(c, [1 / 14]),
           f"expected W = [[2/7, 2/7]], c = [1/14], got W = {_rows(W)}, c = {fmt(c, 4)} (the posterior mean "
           "is linear in x: W x + c = E[theta | x])")
    W, c, _ = _npe(ns, *_SIM2)
    # the posterior mean in the precision form C (A^T Sigma_n^-1 x + Sigma_0^-1 mu_0), computed once
    want_W = [[37 / 90, 31 / 90, -2 / 15], [-1 / 15, 2 / 15, 0.4]]
    expect(close(W, want_W) and close(c, [-7 / 90, 1 / 15]),
           f"expected W = {_rows(torch.tensor(want_W))}, c = {fmt([-7 / 90, 1 / 15])}, got W = {_rows(W)}, "
           f"c = {fmt(c)}")


@visible("ch07.q9.cov", "Q9 C for two parameters seen three times")
def _q9_cov(ns):
    _, _, C = _npe(ns, *_SIM2)
    want = [[37 / 180, -1 / 30], [-1 / 30, 0.1]]   # (Sigma_0^-1 + A^T Sigma_n^-1 A)^-1, computed once
    expect(close(C, want), f"expected C = {_rows(torch.tensor(want))}, got {_rows(C)} (the posterior covariance, "
           "the same for every x)")
