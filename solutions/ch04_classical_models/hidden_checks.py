"""Hidden checks of the chapter 4 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
"""

import math

import torch

from course_tools.hidden import Checks, expect, expect_close, expect_tensor

checks = Checks("ch04_classical_models")
F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _spd(d, seed):
    a = torch.randn(d, d, generator=_gen(seed), dtype=F64)
    return a @ a.T / d + 0.2 * torch.eye(d, dtype=F64)


def _probs(shape, seed):
    p = torch.rand(*shape, generator=_gen(seed), dtype=F64) + 0.05
    return p / p.sum(-1, keepdim=True)


def ref_log_normal(x, means, stds):
    return torch.distributions.Normal(means, stds).log_prob(x[:, None])


def ref_mixture(x, w, m, s):
    return torch.logsumexp(w.log() + ref_log_normal(x, m, s), 1)


def ref_em(x, w, m, s):
    r = (w.log() + ref_log_normal(x, m, s)).softmax(1)
    nk = r.sum(0)
    mu = (r * x[:, None]).sum(0) / nk
    sd = ((r * (x[:, None] - mu) ** 2).sum(0) / nk).sqrt()
    return nk / len(x), mu, sd


# ---------------------------------------------------------------- Q1 eigen sampling
@checks.cell("q1_cov_test")
def q1_cov(student):
    """with z = I in 6 dimensions, (x - mean)^T (x - mean) = Sigma"""
    d = 6
    cov, mean = _spd(d, 11), torch.randn(d, generator=_gen(12), dtype=F64)
    x = expect_tensor(student.sample_gaussian_eigen(mean, cov, torch.eye(d, dtype=F64)),
                      "sample_gaussian_eigen(mean, cov, I)", shape=(d, d), dtype=F64)
    rows = x - mean
    expect_close(rows.T @ rows, cov, "the square root you use does not satisfy A A^T = Sigma", rtol=1e-8, atol=1e-10)


@checks.cell("q1_values_test")
def q1_values(student):
    """20 samples of a 5-d Gaussian, number for number with torch.linalg.eigh's order"""
    d = 5
    cov, mean = _spd(d, 13), torch.randn(d, generator=_gen(14), dtype=F64)
    z = torch.randn(20, d, generator=_gen(15), dtype=F64)
    x = expect_tensor(student.sample_gaussian_eigen(mean, cov, z), "sample_gaussian_eigen(mean, cov, z)",
                      shape=(20, d), dtype=F64)
    evals, E = torch.linalg.eigh(cov)
    expect_close(x, mean + z @ (E * evals.sqrt()).T,
                 "the samples differ from mean + E Lambda^{1/2} z (with eigh's order, unsorted)", rtol=1e-8,
                 atol=1e-10)


# ---------------------------------------------------------------- Q2 mixture log-likelihood
@checks.cell("q2_basic_test")
def q2_basic(student):
    """log-likelihood of 50 points under a random 4-component mixture"""
    w, m = _probs((4,), 21), 3 * torch.randn(4, generator=_gen(22), dtype=F64)
    s = 0.3 + torch.rand(4, generator=_gen(23), dtype=F64)
    x = 4 * torch.randn(50, generator=_gen(24), dtype=F64)
    got = expect_tensor(student.mixture_log_likelihood(x, w, m, s), "mixture_log_likelihood(x, ...)",
                        shape=(50,), dtype=F64)
    expect_close(got, ref_mixture(x, w, m, s), "the mixture log-likelihood of random points is wrong", rtol=1e-9)


