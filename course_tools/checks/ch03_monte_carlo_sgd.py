"""Visible tests of chapter 3 (Monte Carlo estimation and stochastic gradients).

Each test says what was expected. They are deliberately small: the hidden checks, run by the grader, use other
inputs (batches, extreme log-weights, random matrices).
"""

from __future__ import annotations

import math

import torch

from course_tools.check import expect, need, visible
from course_tools.checks._common import F64, close, fmt, tensor, tensors

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


# ---------------------------------------------------------------- Q2 diagnose: importance sampling
@visible("ch03.q2.estimate", "Q2 p = (0.2, 0.6), q = (0.4, 0.3) at two samples: weights p/q = (0.5, 2), estimate 2.25")
def _q2_estimate(ns):
    f = need(ns, "is_estimate")
    h = torch.tensor([1.0, 2.0], dtype=F64)
    log_p = torch.tensor([0.2, 0.6], dtype=F64).log()
    log_q = torch.tensor([0.4, 0.3], dtype=F64).log()
    out = tensors(f(h, log_p, log_q), "is_estimate(h_values, log_p, log_q)")
    est = tensor(out[0], "the estimate")
    expect(est.shape == (), f"for inputs of shape (2,) expected a scalar estimate, got shape {tuple(est.shape)}")
    expect(
        close(est.item(), 2.25),
        f"terms w h = (0.5 x 1, 2 x 2) = (0.5, 4), mean 2.25; got {est.item()} "
        "(1.5 would mean the weights are q/p: samples of q must be re-weighted by p/q)",
    )
    batch = tensor(f(torch.stack([h, h]), torch.stack([log_p, log_q]), torch.stack([log_q, log_p]))[0], "the estimate")
    expect(batch.shape == (2,), f"for a (2, 2) batch expected estimates of shape (2,), got {tuple(batch.shape)}")
    expect(close(batch.tolist(), [2.25, 1.5]), f"swapping p and q gives (2 x 1 + 0.5 x 2) / 2 = 1.5; got {fmt(batch)}")


@visible("ch03.q2.stderr", "Q2 the standard error of the terms (0.5, 4): sd sqrt(6.125), se 1.75; 0 for p = q, h = 1")
def _q2_stderr(ns):
    f = need(ns, "is_estimate")
    h = torch.tensor([1.0, 2.0], dtype=F64)
    out = tensors(
        f(h, torch.tensor([0.2, 0.6], dtype=F64).log(), torch.tensor([0.4, 0.3], dtype=F64).log()),
        "is_estimate(h_values, log_p, log_q)",
    )
    se = tensor(out[1], "the standard error").item()
    expect(
        close(se, 1.75),
        f"terms (0.5, 4): sample variance (1.75^2 + 1.75^2) / 1 = 6.125, se sqrt(6.125 / 2) "
        f"= 1.75; got {se} (n - 1 in the variance, sqrt(n) in the se)",
    )
    lp = torch.tensor([-1.0, -2.0, -0.5], dtype=F64)
    se0 = tensor(f(torch.ones(3, dtype=F64), lp, lp)[1], "the standard error").item()
    expect(close(se0, 0.0), f"with p = q and h = 1 every term is 1: the standard error is 0, got {se0}")


# ---------------------------------------------------------------- Q3 derive: Hutchinson variance for any kappa
@visible("ch03.q3.sparse", "Q3 a diagonal matrix: variance (kappa - 1) sum S_ii^2; 0 for Rademacher probes")
def _q3_sparse(ns):
    f = need(ns, "hutchinson_variance")
    D = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=F64))
    v1 = tensor(f(D, 1.0), "hutchinson_variance(D, 1.0)")
    expect(v1.shape == (), f"expected a scalar tensor, got shape {tuple(v1.shape)}")
    expect(close(v1.item(), 0.0), f"Rademacher probes (kappa = 1) read a diagonal matrix exactly: 0, got {v1.item()}")
    v4 = f(D, 4.0).item()
    expect(
        close(v4, 42.0),
        f"for a diagonal matrix v^T D v = sum_i D_ii e_i^2, with variance (kappa - 1) sum_i "
        f"D_ii^2 = 3 x 14 = 42 for kappa = 4; got {v4}",
    )
    v4m = f(D, 4.0, 6).item()
    expect(close(v4m, 7.0), f"averaging m = 6 probes divides the variance by 6: 42 / 6 = 7; got {v4m}")


