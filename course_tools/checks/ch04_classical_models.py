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


# ---------------------------------------------------------------- Q2 mixture log-likelihood
_W = torch.tensor([0.3, 0.7], dtype=F64)
_M = torch.tensor([0.0, 3.0], dtype=F64)
_S = torch.tensor([1.0, 0.5], dtype=F64)


@visible("ch04.q2.basic", "Q2 two components, three points: log p(x_n) per point")
def _q2_basic(ns):
    f = need(ns, "mixture_log_likelihood")
    x = torch.tensor([-1.0, 1.5, 3.2], dtype=F64)
    got = _tensor(f(x, _W, _M, _S), "mixture_log_likelihood(x, ...)", (3,))
    want = [-2.6229113375305118, -3.099763307220762, -0.661080026118035]  # torch.distributions.MixtureSameFamily
    expect(
        all(_close(a, b) for a, b in zip(got.tolist(), want)),
        f"expected {[round(v, 6) for v in want]}, got {[round(v, 6) for v in got.tolist()]} "
        "(log N has -1/2 log(2 pi) - log sigma - (x - mu)^2 / (2 sigma^2))",
    )


@visible("ch04.q2.far", "Q2 a point at x = 1000 gets a finite log-likelihood (no underflow)")
def _q2_far(ns):
    f = need(ns, "mixture_log_likelihood")
    got = _tensor(f(torch.tensor([1000.0], dtype=F64), _W, _M, _S), "mixture_log_likelihood", (1,)).item()
    want = -500002.12291133753
    expect(
        math.isfinite(got),
        f"got {got}: N(1000; mu, sigma^2) underflows to 0, so log(sum(...)) = -inf. Use torch.logsumexp on "
        "log pi_k + log N(x; mu_k, sigma_k^2)",
    )
    expect(_close(got, want), f"expected {want:.4f}, got {got:.4f}")


# ---------------------------------------------------------------- Q3 EM step
def _em_out(ns, x, w, m, s):
    f = need(ns, "em_step")
    out = f(x, w, m, s)
    expect(isinstance(out, tuple) and len(out) == 3, f"expected a tuple of 3 tensors, got {type(out).__name__}")
    return [_tensor(o, name, (len(w),)).tolist() for o, name in zip(out, ("new_weights", "new_means", "new_stds"))]


@visible("ch04.q3.step", "Q3 one EM step on five points from a two-component start")
def _q3_step(ns):
    x = torch.tensor([-1.0, -0.5, 0.2, 2.8, 3.5], dtype=F64)
    got = _em_out(ns, x, _W, _M, _S)
    # computed once and checked to maximise the expected complete-data log-likelihood (autograd: gradient 0)
    want = [
        [0.6010712312069911, 0.39892876879300887],
        [-0.42739036938090863, 3.150667873196064],
        [0.511545385780105, 0.3500038978745546],
    ]
    for name, g, w in zip(("weights", "means", "stds"), got, want):
        expect(
            all(_close(a, b, 1e-7) for a, b in zip(g, w)),
            f"new {name}: expected {[round(v, 5) for v in w]}, got {[round(v, 5) for v in g]}"
            + (" (the stds use the new means, and divide by N_k, not N)" if name == "stds" else ""),
        )


@visible("ch04.q3.far", "Q3 a point far from both components does not produce nan")
def _q3_far(ns):
    x = torch.tensor([-1.0, 0.5, 3.0, 60.0], dtype=F64)
    got = _em_out(ns, x, _W, _M, _S)
    expect(
        all(math.isfinite(v) for g in got for v in g),
        "got nan or inf: at x = 60 every N(x; mu_k, sigma_k^2) underflows to 0 and r = 0 / 0. Compute the "
        "responsibilities from the log-terms (softmax over k, or subtract their logsumexp)",
    )
    want = [
        [0.750588784922038, 0.24941121507796205],
        [19.820145158068506, 2.999950618070897],
        [28.40147859080863, 0.011110912868401933],
    ]
    expect(
        all(_close(a, b, 1e-7) for g, w in zip(got, want) for a, b in zip(g, w)),
        f"expected weights, means, stds {[[round(v, 4) for v in w] for w in want]}, "
        f"got {[[round(v, 4) for v in g] for g in got]}",
    )