@checks.cell("q2_far_test")
def q2_far(student):
    """points hundreds of standard deviations from every component"""
    w, m = _probs((3,), 25), torch.tensor([-1.0, 0.0, 2.0], dtype=F64)
    s = torch.tensor([0.5, 1.0, 0.2], dtype=F64)
    x = torch.tensor([-500.0, 40.0, 300.0, 0.1], dtype=F64)
    got = expect_tensor(student.mixture_log_likelihood(x, w, m, s), "mixture_log_likelihood(x, ...)",
                        shape=(4,), dtype=F64)
    expect(bool(torch.isfinite(got).all()), "far-away points get -inf or nan: use log-sum-exp on the log-terms")
    expect_close(got, ref_mixture(x, w, m, s), "the log-likelihood of far-away points is wrong", rtol=1e-9)


# ---------------------------------------------------------------- Q3 EM step
@checks.cell("q3_step_test")
def q3_step(student):
    """one EM step on 80 points with 3 components"""
    x = torch.cat([torch.randn(40, generator=_gen(31), dtype=F64) - 2,
                   0.5 * torch.randn(40, generator=_gen(32), dtype=F64) + 1.5])
    w, m = _probs((3,), 33), torch.tensor([-1.0, 0.5, 2.0], dtype=F64)
    s = torch.tensor([1.0, 0.7, 1.3], dtype=F64)
    out = student.em_step(x, w, m, s)
    expect(isinstance(out, (tuple, list)) and len(out) == 3, "em_step should return (weights, means, stds)")
    want = ref_em(x, w, m, s)
    for got, ref, name in zip(out, want, ("weights", "means", "stds")):
        got = expect_tensor(got, f"the new {name}", shape=(3,), dtype=F64)
        expect_close(got, ref, f"the new {name} after one EM step are wrong", rtol=1e-8)


@checks.cell("q3_far_test")
def q3_far(student):
    """one EM step with outliers far from every component"""
    x = torch.cat([torch.randn(20, generator=_gen(34), dtype=F64), torch.tensor([80.0, -120.0], dtype=F64)])
    w, m = torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([-0.5, 0.5], dtype=F64)
    s = torch.tensor([0.3, 0.4], dtype=F64)
    out = student.em_step(x, w, m, s)
    expect(isinstance(out, (tuple, list)) and len(out) == 3, "em_step should return (weights, means, stds)")
    want = ref_em(x, w, m, s)
    for got, ref, name in zip(out, want, ("weights", "means", "stds")):
        got = expect_tensor(got, f"the new {name}", shape=(2,), dtype=F64)
        expect(bool(torch.isfinite(got).all()), f"the new {name} contain nan or inf with far-away points: "
               "compute the responsibilities from log-terms")
        expect_close(got, ref, f"the new {name} with far-away points are wrong", rtol=1e-8)


# ---------------------------------------------------------------- Q4 Bayesian network joint
@checks.cell("q4_test")
def q4_joint(student):
    """joint table of the student network with other cardinalities and random tables"""
    nD, nI, nG, nS, nL = 3, 2, 4, 3, 2
    p_d, p_i = _probs((nD,), 41), _probs((nI,), 42)
    p_g, p_s, p_l = _probs((nI, nD, nG), 43), _probs((nI, nS), 44), _probs((nG, nL), 45)
    got = expect_tensor(student.student_joint(p_d, p_i, p_g, p_s, p_l), "student_joint(...)",
                        shape=(nD, nI, nG, nS, nL), dtype=F64)
    ref = (p_d[:, None, None, None, None] * p_i[None, :, None, None, None]
           * p_g.permute(1, 0, 2)[:, :, :, None, None] * p_s[None, :, None, :, None] * p_l[None, None, :, None, :])
    expect_close(got, ref, "the joint table is wrong for random tables with cardinalities (3, 2, 4, 3, 2)", rtol=1e-9)


