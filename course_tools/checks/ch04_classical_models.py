"""Visible tests of chapter 4 (Gaussians, mixtures, Bayesian networks, autoregressive models).

Each test says what was expected. They are small: the hidden checks, decided by the grader outside the
notebook, use other inputs (other sizes, random tables, far-away points).
"""

from __future__ import annotations

import functools
import math

import torch

from course_tools.check import expect, need, visible
from course_tools.checks._common import F64, close, fmt, tensor

_tensor = functools.partial(tensor, dtype=F64, why="keep the input dtype")
_close = close


# ---------------------------------------------------------------- Q1 eigen sampling
_COV = torch.tensor([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]], dtype=F64)
_MEAN = torch.tensor([1.0, -2.0, 0.5], dtype=F64)


@visible("ch04.q1.covariance", "Q1 with z = the identity, the rows minus the mean satisfy A A^T = Sigma")
def _q1_cov(ns):
    f = need(ns, "sample_gaussian_eigen")
    x = _tensor(f(_MEAN, _COV, torch.eye(3, dtype=F64)), "sample_gaussian_eigen(mean, cov, I)", (3, 3))
    rows = x - _MEAN  # row k = A z_k = column k of A, so rows = A^T
    err = (rows.T @ rows - _COV).abs().max().item()
    expect(
        err < 1e-10,
        f"expected (x - mean)^T (x - mean) = Sigma for z = I (since A A^T = Sigma), largest error {err:.3g}. "
        "Did you use Lambda instead of Lambda^{1/2}, or z @ A instead of z @ A.T (x = mean + z @ A.T)?",
    )


# Sigma = Q diag(1/4, 1, 4) Q^T with the orthogonal Q below: eigenvalues 1/4 < 1 < 4, eigenvectors the columns of Q
_Q = torch.tensor([[1.0, 2.0, 2.0], [2.0, 1.0, -2.0], [2.0, -2.0, 1.0]], dtype=F64) / 3
_COV_Q = torch.tensor([[81.0, -54.0, 18.0], [-54.0, 72.0, -36.0], [18.0, -36.0, 36.0]], dtype=F64) / 36


@visible("ch04.q1.values", "Q1 one sample in 3-d matches mean + E Lambda^{1/2} z with eigh's order")
def _q1_values(ns):
    f = need(ns, "sample_gaussian_eigen")
    z = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64)
    x = _tensor(f(_MEAN, _COV_Q, z), "sample_gaussian_eigen(mean, cov, z)", (1, 3))
    # x - mean = sum_i sqrt(lambda_i) z_i e_i: its coordinate along e_i is +-sqrt(lambda_i) z_i (the sign of an
    # eigenvector is eigh's choice), i.e. +-0.5 * 0.5, +-1 * 1, +-2 * 2
    coords = ((x - _MEAN) @ _Q)[0]
    want = torch.tensor([0.25, 1.0, 4.0], dtype=F64)
    expect(
        _close(coords.abs(), want, 1e-10),
        f"for Sigma with eigenvalues (1/4, 1, 4) and z = {z[0].tolist()}, expected x - mean to have coordinates "
        f"+-{want.tolist()} along the eigenvectors, got {fmt(coords)}. "
        "Use torch.linalg.eigh's order (increasing eigenvalues) without sorting.",
    )


# ---------------------------------------------------------------- Q2 diagnose: Bernoulli-mixture E step
def _long_case():
    """Two components that agree on 1199 pixels and differ on pixel 0 (0.5 against 0.75); 1200 pixels in all."""
    probs = torch.full((2, 1200), 0.5, dtype=F64)
    probs[1, 0] = 0.75
    pattern = (torch.arange(1199) % 2).to(F64)
    x = torch.stack([torch.cat([torch.ones(1, dtype=F64), pattern]), torch.cat([torch.zeros(1, dtype=F64), pattern])])
    return x, torch.tensor([0.5, 0.5], dtype=F64), probs


@visible("ch04.q2.long", "Q2 two pixels by hand; 1200 pixels where the product of probabilities underflows")
def _q2_long(ns):
    f = need(ns, "bernoulli_responsibilities")
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    w = torch.tensor([0.5, 0.5], dtype=F64)
    p = torch.tensor([[0.9, 0.2], [0.3, 0.6]], dtype=F64)
    r = _tensor(f(x, w, p), "bernoulli_responsibilities(x, weights, probs)", (2, 2))
    want = [[6 / 7, 1 / 7], [0.5, 0.5]]
    expect(
        _close(r.tolist(), want),
        f"x = (1, 0): 0.9 x 0.8 = 0.72 against 0.3 x 0.4 = 0.12, so r = (6/7, 1/7); "
        f"x = (1, 1): 0.18 against 0.18, r = (1/2, 1/2). Expected {fmt(torch.tensor(want))}, got {fmt(r)}",
    )
    x, w, p = _long_case()
    r = _tensor(f(x, w, p), "bernoulli_responsibilities(x, weights, probs)", (2, 2))
    want = [[0.4, 0.6], [2 / 3, 1 / 3]]
    expect(
        _close(r.tolist(), want),
        f"1200 pixels, the components differ only on pixel 0 (0.5 against 0.75): "
        f"r = (0.25, 0.375) / 0.625 = (0.4, 0.6) when x_0 = 1 and (2/3, 1/3) when x_0 = 0; got {fmt(r)} "
        "(0.5^1200 underflows to 0: sum logs instead of multiplying probabilities)",
    )


