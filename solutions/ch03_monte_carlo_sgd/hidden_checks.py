"""Hidden checks of the chapter 3 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
Every reference is computed here by another route than the model answer: torch.distributions densities,
exact enumeration of discrete probes, eigenvalues, least squares, numerical integration, a measured effective
sample size, and a replay of the seeded SGD run with autograd gradients.
"""

import itertools
import math

import torch

from course_tools.hidden import Checks, Generator, expect, expect_close, expect_tensor

checks = Checks("ch03_monte_carlo_sgd")
F64 = torch.float64


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _scalar(x, what):
    return expect_tensor(x, what, shape=(), dtype=F64)


def _pair(out, what, shape):
    expect(isinstance(out, tuple) and len(out) == 2, f"{what} should return a tuple of two tensors")
    return [expect_tensor(o, f"each value returned by {what}", shape=shape, dtype=F64) for o in out]


# ---------------------------------------------------------------- Q1 confidence interval
@checks.cell("q1_basic_test")
def q1_batch(student):
    """95% interval of a batch of 3 samples of 50 values each"""
    v = 2.0 + 3.0 * _randn(3, 50, seed=101)
    out = student.mc_confidence_interval(v)
    expect(isinstance(out, tuple) and len(out) == 3, "mc_confidence_interval should return a tuple of 3 tensors")
    est, lo, hi = (expect_tensor(o, "each returned value", shape=(3,), dtype=F64) for o in out)
    se = v.std(-1) / math.sqrt(50)
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.975, dtype=F64))
    expect_close(est, v.mean(-1), "the estimate of a batch of samples is not the mean over the last axis")
    expect_close(lo, v.mean(-1) - z * se, "the lower end of the 95% interval is wrong", rtol=1e-4)
    expect_close(hi, v.mean(-1) + z * se, "the upper end of the 95% interval is wrong", rtol=1e-4)


@checks.cell("q1_level_test", chaining="one sample at two levels, each width checked against the reference")
def q1_level(student):
    """80% and 99.9% intervals"""
    v = _randn(40, seed=102).exp()
    outs = [student.mc_confidence_interval(v, level) for level in (0.8, 0.999)]
    se = v.std() / math.sqrt(40)
    for out, level in zip(outs, (0.8, 0.999)):
        expect(isinstance(out, tuple) and len(out) == 3, "mc_confidence_interval should return a tuple of 3 tensors")
        _, lo, hi = (_scalar(o, "each returned value") for o in out)
        z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((1 + level) / 2, dtype=F64))
        expect_close(hi - lo, 2 * z * se, f"the width of the {level:.1%} interval is wrong", rtol=1e-7)


# ---------------------------------------------------------------- Q2 diagnose: importance sampling
def _is_case(seed, batch, n, shift, scale):
    """Samples of q = N(shift, scale^2), log p for p = N(0, 1), log q, and h(z) = z^2 + z."""
    z = shift + scale * _randn(*batch, n, seed=seed)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    log_q = torch.distributions.Normal(shift, scale).log_prob(z)
    return z**2 + z, log_p, log_q


@checks.cell("q2_estimate_test")
def q2_estimate(student):
    """importance sampling estimates for a batch of 3 runs with a shifted, wider proposal"""
    h, log_p, log_q = _is_case(201, (3,), 60, 0.4, 1.6)
    out = student.is_estimate(h, log_p, log_q)
    est, _ = _pair(out, "is_estimate(h_values, log_p, log_q)", (3,))
    w = torch.exp(log_p - log_q)
    expect_close(
        est,
        (w * h).sum(-1) / 60,
        "the importance sampling estimate is wrong (which density ratio makes samples of q count as samples of p?)",
        rtol=1e-9,
    )


@checks.cell("q2_stderr_test")
def q2_stderr(student):
    """standard errors of importance sampling estimates on a (2, 2) batch"""
    h, log_p, log_q = _is_case(202, (2, 2), 45, -0.3, 1.3)
    out = student.is_estimate(h, log_p, log_q)
    est, se = _pair(out, "is_estimate(h_values, log_p, log_q)", (2, 2))
    terms = (log_p - log_q).exp() * h
    expect_close(est, terms.mean(-1), "the importance sampling estimate of a (2, 2) batch is wrong", rtol=1e-9)
    expect_close(
        se,
        terms.std(-1) / math.sqrt(45),
        "the standard error of the importance sampling estimate is "
        "wrong (the sample sd of the weighted terms, over sqrt(n))",
        rtol=1e-9,
    )


