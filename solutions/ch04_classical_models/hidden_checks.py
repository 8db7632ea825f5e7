"""Hidden checks of the chapter 4 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
"""

import itertools
import math

import torch

from course_tools.hidden import Checks, Generator, expect, expect_close, expect_tensor

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


# ---------------------------------------------------------------- Q1 eigen sampling
@checks.cell("q1_cov_test")
def q1_cov(student):
    """with z = I in 6 dimensions, (x - mean)^T (x - mean) = Sigma"""
    d = 6
    cov, mean = _spd(d, 11), torch.randn(d, generator=_gen(12), dtype=F64)
    x = expect_tensor(
        student.sample_gaussian_eigen(mean, cov, torch.eye(d, dtype=F64)),
        "sample_gaussian_eigen(mean, cov, I)",
        shape=(d, d),
        dtype=F64,
    )
    rows = x - mean
    expect_close(rows.T @ rows, cov, "the square root you use does not satisfy A A^T = Sigma", rtol=1e-8, atol=1e-10)


@checks.cell("q1_values_test")
def q1_values(student):
    """20 samples of a 5-d Gaussian, number for number with torch.linalg.eigh's order"""
    d = 5
    cov, mean = _spd(d, 13), torch.randn(d, generator=_gen(14), dtype=F64)
    z = torch.randn(20, d, generator=_gen(15), dtype=F64)
    x = expect_tensor(
        student.sample_gaussian_eigen(mean, cov, z), "sample_gaussian_eigen(mean, cov, z)", shape=(20, d), dtype=F64
    )
    evals, E = torch.linalg.eigh(cov)
    expect_close(
        x,
        mean + z @ (E * evals.sqrt()).T,
        "the samples differ from mean + E Lambda^{1/2} z (with eigh's order, unsorted)",
        rtol=1e-8,
        atol=1e-10,
    )


# ---------------------------------------------------------------- Q2 diagnose: Bernoulli-mixture E step
def ref_log_joint(x, w, p):
    """log pi_k + log p(x_n | z = k) by torch.distributions, shape (N, K)."""
    return w.log() + torch.distributions.Bernoulli(probs=p).log_prob(x[:, None, :]).sum(-1)


def ref_resp(x, w, p):
    a = ref_log_joint(x, w, p)
    return (a - torch.logsumexp(a, 1, keepdim=True)).exp()


def _binary(n, d, seed, frac=0.35):
    return (torch.rand(n, d, generator=_gen(seed), dtype=F64) < frac).to(F64)


def _bern_params(k, d, seed):
    w = _probs((k,), seed)
    p = 0.05 + 0.9 * torch.rand(k, d, generator=_gen(seed + 1), dtype=F64)
    return w, p


@checks.cell("q2_long_test")
def q2_long(student):
    """responsibilities of 12 binary vectors of length 2000 under a 3-component mixture"""
    x = _binary(12, 2000, 201)
    w, p = _bern_params(3, 2000, 202)
    resp = expect_tensor(
        student.bernoulli_responsibilities(x, w, p),
        "bernoulli_responsibilities(x, weights, probs)",
        shape=(12, 3),
        dtype=F64,
    )
    expect(
        bool(torch.isfinite(resp).all()),
        "the responsibilities of long binary vectors contain nan or inf: the "
        "product of the per-pixel probabilities underflows (work with logs)",
    )
    expect_close(
        resp, ref_resp(x, w, p), "the responsibilities of long binary vectors are wrong", rtol=1e-7, atol=1e-12
    )


@checks.cell("q2_extreme_test")
def q2_extreme(student):
    """responsibilities with pixel probabilities within 1e-12 of 0 and 1, 4 components, 150 pixels"""
    x = _binary(10, 150, 205, frac=0.5)
    w, p = _bern_params(4, 150, 204)
    extreme = torch.rand(4, 150, generator=_gen(206), dtype=F64) < 0.5
    ones = torch.rand(4, 150, generator=_gen(207), dtype=F64) < 0.5
    p = torch.where(extreme, torch.where(ones, torch.full_like(p, 1 - 1e-12), torch.full_like(p, 1e-12)), p)
    resp = expect_tensor(
        student.bernoulli_responsibilities(x, w, p),
        "bernoulli_responsibilities(x, weights, probs)",
        shape=(10, 4),
        dtype=F64,
    )
    expect(
        bool(torch.isfinite(resp).all()),
        "with pixel probabilities near 0 and 1 the responsibilities contain nan "
        "or inf (work with logs; log1p(-p) keeps log(1 - p) accurate)",
    )
    expect_close(
        resp,
        ref_resp(x, w, p),
        "the responsibilities with extreme pixel probabilities are wrong",
        rtol=1e-6,
        atol=1e-10,
    )


