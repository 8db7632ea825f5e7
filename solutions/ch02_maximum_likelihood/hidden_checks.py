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


def _counts(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 6, shape, generator=g).to(F64)


# ---------------------------------------------------------------- Q1 categorical MLE
@checks.cell("q1_basic_test")
def q1_basic(student):
    """maximum-likelihood frequencies of a batch of count vectors, some categories unseen"""
    c = _counts((3, 4, 6), 11)
    c[..., 0] = 0.0
    c[..., 1] += 1.0  # every row has a positive total
    got = expect_tensor(student.categorical_mle(c.clone()), "categorical_mle(counts)", shape=(3, 4, 6), dtype=F64)
    expect_close(got, c / c.sum(-1, keepdim=True), "the frequencies of a batch of count vectors are wrong")
    expect(bool((got[..., 0] == 0).all()), "an unseen category must get probability exactly 0 when alpha = 0")


@checks.cell("q1_smooth_test")
def q1_smooth(student):
    """additive smoothing of a batch of count vectors, with all-zero rows"""
    c = _counts((5, 7), 12)
    c[2] = 0.0
    alpha = 0.5
    got = student.categorical_mle(c.clone(), alpha)
    got = expect_tensor(got, "categorical_mle(counts, alpha)", shape=(5, 7), dtype=F64)
    ref = (c + alpha) / (c.sum(-1, keepdim=True) + 7 * alpha)
    expect_close(got, ref, "the smoothed estimate (N_k + alpha) / (N + K alpha) of a batch is wrong")


# ---------------------------------------------------------------- Q2 Gaussian MLE
@checks.cell("q2_basic_test")
def q2_basic(student):
    """mean and divide-by-N covariance of 9 points in 3 dimensions"""
    g = torch.Generator().manual_seed(21)
    a = torch.randn(3, 3, generator=g, dtype=F64)
    x = torch.randn(9, 3, generator=g, dtype=F64) @ a.T + torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    out = student.gaussian_mle(x.clone())
    expect(isinstance(out, tuple) and len(out) == 2, "gaussian_mle should return a tuple (mean, cov)")
    mean = expect_tensor(out[0], "the mean", shape=(3,), dtype=F64)
    cov = expect_tensor(out[1], "the covariance", shape=(3, 3), dtype=F64)
    expect_close(mean, x.mean(0), "the mean of 9 points in 3 dimensions is wrong")
    expect_close(cov, torch.cov(x.T, correction=0), "the covariance of 9 points in 3 dimensions is wrong (divide by N)")


@checks.cell("q2_batch_test")
def q2_batch(student):
    """a batch of data sets with two leading axes, and a batch of 1-d data sets"""
    g = torch.Generator().manual_seed(22)
    x = torch.randn(2, 4, 6, 3, generator=g, dtype=F64) * 2.0 + 1.0
    y = torch.randn(5, 8, 1, generator=g, dtype=F64)
    out_x = student.gaussian_mle(x.clone())
    out_y = student.gaussian_mle(y.clone())
    expect(isinstance(out_x, tuple) and len(out_x) == 2, "gaussian_mle should return a tuple (mean, cov)")
    expect(isinstance(out_y, tuple) and len(out_y) == 2, "gaussian_mle should return a tuple (mean, cov)")
    mean = expect_tensor(out_x[0], "the mean of a (2, 4, 6, 3) batch", shape=(2, 4, 3), dtype=F64)
    cov = expect_tensor(out_x[1], "the covariance of a (2, 4, 6, 3) batch", shape=(2, 4, 3, 3), dtype=F64)
    ref_cov = torch.stack([torch.stack([torch.cov(x[i, j].T, correction=0) for j in range(4)]) for i in range(2)])
    expect_close(mean, x.mean(-2), "the means of a batch of data sets are wrong")
    expect_close(cov, ref_cov, "the covariances of a batch of data sets are wrong")
    cov_y = expect_tensor(out_y[1], "the covariance of a (5, 8, 1) batch", shape=(5, 1, 1), dtype=F64)
    expect_close(cov_y[:, 0, 0], y[..., 0].var(-1, correction=0), "the variances of a batch of 1-d data sets are wrong")


# ---------------------------------------------------------------- Q3 average NLL
def _gauss_case(seed, d=4, n=11):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    cov = a @ a.T + 0.4 * torch.eye(d, dtype=F64)
    mean = torch.randn(d, generator=g, dtype=F64)
    x = mean + 1.5 * torch.randn(n, d, generator=g, dtype=F64)
    ref = -torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x).mean().item()
    return x, mean, cov, ref


@checks.cell("q3_nats_test")
def q3_nats(student):
    """average NLL in nats of 11 points under a 4-d Gaussian"""
    x, mean, cov, ref = _gauss_case(31)
    got = student.average_nll(x.clone(), mean.clone(), cov.clone())
    got = expect_float(expect_tensor(got, "average_nll(x, mean, cov)", shape=()), "the NLL")
    expect_close(got, ref, "the average NLL in nats under a 4-d Gaussian is wrong", rtol=1e-8)


