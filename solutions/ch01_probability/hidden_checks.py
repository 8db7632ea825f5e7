"""Hidden checks of the chapter 1 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
"""

import math

import torch

from course_tools.hidden import Checks, Generator, Source, expect, expect_close, expect_float, expect_tensor

checks = Checks("ch01_probability")
F64 = torch.float64


def _probs(shape, seed, offset=0.05):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(*shape, generator=g, dtype=F64) + offset
    return p / p.sum(-1, keepdim=True)


def ref_entropy(p):
    return -torch.special.xlogy(p, p).sum(-1)


def ref_kl(p, q):
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    terms = torch.where((p > 0) & (q == 0), torch.full_like(p, math.inf), terms)
    return terms.sum(-1)


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


# ---------------------------------------------------------------- Q2 KL
@checks.cell("q2_basic_test")
def q2_basic(student):
    """KL(p || q) of random distributions"""
    p, q = _probs((4, 6), 21), _probs((4, 6), 121)
    got = expect_tensor(student.kl_divergence(p, q), "kl_divergence(p, q)", shape=(4,), dtype=F64)
    expect_close(got, ref_kl(p, q), "KL(p || q) of random distributions is wrong (check the order of p and q)")


@checks.cell("q2_support_test")
def q2_support(student):
    """KL with zeros in p (terms are 0) and in q (KL is +inf)"""
    g = torch.Generator().manual_seed(22)
    p = torch.rand(4, 6, generator=g, dtype=F64)
    q = torch.rand(4, 6, generator=g, dtype=F64) + 0.05
    p[:, :2] = 0.0
    q[1, 3] = 0.0
    q[2, 0] = 0.0
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    got = expect_tensor(student.kl_divergence(p, q), "kl_divergence(p, q)", shape=(4,), dtype=F64)
    expect(not torch.isnan(got).any(), "KL returned nan (zeros in p or q)")
    expect_close(got, ref_kl(p, q), "KL with zeros in p or q is wrong (expected 0 terms, or +inf)")


# ---------------------------------------------------------------- Q3 Gaussian log-density
@checks.cell("q3_test")
def q3_random(student):
    """log-density of a 4-d Gaussian at 7 points"""
    g = torch.Generator().manual_seed(31)
    d = 4
    a = torch.randn(d, d, generator=g, dtype=F64)
    cov = a @ a.T + 0.3 * torch.eye(d, dtype=F64)
    mean = torch.randn(d, generator=g, dtype=F64)
    x = 2.0 * torch.randn(7, d, generator=g, dtype=F64)
    got = expect_tensor(student.mvn_log_prob(x, mean, cov), "mvn_log_prob(x, mean, cov)", shape=(7,), dtype=F64)
    ref = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)
    expect_close(got, ref, "the log-density of a 4-d Gaussian at 7 points is wrong", rtol=1e-8)


@checks.cell(
    "q3_scale_test",
    chaining="one mean for two covariances, each log-density checked against torch.distributions",
)
def q3_scale(student):
    """log-density in 400 dimensions, where det(Sigma) underflows or overflows in float64"""
    d = 400
    build = (
        "(lambda a: {s} * (torch.eye({d}, dtype=torch.float64) + a @ a.T / {n}))"
        "(torch.randn({d}, {d}, dtype=torch.float64))"
    )
    small = Source(build.format(s=0.01, d=d, n=16 * d), seed=5)
    large = Source(build.format(s=100.0, d=d, n=16 * d), seed=6)
    g = torch.Generator().manual_seed(32)
    mean = torch.randn(d, generator=g, dtype=F64)
    x_small = mean + 0.1 * torch.randn(3, d, generator=g, dtype=F64)
    x_large = mean + 10.0 * torch.randn(3, d, generator=g, dtype=F64)
    got_small = student.mvn_log_prob(x_small, mean, small)
    got_large = student.mvn_log_prob(x_large, mean, large)
    cases = ((got_small, small, x_small, "Sigma near 0.01 I"), (got_large, large, x_large, "Sigma near 100 I"))
    for got, cov, x, what in cases:
        got = expect_tensor(got, f"mvn_log_prob in 400 dimensions ({what})", shape=(3,), dtype=F64)
        expect(bool(torch.isfinite(got).all()),
               f"the log-density in 400 dimensions with {what} is not finite: det(Sigma) is about 1e-800 or 1e+800, "
               "which float64 cannot hold; compute log det from the Cholesky factor")
        ref = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov.build()).log_prob(x)
        expect_close(got, ref, f"the log-density in 400 dimensions with {what} is wrong", rtol=1e-9)