# ---------------------------------------------------------------- Q3 derive: Hutchinson variance, any kappa
def _exact_probe_variance(A, values, probs):
    """Exact variance of v^T A v for i.i.d. entries taking `values` with `probs`, by enumeration."""
    d = A.shape[0]
    mean = second = 0.0
    for combo in itertools.product(range(len(values)), repeat=d):
        v = torch.tensor([values[k] for k in combo], dtype=F64)
        pr = math.prod(probs[k] for k in combo)
        q = float(v @ A @ v)
        mean += pr * q
        second += pr * q * q
    return second - mean**2


@checks.cell("q3_sparse_test")
def q3_sparse(student):
    """sparse probes (kappa = 4) on a random non-symmetric 4 x 4 matrix, averaged over 3 probes"""
    A = _randn(4, 4, seed=301)
    got = _scalar(student.hutchinson_variance(A, 4.0, 3), "hutchinson_variance(A, 4.0, 3)")
    rho = 0.25  # entries 0 with probability 3/4, +-2 with probability 1/8 each: E[e^2] = 1, E[e^4] = 4
    a = 1 / math.sqrt(rho)
    want = _exact_probe_variance(A, (-a, 0.0, a), (rho / 2, 1 - rho, rho / 2)) / 3
    expect_close(
        got,
        want,
        "the variance for sparse probes (fourth moment 4, 3 probes) is wrong: compare it with "
        "an exact enumeration of the probes",
        rtol=1e-9,
    )


@checks.cell("q3_classic_test")
def q3_classic(student):
    """Rademacher (kappa = 1, 2 probes) and Gaussian (kappa = 3, 7 probes) probes on random matrices"""
    A1, A2 = _randn(5, 5, seed=302), _randn(6, 6, seed=303)
    out1 = student.hutchinson_variance(A1, 1.0, 2)
    out2 = student.hutchinson_variance(A2, 3.0, 7)
    got1 = _scalar(out1, "hutchinson_variance(A, 1.0, 2)")
    got2 = _scalar(out2, "hutchinson_variance(A, 3.0, 7)")
    want1 = _exact_probe_variance(A1, (-1.0, 1.0), (0.5, 0.5)) / 2
    lam = torch.linalg.eigvalsh(0.5 * (A2 + A2.T))  # v^T S v = sum_i lam_i chi2_1: variance 2 sum lam_i^2
    expect_close(got1, want1, "the Rademacher variance of the 2-probe average is wrong", rtol=1e-9)
    expect_close(got2, 2 * (lam**2).sum() / 7, "the Gaussian variance of the 7-probe average is wrong", rtol=1e-9)


# ---------------------------------------------------------------- Q4 derive: control variate
def _cv_reference(h, g, gamma):
    """Least squares of h on (1, g - gamma): the intercept is the control-variate estimate."""
    X = torch.stack([torch.ones_like(g), g - gamma], 1)
    coef = torch.linalg.lstsq(X, h[:, None]).solution[:, 0]
    resid = h - X @ coef
    terms = coef[0] + resid
    return coef[0], terms.std() / math.sqrt(len(h))


@checks.cell("q4_estimate_test")
def q4_estimate(student):
    """E[exp(U)] for U ~ U(0, 1) with the control variate g(u) = u, and E[cos Z] with g(z) = 1 - z^2 / 2"""
    u = torch.rand(80, generator=torch.Generator().manual_seed(401), dtype=F64)
    z = _randn(120, seed=402)
    out1 = student.control_variate_estimate(u.exp(), u, 0.5)
    out2 = student.control_variate_estimate(z.cos(), 1 - z**2 / 2, 0.5)
    (est1, _), (est2, _) = (
        _pair(out1, "control_variate_estimate(...)", ()),
        _pair(out2, "control_variate_estimate(...)", ()),
    )
    expect_close(
        est1, _cv_reference(u.exp(), u, 0.5)[0], "the control-variate estimate of E[exp(U)] is wrong", rtol=1e-9
    )
    expect_close(
        est2,
        _cv_reference(z.cos(), 1 - z**2 / 2, 0.5)[0],
        "the control-variate estimate of E[cos Z] is wrong",
        rtol=1e-9,
    )