@visible(
    "ch03.q3.classic",
    "Q3 kappa = 3 gives the Gaussian 2 ||S||_F^2 = 88 for [[1, 2], [4, 5]]; kappa = 1.8, m = 4 gives 14.2",
)
def _q3_classic(ns):
    f = need(ns, "hutchinson_variance")
    A = torch.tensor([[1.0, 2.0], [4.0, 5.0]], dtype=F64)
    g = f(A, 3.0).item()
    expect(
        close(g, 88.0),
        f"S = [[1, 3], [3, 5]], 2 ||S||_F^2 = 2 (1 + 9 + 9 + 25) = 88 for Gaussian probes; got {g} "
        "(the symmetric part, not A: 2 ||A||_F^2 = 92)",
    )
    u = f(A, 1.8, 4).item()
    expect(close(u, 14.2), f"uniform probes (kappa = 9/5), 4 probes: (2 x 18 + 0.8 x 26) / 4 = 14.2; got {u}")


# ---------------------------------------------------------------- Q4 derive: control variate
@visible("ch03.q4.estimate", "Q4 h = (1, 2, 3, 5), g = (0, 1, 2, 3), gamma = 1: c = 6.5 / 5 = 1.3, estimate 2.1")
def _q4_estimate(ns):
    f = need(ns, "control_variate_estimate")
    h = torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=F64)
    g = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=F64)
    out = tensors(f(h, g, 1.0), "control_variate_estimate(h, g, g_mean)")
    est = tensor(out[0], "the estimate").item()
    expect(
        close(est, 2.1),
        f"c = sum (h - 2.75)(g - 1.5) / sum (g - 1.5)^2 = 6.5 / 5 = 1.3, so the estimate is "
        f"2.75 - 1.3 (1.5 - 1) = 2.1; got {est}",
    )
    lin = tensor(f(3.0 - 2.0 * g, g, 0.25)[0], "the estimate").item()
    expect(
        close(lin, 2.5), f"for h = 3 - 2 g exactly the estimate is 3 - 2 gamma = 2.5 whatever the samples; got {lin}"
    )


@visible("ch03.q4.stderr", "Q4 the adjusted terms (2.3, 2.0, 1.7, 2.4) have se sqrt(0.1 / 4); a linear h has se 0")
def _q4_stderr(ns):
    f = need(ns, "control_variate_estimate")
    h = torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=F64)
    g = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=F64)
    se = tensor(f(h, g, 1.0)[1], "the standard error").item()
    expect(
        close(se, math.sqrt(0.1 / 4)),
        f"h - 1.3 (g - 1) = (2.3, 2.0, 1.7, 2.4), sample variance 0.1, "
        f"se sqrt(0.1 / 4) = {math.sqrt(0.025):.6f}; got {se}",
    )
    se0 = tensor(f(1.0 + 4.0 * g, g, 2.0)[1], "the standard error").item()
    expect(close(se0, 0.0), f"for h = 1 + 4 g the adjusted terms are all equal: se 0, got {se0}")


# ---------------------------------------------------------------- Q5 predict: ESS of a shifted proposal
@visible(
    "ch03.q5.integral",
    "Q5 centred N(0, 2^2): sqrt(7)/4 as in the lecture; N(1, 1): exp(-1); a product over coordinates",
)
def _q5_integral(ns):
    f = need(ns, "ess_fraction")
    v = tensor(f(torch.tensor([0.0], dtype=F64), torch.tensor([2.0], dtype=F64)), "ess_fraction(m, s)")
    expect(v.shape == (), f"expected a scalar tensor, got shape {tuple(v.shape)}")
    expect(
        close(v.item(), math.sqrt(7) / 4), f"m = 0, s = 2 is the lecture's case: sqrt(7) / 4 = 0.6614, got {v.item()}"
    )
    shifted = f(torch.tensor([1.0], dtype=F64), torch.tensor([1.0], dtype=F64)).item()
    expect(
        close(shifted, math.exp(-1)),
        f"q = N(1, 1): E_q[w^2] = e^(m^2) = e, so n_eff / n = exp(-1) = 0.3679; got {shifted}",
    )
    both = f(torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([2.0, 1.0], dtype=F64)).item()
    expect(
        close(both, math.sqrt(7) / 4 * math.exp(-1)),
        f"two coordinates: the product of the two, {math.sqrt(7) / 4 * math.exp(-1):.6f}; got {both}",
    )