# ---------------------------------------------------------------- Q4 Monte Carlo
@checks.cell("q4_test")
def q4_estimate(student):
    """Monte Carlo estimate and its standard error from one torch.randn(n, d) draw"""
    n, d, seed = 500, 3, 41
    expr = "lambda z: z[:, 0] * z[:, 1] + z[:, 2] ** 2"
    out = student.mc_estimate(Source(expr), d, n, Generator(seed))
    expect(isinstance(out, tuple) and len(out) == 2, "mc_estimate should return a tuple (estimate, stderr)")
    est = expect_float(expect_tensor(out[0], "the estimate", shape=()), "the estimate")
    se = expect_float(expect_tensor(out[1], "the standard error", shape=()), "the standard error")
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    vals = Source(expr).build()(z)
    expect_close(est, vals.mean().item(), "the estimate is not the sample mean of f over torch.randn(n, d) samples")
    expect_close(se, (vals.std() / math.sqrt(n)).item(), "the standard error is not s / sqrt(n) (s with n - 1)")


# ---------------------------------------------------------------- Q5 mutual information
def ref_mi(joint):
    px, py = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    terms = torch.where(joint > 0, joint * (joint.log() - (px * py).log()), torch.zeros_like(joint))
    return terms.sum()


@checks.cell("q5_basic_test")
def q5_random(student):
    """mutual information of random joint tables, some with zero cells"""
    g = torch.Generator().manual_seed(51)
    tables = []
    for k, m in ((3, 4), (5, 2), (4, 4)):
        t = torch.rand(k, m, generator=g, dtype=F64)
        tables.append(t / t.sum())
    t = torch.rand(4, 5, generator=g, dtype=F64)
    t[0, 1] = t[2, 3] = t[3, 0] = 0.0
    tables.append(t / t.sum())
    got = [student.mutual_information(t) for t in tables]
    for i, (value, t) in enumerate(zip(got, tables)):
        what = "a table with zero cells" if i == 3 else f"a random {tuple(t.shape)} table"
        value = expect_tensor(value, f"mutual_information of {what}", shape=(), dtype=F64)
        expect(not torch.isnan(value), f"mutual_information of {what} is nan (zero cells must contribute 0)")
        expect_close(value, ref_mi(t), f"the mutual information of {what} is wrong", rtol=1e-9)


@checks.cell("q5_independent_test")
def q5_independent(student):
    """independent tables give 0; a deterministic relation gives H(X)"""
    g = torch.Generator().manual_seed(52)
    px = torch.rand(4, generator=g, dtype=F64)
    py = torch.rand(6, generator=g, dtype=F64)
    indep = torch.outer(px / px.sum(), py / py.sum())
    perm = torch.tensor([2, 0, 3, 1])
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    determ = torch.zeros(4, 4, dtype=F64)
    determ[torch.arange(4), perm] = p
    got_indep = student.mutual_information(indep)
    got_det = student.mutual_information(determ)
    got_indep = expect_tensor(got_indep, "mutual_information of an independent table", shape=(), dtype=F64)
    expect_close(got_indep, 0.0, "the mutual information of an independent table p(x) p(y) should be 0", atol=1e-12)
    got_det = expect_tensor(got_det, "mutual_information when Y is a function of X", shape=(), dtype=F64)
    expect_close(got_det, ref_entropy(p), "when Y is a one-to-one function of X, I(X; Y) should equal H(X)", rtol=1e-9)
