"""Visible tests of chapter 7 (residual and continuous-time flows).

Each test says what was expected. They are small: the hidden tests, run when grading, use other inputs (random
parameters, batches, other dimensions) and are decided outside the student's kernel.
"""

from __future__ import annotations

import math

import torch

from course_tools.check import expect, need, visible

F64 = torch.float64


def _tensor(x, what: str, shape=None) -> torch.Tensor:
    expect(isinstance(x, torch.Tensor), f"{what} should be a torch.Tensor, got {type(x).__name__}")
    if shape is not None:
        expect(tuple(x.shape) == tuple(shape), f"{what} should have shape {tuple(shape)}, got {tuple(x.shape)}")
    expect(x.dtype == F64, f"{what}: keep the input dtype (float64), got {x.dtype}")
    return x


def _close(a, b, tol: float = 1e-8) -> bool:
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return bool(torch.isfinite(a).all()) and bool(((a - b).abs() <= tol * (1 + b.abs())).all())


def _pair(out, what: str):
    expect(isinstance(out, tuple) and len(out) == 2, f"{what} should return a tuple of two tensors")
    return out


def _planar_case():
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3], [0.0, 0.0]], dtype=F64)
    w = torch.tensor([1.0, 2.0], dtype=F64)
    u = torch.tensor([0.5, -0.2], dtype=F64)
    b = torch.tensor(0.1, dtype=F64)
    return x, w, u, b


# ---------------------------------------------------------------- Q1 planar layer
@visible("ch07.q1.map", "Q1 planar map z = x + u tanh(w^T x + b) on 3 points in 2-d")
def _q1_map(ns):
    planar_forward = need(ns, "planar_forward")
    x, w, u, b = _planar_case()
    z, _ = _pair(planar_forward(x.clone(), w.clone(), u.clone(), b.clone()), "planar_forward")
    z = _tensor(z, "z", (3, 2))
    a = [float(r @ w + b) for r in x]
    want = torch.stack([x[i] + math.tanh(a[i]) * u for i in range(3)])
    expect(
        _close(z, want),
        f"expected z = {[[round(v, 4) for v in r] for r in want.tolist()]}, got "
        f"{[[round(v, 4) for v in r] for r in z.tolist()]} (tanh of the scalar w^T x + b, times the vector u)",
    )


@visible("ch07.q1.logdet", "Q1 planar log-det log|1 + h'(a) u^T w| equals slogdet of the Jacobian")
def _q1_logdet(ns):
    planar_forward = need(ns, "planar_forward")
    x, w, u, b = _planar_case()
    _, ld = _pair(planar_forward(x.clone(), w.clone(), u.clone(), b.clone()), "planar_forward")
    ld = _tensor(ld, "logdet", (3,))
    want = []
    for r in x:
        t = math.tanh(float(r @ w + b))
        J = torch.eye(2, dtype=F64) + (1 - t * t) * torch.outer(u, w)
        want.append(float(torch.linalg.slogdet(J).logabsdet))
    expect(
        _close(ld, want),
        f"expected log|det J| = {[round(v, 6) for v in want]}, got {[round(v, 6) for v in ld.tolist()]} "
        "(h'(a) = 1 - tanh(a)^2; did you use tanh(a) instead, or forget the log?)",
    )


# ---------------------------------------------------------------- Q2 u_hat
@visible("ch07.q2.constraint", "Q2 u_hat: w^T u_hat = -1 + softplus(w^T u), only the w-component changes")
def _q2(ns):
    planar_u_hat = need(ns, "planar_u_hat")
    w = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    u = torch.tensor([-2.0, 1.0, 0.5], dtype=F64)
    uh = _tensor(planar_u_hat(w.clone(), u.clone()), "u_hat", (3,))
    m = -1 + math.log1p(math.exp(-2.0))
    expect(_close(uh @ w, m), f"expected w^T u_hat = -1 + softplus(-2) = {m:.6f}, got {float(uh @ w):.6f}")
    expect(_close(uh[1:], u[1:]), "the components of u orthogonal to w must not change")
    big = planar_u_hat(w.clone(), torch.tensor([1000.0, 0.0, 0.0], dtype=F64))
    expect(
        bool(torch.isfinite(big).all()),
        "got inf or nan for w^T u = 1000: compute log(1 + e^s) with torch.nn.functional.softplus",
    )


# ---------------------------------------------------------------- Q3 Hutchinson
def _hutch_ref(A, n, seed):
    eps = torch.randint(0, 2, (n, A.shape[0]), generator=torch.Generator().manual_seed(seed)).to(A.dtype) * 2 - 1
    v = ((eps @ A) * eps).sum(1)
    return v.mean(), v.std() / math.sqrt(n)


