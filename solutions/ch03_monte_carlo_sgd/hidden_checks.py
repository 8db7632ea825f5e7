"""Hidden checks of the chapter 3 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
"""

import itertools
import math

import torch

from course_tools.hidden import Checks, expect, expect_close, expect_tensor

checks = Checks("ch03_monte_carlo_sgd")
F64 = torch.float64


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _scalar(x, what):
    return expect_tensor(x, what, shape=(), dtype=F64)


def ref_nll(theta, x):
    mu, s = theta[0], theta[1]
    return (0.5 * (x - mu) ** 2 * torch.exp(-2 * s) + s).mean() + 0.5 * math.log(2 * math.pi)


def ref_grad(theta, x):
    theta = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref_nll(theta, x), theta)
    return g


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


# ---------------------------------------------------------------- Q2 log-mean-exp
@checks.cell("q2_basic_test")
def q2_basic(student):
    """log-mean-exp of random batches, on any leading shape"""
    a = 3.0 * _randn(4, 6, seed=201)
    b = 3.0 * _randn(2, 3, 5, seed=202)
    out_a, out_b = student.log_mean_exp(a), student.log_mean_exp(b)
    got_a = expect_tensor(out_a, "log_mean_exp(a) for a of shape (4, 6)", shape=(4,), dtype=F64)
    got_b = expect_tensor(out_b, "log_mean_exp(a) for a of shape (2, 3, 5)", shape=(2, 3), dtype=F64)
    expect_close(got_a, a.exp().mean(-1).log(), "log-mean-exp of a random (4, 6) batch is wrong")
    expect_close(got_b, b.exp().mean(-1).log(), "log-mean-exp must reduce the last axis of any shape")


@checks.cell("q2_extreme_test")
def q2_extreme(student):
    """log-mean-exp of very large and very small entries, -inf entries, and an all -inf row"""
    a = _randn(4, 5, seed=203)
    a[0] += 2000.0
    a[1] -= 5000.0
    a[2, :3] = -math.inf
    a[3] = -math.inf
    got = expect_tensor(student.log_mean_exp(a), "log_mean_exp(a)", shape=(4,), dtype=F64)
    want = torch.logsumexp(a, -1) - math.log(5)
    expect(not torch.isnan(got).any(), "log_mean_exp returned nan (an all -inf row should give -inf)")
    expect_close(got, want, "log-mean-exp overflows, underflows, or mishandles -inf entries")


# ---------------------------------------------------------------- Q3 self-normalised IS
def _is_inputs(seed, offset):
    h = _randn(60, seed=seed) ** 2
    log_w = 2.0 * _randn(60, seed=seed + 1) + offset
    return h, log_w


@checks.cell(
    "q3_estimate_test",
    chaining="one integrand at three weight scales, each estimate checked against the reference",
)
def q3_estimate(student):
    """self-normalised estimate with moderate, huge and tiny log-weights"""
    cases = [_is_inputs(301, off) for off in (0.0, 900.0, -900.0)]
    outs = [student.self_normalized_is(h, lw) for h, lw in cases]
    for (h, lw), out in zip(cases, outs):
        expect(isinstance(out, tuple) and len(out) == 2, "self_normalized_is should return (estimate, ess)")
        est = _scalar(out[0], "the estimate")
        w = torch.softmax(lw, 0)
        expect_close(est, (w * h).sum(), "the self-normalised estimate is wrong (or overflows for large log-weights)")


@checks.cell("q3_ess_test", chaining="one integrand at three weight scales, each ESS checked against the reference")
def q3_ess(student):
    """effective sample size with moderate, huge and tiny log-weights"""
    cases = [_is_inputs(311, off) for off in (0.0, 800.0, -800.0)]
    outs = [student.self_normalized_is(h, lw) for h, lw in cases]
    for (_h, lw), out in zip(cases, outs):
        expect(isinstance(out, tuple) and len(out) == 2, "self_normalized_is should return (estimate, ess)")
        ess = _scalar(out[1], "the effective sample size")
        w = (lw - lw.max()).exp()
        expect_close(ess, w.sum() ** 2 / (w**2).sum(), "the effective sample size is wrong (or over/underflows)")