# ---------------------------------------------------------------- Q3 derive: Bernoulli-mixture EM step
def ref_bernoulli_em(x, w, p, alpha):
    """The E step by torch.distributions, the M step by explicit weighted counts, one component at a time."""
    r = ref_resp(x, w, p)
    new_w, new_p = [], []
    for k in range(len(w)):
        nk = r[:, k].sum()
        on = (r[:, k : k + 1] * x).sum(0)
        new_w.append(nk / len(x))
        new_p.append((on + alpha) / (nk + 2 * alpha))
    return torch.stack(new_w), torch.stack(new_p)


def penalised_loglik(x, w, p, alpha):
    ll = torch.logsumexp(ref_log_joint(x, w, p), 1).sum()
    return ll + alpha * (p.log() + (1 - p).log()).sum()


def _em_pair(out, what, k, d):
    expect(isinstance(out, (tuple, list)) and len(out) == 2, f"{what} should return (new_weights, new_probs)")
    return (
        expect_tensor(out[0], "the new weights", shape=(k,), dtype=F64),
        expect_tensor(out[1], "the new probs", shape=(k, d), dtype=F64),
    )


@checks.cell("q3_step_test")
def q3_step(student):
    """one EM step for 3 components on 25 vectors of 40 pixels, with alpha = 1, 0 and 0.5"""
    cases = []
    for j, alpha in enumerate((1.0, 0.0, 0.5)):
        w, p = _bern_params(3, 40, 310 + 10 * j)
        cases.append((_binary(25, 40, 312 + 10 * j), w, p, alpha))
    outs = [student.bernoulli_em_step(x, w, p, alpha) for x, w, p, alpha in cases]
    for (x, w, p, alpha), out in zip(cases, outs):
        got_w, got_p = _em_pair(out, "bernoulli_em_step(...)", 3, 40)
        want_w, want_p = ref_bernoulli_em(x, w, p, alpha)
        expect_close(got_w, want_w, f"the new weights after one EM step (alpha = {alpha}) are wrong", rtol=1e-8)
        expect_close(
            got_p, want_p, f"the new pixel probabilities after one EM step (alpha = {alpha}) are wrong", rtol=1e-8
        )


@checks.cell("q3_ascent_test")
def q3_ascent(student):
    """one EM step on 16 vectors of 2000 pixels: it must not decrease the smoothed log-likelihood, and match"""
    x = _binary(16, 2000, 341, frac=0.3)
    w, p = _bern_params(4, 2000, 342)
    out = student.bernoulli_em_step(x, w, p, 1.0)
    got_w, got_p = _em_pair(out, "bernoulli_em_step(...)", 4, 2000)
    expect(
        bool(torch.isfinite(got_w).all() and torch.isfinite(got_p).all()),
        "one EM step on long vectors gives nan or inf: compute the responsibilities in log space",
    )
    expect(
        bool((got_p > 0).all() and (got_p < 1).all()) and abs(float(got_w.sum()) - 1) < 1e-9,
        "after the step the weights should sum to 1 and every pixel probability lie strictly in (0, 1)",
    )
    before, after = penalised_loglik(x, w, p, 1.0), penalised_loglik(x, got_w, got_p, 1.0)
    expect(
        float(after) >= float(before) - 1e-8,
        "your EM step decreased the smoothed log-likelihood, which an EM step never does",
    )
    want_w, want_p = ref_bernoulli_em(x, w, p, 1.0)
    expect_close(got_w, want_w, "the new weights after one EM step on long vectors are wrong", rtol=1e-8)
    expect_close(got_p, want_p, "the new pixel probabilities after one EM step on long vectors are wrong", rtol=1e-8)


# ---------------------------------------------------------------- Q4 joint table of any network
def _peaked(shape, seed):
    """Random conditional tables, far from uniform (so that a mixed-up axis shows)."""
    p = torch.rand(*shape, generator=_gen(seed), dtype=F64) ** 3 + 0.02
    return p / p.sum(-1, keepdim=True)


def _network(cards, parents, seed):
    return [_peaked([cards[j] for j in pa] + [cards[i]], seed + i) for i, pa in enumerate(parents)]


