"""Visible tests of chapter 3 (Monte Carlo estimation and stochastic gradients).

Each test says what was expected. They are deliberately small: the hidden checks, run by the grader, use other
inputs (batches, extreme log-weights, random matrices).
"""

from __future__ import annotations

import math

import torch

from course_tools.check import expect, need, visible
from course_tools.checks._common import F64, close, tensor, tensors

# the standard normal quantiles Phi^-1(0.975) and Phi^-1(0.995) (statistics.NormalDist().inv_cdf)
_Z975, _Z995 = 1.959963984540054, 2.5758293035489004


def _triple(out, what: str):
    return [tensor(o, f"each value returned by {what}").item() for o in tensors(out, what, 3)]


# ---------------------------------------------------------------- Q1 confidence interval
@visible("ch03.q1.basic", "Q1 95% interval of [1, 2, 3, 4, 5]: mean 3, se = sqrt(2.5/5), half-width 1.96 se")
def _q1_basic(ns):
    f = need(ns, "mc_confidence_interval")
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=F64)
    est, lo, hi = _triple(f(v), "mc_confidence_interval(values)")
    se = math.sqrt(2.5 / 5)
    z = _Z975
    expect(close(est, 3.0), f"the estimate is the sample mean, 3; got {est}")
    expect(
        close(hi - lo, 2 * z * se, 1e-4),
        f"expected the interval 3 +- {z:.4f} x {se:.4f} (sample sd with n - 1, over sqrt(n)); "
        f"got [{lo:.4f}, {hi:.4f}]. Did you divide by n instead of n - 1, or forget the sqrt(n)?",
    )
    expect(close(lo + hi, 6.0), f"the interval should be centred on the estimate 3; got [{lo:.4f}, {hi:.4f}]")


@visible("ch03.q1.level", "Q1 the level argument: a 99% interval is wider, by ndtri(0.995) / ndtri(0.975)")
def _q1_level(ns):
    f = need(ns, "mc_confidence_interval")
    v = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=F64)
    _, lo95, hi95 = _triple(f(v, 0.95), "mc_confidence_interval(values, 0.95)")
    _, lo99, hi99 = _triple(f(v, level=0.99), "mc_confidence_interval(values, level=0.99)")
    ratio = (hi99 - lo99) / (hi95 - lo95)
    want = _Z995 / _Z975
    expect(
        close(ratio, want, 1e-6),
        f"the 99% interval should be {want:.4f} times as wide as the 95% one, got {ratio:.4f} "
        "(use z = Phi^-1((1 + level) / 2), torch.special.ndtri)",
    )


# ---------------------------------------------------------------- Q2 log-mean-exp
@visible("ch03.q2.basic", "Q2 log_mean_exp of log([1, 2, 3]) is log 2, along the last axis of a batch")
def _q2_basic(ns):
    f = need(ns, "log_mean_exp")
    a = torch.tensor([1.0, 2.0, 3.0], dtype=F64).log()
    out = tensor(f(a), "log_mean_exp(a)")
    expect(out.shape == (), f"for a of shape (3,) expected a scalar tensor, got shape {tuple(out.shape)}")
    expect(
        close(out.item(), math.log(2)),
        f"expected log(mean([1, 2, 3])) = log 2 = {math.log(2):.6f}, got {out.item()}",
    )
    b = torch.stack([a, a + 1.0])
    outb = tensor(f(b), "log_mean_exp(batch)")
    expect(outb.shape == (2,), f"for a (2, 3) batch expected shape (2,), got {tuple(outb.shape)}")
    expect(close(outb[1].item(), math.log(2) + 1), "adding 1 to every entry should add 1 to the result")


@visible("ch03.q2.extreme", "Q2 no overflow or underflow: entries near +1000 and -1000")
def _q2_extreme(ns):
    f = need(ns, "log_mean_exp")
    for shift in (1000.0, -1000.0):
        a = torch.tensor([0.0, 1.0, 2.0], dtype=F64) + shift
        got = tensor(f(a), "log_mean_exp(a)").item()
        want = shift + math.log((1 + math.e + math.e**2) / 3)
        expect(
            close(got, want),
            f"for a = [0, 1, 2] + {shift:.0f} expected {want:.6f}, got {got} "
            "(subtract the maximum before exponentiating, eq. log-sum-exp of the lecture)",
        )


# ---------------------------------------------------------------- Q3 self-normalised importance sampling
@visible("ch03.q3.estimate", "Q3 equal weights give the plain mean; weights (1, 3) give (1 h1 + 3 h2) / 4")
def _q3_estimate(ns):
    f = need(ns, "self_normalized_is")
    h = torch.tensor([2.0, 6.0], dtype=F64)
    out = f(h, torch.zeros(2, dtype=F64))
    expect(isinstance(out, tuple) and len(out) == 2, "self_normalized_is should return (estimate, ess)")
    est = tensor(out[0], "the estimate").item()
    expect(close(est, 4.0), f"with equal log-weights the estimate is the plain mean 4, got {est}")
    est2 = f(h, torch.tensor([0.0, math.log(3.0)], dtype=F64))[0].item()
    expect(close(est2, 5.0), f"with weights (1, 3) expected (2 + 3 x 6) / 4 = 5, got {est2}")
    est3 = f(h, torch.tensor([800.0, 800.0 + math.log(3.0)], dtype=F64))[0].item()
    expect(close(est3, 5.0), f"with log-weights (800, 800 + log 3) expected 5 again, got {est3} (overflow?)")


