"""Hidden checks of the chapter 1 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
"""

import math

import torch

from course_tools.hidden import Checks, Generator, Source, expect, expect_close, expect_tensor

checks = Checks("ch01_probability")
F64 = torch.float64


def _probs(shape, seed, offset=0.05):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(*shape, generator=g, dtype=F64) + offset
    return p / p.sum(-1, keepdim=True)


def ref_entropy(p):
    return -torch.special.xlogy(p, p).sum(-1)


def ref_kl_logits(a, b):
    # KL(softmax(a) || softmax(b)) = sum_k p_k (a_k - b_k) - logsumexp(a) + logsumexp(b): no log of a probability
    p = torch.softmax(a, -1)
    return (p * (a - b)).sum(-1) - torch.logsumexp(a, -1) + torch.logsumexp(b, -1)


# ---------------------------------------------------------------- Q1 entropy
@checks.cell("q1_basic_test")
def q1_batch(student):
    """entropy of a batch of random distributions, and on any leading shape"""
    p = _probs((6, 5), 11)
    got = student.entropy(p)
    got3 = student.entropy(p.reshape(2, 3, 5))
    got = expect_tensor(got, "entropy(p) for p of shape (6, 5)", shape=(6,), dtype=F64)
    expect_close(got, ref_entropy(p), "the entropy of a batch of random distributions is wrong")
    got3 = expect_tensor(got3, "entropy(p) for p of shape (2, 3, 5)", shape=(2, 3), dtype=F64)
    expect_close(got3, ref_entropy(p).reshape(2, 3), "entropy must work on any leading shape")


@checks.cell("q1_zeros_test")
def q1_zeros(student):
    """entropy with zero probabilities (0 log 0 = 0) and of a point mass"""
    g = torch.Generator().manual_seed(12)
    p = torch.rand(5, 7, generator=g, dtype=F64)
    p[:, ::2] = 0.0
    p[0] = 0.0
    p[0, 3] = 1.0
    p = p / p.sum(-1, keepdim=True)
    got = expect_tensor(student.entropy(p), "entropy(p)", shape=(5,), dtype=F64)
    expect(not torch.isnan(got).any(), "entropy returned nan for a distribution with zero probabilities")
    expect_close(got, ref_entropy(p), "the entropy with zero probabilities is wrong")


# ---------------------------------------------------------------- Q2 KL from logits (diagnose)
@checks.cell("q2_basic_test")
def q2_basic(student):
    """KL between categoricals given by moderate logits, on a batch and on any leading shape"""
    g = torch.Generator().manual_seed(21)
    a = 2.0 * torch.randn(6, 5, generator=g, dtype=F64)
    b = 2.0 * torch.randn(6, 5, generator=g, dtype=F64)
    a3 = torch.randn(2, 3, 4, generator=g, dtype=F64)
    b3 = torch.randn(2, 3, 4, generator=g, dtype=F64) + 1.0
    got = student.kl_from_logits(a, b)
    got3 = student.kl_from_logits(a3, b3)
    got = expect_tensor(got, "kl_from_logits(a, b) for logits of shape (6, 5)", shape=(6,), dtype=F64)
    expect_close(got, ref_kl_logits(a, b), "KL(softmax(a) || softmax(b)) of random logits is wrong "
                 "(check the direction: the expectation is under softmax(a))", rtol=1e-9)
    got3 = expect_tensor(got3, "kl_from_logits(a, b) for logits of shape (2, 3, 4)", shape=(2, 3), dtype=F64)
    expect_close(got3, ref_kl_logits(a3, b3), "kl_from_logits must work on any leading shape", rtol=1e-9)