# ---------------------------------------------------------------- Q4 Bayesian network joint
def _student_tables():
    p_d = torch.tensor([0.6, 0.4], dtype=F64)
    p_i = torch.tensor([0.7, 0.3], dtype=F64)
    p_g = torch.tensor([[[0.3, 0.4, 0.3], [0.05, 0.25, 0.7]], [[0.9, 0.08, 0.02], [0.5, 0.3, 0.2]]], dtype=F64)
    p_s = torch.tensor([[0.95, 0.05], [0.2, 0.8]], dtype=F64)
    p_l = torch.tensor([[0.1, 0.9], [0.4, 0.6], [0.99, 0.01]], dtype=F64)
    return p_d, p_i, p_g, p_s, p_l


@visible("ch04.q4", "Q4 the lecture's student network: shape (2, 2, 3, 2, 2), sums to 1, and the entry [1, 1, 0, 1, 1]")
def _q4(ns):
    f = need(ns, "student_joint")
    t = _student_tables()
    J = _tensor(f(*t), "student_joint(...)", (2, 2, 3, 2, 2))
    expect(_close(J.sum().item(), 1.0, 1e-10), f"the joint should sum to 1, got {J.sum().item():.6f}")
    want = 0.4 * 0.3 * 0.5 * 0.8 * 0.9  # d = hard, i = high, g = A, s = high, l = strong
    got = J[1, 1, 0, 1, 1].item()
    expect(
        _close(got, want),
        f"joint[1, 1, 0, 1, 1] = p(d1) p(i1) p(g0 | i1, d1) p(s1 | i1) p(l1 | g0) should be {want:.6f}, got {got:.6f}. "
        "Mind the index order of p_g_id: [i, d, g]",
    )


# ---------------------------------------------------------------- Q5 independence gap
# the joint table of the student network, indexed [d, i, g, s, l]: each entry is the product of one entry of
# each table of _student_tables()
_STUDENT_JOINT = torch.tensor(
    [
        0.011970000000000001, 0.10773, 0.00063, 0.0056700000000000006, 0.06384, 0.09576, 0.0033600000000000006,
        0.00504, 0.118503, 0.001197, 0.006237, 6.3e-05, 0.0032400000000000007, 0.029160000000000005,
        0.012960000000000003, 0.11664000000000002, 0.001152, 0.0017280000000000002, 0.004608, 0.006912000000000001,
        0.0007128000000000001, 7.2000000000000005e-06, 0.0028512000000000003, 2.8800000000000002e-05,
        0.0013299999999999998, 0.011969999999999998, 7.000000000000001e-05, 0.00063, 0.0266, 0.03989999999999999,
        0.0014, 0.0021, 0.18433799999999997, 0.0018619999999999997, 0.009701999999999999, 9.8e-05,
        0.0012000000000000001, 0.0108, 0.0048000000000000004, 0.0432, 0.00288, 0.00432, 0.01152, 0.01728, 0.004752,
        4.800000000000001e-05, 0.019008, 0.00019200000000000003,
    ],
    dtype=F64,
).reshape(2, 2, 3, 2, 2)

@visible("ch04.q5", "Q5 student network: D _|_ I and L _|_ (D, I, S) | G hold; D _|_ I | G does not")
def _q5(ns):
    f = need(ns, "independence_gap")
    J = _STUDENT_JOINT
    g1 = _tensor(f(J, (0,), (1,), ()), "independence_gap(joint, (0,), (1,), ())", ())
    expect(abs(g1.item()) < 1e-12, f"D and I are independent: expected 0, got {g1.item():.3g}")
    g2 = _tensor(f(J, (4,), (0, 1, 3), (2,)), "independence_gap(joint, (4,), (0, 1, 3), (2,))", ())
    expect(abs(g2.item()) < 1e-12, f"L _|_ (D, I, S) | G holds: expected 0, got {g2.item():.3g}")
    g3 = _tensor(f(J, (0,), (1,), (2,)), "independence_gap(joint, (0,), (1,), (2,))", ()).item()
    want = 0.060595451301455716
    expect(
        _close(g3, want, 1e-6),
        f"D and I are dependent given G (explaining away): expected a gap of {want:.6f}, got {g3:.6f}. "
        "Divide by p(c) to condition: p(a, b | c) = p(a, b, c) / p(c)",
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