@visible("ch03.q3.ess", "Q3 ESS: n for equal weights, (1 + 3)^2 / (1 + 9) = 1.6 for weights (1, 3)")
def _q3_ess(ns):
    f = need(ns, "self_normalized_is")
    h = torch.tensor([2.0, 6.0, 1.0, 0.0], dtype=F64)
    ess = tensor(f(h, torch.full((4,), -3.0, dtype=F64))[1], "the ESS").item()
    expect(close(ess, 4.0), f"equal weights: the effective sample size is n = 4, got {ess}")
    ess2 = f(h[:2], torch.tensor([-900.0, -900.0 + math.log(3.0)], dtype=F64))[1].item()
    expect(close(ess2, 1.6), f"weights proportional to (1, 3): ESS = 16 / 10 = 1.6, got {ess2} (underflow?)")


# ---------------------------------------------------------------- Q4 Hutchinson estimate
@visible("ch03.q4.basic", "Q4 probes (1, 1) and (1, -1) on [[1, 2], [3, 4]] give 10 and 0: the estimate is 5")
def _q4_basic(ns):
    f = need(ns, "hutchinson_trace")
    A = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)
    V = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=F64)
    out = tensor(f(A, V), "hutchinson_trace(A, V)")
    expect(out.shape == (), f"expected a scalar tensor, got shape {tuple(out.shape)}")
    # v1^T A v1 = 10, v2^T A v2 = 1 - 2 - 3 + 4 = 0
    expect(close(out.item(), 5.0), f"probes (1, 1) and (1, -1) give 10 and 0, so the average is 5; got {out.item()}")


# ---------------------------------------------------------------- Q5 Hutchinson variance
@visible("ch03.q5.rademacher", "Q5 Rademacher variance: 0 for a diagonal matrix, 2 sum_(i != j) S_ij^2 otherwise")
def _q5_rademacher(ns):
    f = need(ns, "hutchinson_variance")
    D = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=F64))
    v = tensor(f(D, "rademacher"), "hutchinson_variance(A, 'rademacher')").item()
    expect(close(v, 0.0), f"a diagonal matrix has Rademacher variance 0 (v_i^2 = 1), got {v}")
    A = torch.tensor([[1.0, 2.0], [4.0, 5.0]], dtype=F64)
    v2 = f(A, "rademacher").item()
    expect(
        close(v2, 36.0),
        f"S = (A + A^T) / 2 has off-diagonal entries 3, so the variance is 2 (3^2 + 3^2) = 36; got {v2} "
        "(did you use A instead of its symmetric part? that gives 2 (2^2 + 4^2) = 40)",
    )


@visible("ch03.q5.gaussian", "Q5 Gaussian variance: 2 x 3 = 6 for I_3, and 2 ||S||_F^2 = 8 for [[1, 2], [0, 1]]")
def _q5_gaussian(ns):
    f = need(ns, "hutchinson_variance")
    v = tensor(f(torch.eye(3, dtype=F64), "gaussian"), "hutchinson_variance(I, 'gaussian')").item()
    expect(close(v, 6.0), f"for A = I_3, v^T v is chi-squared with 3 degrees of freedom: variance 6, got {v}")
    A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=F64)
    v2 = f(A, "gaussian").item()
    expect(
        close(v2, 8.0),
        f"S = (A + A^T) / 2 = [[1, 1], [1, 1]], so the variance is 2 ||S||_F^2 = 8; got {v2} "
        "(did you use A instead of its symmetric part? that gives 2 ||A||_F^2 = 12)",
    )


# ---------------------------------------------------------------- Q6 gradient of the Gaussian NLL
@visible("ch03.q6.optimum", "Q6 the gradient vanishes at the closed-form MLE; shape (2,)")
def _q6_optimum(ns):
    f = need(ns, "gaussian_nll_grad")
    x = torch.tensor([0.0, 1.0, 2.0, 5.0], dtype=F64)
    theta = torch.tensor([2.0, 0.5 * math.log(3.5)], dtype=F64)  # mean 2, variance (4 + 1 + 0 + 9) / 4
    g = tensor(f(theta, x), "gaussian_nll_grad(theta, x)")
    expect(g.shape == (2,), f"expected shape (2,) (d/dmu, d/ds), got {tuple(g.shape)}")
    expect(
        g.abs().max().item() < 1e-10,
        f"at the MLE (mean, log of the sd with 1/N) the gradient is 0, got {g.tolist()}",
    )


@visible("ch03.q6.value", "Q6 at theta = (0, 0) and x = [1, 3] the gradient is (-2, -4)")
def _q6_value(ns):
    f = need(ns, "gaussian_nll_grad")
    g = f(torch.zeros(2, dtype=F64), torch.tensor([1.0, 3.0], dtype=F64)).tolist()
    expect(
        close(g[0], -2.0) and close(g[1], -4.0),
        f"expected (-mean(x - mu) e^-2s, 1 - mean((x - mu)^2) e^-2s) = (-2, -4), got {g} "
        "(the loss is the MEAN negative log-likelihood, not the sum)",
    )


# ---------------------------------------------------------------- Q7 SGD step
@visible("ch03.q7.step", "Q7 one SGD step uses only the minibatch x[idx]")
def _q7_step(ns):
    f = need(ns, "sgd_step")
    x = torch.tensor([1.0, 3.0, 100.0], dtype=F64)
    theta = torch.zeros(2, dtype=F64)
    new = tensor(f(theta, x, torch.tensor([0, 1]), 0.1), "sgd_step(...)")
    expect(new.shape == (2,), f"expected the new parameters, shape (2,), got {tuple(new.shape)}")
    expect(
        close(new[0].item(), 0.2) and close(new[1].item(), 0.4),
        f"minibatch [1, 3] has gradient (-2, -4), so theta - 0.1 g = (0.2, 0.4); got {new.tolist()}",
    )
    expect(theta.abs().max().item() == 0, "sgd_step must not modify theta in place")