@visible("ch04.q2.extreme", "Q2 pixel probabilities of 1e-12: finite responsibilities, (2/3, 1/3)")
def _q2_extreme(ns):
    f = need(ns, "bernoulli_responsibilities")
    p = torch.full((2, 40), 1e-12, dtype=F64)
    p[:, 0] = torch.tensor([0.5, 0.25], dtype=F64)
    x = torch.zeros(1, 40, dtype=F64)
    x[0, :30] = 1.0
    r = _tensor(f(x, torch.tensor([0.5, 0.5], dtype=F64), p), "bernoulli_responsibilities(x, weights, probs)", (1, 2))
    expect(
        _close(r.tolist(), [[2 / 3, 1 / 3]]),
        f"29 pixels that are on with probability 1e-12 in both components "
        f"cancel; pixel 0 gives 0.5 against 0.25, so r = (2/3, 1/3); got {fmt(r)}",
    )


# ---------------------------------------------------------------- Q3 derive: Bernoulli-mixture EM step
@visible(
    "ch04.q3.step", "Q3 one component: weighted frequencies (with alpha = 1: (2 + 1) / (3 + 2)); two components by hand"
)
def _q3_step(ns):
    f = need(ns, "bernoulli_em_step")
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=F64)
    out = f(x, torch.ones(1, dtype=F64), torch.full((1, 2), 0.5, dtype=F64), 1.0)
    expect(isinstance(out, tuple) and len(out) == 2, "bernoulli_em_step should return (new_weights, new_probs)")
    w1 = _tensor(out[0], "the new weights", (1,))
    p1 = _tensor(out[1], "the new probs", (1, 2))
    expect(
        _close(w1.tolist(), [1.0]) and _close(p1.tolist(), [[0.6, 0.4]]),
        f"one component, alpha = 1: pixel 0 is on "
        f"in 2 of 3 vectors, (2 + 1) / (3 + 2) = 0.6, pixel 1 (1 + 1) / 5 = 0.4; got {fmt(w1)}, {fmt(p1)}",
    )
    x2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    w = torch.tensor([0.5, 0.5], dtype=F64)
    p = torch.tensor([[0.9, 0.2], [0.3, 0.6]], dtype=F64)
    w0, p0 = f(x2, w, p, 0.0)
    expect(
        _close(_tensor(w0, "the new weights", (2,)).tolist(), [19 / 28, 9 / 28]),
        f"r = ((6/7, 1/7), (1/2, 1/2)), so N_k = (19/14, 9/14) and the weights are (19/28, 9/28); got {fmt(w0)}",
    )
    expect(
        _close(_tensor(p0, "the new probs", (2, 2)).tolist(), [[1.0, 7 / 19], [1.0, 7 / 9]]),
        f"alpha = 0: p_kj = sum_n r_nk x_nj / N_k = ((1, 7/19), (1, 7/9)); got {fmt(p0)}",
    )
    _, p_one = f(x2, w, p, 1.0)
    expect(
        _close(p_one.tolist(), [[33 / 47, 21 / 47], [23 / 37, 21 / 37]]),
        f"alpha = 1: (sum_n r_nk x_nj + 1) / (N_k + 2) = ((33/47, 21/47), (23/37, 21/37)); got {fmt(p_one)}",
    )


