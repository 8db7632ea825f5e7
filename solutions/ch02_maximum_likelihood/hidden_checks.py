"""Hidden checks of the chapter 2 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
"""

import math

import torch

from course_tools.hidden import Checks, Generator, expect, expect_close, expect_float, expect_tensor

checks = Checks("ch02_maximum_likelihood")
F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------- Q1 Poisson rate with exposures (derive)
def _poisson_data(shape, seed, rate=2.5):
    g = torch.Generator().manual_seed(seed)
    t = 0.05 + 3.0 * torch.rand(shape, generator=g, dtype=F64)  # very unequal exposures
    x = torch.poisson(rate * t, generator=g)
    return x, t


def ref_poisson_mle(x, t):
    # the root of the score sum_n (x_n / rate - t_n), found by bisection on log(rate): a different route
    lo = torch.full(x.shape[:-1], -30.0, dtype=F64)
    hi = torch.full(x.shape[:-1], 30.0, dtype=F64)
    for _ in range(200):
        mid = (lo + hi) / 2
        score = (x * torch.exp(-mid).unsqueeze(-1) - t).sum(-1)
        lo, hi = torch.where(score > 0, mid, lo), torch.where(score > 0, hi, mid)
    rate = torch.exp((lo + hi) / 2)
    return torch.where(x.sum(-1) > 0, rate, torch.zeros_like(rate))


@checks.cell("q1_basic_test")
def q1_basic(student):
    """the Poisson rate of 6 data sets of 25 readings with very unequal exposures"""
    x, t = _poisson_data((6, 25), 11)
    got = student.poisson_rate_mle(x, t)
    got = expect_tensor(got, "poisson_rate_mle(x, t) for x of shape (6, 25)", shape=(6,), dtype=F64)
    expect_close(got, ref_poisson_mle(x, t), "the maximum-likelihood rates of data sets with unequal exposures are "
                 "wrong (is it the maximiser of the likelihood, or another sensible average?)", rtol=1e-9)


@checks.cell("q1_batch_test")
def q1_batch(student):
    """a (2, 3, 12) batch with a data set without clicks, and one data set of 200 readings"""
    x, t = _poisson_data((2, 3, 12), 12, rate=0.7)
    x[1, 2] = 0.0
    y, s = _poisson_data((200,), 13, rate=11.0)
    got = student.poisson_rate_mle(x, t)
    got1 = student.poisson_rate_mle(y, s)
    got = expect_tensor(got, "poisson_rate_mle(x, t) for x of shape (2, 3, 12)", shape=(2, 3), dtype=F64)
    expect(not bool(torch.isnan(got).any()), "poisson_rate_mle returned nan")
    expect_close(got, ref_poisson_mle(x, t), "the rates of a (2, 3, 12) batch (one data set without clicks: rate 0) "
                 "are wrong", rtol=1e-9, atol=1e-12)
    got1 = expect_tensor(got1, "poisson_rate_mle(x, t) for x of shape (200,)", shape=(), dtype=F64)
    expect_close(got1, ref_poisson_mle(y, s), "the rate of one data set of 200 readings is wrong", rtol=1e-9)


# ---------------------------------------------------------------- Q2 Laplace MLE (derive)
def _laplace_rows(rows, n, seed):
    g = torch.Generator().manual_seed(seed)
    loc = 3.0 * torch.randn(rows, 1, generator=g, dtype=F64)
    scale = torch.exp(torch.randn(rows, 1, generator=g, dtype=F64))
    u = torch.rand(rows, n, generator=g, dtype=F64) - 0.5
    return loc - scale * torch.sign(u) * torch.log1p(-2 * u.abs())


def _laplace_nll(x, m, b):
    return (torch.log(2 * b) + (x - m.unsqueeze(-1)).abs().mean(-1) / b)