@checks.cell("q4_stderr_test")
def q4_stderr(student):
    """standard error of a control-variate estimate, and an exactly linear h (zero error)"""
    x = _randn(70, seed=403)
    h = (x + 0.3 * _randn(70, seed=404)) ** 2
    g = x**2
    y = _randn(30, seed=405)
    out1 = student.control_variate_estimate(h, g, 1.0)
    out2 = student.control_variate_estimate(3.0 - 2.0 * y, y, 0.0)
    est1, se1 = _pair(out1, "control_variate_estimate(...)", ())
    est2, se2 = _pair(out2, "control_variate_estimate(...)", ())
    ref_est, ref_se = _cv_reference(h, g, 1.0)
    expect_close(est1, ref_est, "the control-variate estimate is wrong", rtol=1e-9)
    expect_close(
        se1,
        ref_se,
        "the standard error of the control-variate estimate is wrong (the sample sd of the "
        "adjusted terms h - c (g - gamma), over sqrt(n))",
        rtol=1e-8,
    )
    expect_close(
        est2,
        torch.tensor(3.0, dtype=F64),
        "for h = 3 - 2 g exactly, the estimate should be exactly 3 - 2 gamma",
        rtol=1e-9,
        atol=1e-9,
    )
    expect_close(
        se2,
        torch.tensor(0.0, dtype=F64),
        "for h linear in g the adjusted terms are constant: the standard error is 0",
        atol=1e-9,
    )


# ---------------------------------------------------------------- Q5 predict: ESS of a shifted proposal
def _log_second_moment(m, s):
    """log E_q[w^2] = sum_i log int p(z)^2 / q_i(z) dz for p = N(0, 1), q_i = N(m_i, s_i^2): trapezoid rule on a
    fine grid, one column per coordinate, in log space."""
    z = torch.linspace(-30.0, 30.0, 6_001, dtype=F64)[:, None]
    log_f = 2 * torch.distributions.Normal(0.0, 1.0).log_prob(z) - torch.distributions.Normal(m, s).log_prob(z)
    top = log_f.max(0).values
    return (top + torch.log(torch.trapezoid((log_f - top).exp(), z[:, 0], dim=0))).sum()


@checks.cell("q5_integral_test")
def q5_integral(student):
    """one-dimensional shifted proposals and a 3-dimensional one, against numerical integration"""
    cases = [
        (torch.tensor([1.3], dtype=F64), torch.tensor([0.9], dtype=F64)),
        (torch.tensor([-0.6, 0.2, 2.1], dtype=F64), torch.tensor([1.7, 0.8, 2.5], dtype=F64)),
    ]
    outs = [student.ess_fraction(m, s) for m, s in cases]
    for (m, s), out in zip(cases, outs):
        got = _scalar(out, "ess_fraction(m, s)")
        expect_close(
            got,
            torch.exp(-_log_second_moment(m, s)),
            f"the predicted n_eff / n for a shifted proposal in {len(m)} "
            "dimension(s) disagrees with numerical integration",
            rtol=1e-6,
        )