@visible("ch07.q3.estimate", "Q3 Hutchinson estimate with 50 probes drawn by torch.randint as specified")
def _q3_estimate(ns):
    hutchinson_trace = need(ns, "hutchinson_trace")
    A = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 0.3], [0.0, 2.0, 3.0]], dtype=F64)
    out = _pair(hutchinson_trace(A.clone(), 50, torch.Generator().manual_seed(0)), "hutchinson_trace")
    est = _tensor(out[0], "the estimate", ())
    want, _ = _hutch_ref(A, 50, 0)
    diag = torch.eye(3, dtype=F64)
    expect(
        _close(est, want),
        f"expected {want.item():.6f}, got {est.item():.6f} (tr A = {torch.trace(A).item():.1f}; draw the probes "
        "exactly as torch.randint(0, 2, (n, d), generator=generator).to(A.dtype) * 2 - 1 and average "
        "eps_i^T A eps_i over the rows)",
    )
    out_d = hutchinson_trace(diag.clone(), 10, torch.Generator().manual_seed(1))
    expect(_close(out_d[0], 3.0), "for the identity matrix every probe gives exactly tr I = d = 3")


@visible("ch07.q3.stderr", "Q3 standard error s / sqrt(n) of the same 50 probe values")
def _q3_stderr(ns):
    hutchinson_trace = need(ns, "hutchinson_trace")
    A = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 0.3], [0.0, 2.0, 3.0]], dtype=F64)
    out = _pair(hutchinson_trace(A.clone(), 50, torch.Generator().manual_seed(0)), "hutchinson_trace")
    se = _tensor(out[1], "the standard error", ())
    _, want = _hutch_ref(A, 50, 0)
    expect(
        _close(se, want),
        f"expected {want.item():.6f}, got {se.item():.6f} (sample standard deviation with n - 1, divided by sqrt(n))",
    )


# ---------------------------------------------------------------- Q4 fixed-point inverse
@visible("ch07.q4.inverse", "Q4 fixed-point inverse of x + 0.5 tanh(x): exact iterate count and round trip")
def _q4(ns):
    fixed_point_inverse = need(ns, "fixed_point_inverse")

    def g(y):
        return 0.5 * torch.tanh(y)

    z = torch.tensor([[1.0, -2.0], [0.3, 0.0]], dtype=F64)
    x0 = _tensor(fixed_point_inverse(g, z.clone(), 0), "fixed_point_inverse(g, z, 0)", (2, 2))
    expect(_close(x0, z), "with n_iter = 0 the result is the starting point x_0 = z")
    x2 = _tensor(fixed_point_inverse(g, z.clone(), 2), "fixed_point_inverse(g, z, 2)", (2, 2))
    want = z - g(z - g(z))
    expect(_close(x2, want), "after 2 iterations expected x_2 = z - g(z - g(z)); do exactly n_iter updates")
    x60 = fixed_point_inverse(g, z.clone(), 60)
    expect(_close(x60 + g(x60), z, 1e-10), "after 60 iterations x + g(x) should equal z (Lip(g) = 0.5)")


# ---------------------------------------------------------------- Q5 series log-det
@visible("ch07.q5.terms", "Q5 truncated series: 1 and 3 terms for a 2x2 Jacobian")
def _q5_terms(ns):
    series_logdet = need(ns, "series_logdet")
    J = torch.tensor([[[0.2, 0.1], [0.0, -0.3]]], dtype=F64)
    s1 = _tensor(series_logdet(J.clone(), 1), "series_logdet(J, 1)", (1,))
    expect(_close(s1, [-0.1]), f"with one term the series is tr J = -0.1, got {s1.item():.6f}")
    s3 = series_logdet(J.clone(), 3)
    want = sum((-1) ** (k + 1) * (0.2**k + (-0.3) ** k) / k for k in (1, 2, 3))
    expect(
        _close(s3, [want]),
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
    expect(_close(s, want, 1e-10), f"expected {[round(v, 6) for v in want.tolist()]}, got "
           f"{[round(v, 6) for v in s.tolist()]} for a batch of 3 Jacobians with spectral norm 0.5")


# ---------------------------------------------------------------- Q6 Euler flow
@visible("ch07.q6.euler", "Q6 Euler flow of the linear field g(z) = A z: (I + hA)^K x and K log det(I + hA)")
def _q6(ns):
    euler_flow = need(ns, "euler_flow")
    A = torch.tensor([[-1.0, 0.5], [0.0, 0.5]], dtype=F64)

    def g(y):
        return y @ A.T

    x = torch.tensor([[1.0, 2.0], [-0.5, 0.0], [0.3, 0.3]], dtype=F64)
    z, ld = _pair(euler_flow(g, x.clone(), 1.0, 4), "euler_flow")
    z, ld = _tensor(z, "z", (3, 2)), _tensor(ld, "logdet", (3,))
    step = torch.eye(2, dtype=F64) + 0.25 * A
    want_z = x @ torch.linalg.matrix_power(step, 4).T
    want_ld = 4 * torch.linalg.slogdet(step).logabsdet
    expect(_close(z, want_z), "z should be x after 4 Euler steps z <- z + h A z with h = T / K = 0.25")
    expect(
        _close(ld, want_ld.expand(3)),
        f"expected 4 log det(I + 0.25 A) = {want_ld.item():.6f} for every point, got "
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
    z = x * torch.tensor([math.exp(-2.0), math.exp(1.0)], dtype=F64)
    want = -0.5 * (z**2).sum(1) - math.log(2 * math.pi) + 2.0 * (-0.5)
    expect(
        _close(lp, want),
        f"expected {[round(v, 6) for v in want.tolist()]}, got {[round(v, 6) for v in lp.tolist()]} "
        "(z(T) = expm(T A) x; the log-det is + T tr A = -1 here)",
    )