@visible("ch03.q5.measured", "Q5 light tails (s = 0.6) give 0; 400 coordinates with s = 1.2 give 1.0496^-400, not 0")
def _q5_measured(ns):
    f = need(ns, "ess_fraction")
    light = tensor(f(torch.tensor([0.0, 0.0], dtype=F64), torch.tensor([1.5, 0.6], dtype=F64)), "ess_fraction(m, s)")
    expect(
        close(light.item(), 0.0),
        f"s^2 = 0.36 <= 1/2 in one coordinate: E_q[w^2] is infinite, return 0; got {light.item()}",
    )
    big = tensor(f(torch.zeros(400, dtype=F64), torch.full((400,), 1.2, dtype=F64)), "ess_fraction(m, s)").item()
    want = (1.44 / math.sqrt(1.88)) ** -400
    expect(
        big > 0 and close(math.log(big), math.log(want), 1e-9),
        f"400 coordinates with s = 1.2: (1.44 / sqrt(1.88))^-400 = {want:.4e}; got {big} (work in log space)",
    )


# ---------------------------------------------------------------- Q6 seeded SGD
@visible("ch03.q6.replay", "Q6 x = (2, 2, 2), lr 0.1: theta_1 = (0.2, 0.3), theta_2 = (0.29879, 0.37782)")
def _q6_replay(ns):
    f = need(ns, "fit_gaussian_sgd")
    x = torch.full((3,), 2.0, dtype=F64)
    out = tensors(f(x, 0.1, 1, 2, torch.Generator().manual_seed(0)), "fit_gaussian_sgd(...)")
    last = tensor(out[0], "theta_last", shape=(2,), dtype=F64)
    expect(
        close(last.tolist(), [0.2, 0.3]),
        f"from (0, 0) the gradient of the mean NLL of (2, 2) is (-2, 1 - 4) = "
        f"(-2, -3), so theta_1 = (0.2, 0.3); got {fmt(last)}",
    )
    last2, avg2 = tensors(f(x, 0.1, 2, 2, torch.Generator().manual_seed(0)), "fit_gaussian_sgd(...)")
    want = [0.2 + 0.1 * 1.8 * math.exp(-0.6), 0.3 + 0.1 * (1.8**2 * math.exp(-0.6) - 1)]
    expect(
        close(tensor(last2, "theta_last").tolist(), want),
        f"theta_2 = theta_1 - 0.1 (-1.8 e^-0.6, 1 - 1.8^2 e^-0.6) = {fmt(want, 5)}; got {fmt(last2, 5)}",
    )
    expect(
        close(tensor(avg2, "theta_avg").tolist(), want),
        f"with T = 2 the second half is theta_2 alone: {fmt(want, 5)}; got {fmt(avg2, 5)}",
    )


@visible("ch03.q6.mle", "Q6 800 steps on 40 points: the averaged iterate is within 0.05 of the closed-form MLE")
def _q6_mle(ns):
    f = need(ns, "fit_gaussian_sgd")
    x = torch.linspace(-1.0, 3.0, 40, dtype=F64)
    out = tensors(f(x, 0.05, 800, 10, torch.Generator().manual_seed(1)), "fit_gaussian_sgd(...)")
    avg = tensor(out[1], "theta_avg", shape=(2,), dtype=F64)
    mle = [1.0, 0.5 * math.log(float(((x - 1.0) ** 2).mean()))]
    expect(
        close(avg.tolist(), mle, 0.05),
        f"the closed form is (mean, log sd with 1/N) = {fmt(mle)}; your averaged iterate is {fmt(avg)}",
    )