@checks.cell("q2_extreme_test")
def q2_extreme(student):
    """KL from logits where probabilities underflow to 0 in float64, in a and in b, and huge logits"""
    g = torch.Generator().manual_seed(22)
    a = torch.randn(5, 6, generator=g, dtype=F64)
    b = torch.randn(5, 6, generator=g, dtype=F64)
    a[0, 1] -= 900.0  # p_1 underflows: the buggy version gives 0 * log(0) = nan
    a[1, :3] -= 1200.0
    b[2, 4] -= 800.0  # q_4 underflows where p_4 > 0: the exact KL is about 800 p_4, finite
    b[3, 0] -= 1500.0
    a[3, 0] -= 700.0  # both tiny
    a[4] += 2000.0  # a common shift changes nothing
    b[4] -= 3000.0
    got = expect_tensor(student.kl_from_logits(a, b), "kl_from_logits(a, b)", shape=(5,), dtype=F64)
    expect(bool(torch.isfinite(got).all()),
           "kl_from_logits returned nan or inf for logits whose probabilities underflow: the divergence of two "
           "softmax distributions is always finite")
    expect_close(got, ref_kl_logits(a, b), "the KL from logits with probabilities that underflow is wrong",
                 rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- Q3 Gaussian log-density from the precision
@checks.cell("q3_test")
def q3_random(student):
    """log-density of a 4-d Gaussian given by its precision matrix, at 7 points"""
    g = torch.Generator().manual_seed(31)
    d = 4
    a = torch.randn(d, d, generator=g, dtype=F64)
    prec = a @ a.T + 0.3 * torch.eye(d, dtype=F64)
    mean = torch.randn(d, generator=g, dtype=F64)
    x = 2.0 * torch.randn(7, d, generator=g, dtype=F64)
    got = student.mvn_log_prob_precision(x, mean, prec)
    got = expect_tensor(got, "mvn_log_prob_precision(x, mean, prec)", shape=(7,), dtype=F64)
    ref = torch.distributions.MultivariateNormal(mean, precision_matrix=prec).log_prob(x)
    expect_close(got, ref, "the log-density of a 4-d Gaussian given by its precision is wrong "
                 "(the covariance is the inverse of prec)", rtol=1e-8)


@checks.cell(
    "q3_scale_test",
    chaining="one mean for two precision matrices, each log-density checked against torch.distributions",
)
def q3_scale(student):
    """log-density in 400 dimensions, where det(P) underflows or overflows in float64"""
    d = 400
    build = (
        "(lambda a: {s} * (torch.eye({d}, dtype=torch.float64) + a @ a.T / {n}))"
        "(torch.randn({d}, {d}, dtype=torch.float64))"
    )
    large = Source(build.format(s=100.0, d=d, n=16 * d), seed=5)  # Sigma near 0.01 I
    small = Source(build.format(s=0.01, d=d, n=16 * d), seed=6)  # Sigma near 100 I
    g = torch.Generator().manual_seed(32)
    mean = torch.randn(d, generator=g, dtype=F64)
    x_large = mean + 0.1 * torch.randn(3, d, generator=g, dtype=F64)
    x_small = mean + 10.0 * torch.randn(3, d, generator=g, dtype=F64)
    got_large = student.mvn_log_prob_precision(x_large, mean, large)
    got_small = student.mvn_log_prob_precision(x_small, mean, small)
    cases = ((got_large, large, x_large, "P near 100 I"), (got_small, small, x_small, "P near 0.01 I"))
    for got, prec, x, what in cases:
        got = expect_tensor(got, f"mvn_log_prob_precision in 400 dimensions ({what})", shape=(3,), dtype=F64)
        expect(bool(torch.isfinite(got).all()),
               f"the log-density in 400 dimensions with {what} is not finite: det(P) is about 1e+800 or 1e-800, "
               "which float64 cannot hold; compute log det from the Cholesky factor")
        ref = torch.distributions.MultivariateNormal(mean, precision_matrix=prec.build()).log_prob(x)
        expect_close(got, ref, f"the log-density in 400 dimensions with {what} is wrong", rtol=1e-9)


# ---------------------------------------------------------------- Q4 KL between Laplace distributions (derive)
def ref_laplace_kl(m1, b1, m2, b2):
    L = torch.distributions.Laplace
    return torch.distributions.kl_divergence(L(m1, b1), L(m2, b2))


def _laplace_params(shape, seed, equal_scales=False):
    g = torch.Generator().manual_seed(seed)
    m1 = 2.0 * torch.randn(shape, generator=g, dtype=F64)
    m2 = 2.0 * torch.randn(shape, generator=g, dtype=F64)
    b1 = torch.exp(0.8 * torch.randn(shape, generator=g, dtype=F64))
    b2 = b1.clone() if equal_scales else torch.exp(0.8 * torch.randn(shape, generator=g, dtype=F64))
    return m1, b1, m2, b2


@checks.cell("q4_equal_test")
def q4_equal(student):
    """Laplace KL with equal scales (different locations), and of a distribution with itself"""
    m1, b1, m2, b2 = _laplace_params((8,), 41, equal_scales=True)
    m2[0] = m1[0]
    got = expect_tensor(student.laplace_kl(m1, b1, m2, b2), "laplace_kl(m1, b1, m2, b2)", shape=(8,), dtype=F64)
    expect_close(got, ref_laplace_kl(m1, b1, m2, b2),
                 "the KL between two Laplace distributions with equal scales is wrong", rtol=1e-9, atol=1e-12)


@checks.cell("q4_general_test")
def q4_general(student):
    """Laplace KL with different scales and locations, on a (3, 4) batch, and its asymmetry"""
    m1, b1, m2, b2 = _laplace_params((3, 4), 42)
    m1[0, 0], b1[0, 0] = m2[0, 0], 0.5 * b2[0, 0]  # same location: only the scale ratio counts
    fwd = student.laplace_kl(m1, b1, m2, b2)
    p1, c1, p2, c2 = _laplace_params((3, 4), 43)
    rev = student.laplace_kl(p2, c2, p1, c1)
    fwd = expect_tensor(fwd, "laplace_kl(m1, b1, m2, b2)", shape=(3, 4), dtype=F64)
    expect_close(fwd, ref_laplace_kl(m1, b1, m2, b2),
                 "the KL between two Laplace distributions with different scales is wrong", rtol=1e-9, atol=1e-12)
    rev = expect_tensor(rev, "laplace_kl with the arguments swapped", shape=(3, 4), dtype=F64)
    expect_close(rev, ref_laplace_kl(p2, c2, p1, c1),
                 "the KL with the first and second distribution swapped is wrong (the divergence is not symmetric)",
                 rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- Q5 inverse-CDF sampler (sample)
def laplace_cdf(t, m, b):
    z = (t - m) / b
    return torch.where(z < 0, 0.5 * torch.exp(z.clamp(max=0)), 1 - 0.5 * torch.exp(-z.clamp(min=0)))


def _check_laplace_samples(x, m, b, n, what):
    x = expect_tensor(x, f"sample_laplace({what})", shape=(n,), dtype=F64)
    expect(bool(torch.isfinite(x).all()), f"sample_laplace({what}) returned nan or inf")
    # the empirical CDF at seven points, each within 6 standard errors sqrt(F (1 - F) / n)
    t = m + b * torch.tensor([-2.5, -1.0, -0.3, 0.0, 0.3, 1.0, 2.5], dtype=F64)
    F = laplace_cdf(t, m, b)
    emp = (x[None, :] <= t[:, None]).double().mean(1)
    expect(bool(((emp - F).abs() <= 6 * (F * (1 - F) / n).sqrt()).all()),
           f"the samples of sample_laplace({what}) do not follow the Laplace CDF (checked at 7 points, "
           "6 standard errors wide)")
    # |X - m| is exponential with mean b and standard deviation b
    mad = (x - m).abs().mean().item()
    expect(abs(mad - b) <= 6 * b / math.sqrt(n),
           f"the mean absolute deviation |x - m| of sample_laplace({what}) is not the scale b (6 standard errors)")


@checks.cell("q5_cdf_test")
def q5_cdf(student):
    """the distribution of 40,000 samples of Laplace(0.7, 1.5): CDF at 7 points and mean |x - m|"""
    m, b, n = 0.7, 1.5, 40_000
    x = student.sample_laplace(m, b, n, Generator(51))
    _check_laplace_samples(x, m, b, n, "0.7, 1.5, 40000")


@checks.cell("q5_seed_test")
def q5_seed(student):
    """the same generator state gives the same samples, a new one new samples; Laplace(-3, 0.2) statistics"""
    m, b, n = -3.0, 0.2, 20_000
    x1 = student.sample_laplace(m, b, n, Generator(52))
    x2 = student.sample_laplace(m, b, n, Generator(52))
    x3 = student.sample_laplace(m, b, n, Generator(53))
    _check_laplace_samples(x1, m, b, n, "-3, 0.2, 20000")
    x2 = expect_tensor(x2, "sample_laplace(-3, 0.2, 20000) again", shape=(n,), dtype=F64)
    x3 = expect_tensor(x3, "sample_laplace(-3, 0.2, 20000) with another seed", shape=(n,), dtype=F64)
    expect(bool(torch.equal(x1, x2)), "two generators with the same seed gave different samples: draw every "
           "random number with the generator argument")
    expect(not bool(torch.equal(x1, x3)), "generators with different seeds gave the same samples")
