"""Visible tests of chapter 1 (probability and information theory review).

Each test says what was expected. They are deliberately small: the hidden tests, run when grading, use other
inputs (random batches, zeros, several dimensions) and do not trust anything the notebook may have redefined.
"""

from __future__ import annotations

import functools
import math

import torch

from course_tools.check import expect, need, visible
from course_tools.checks._common import close, tensor

_close = functools.partial(close, tol=1e-6)


def _pair_of_scalars(out) -> tuple[float, float]:
    """Check the (estimate, stderr) contract before reading numbers; say what was expected."""
    expect(
        isinstance(out, tuple) and len(out) == 2,
        f"expected a tuple (estimate, stderr), got {type(out).__name__}",
    )
    for name, value in zip(("the estimate", "the standard error"), out):
        expect(
            isinstance(value, torch.Tensor),
            f"{name} should be a scalar torch.Tensor (e.g. v.mean()), got {type(value).__name__}",
        )
        expect(value.shape == (), f"{name} should be a scalar tensor (shape ()), got shape {tuple(value.shape)}")
    return out[0].item(), out[1].item()


# ---------------------------------------------------------------- Q1 entropy
@visible("ch01.q1.basic", "Q1 entropy of a uniform distribution over 4 outcomes is log 4, batched over rows")
def _q1_basic(ns):
    entropy = need(ns, "entropy")
    p = torch.full((4,), 0.25, dtype=torch.float64)
    h = tensor(entropy(p), "entropy(p)")
    expect(
        h.shape == (),
        f"entropy of a (4,) tensor should have shape () (a scalar tensor), got {tuple(h.shape)}",
    )
    expect(h.dtype == torch.float64, f"keep the input dtype: expected float64, got {h.dtype}")
    expect(
        not _close(h.item(), 2.0),
        f"got {h.item():.6f} = log2(4): that is the entropy in bits; the question asks for nats "
        "(natural logarithm, torch.log), i.e. log 4 = 1.386294",
    )
    expect(_close(h.item(), math.log(4)), f"expected log 4 = {math.log(4):.6f} nats, got {h.item():.6f}")
    rows = [[0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]]
    hb = tensor(entropy(torch.tensor(rows, dtype=torch.float64)), "entropy(batch)")
    expect(
        hb.shape == (3,),
        f"for a (3, 4) batch expected shape (3,), one entropy per row; got {tuple(hb.shape)}",
    )
    want = [1.3862943611198906, 0.9404479886553263, 1.2798542258336674]  # log 4, then two by hand
    expect(
        all(_close(a, b) for a, b in zip(hb.tolist(), want)),
        f"expected {[round(w, 4) for w in want]}, got {[round(v, 4) for v in hb.tolist()]}",
    )


@visible("ch01.q1.zeros", "Q1 zero probabilities contribute 0 (0 log 0 = 0): H([0.5, 0.5, 0]) = log 2")
def _q1_zeros(ns):
    entropy = need(ns, "entropy")
    h = tensor(entropy(torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)), "entropy(p)").item()
    expect(
        not math.isnan(h),
        "got nan: 0 * log 0 is nan in floating point; treat terms with p = 0 as 0 "
        "(e.g. torch.where or torch.xlogy)",
    )
    expect(_close(h, math.log(2)), f"expected log 2 = {math.log(2):.6f}, got {h:.6f}")
    h1 = entropy(torch.tensor([1.0, 0.0], dtype=torch.float64)).item()
    expect(_close(h1, 0.0), f"a certain outcome has entropy 0, got {h1}")


# ---------------------------------------------------------------- Q2 KL divergence
@visible("ch01.q2.basic", "Q2 KL(p||p) = 0 and KL([0.5, 0.5] || [0.25, 0.75]) = 0.5 log 2 + 0.5 log(2/3)")
def _q2_basic(ns):
    kl = need(ns, "kl_divergence")
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    q = torch.tensor([0.25, 0.75], dtype=torch.float64)
    v0 = tensor(kl(p, p), "kl_divergence(p, p)")
    expect(v0.shape == (), f"for (2,) inputs expected a scalar tensor (shape ()), got {tuple(v0.shape)}")
    expect(_close(v0.item(), 0.0), f"KL(p||p) should be 0, got {v0.item()}")
    want = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    got = kl(p, q).item()
    expect(
        _close(got, want),
        f"expected sum_k p_k log(p_k / q_k) = {want:.6f}, got {got:.6f} "
        f"(did you compute KL(q||p) instead? that is {0.25 * math.log(0.5) + 0.75 * math.log(1.5):.6f})",
    )