@visible("ch04.q3.ascent", "Q3 1200 pixels: finite, and the weights (8/15, 7/15) from r = (0.4, 0.6), (2/3, 1/3)")
def _q3_ascent(ns):
    f = need(ns, "bernoulli_em_step")
    x, w, p = _long_case()
    out = f(x, w, p, 1.0)
    expect(isinstance(out, tuple) and len(out) == 2, "bernoulli_em_step should return (new_weights, new_probs)")
    w1 = _tensor(out[0], "the new weights", (2,))
    p1 = _tensor(out[1], "the new probs", (2, 1200))
    expect(
        bool(torch.isfinite(w1).all() and torch.isfinite(p1).all()),
        "the step gives nan or inf on 1200 pixels: compute the responsibilities in log space",
    )
    expect(
        _close(w1.tolist(), [8 / 15, 7 / 15]),
        f"N_k = (0.4 + 2/3, 0.6 + 1/3) = (16/15, 14/15), weights (8/15, 7/15); got {fmt(w1)}",
    )
    want = [[21 / 46, 15 / 46, 31 / 46], [6 / 11, 15 / 44, 29 / 44]]
    expect(
        _close(p1[:, :3].tolist(), want),
        f"the first three pixels (x_0 differs, then 0, 1 in both vectors): "
        f"{fmt(torch.tensor(want))}; got {fmt(p1[:, :3])}",
    )


# ---------------------------------------------------------------- Q4 joint table of any network
def _student_tables():
    p_d = torch.tensor([0.6, 0.4], dtype=F64)
    p_i = torch.tensor([0.7, 0.3], dtype=F64)
    p_g = torch.tensor([[[0.3, 0.4, 0.3], [0.05, 0.25, 0.7]], [[0.9, 0.08, 0.02], [0.5, 0.3, 0.2]]], dtype=F64)
    p_s = torch.tensor([[0.95, 0.05], [0.2, 0.8]], dtype=F64)
    p_l = torch.tensor([[0.1, 0.9], [0.4, 0.6], [0.99, 0.01]], dtype=F64)
    return [p_d, p_i, p_g, p_s, p_l]


@visible(
    "ch04.q4", "Q4 the student network as cpts/parents: sums to 1, entry [1, 1, 0, 1, 1]; parents listed out of order"
)
def _q4(ns):
    f = need(ns, "network_joint")
    J = _tensor(f(_student_tables(), [[], [], [1, 0], [1], [2]]), "network_joint(cpts, parents)", (2, 2, 3, 2, 2))
    expect(_close(J.sum().item(), 1.0, 1e-10), f"the joint should sum to 1, got {J.sum().item():.6f}")
    want = 0.4 * 0.3 * 0.5 * 0.8 * 0.9  # d = hard, i = high, g = A, s = high, l = strong
    got = J[1, 1, 0, 1, 1].item()
    expect(
        _close(got, want),
        f"joint[1, 1, 0, 1, 1] = p(d1) p(i1) p(g0 | i1, d1) p(s1 | i1) p(l1 | g0) = {want:.6f}, "
        f"got {got:.6f}. The axes of cpts[2] are its parents in the listed order [1, 0] (i, d), then g",
    )
    c2 = torch.tensor([[[0.1, 0.9], [0.6, 0.4]], [[0.5, 0.5], [0.2, 0.8]], [[0.7, 0.3], [0.3, 0.7]]], dtype=F64)
    tables = [torch.tensor([0.25, 0.75], dtype=F64), torch.tensor([0.2, 0.3, 0.5], dtype=F64), c2]
    J2 = _tensor(f(tables, [[], [], [1, 0]]), "network_joint(cpts, parents)", (2, 3, 2))
    want2 = 0.75 * 0.2 * 0.4  # x0 = 1, x1 = 0, x2 = 1: cpts[2][x1 = 0, x0 = 1, x2 = 1] = 0.4
    expect(
        _close(J2[1, 0, 1].item(), want2),
        f"node 2 with parents [1, 0]: joint[1, 0, 1] = p(x0 = 1) p(x1 = 0) "
        f"cpts[2][0, 1, 1] = 0.75 x 0.2 x 0.4 = {want2:.4f}, got {J2[1, 0, 1].item():.4f}",
    )


# ---------------------------------------------------------------- Q5 ancestral sampling
@visible(
    "ch04.q5.marginals", "Q5 4000 samples of X0 -> X1: frequencies within 5 standard errors of the exact marginals"
)
def _q5_marginals(ns):
    f = need(ns, "ancestral_sample")
    tables = [torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]], dtype=F64)]
    x = f(tables, [[], [0]], 4000, torch.Generator().manual_seed(0))
    x = tensor(x, "ancestral_sample(cpts, parents, n, generator)", (4000, 2), torch.long, "integer samples")
    exact = {0: [0.3, 0.7], 1: [0.3 * 0.9 + 0.7 * 0.2, 0.3 * 0.1 + 0.7 * 0.3, 0.7 * 0.5]}
    for i, probs in exact.items():
        freq = torch.bincount(x[:, i], minlength=len(probs)).to(F64) / 4000
        se = [math.sqrt(p * (1 - p) / 4000) for p in probs]
        ok = all(abs(fr - p) <= 5 * s + 1e-12 for fr, p, s in zip(freq.tolist(), probs, se))
        expect(
            ok,
            f"node {i}: exact marginal {fmt(torch.tensor(probs))}, sample frequencies {fmt(freq)} "
            "(more than 5 standard errors apart)",
        )