def _middle(x):
    s = x.sort(-1).values
    n = x.shape[-1]
    return s[..., (n - 1) // 2], s[..., n // 2]


@checks.cell("q2_location_test")
def q2_location(student):
    """the location of 5 data sets of 31 points (odd N: a unique maximiser)"""
    x = _laplace_rows(5, 31, 21)
    out = student.laplace_mle(x)
    expect(isinstance(out, tuple) and len(out) == 2, "laplace_mle should return a tuple (m, b)")
    m = expect_tensor(out[0], "the location m", shape=(5,), dtype=F64)
    lo, _ = _middle(x)
    expect_close(m, lo, "the maximum-likelihood location of data sets of odd size is wrong (it is not the mean: "
                 "which m minimises sum_n |x_n - m|?)", rtol=0, atol=1e-12)


@checks.cell("q2_scale_test")
def q2_scale(student):
    """location and scale of 4 data sets of 40 points (even N) and of 3 of 15 points: the largest likelihood"""
    x = _laplace_rows(4, 40, 22)
    y = _laplace_rows(3, 15, 23)
    out_x = student.laplace_mle(x)
    out_y = student.laplace_mle(y)
    for out, data, what in ((out_x, x, "4 data sets of 40 points"), (out_y, y, "3 data sets of 15 points")):
        expect(isinstance(out, tuple) and len(out) == 2, "laplace_mle should return a tuple (m, b)")
        rows = data.shape[0]
        m = expect_tensor(out[0], f"the location m ({what})", shape=(rows,), dtype=F64)
        b = expect_tensor(out[1], f"the scale b ({what})", shape=(rows,), dtype=F64)
        lo, hi = _middle(data)
        expect(bool(((m >= lo - 1e-12) & (m <= hi + 1e-12)).all()),
               f"the location of {what} does not maximise the likelihood (it must lie between the two middle values)")
        ref_b = (data - lo.unsqueeze(-1)).abs().mean(-1)  # the same for every m between the middle values
        expect_close(b, ref_b, f"the maximum-likelihood scale of {what} is wrong", rtol=1e-9)
        expect_close(_laplace_nll(data, m, b), _laplace_nll(data, lo, ref_b),
                     f"(m, b) of {what} does not reach the largest likelihood", rtol=1e-9)


# ---------------------------------------------------------------- Q3 seeded gradient fit (training)
def _poisson_nll(x, t, rate):
    return -torch.distributions.Poisson(rate * t).log_prob(x).mean().item()


@checks.cell("q3_losses_test")
def q3_losses(student):
    """the loss trajectory of 20 Adam steps: its first value is the NLL in nats at rate 1, and it falls"""
    x, t = _poisson_data((30,), 31, rate=4.0)  # log(MLE) > 1: 20 steps of about lr = 0.05 cannot overshoot
    out = student.fit_poisson_rate(x, t, 20, 0.05)
    expect(isinstance(out, tuple) and len(out) == 2, "fit_poisson_rate should return a tuple (rate, losses)")
    losses = expect_tensor(out[1], "losses", shape=(20,), dtype=F64)
    rate = expect_tensor(out[0], "rate", shape=(), dtype=F64)
    expect_close(losses[0].item(), _poisson_nll(x, t, torch.tensor(1.0, dtype=F64)),
                 "the first loss is not the average NLL in nats at theta = 0 (rate 1), log x! included", rtol=1e-9)
    expect(bool((losses[1:] < losses[:-1]).all()),
           "the losses of the first 20 steps do not fall step by step from rate 1 towards a larger rate")
    expect(1.0 < rate.item() < math.exp(1.1), "the rate after 20 steps of Adam with lr = 0.05 from theta = 0 is "
           "out of the range those steps can reach")
    expect(_poisson_nll(x, t, rate) < losses[-1].item(), "the rate you returned does not have a lower NLL than "
           "the last loss, although it comes one more step downhill")


@checks.cell("q3_fit_test")
def q3_fit(student):
    """300 steps of Adam land on the closed-form rate, on two data sets (rates near 0.3 and near 9)"""
    x1, t1 = _poisson_data((50,), 32, rate=0.3)
    x2, t2 = _poisson_data((40,), 33, rate=9.0)
    out1 = student.fit_poisson_rate(x1, t1, 300, 0.05)
    out2 = student.fit_poisson_rate(x2, t2, 300, 0.05)
    for out, x, t, what in ((out1, x1, t1, "near 0.3"), (out2, x2, t2, "near 9")):
        expect(isinstance(out, tuple) and len(out) == 2, "fit_poisson_rate should return a tuple (rate, losses)")
        rate = expect_tensor(out[0], f"rate ({what})", shape=(), dtype=F64)
        losses = expect_tensor(out[1], f"losses ({what})", shape=(300,), dtype=F64)
        mle = ref_poisson_mle(x, t)
        expect_close(rate, mle, f"after 300 steps the fitted rate ({what}) is not the maximum-likelihood rate",
                     rtol=1e-4)
        expect_close(losses[-1].item(), _poisson_nll(x, t, mle), f"the final loss ({what}) is not the minimal NLL "
                     "in nats (log x! included)", rtol=1e-6)
        expect_close(losses[0].item(), _poisson_nll(x, t, torch.tensor(1.0, dtype=F64)),
                     f"the first loss ({what}) is not the NLL at rate 1", rtol=1e-9)


# ---------------------------------------------------------------- Q4 covariance by centring (diagnose)
def _ref_cov(x):
    # torch.cov (which centres) on every data set of the batch
    flat = x.reshape(-1, *x.shape[-2:])
    covs = torch.stack([torch.cov(d.T, correction=0).reshape(x.shape[-1], x.shape[-1]) for d in flat])
    return covs.reshape(*x.shape[:-2], x.shape[-1], x.shape[-1])


@checks.cell("q4_basic_test")
def q4_basic(student):
    """mean and divide-by-N covariance of a (2, 4, 6, 3) batch and of a (5, 8, 1) batch"""
    g = torch.Generator().manual_seed(41)
    x = torch.randn(2, 4, 6, 3, generator=g, dtype=F64) * 2.0 + 1.0
    y = torch.randn(5, 8, 1, generator=g, dtype=F64)
    out_x = student.gaussian_mle(x)
    out_y = student.gaussian_mle(y)
    for out, data, what in ((out_x, x, "a (2, 4, 6, 3) batch"), (out_y, y, "a (5, 8, 1) batch")):
        expect(isinstance(out, tuple) and len(out) == 2, "gaussian_mle should return a tuple (mean, cov)")
        d = data.shape[-1]
        mean = expect_tensor(out[0], f"the mean of {what}", shape=(*data.shape[:-2], d), dtype=F64)
        cov = expect_tensor(out[1], f"the covariance of {what}", shape=(*data.shape[:-2], d, d), dtype=F64)
        expect_close(mean, data.mean(-2), f"the means of {what} are wrong")
        expect_close(cov, _ref_cov(data), f"the covariances of {what} are wrong (divide by N)")


@checks.cell("q4_offset_test")
def q4_offset(student):
    """covariances of data sets 1e8 and 1e9 from the origin with a spread of about 1 (GPS-like)"""
    g = torch.Generator().manual_seed(42)
    a = torch.randn(3, 2, 2, generator=g, dtype=F64)
    x = torch.randn(3, 50, 2, generator=g, dtype=F64) @ a.transpose(-1, -2) + 3e8
    y = torch.randn(2, 30, 3, generator=g, dtype=F64) - 1e9
    out_x = student.gaussian_mle(x)
    out_y = student.gaussian_mle(y)
    for out, data, what in ((out_x, x, "data 3e8 from the origin"), (out_y, y, "data 1e9 from the origin")):
        expect(isinstance(out, tuple) and len(out) == 2, "gaussian_mle should return a tuple (mean, cov)")
        d = data.shape[-1]
        mean = expect_tensor(out[0], f"the mean of {what}", shape=(data.shape[0], d), dtype=F64)
        cov = expect_tensor(out[1], f"the covariance of {what}", shape=(data.shape[0], d, d), dtype=F64)
        expect_close(mean, data.mean(-2), f"the means of {what} are wrong", rtol=1e-12)
        expect_close(cov, _ref_cov(data), f"the covariances of {what} are wrong: the two terms of "
                     "E[x x^T] - mean mean^T are huge and nearly equal", rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- Q5 forward and reverse KL (kept from before)
def _kl_and_sd(log_a, log_b, t):
    la, lb = log_a(t), log_b(t)
    w = la.exp()
    kl = torch.trapezoid(w * (la - lb), t).item()
    second = torch.trapezoid(w * (la - lb) ** 2, t).item()
    return kl, math.sqrt(max(second - kl**2, 0.0))


def _mixture_log_prob(x, w, mu, sd):
    comp = -0.5 * ((x[:, None] - mu) / sd) ** 2 - torch.log(sd) - 0.5 * LOG_2PI
    return torch.logsumexp(torch.log(w) + comp, dim=1)


CASES = (
    # (m, s, weights, means, stds, n, seed): a three-component mixture, q between two modes or on one
    (0.5, 1.5, [0.2, 0.5, 0.3], [-3.0, 0.0, 2.5], [0.6, 0.8, 0.4], 40_000, 41),
    (2.5, 0.5, [0.2, 0.5, 0.3], [-3.0, 0.0, 2.5], [0.6, 0.8, 0.4], 40_000, 42),
)
CASES_REVERSE = (  # another mixture: no call receives a value an earlier question's call received
    (0.5, 1.5, [0.3, 0.45, 0.25], [-2.5, 0.5, 3.0], [0.7, 0.6, 0.5], 40_000, 43),
    (3.0, 0.5, [0.3, 0.45, 0.25], [-2.5, 0.5, 3.0], [0.7, 0.6, 0.5], 40_000, 44),
)


def _q5(student, reverse):
    results = [
        student.mixture_kl_mc(
            m,
            s,
            torch.tensor(w, dtype=F64),
            torch.tensor(mu, dtype=F64),
            torch.tensor(sd, dtype=F64),
            n,
            Generator(seed),
            reverse=reverse,
        )
        for (m, s, w, mu, sd, n, seed) in (CASES_REVERSE if reverse else CASES)
    ]
    t = torch.linspace(-15, 15, 60_001, dtype=F64)
    for got, (m, s, w, mu, sd, n, _) in zip(results, CASES_REVERSE if reverse else CASES):
        got = expect_float(expect_tensor(got, "mixture_kl_mc(...)", shape=()), "the KL estimate")
        w_, mu_, sd_ = (torch.tensor(v, dtype=F64) for v in (w, mu, sd))

        def log_q(x, m=m, s=s):
            return -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * LOG_2PI

        def log_p(x, w_=w_, mu_=mu_, sd_=sd_):
            return _mixture_log_prob(x, w_, mu_, sd_)

        ref, spread = _kl_and_sd(log_q, log_p, t) if reverse else _kl_and_sd(log_p, log_q, t)
        tol = 5 * spread / math.sqrt(n) + 1e-3
        what = "KL(q || p) with samples of q" if reverse else "KL(p || q) with samples of p"
        expect(
            abs(got - ref) <= tol,
            f"{what} is off by more than 5 standard errors for a three-component mixture "
            "(check the direction, the samples' distribution and the sign)",
        )


@checks.cell("q5_forward_test", chaining="one mixture for two proposals, each estimate checked against quadrature")
def q5_forward(student):
    """forward KL(p || q) by Monte Carlo, q between the modes and q on one mode of a 3-component mixture"""
    _q5(student, reverse=False)


@checks.cell("q5_reverse_test", chaining="one mixture for two proposals, each estimate checked against quadrature")
def q5_reverse(student):
    """reverse KL(q || p) by Monte Carlo, q between the modes and q on one mode of a 3-component mixture"""
    _q5(student, reverse=True)