@checks.cell("q3_bits_test", chaining="one batch in three units, each checked against the reference")
def q3_bits(student):
    """the NLL per dimension, in bits, and each option on its own"""
    x, mean, cov, ref = _gauss_case(32, d=5)
    both = student.average_nll(x.clone(), mean.clone(), cov.clone(), per_dim=True, bits=True)
    per_dim = student.average_nll(x.clone(), mean.clone(), cov.clone(), per_dim=True)
    bits = student.average_nll(x.clone(), mean.clone(), cov.clone(), bits=True)
    both = expect_float(expect_tensor(both, "average_nll(..., per_dim=True, bits=True)", shape=()), "the NLL")
    per_dim = expect_float(expect_tensor(per_dim, "average_nll(..., per_dim=True)", shape=()), "the NLL")
    bits = expect_float(expect_tensor(bits, "average_nll(..., bits=True)", shape=()), "the NLL")
    expect_close(both, ref / 5 / math.log(2), "the NLL in bits per dimension is wrong", rtol=1e-8)
    expect_close(per_dim, ref / 5, "the NLL per dimension in nats is wrong", rtol=1e-8)
    expect_close(bits, ref / math.log(2), "the NLL in bits (not per dimension) is wrong", rtol=1e-8)


# ---------------------------------------------------------------- Q4 forward and reverse KL
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


def _q4(student, reverse):
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


@checks.cell("q4_forward_test", chaining="one mixture for two proposals, each estimate checked against quadrature")
def q4_forward(student):
    """forward KL(p || q) by Monte Carlo, q between the modes and q on one mode of a 3-component mixture"""
    _q4(student, reverse=False)


@checks.cell("q4_reverse_test", chaining="one mixture for two proposals, each estimate checked against quadrature")
def q4_reverse(student):
    """reverse KL(q || p) by Monte Carlo, q between the modes and q on one mode of a 3-component mixture"""
    _q4(student, reverse=True)


# ---------------------------------------------------------------- Q5 bandwidth by validation NLL
def _kde_nll(train, val, h):
    d = train.shape[1]
    sq = ((val[:, None, :] - train[None, :, :]) ** 2).sum(-1)
    log_p = torch.logsumexp(-sq / (2 * h**2), 1) - math.log(len(train)) - 0.5 * d * math.log(2 * math.pi * h**2)
    return -log_p.mean().item()


def _moons_like(n, seed):
    # two noisy arcs in 2-d, so that a small bandwidth wins on validation but not the smallest
    g = torch.Generator().manual_seed(seed)
    t = math.pi * torch.rand(n, generator=g, dtype=F64)
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper[:, None], torch.stack([t.cos(), t.sin()], 1), torch.stack([1 - t.cos(), 0.5 - t.sin()], 1))
    return x + 0.1 * torch.randn(n, 2, generator=g, dtype=F64)


HS = [0.003, 0.01, 0.03, 0.06, 0.1, 0.2, 0.5, 1.0]


@checks.cell("q5_nll_test")
def q5_nll(student):
    """validation NLLs of a 2-d KDE over 8 bandwidths, down to ones where every kernel value underflows"""
    train, val = _moons_like(150, 51), _moons_like(60, 52)
    out = student.select_bandwidth(train.clone(), val.clone(), list(HS))
    expect(isinstance(out, tuple) and len(out) == 2, "select_bandwidth should return a tuple (val_nll, best)")
    nll = expect_tensor(out[0], "val_nll", shape=(len(HS),), dtype=F64)
    expect(bool(torch.isfinite(nll).all()), "val_nll has inf or nan entries: use torch.logsumexp for small bandwidths")
    ref = torch.tensor([_kde_nll(train, val, h) for h in HS], dtype=F64)
    expect_close(nll, ref, "the validation NLLs of a 2-d KDE are wrong", rtol=1e-8)


@checks.cell("q5_choice_test")
def q5_choice(student):
    """the bandwidth chosen, and its validation NLL, on two data sets (2-d arcs, and 3-d Gaussian data)"""
    train, val = _moons_like(150, 53), _moons_like(60, 54)
    g = torch.Generator().manual_seed(55)
    tr3, va3 = torch.randn(80, 3, generator=g, dtype=F64), torch.randn(50, 3, generator=g, dtype=F64)
    hs3 = [0.05, 0.2, 0.4, 0.7, 1.5]
    out1 = student.select_bandwidth(train.clone(), val.clone(), list(HS))
    out2 = student.select_bandwidth(tr3.clone(), va3.clone(), list(hs3))
    expect(isinstance(out1, tuple) and len(out1) == 2, "select_bandwidth should return a tuple (val_nll, best)")
    expect(isinstance(out2, tuple) and len(out2) == 2, "select_bandwidth should return a tuple (val_nll, best)")
    want1 = min(HS, key=lambda h: _kde_nll(train, val, h))
    want2 = min(hs3, key=lambda h: _kde_nll(tr3, va3, h))
    b1 = expect_float(out1[1], "best")
    b2 = expect_float(out2[1], "best")
    nll1 = expect_tensor(out1[0], "val_nll", shape=(len(HS),), dtype=F64)
    nll2 = expect_tensor(out2[0], "val_nll", shape=(len(hs3),), dtype=F64)
    # the choice counts only with the right validation NLLs behind it
    expect_close(nll1.min().item(), _kde_nll(train, val, want1), "the smallest validation NLL (2-d arcs) is wrong")
    expect_close(nll2.min().item(), _kde_nll(tr3, va3, want2), "the smallest validation NLL (3-d data) is wrong")
    expect(b1 == want1, "the bandwidth chosen for 2-d arc data is not the one with the smallest validation NLL")
    expect(b2 == want2, "the bandwidth chosen for 3-d Gaussian data is not the one with the smallest validation NLL")