@visible("ch01.q2.support", "Q2 p_k = 0 terms contribute 0; p_k > 0 where q_k = 0 gives +inf")
def _q2_support(ns):
    kl = need(ns, "kl_divergence")
    p = torch.tensor([1.0, 0.0], dtype=torch.float64)
    q = torch.tensor([0.5, 0.5], dtype=torch.float64)
    got = kl(p, q).item()
    expect(not math.isnan(got), "got nan: a term with p_k = 0 must contribute 0, even where log(p_k) = -inf")
    expect(
        _close(got, math.log(2)), f"KL([1, 0] || [0.5, 0.5]) should be log 2 = {math.log(2):.6f}, got {got}"
    )
    inf = kl(q, p).item()
    expect(
        inf == math.inf, f"KL([0.5, 0.5] || [1, 0]) should be +inf (p puts mass where q has none), got {inf}"
    )


# ---------------------------------------------------------------- Q3 Gaussian log-density
@visible("ch01.q3.standard", "Q3 standard normal in 2-d at the origin: log N(0; 0, I) = -log(2 pi)")
def _q3_standard(ns):
    f = need(ns, "mvn_log_prob")
    x = torch.zeros(1, 2, dtype=torch.float64)
    out = tensor(
        f(x, torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)), "mvn_log_prob"
    )
    expect(out.shape == (1,), f"for x of shape (1, 2) expected shape (1,), got {tuple(out.shape)}")
    expect(
        _close(out.item(), -math.log(2 * math.pi)),
        f"expected -log(2 pi) = {-math.log(2 * math.pi):.6f}, got {out.item():.6f}",
    )
    x1 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    v1 = f(x1, torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)).item()
    want = -math.log(2 * math.pi) - 0.5
    expect(
        _close(v1, want),
        f"at x = (1, 0) expected -log(2 pi) - 1/2 = {want:.6f}, got {v1:.6f} "
        "(the exponent is -1/2 (x - mu)^T Sigma^-1 (x - mu))",
    )


@visible("ch01.q3.torch", "Q3 matches torch.distributions.MultivariateNormal on a batch of 5 points in 3-d")
def _q3_torch(ns):
    f = need(ns, "mvn_log_prob")
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.5 * torch.eye(3, dtype=torch.float64)
    mean = torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    # torch.distributions.MultivariateNormal(mean, cov).log_prob(x), computed once
    want = torch.tensor(
        [-5.447065266796003, -4.115683787181138, -4.179882040384159, -5.539529596003176, -5.015399824564325],
        dtype=torch.float64,
    )
    got = tensor(f(x, mean, cov), "mvn_log_prob(x, mean, cov)")
    expect(got.shape == (5,), f"expected shape (5,), one log-density per row of x, got {tuple(got.shape)}")
    err = (got - want).abs().max().item()
    expect(
        err < 1e-8,
        f"largest difference to torch.distributions is {err:.3g}, expected < 1e-8; "
        f"expected {[round(v, 4) for v in want.tolist()]}, got {[round(v, 4) for v in got.tolist()]}",
    )


@visible("ch01.q3.scale", "Q3 a 300-d Gaussian with covariance 0.01 I: det underflows, the log-det must not")
def _q3_scale(ns):
    f = need(ns, "mvn_log_prob")
    d = 300
    cov = 0.01 * torch.eye(d, dtype=torch.float64)
    out = tensor(f(torch.zeros(1, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), cov), "mvn_log_prob")
    expect(out.shape == (1,), f"for x of shape (1, {d}) expected shape (1,), got {tuple(out.shape)}")
    want = -0.5 * d * math.log(2 * math.pi * 0.01)
    v = out.item()
    expect(
        math.isfinite(v),
        f"got {v}: det(0.01 I) = 1e-600 underflows to 0 in float64, so log det = -inf. "
        "Use log det Sigma = 2 sum_i log L_ii from the Cholesky factor L",
    )
    expect(_close(v, want), f"expected -d/2 log(2 pi 0.01) = {want:.4f}, got {v:.4f}")