def ref_joint(cpts, parents, cards):
    """The joint by brute force: one product of table entries per assignment."""
    joint = torch.zeros(cards, dtype=F64)
    for xs in itertools.product(*(range(k) for k in cards)):
        joint[xs] = math.prod(
            float(t[tuple(xs[j] for j in pa) + (xs[i],)]) for i, (t, pa) in enumerate(zip(cpts, parents))
        )
    return joint


_NET_A = ([2, 3, 2, 4, 2], [[], [0], [1, 0], [2], [3, 1]])
_NET_B = ([3, 2, 2, 3], [[], [], [0, 1], [2, 0, 1]])
_NET_C = ([3, 2, 4, 2], [[], [0], [1, 0], [2]])
_NET_D = ([2, 3, 3, 2, 2], [[], [0], [], [2, 1], [3, 0]])


@checks.cell("q4_test")
def q4_joint(student):
    """joint tables of a 5-node network and of a 4-node network with three unsorted parents"""
    nets = [(_NET_A, _network(*_NET_A, 410)), (_NET_B, _network(*_NET_B, 420))]
    outs = [student.network_joint(cpts, parents) for (_cards, parents), cpts in nets]
    for ((cards, parents), cpts), out in zip(nets, outs):
        got = expect_tensor(out, "network_joint(cpts, parents)", shape=tuple(cards), dtype=F64)
        expect_close(
            got,
            ref_joint(cpts, parents, cards),
            f"the joint table of a network with cardinalities "
            f"{tuple(cards)} and parents {parents} is wrong (axes of cpts[i]: the parents in the listed "
            "order, then the node)",
            rtol=1e-9,
            atol=1e-15,
        )


# ---------------------------------------------------------------- Q5 ancestral sampling
N_SAMPLES = 12_000


def _samples(out, cards):
    x = expect_tensor(
        out, "ancestral_sample(cpts, parents, n, generator)", shape=(N_SAMPLES, len(cards)), dtype=torch.long
    )
    for i, k in enumerate(cards):
        expect(
            bool(((x[:, i] >= 0) & (x[:, i] < k)).all()),
            f"node {i} has {k} values: samples must lie in 0, ..., {k - 1}",
        )
    return x


def _within_5_se(freq, prob, what):
    # tolerance: 5 standard errors of a frequency, sqrt(p (1 - p) / n); a correct sampler fails one comparison
    # with probability about 6e-7 (two-sided normal tail), and these checks make about 40 comparisons
    se = (prob * (1 - prob) / N_SAMPLES).sqrt()
    expect(
        bool(((freq - prob).abs() <= 5 * se + 1e-12).all()),
        f"the sample frequencies of {what} are more than 5 "
        f"standard errors from the exact probabilities ({N_SAMPLES:,} samples)",
    )


@checks.cell("q5_marginals_test")
def q5_marginals(student):
    """12,000 samples of a 4-node network: every node's frequencies against its exact marginal"""
    cards, parents = _NET_C
    cpts = _network(cards, parents, 510)
    x = _samples(student.ancestral_sample(cpts, parents, N_SAMPLES, Generator(511)), cards)
    joint = ref_joint(cpts, parents, cards)
    for i, k in enumerate(cards):
        marginal = joint.sum(tuple(j for j in range(len(cards)) if j != i))
        freq = torch.bincount(x[:, i], minlength=k).to(F64) / N_SAMPLES
        _within_5_se(freq, marginal, f"node {i}")


@checks.cell("q5_pairs_test")
def q5_pairs(student):
    """12,000 samples of a 5-node network: the joint frequencies of every parent-child pair"""
    cards, parents = _NET_D
    cpts = _network(cards, parents, 520)
    x = _samples(student.ancestral_sample(cpts, parents, N_SAMPLES, Generator(521)), cards)
    joint = ref_joint(cpts, parents, cards)
    for i, pa in enumerate(parents):
        for j in pa:
            pair = joint.sum(tuple(m for m in range(len(cards)) if m not in (i, j)))  # axes (min, max) of (i, j)
            lo, hi = min(i, j), max(i, j)
            freq = torch.bincount(x[:, lo] * cards[hi] + x[:, hi], minlength=cards[lo] * cards[hi]).to(F64)
            _within_5_se(freq.reshape(cards[lo], cards[hi]) / N_SAMPLES, pair, f"the pair (node {j}, node {i})")


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
    expect_close(
        got,
        ref_ar(x, W, b),
        "the log-likelihood with a full W or large activations is wrong (only W's strictly lower triangle may be used)",
        rtol=1e-9,
    )