# ---------------------------------------------------------------- Q4 Hutchinson estimate
@checks.cell("q4_test", chaining="one matrix with two probe sets, each estimate checked against the reference")
def q4_estimate(student):
    """Hutchinson estimate with Rademacher and with Gaussian probes for a random 6 x 6 matrix"""
    A = _randn(6, 6, seed=401)
    V1 = torch.randint(0, 2, (25, 6), generator=torch.Generator().manual_seed(402)).to(F64) * 2 - 1
    V2 = _randn(30, 6, seed=403)
    out1, out2 = student.hutchinson_trace(A, V1), student.hutchinson_trace(A, V2)
    got1 = _scalar(out1, "hutchinson_trace(A, V)")
    got2 = _scalar(out2, "hutchinson_trace(A, V)")
    for V, got in ((V1, got1), (V2, got2)):
        want = sum(float(v @ A @ v) for v in V) / V.shape[0]
        expect_close(got, want, "the average of v_k^T A v_k over the probes (rows of V) is wrong")


# ---------------------------------------------------------------- Q5 Hutchinson variance
@checks.cell("q5_rademacher_test")
def q5_rademacher(student):
    """Rademacher variance of a random non-symmetric 5 x 5 matrix, against all 32 sign vectors"""
    A = _randn(5, 5, seed=501)
    got = _scalar(student.hutchinson_variance(A, "rademacher"), "hutchinson_variance(A, 'rademacher')")
    vals = torch.tensor([float(torch.tensor(s, dtype=F64) @ A @ torch.tensor(s, dtype=F64))
                         for s in itertools.product((-1.0, 1.0), repeat=5)], dtype=F64)
    expect_close(got, vals.var(correction=0), "the Rademacher variance of a non-symmetric matrix is wrong "
                 "(only the symmetric part (A + A^T) / 2 matters)", rtol=1e-9)


@checks.cell("q5_gaussian_test")
def q5_gaussian(student):
    """Gaussian variance of a random non-symmetric 4 x 4 matrix"""
    A = _randn(4, 4, seed=502)
    got = _scalar(student.hutchinson_variance(A, "gaussian"), "hutchinson_variance(A, 'gaussian')")
    lam = torch.linalg.eigvalsh(0.5 * (A + A.T))      # v^T S v = sum_i lam_i chi2_1: variance 2 sum lam_i^2
    expect_close(got, 2 * (lam**2).sum(), "the Gaussian variance of a non-symmetric matrix is wrong", rtol=1e-9)


# ---------------------------------------------------------------- Q6 gradient
@checks.cell("q6_test", chaining="one data set at two parameters, each gradient checked against the reference")
def q6_grad(student):
    """gradient of the mean Gaussian NLL at random parameters and data"""
    x = 1.5 + 2.0 * _randn(30, seed=601)
    thetas = [torch.tensor([0.3, -0.4], dtype=F64), torch.tensor([-2.0, 1.2], dtype=F64)]
    outs = [student.gaussian_nll_grad(th, x) for th in thetas]
    for th, out in zip(thetas, outs):
        got = expect_tensor(out, "gaussian_nll_grad(theta, x)", shape=(2,), dtype=F64)
        expect_close(got, ref_grad(th, x), "the gradient of the mean Gaussian NLL with respect to (mu, s) is wrong")


# ---------------------------------------------------------------- Q7 SGD step
@checks.cell(
    "q7_test",
    chaining="one data set: a minibatch step (checked against the reference) and every single-example step",
)
def q7_sgd(student):
    """one SGD step on a random minibatch; singleton steps average to the full gradient step"""
    x = _randn(8, seed=701) * 0.7 + 1.0
    theta = torch.tensor([0.2, 0.1], dtype=F64)
    idx = torch.tensor([5, 0, 3])
    step = student.sgd_step(theta, x, idx, 0.05)
    singles = [student.sgd_step(theta, x, torch.tensor([n]), 0.05) for n in range(8)]
    got = expect_tensor(step, "sgd_step(theta, x, idx, lr)", shape=(2,), dtype=F64)
    expect_close(got, theta - 0.05 * ref_grad(theta, x[idx]), "one SGD step on the minibatch x[idx] is wrong")
    mean_single = sum(expect_tensor(s, "sgd_step(...)", shape=(2,), dtype=F64) for s in singles) / 8
    expect_close(mean_single, theta - 0.05 * ref_grad(theta, x),
                 "steps on single-example batches should average to the full-batch step")