# ---------------------------------------------------------------- Q4 Monte Carlo
@visible("ch01.q4.contract", "Q4 returns (estimate, standard error) as scalar tensors from torch.randn(n, d)")
def _q4_contract(ns):
    f = need(ns, "mc_estimate")
    est, se = _pair_of_scalars(f(lambda z: z[:, 0], 2, 10, torch.Generator().manual_seed(0)))
    # the first column of torch.randn(10, 2) from seed 0: its mean, and its sample std over sqrt(10)
    want_est, want_se = -0.46034344257829307, 0.285435669260881
    expect(
        _close(est, want_est),
        "draw exactly torch.randn(n, d, generator=generator, "
        f"dtype=torch.float64) once: expected estimate {want_est:.6f}, got {est:.6f}",
    )
    expect(
        _close(se, want_se),
        f"expected stderr = sample std (with n - 1) / sqrt(n) = {want_se:.6f}, got {se:.6f}",
    )


@visible("ch01.q4.stderr", "Q4 E|Z|^2 = 3 for Z ~ N(0, I_3): the estimate is within 4 standard errors")
def _q4_stderr(ns):
    f = need(ns, "mc_estimate")
    est, se = _pair_of_scalars(f(lambda z: z.pow(2).sum(-1), 3, 4000, torch.Generator().manual_seed(1)))
    expect(se > 0, f"the standard error should be positive, got {se}")
    expect(abs(est - 3) < 4 * se, f"expected 3 +- 4 x {se:.4f}, got {est:.4f}")
    expect(
        abs(se - math.sqrt(6 / 4000)) < 0.1 * math.sqrt(6 / 4000),
        f"Var|Z|^2 = 6, so expected stderr close to sqrt(6 / 4000) = {math.sqrt(6 / 4000):.4f}, got {se:.4f}",
    )


# ---------------------------------------------------------------- Q5 mutual information
def _mi_scalar(ns, table, what):
    mi = need(ns, "mutual_information")
    out = tensor(mi(torch.tensor(table, dtype=torch.float64)), what)
    expect(out.shape == (), f"{what} should be a scalar tensor (shape ()), got shape {tuple(out.shape)}")
    expect(out.dtype == torch.float64, f"keep the input dtype: expected float64, got {out.dtype}")
    v = out.item()
    expect(not math.isnan(v), f"{what} is nan: cells with p(x, y) = 0 must contribute 0 (torch.xlogy or torch.where)")
    return v


@visible("ch01.q5.basic", "Q5 X = Y, a fair coin: I(X; Y) = H(X) = log 2 (and the zero cells contribute 0)")
def _q5_basic(ns):
    v = _mi_scalar(ns, [[0.5, 0.0], [0.0, 0.5]], "mutual_information(joint)")
    expect(
        not _close(v, 1.0),
        "got 1.0 = log2(2): that is bits; the question asks for nats (natural logarithm): log 2 = 0.693147",
    )
    expect(_close(v, math.log(2)), f"expected log 2 = {math.log(2):.6f} nats, got {v:.6f}")


@visible("ch01.q5.independent", "Q5 an independent table p(x) p(y) has I(X; Y) = 0; a 2x3 example is positive")
def _q5_independent(ns):
    px, py = [0.3, 0.7], [0.2, 0.5, 0.3]
    v = _mi_scalar(ns, [[a * b for b in py] for a in px], "mutual_information(p(x) p(y))")
    expect(abs(v) < 1e-10, f"for an independent table expected 0, got {v:.3g}")
    table = [[0.3, 0.1, 0.1], [0.0, 0.2, 0.3]]
    want = 0.27725887222397805  # = H(X) + H(Y) - H(X, Y)
    v2 = _mi_scalar(ns, table, "mutual_information(joint)")
    expect(
        _close(v2, want),
        f"expected {want:.6f} for the table {table}, got {v2:.6f} (the marginals are the row and column sums)",
    )