# ---------------------------------------------------------------- Q5 independence gap
@checks.cell("q5_test", chaining="two tables, each with two conditioning sets, each gap checked against the reference")
def q5_gap(student):
    """independence gaps on random 4-variable tables, with and without conditioning"""
    t = torch.rand(2, 3, 2, 3, generator=_gen(51), dtype=F64) + 0.05
    t = t / t.sum()
    # a table with A _|_ B | C by construction: p(c) p(a | c) p(b | c) p(e | a)
    pc, pa_c, pb_c, pe_a = _probs((3,), 52), _probs((3, 2), 53), _probs((3, 4), 54), _probs((2, 2), 55)
    ci = torch.einsum("c,ca,cb,ae->abce", pc, pa_c, pb_c, pe_a)
    cases = [(t, (0,), (1,), ()), (t, (0, 3), (2,), (1,)), (ci, (0,), (1,), (2,)), (ci, (1,), (3,), (2,))]
    got = [student.independence_gap(j, a, b, c) for j, a, b, c in cases]

    def ref(j, a, b, c):
        def marg(keep):
            drop = tuple(k for k in range(j.dim()) if k not in keep)
            return j.sum(drop, keepdim=True) if drop else j
        pabc, pac, pbc, pc_ = marg(a + b + c), marg(a + c), marg(b + c), marg(c)
        return (pabc / pc_ - pac * pbc / pc_**2).abs().max()

    for g, (j, a, b, c) in zip(got, cases):
        what = f"independence_gap(joint, {a}, {b}, {c})"
        g = expect_tensor(g, what, shape=(), dtype=F64)
        expect_close(g, ref(j, a, b, c), f"{what} is wrong on a random table", rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------- Q6 parameter counts
@checks.cell("q6_test")
def q6_count(student):
    """parameter counts of three networks with mixed cardinalities"""
    nets = [
        ([3, 4, 2, 5, 2], [[], [0], [0, 1], [2], [1, 3]]),
        ([256, 256, 256], [[], [0], [0, 1]]),
        ([2] * 70, [list(range(max(0, i - 3), i)) for i in range(70)]),
    ]
    got = [student.num_parameters(c, p) for c, p in nets]
    for g, (cards, parents) in zip(got, nets):
        want = sum((k - 1) * math.prod(cards[j] for j in pa) for k, pa in zip(cards, parents))
        expect(isinstance(g, int) and not isinstance(g, bool), "num_parameters should return a Python int")
        expect(g == want, f"the parameter count of a network with {len(cards)} nodes is wrong")


# ---------------------------------------------------------------- Q7 autoregressive log-likelihood
def ref_ar(x, W, b):
    a = b + x @ torch.tril(W, -1).T
    return torch.distributions.Bernoulli(logits=a).log_prob(x).sum(1)


@checks.cell("q7_basic_test")
def q7_basic(student):
    """log-likelihood of 30 binary vectors in 12 dimensions, strictly lower triangular W"""
    d = 12
    W = torch.tril(2 * torch.randn(d, d, generator=_gen(71), dtype=F64), -1)
    b = torch.randn(d, generator=_gen(72), dtype=F64)
    x = (torch.rand(30, d, generator=_gen(73), dtype=F64) < 0.4).to(F64)
    got = expect_tensor(student.ar_log_likelihood(x, W, b), "ar_log_likelihood(x, W, b)", shape=(30,), dtype=F64)
    expect_close(got, ref_ar(x, W, b), "the autoregressive log-likelihood is wrong", rtol=1e-9)


@checks.cell("q7_masked_test")
def q7_masked(student):
    """a full W (only its strictly lower part may count) and large activations"""
    d = 10
    W = 30 * torch.randn(d, d, generator=_gen(74), dtype=F64)
    b = 20 * torch.randn(d, generator=_gen(75), dtype=F64)
    x = (torch.rand(25, d, generator=_gen(76), dtype=F64) < 0.5).to(F64)
    got = expect_tensor(student.ar_log_likelihood(x, W, b), "ar_log_likelihood(x, W, b)", shape=(25,), dtype=F64)
    expect(bool(torch.isfinite(got).all()), "large activations give -inf or nan: use logsigmoid")
    expect_close(got, ref_ar(x, W, b), "the log-likelihood with a full W or large activations is wrong "
                 "(only W's strictly lower triangle may be used)", rtol=1e-9)