@checks.cell("q5_measured_test")
def q5_measured(student):
    """a 4-dimensional proposal against the grader's measured ESS, a 300-dimensional one, and light tails"""
    m = torch.tensor([0.3, -0.2, 0.5, 0.0], dtype=F64)
    s = torch.tensor([1.5, 1.3, 2.0, 1.1], dtype=F64)
    m_big, s_big = (
        0.05 * _randn(300, seed=501),
        1.2 + 0.1 * torch.rand(300, generator=torch.Generator().manual_seed(502), dtype=F64),
    )
    m_light, s_light = torch.tensor([0.1, 0.0], dtype=F64), torch.tensor([1.4, 0.7], dtype=F64)
    outs = [student.ess_fraction(m, s), student.ess_fraction(m_big, s_big), student.ess_fraction(m_light, s_light)]
    got, got_big, got_light = (_scalar(o, "ess_fraction(m, s)") for o in outs)
    n = 50_000
    z = m + s * torch.randn(n, 4, generator=torch.Generator().manual_seed(503), dtype=F64)
    log_w = (torch.distributions.Normal(0.0, 1.0).log_prob(z) - torch.distributions.Normal(m, s).log_prob(z)).sum(1)
    measured = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / n
    expect_close(
        got,
        measured,
        "the predicted n_eff / n of a 4-dimensional proposal is far from the effective "
        "sample size measured on 50,000 samples",
        rtol=0.03,
    )
    log_w2 = _log_second_moment(m_big, s_big)
    expect(
        bool(torch.isfinite(got_big)) and float(got_big) > 0,
        "in 300 dimensions n_eff / n is tiny but positive (work in log space)",
    )
    expect_close(got_big.log(), -log_w2, "the predicted n_eff / n in 300 dimensions is wrong", rtol=1e-6)
    expect_close(
        got_light,
        torch.tensor(0.0, dtype=F64),
        "a proposal with s^2 <= 1/2 in one coordinate has E_q[w^2] = infinity: n_eff / n should be 0",
        atol=0.0,
    )


# ---------------------------------------------------------------- Q6 seeded SGD run
def ref_sgd(x, lr, steps, batch_size, seed):
    """The same run with autograd gradients of the mean Gaussian NLL (the reference replay)."""
    draws = torch.Generator().manual_seed(seed)
    theta, iterates = torch.zeros(2, dtype=F64), []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=draws)
        th = theta.clone().requires_grad_(True)
        nll = (0.5 * ((x[idx] - th[0]) / th[1].exp()) ** 2 + th[1]).mean()  # + log(2 pi) / 2: no gradient
        (g,) = torch.autograd.grad(nll, th)
        theta = theta - lr * g
        iterates.append(theta)
    return theta, torch.stack(iterates[steps // 2 :]).mean(0)


@checks.cell("q6_replay_test")
def q6_replay(student):
    """two seeded runs (60 and 45 steps) replayed number for number"""
    x1 = 1.5 + 0.7 * _randn(50, seed=601)
    x2 = -2.0 + 1.8 * _randn(37, seed=602)
    out1 = student.fit_gaussian_sgd(x1, 0.05, 60, 8, Generator(603))
    out2 = student.fit_gaussian_sgd(x2, 0.02, 45, 5, Generator(604))
    last1, avg1 = _pair(out1, "fit_gaussian_sgd(...)", (2,))
    last2, avg2 = _pair(out2, "fit_gaussian_sgd(...)", (2,))
    for (last, avg), args in (((last1, avg1), (x1, 0.05, 60, 8, 603)), ((last2, avg2), (x2, 0.02, 45, 5, 604))):
        want_last, want_avg = ref_sgd(*args)
        expect_close(
            last,
            want_last,
            "the last SGD iterate differs from the replayed run (start at (0, 0), one "
            "torch.randint call per step, the mean NLL of the minibatch)",
            rtol=1e-8,
            atol=1e-10,
        )
        expect_close(
            avg,
            want_avg,
            "the average of the second-half iterates differs from the replayed run",
            rtol=1e-8,
            atol=1e-10,
        )


@checks.cell("q6_mle_test")
def q6_mle(student):
    """a 400-step run whose averaged iterate lands on the closed-form maximum-likelihood estimate"""
    x = 0.8 + 0.6 * _randn(150, seed=605)
    out = student.fit_gaussian_sgd(x, 0.05, 400, 25, Generator(606))
    last, avg = _pair(out, "fit_gaussian_sgd(...)", (2,))
    want_last, want_avg = ref_sgd(x, 0.05, 400, 25, 606)
    expect_close(
        avg, want_avg, "the averaged iterate of a long run differs from the replayed run", rtol=1e-8, atol=1e-10
    )
    mle = torch.stack([x.mean(), x.var(correction=0).sqrt().log()])
    expect(
        float((avg - mle).abs().max()) < 0.04,
        "after 400 steps the averaged iterate should be within 0.04 of "
        "the closed-form estimate (mean, log of the sd with 1/N)",
    )