@visible("ch04.q5.pairs", "Q5 a network of 0/1 tables is deterministic: every sample is (1, 0, 1)")
def _q5_pairs(ns):
    f = need(ns, "ancestral_sample")
    c2 = torch.zeros(3, 2, 2, dtype=F64)
    c2[..., 0] = 1.0
    c2[0, 1] = torch.tensor([0.0, 1.0], dtype=F64)  # x2 = 1 exactly when (x1, x0) = (0, 1)
    tables = [torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=F64), c2]
    x = tensor(
        f(tables, [[], [0], [1, 0]], 50, torch.Generator().manual_seed(1)),
        "ancestral_sample(cpts, parents, n, generator)",
        (50, 3),
        torch.long,
        "integer samples",
    )
    rows = {tuple(r) for r in x.tolist()}
    expect(
        rows == {(1, 0, 1)},
        f"x0 = 1 always, then x1 = 0 (row 1 of cpts[1]), then x2 = cpts[2][x1, x0] = "
        f"cpts[2][0, 1] = (0, 1) gives 1: expected only (1, 0, 1), got {sorted(rows)[:4]}",
    )


# ---------------------------------------------------------------- Q6 parameter counts
@visible("ch04.q6", "Q6 student network 15; binary Markov chain 2d - 1; full chain rule 2^d - 1 (exact int)")
def _q6(ns):
    f = need(ns, "num_parameters")
    got = f([2, 2, 3, 2, 2], [[], [], [0, 1], [1], [2]])
    expect(isinstance(got, int), f"return a Python int, got {type(got).__name__}")
    expect(got == 15, f"the student network needs 1 + 1 + 8 + 2 + 3 = 15, got {got}")
    d = 10
    got = f([2] * d, [[]] + [[i - 1] for i in range(1, d)])
    expect(got == 2 * d - 1, f"a binary Markov chain of length {d} needs 2d - 1 = {2 * d - 1}, got {got}")
    d = 100
    got = f([2] * d, [list(range(i)) for i in range(d)])
    expect(
        got == 2**d - 1,
        f"the full chain rule over {d} binary variables needs 2^{d} - 1 = {2**d - 1}, got {got} "
        "(use Python ints, not floats)",
    )


# ---------------------------------------------------------------- Q7 autoregressive log-likelihood
@visible("ch04.q7.basic", "Q7 a 4-d model with a strictly lower triangular W: log p(x) for three vectors")
def _q7_basic(ns):
    f = need(ns, "ar_log_likelihood")
    W = torch.tensor([[0, 0, 0, 0], [1.5, 0, 0, 0], [-2.0, 0.5, 0, 0], [0.3, 1.0, -1.0, 0]], dtype=F64)
    b = torch.tensor([0.2, -0.5, 1.0, 0.0], dtype=F64)
    x = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 1]], dtype=F64)
    got = _tensor(f(x, W, b), "ar_log_likelihood(x, W, b)", (3,))
    want = [-4.327848293303495, -3.2786247216398667, -1.6264859949129136]  # torch.distributions.Bernoulli
    expect(
        all(_close(a, c) for a, c in zip(got.tolist(), want)),
        f"expected {[round(v, 6) for v in want]}, got {[round(v, 6) for v in got.tolist()]} "
        "(a_i = b_i + sum_{j<i} W_ij x_j; log p = sum_i x_i log s(a_i) + (1 - x_i) log s(-a_i))",
    )


@visible("ch04.q7.masked", "Q7 entries of W on and above the diagonal are ignored (x_i may not see x_i, x_{i+1}, ...)")
def _q7_masked(ns):
    f = need(ns, "ar_log_likelihood")
    W = torch.tensor([[0, 0, 0, 0], [1.5, 0, 0, 0], [-2.0, 0.5, 0, 0], [0.3, 1.0, -1.0, 0]], dtype=F64)
    noisy = W + torch.triu(torch.full((4, 4), 7.0, dtype=F64))
    b = torch.tensor([0.2, -0.5, 1.0, 0.0], dtype=F64)
    x = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=F64)
    got = _tensor(f(x, noisy, b), "ar_log_likelihood(x, W, b)", (2,))
    want = [-4.327848293303495, -2.666776312104396]
    expect(
        all(_close(a, c) for a, c in zip(got.tolist(), want)),
        f"with 7.0 added on and above the diagonal of W, expected the same {[round(v, 6) for v in want]}, "
        f"got {[round(v, 6) for v in got.tolist()]}: use only the strictly lower triangle (torch.tril(W, -1))",
    )
