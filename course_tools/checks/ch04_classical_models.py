"""Visible tests of chapter 4 (Gaussians, mixtures, Bayesian networks, autoregressive models).

Each test says what was expected. They are small: the hidden checks, decided by the grader outside the
notebook, use other inputs (other sizes, random tables, far-away points).
"""

from __future__ import annotations

import math

import torch

from course_tools.check import expect, need, visible

F64 = torch.float64


def _tensor(x, what: str, shape=None) -> torch.Tensor:
    expect(isinstance(x, torch.Tensor), f"{what} should be a torch.Tensor, got {type(x).__name__}")
    if shape is not None:
        expect(tuple(x.shape) == tuple(shape), f"{what} should have shape {tuple(shape)}, got {tuple(x.shape)}")
    expect(x.dtype == F64, f"keep the input dtype: {what} should be float64, got {x.dtype}")
    return x


def _close(a: float, b: float, tol: float = 1e-8) -> bool:
    return math.isfinite(a) and abs(a - b) <= tol * (1 + abs(b))


def _lognorm(x, m, s):
    return -0.5 * math.log(2 * math.pi) - math.log(s) - 0.5 * ((x - m) / s) ** 2


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


@visible("ch04.q1.values", "Q1 one sample in 3-d matches mean + E Lambda^{1/2} z with eigh's order")
def _q1_values(ns):
    f = need(ns, "sample_gaussian_eigen")
    z = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64)
    x = _tensor(f(_MEAN, _COV, z), "sample_gaussian_eigen(mean, cov, z)", (1, 3))
    evals, E = torch.linalg.eigh(_COV)
    want = _MEAN + z @ (E * evals.sqrt()).T
    err = (x - want).abs().max().item()
    expect(
        err < 1e-10,
        f"expected {[round(v, 4) for v in want[0].tolist()]}, got {[round(v, 4) for v in x[0].tolist()]}. "
        "Use torch.linalg.eigh's order (increasing eigenvalues) without sorting.",
    )


# ---------------------------------------------------------------- Q2 mixture log-likelihood
_W = torch.tensor([0.3, 0.7], dtype=F64)
_M = torch.tensor([0.0, 3.0], dtype=F64)
_S = torch.tensor([1.0, 0.5], dtype=F64)


def _ref_mix(xs):
    out = []
    for x in xs:
        terms = [math.log(w) + _lognorm(x, m, s) for w, m, s in zip(_W.tolist(), _M.tolist(), _S.tolist())]
        top = max(terms)
        out.append(top + math.log(sum(math.exp(t - top) for t in terms)))
    return out


@visible("ch04.q2.basic", "Q2 two components, three points: log p(x_n) per point")
def _q2_basic(ns):
    f = need(ns, "mixture_log_likelihood")
    x = torch.tensor([-1.0, 1.5, 3.2], dtype=F64)
    got = _tensor(f(x, _W, _M, _S), "mixture_log_likelihood(x, ...)", (3,))
    want = _ref_mix(x.tolist())
    expect(
        all(_close(a, b) for a, b in zip(got.tolist(), want)),
        f"expected {[round(v, 6) for v in want]}, got {[round(v, 6) for v in got.tolist()]} "
        "(log N has -1/2 log(2 pi) - log sigma - (x - mu)^2 / (2 sigma^2))",
    )


@visible("ch04.q2.far", "Q2 a point at x = 1000 gets a finite log-likelihood (no underflow)")
def _q2_far(ns):
    f = need(ns, "mixture_log_likelihood")
    got = _tensor(f(torch.tensor([1000.0], dtype=F64), _W, _M, _S), "mixture_log_likelihood", (1,)).item()
    want = _ref_mix([1000.0])[0]
    expect(
        math.isfinite(got),
        f"got {got}: N(1000; mu, sigma^2) underflows to 0, so log(sum(...)) = -inf. Use torch.logsumexp on "
        "log pi_k + log N(x; mu_k, sigma_k^2)",
    )
    expect(_close(got, want), f"expected {want:.4f}, got {got:.4f}")


# ---------------------------------------------------------------- Q3 EM step
def _ref_em(xs, w, m, s):
    r = []
    for x in xs:
        terms = [math.log(wk) + _lognorm(x, mk, sk) for wk, mk, sk in zip(w, m, s)]
        top = max(terms)
        z = sum(math.exp(t - top) for t in terms)
        r.append([math.exp(t - top) / z for t in terms])
    K, N = len(w), len(xs)
    Nk = [sum(r[n][k] for n in range(N)) for k in range(K)]
    mu = [sum(r[n][k] * xs[n] for n in range(N)) / Nk[k] for k in range(K)]
    sd = [math.sqrt(sum(r[n][k] * (xs[n] - mu[k]) ** 2 for n in range(N)) / Nk[k]) for k in range(K)]
    return [v / N for v in Nk], mu, sd


def _em_out(ns, x, w, m, s):
    f = need(ns, "em_step")
    out = f(x, w, m, s)
    expect(isinstance(out, tuple) and len(out) == 3, f"expected a tuple of 3 tensors, got {type(out).__name__}")
    return [_tensor(o, name, (len(w),)).tolist() for o, name in zip(out, ("new_weights", "new_means", "new_stds"))]


@visible("ch04.q3.step", "Q3 one EM step on five points from a two-component start")
def _q3_step(ns):
    x = torch.tensor([-1.0, -0.5, 0.2, 2.8, 3.5], dtype=F64)
    got = _em_out(ns, x, _W, _M, _S)
    want = _ref_em(x.tolist(), _W.tolist(), _M.tolist(), _S.tolist())
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
    want = _ref_em(x.tolist(), _W.tolist(), _M.tolist(), _S.tolist())
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
@visible("ch04.q5", "Q5 student network: D _|_ I and L _|_ (D, I, S) | G hold; D _|_ I | G does not")
def _q5(ns):
    f = need(ns, "independence_gap")
    p_d, p_i, p_g, p_s, p_l = _student_tables()
    J = torch.einsum("d,i,idg,is,gl->digsl", p_d, p_i, p_g, p_s, p_l)
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
def _ref_ar(x, W, b):
    out = []
    for row in x.tolist():
        total = 0.0
        for i, xi in enumerate(row):
            a = b[i].item() + sum(W[i, j].item() * row[j] for j in range(i))
            # log sigmoid(a) = -log(1 + e^-a), stably
            ls_pos = -math.log1p(math.exp(-a)) if a > 0 else a - math.log1p(math.exp(a))
            ls_neg = ls_pos - a
            total += ls_pos if xi == 1.0 else ls_neg
        out.append(total)
    return out


@visible("ch04.q7.basic", "Q7 a 4-d model with a strictly lower triangular W: log p(x) for three vectors")
def _q7_basic(ns):
    f = need(ns, "ar_log_likelihood")
    W = torch.tensor([[0, 0, 0, 0], [1.5, 0, 0, 0], [-2.0, 0.5, 0, 0], [0.3, 1.0, -1.0, 0]], dtype=F64)
    b = torch.tensor([0.2, -0.5, 1.0, 0.0], dtype=F64)
    x = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 1]], dtype=F64)
    got = _tensor(f(x, W, b), "ar_log_likelihood(x, W, b)", (3,))
    want = _ref_ar(x, W, b)
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
    want = _ref_ar(x, W, b)
    expect(
        all(_close(a, c) for a, c in zip(got.tolist(), want)),
        f"with 7.0 added on and above the diagonal of W, expected the same {[round(v, 6) for v in want]}, "
        f"got {[round(v, 6) for v in got.tolist()]}: use only the strictly lower triangle (torch.tril(W, -1))",
    )
