"""Visible tests of chapter 1 (probability and information theory review).

Each test says what was expected. They are deliberately small: the hidden tests, run when grading, use other
inputs (random batches, zeros, several dimensions) and do not trust anything the notebook may have redefined.
Expected values are literals worked out by hand or with torch.distributions, never with an answer's code.
"""

from __future__ import annotations

import functools
import math

import torch

from course_tools.check import expect, need, visible
from course_tools.checks._common import close, tensor

_close = functools.partial(close, tol=1e-6)


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


# ---------------------------------------------------------------- Q2 KL from logits (diagnose)
def _kl_logits(ns, a, b, what):
    f = need(ns, "kl_from_logits")
    out = tensor(f(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)), what)
    expect(out.dtype == torch.float64, f"keep the input dtype: expected float64, got {out.dtype}")
    return out


@visible("ch01.q2.basic", "Q2 KL(p||p) = 0 and the logits [0, 0], [0, log 3] give KL([1/2, 1/2] || [1/4, 3/4])")
def _q2_basic(ns):
    v0 = _kl_logits(ns, [0.3, -1.2, 2.0], [0.3, -1.2, 2.0], "kl_from_logits(a, a)")
    expect(v0.shape == (), f"for (3,) logits expected a scalar tensor (shape ()), got {tuple(v0.shape)}")
    expect(_close(v0.item(), 0.0), f"KL(p || p) should be 0, got {v0.item()}")
    want = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    got = _kl_logits(ns, [0.0, 0.0], [0.0, math.log(3)], "kl_from_logits(a, b)").item()
    expect(
        _close(got, want),
        f"softmax([0, log 3]) = [1/4, 3/4]: expected sum_k p_k log(p_k / q_k) = {want:.6f}, got {got:.6f} "
        f"(KL(q || p) would be {0.25 * math.log(0.5) + 0.75 * math.log(1.5):.6f})",
    )
    shifted = _kl_logits(ns, [100.0, 100.0], [-50.0, -50.0 + math.log(3)], "kl_from_logits(a + 100, b - 50)").item()
    expect(_close(shifted, want), f"adding a constant to all logits does not change softmax: expected {want:.6f}, "
           f"got {shifted:.6f}")


@visible("ch01.q2.extreme", "Q2 logits 1000 apart: KL = log 2 for a = [0, -1000], b = [0, 0]; 499.3069 reversed")
def _q2_extreme(ns):
    got = _kl_logits(ns, [0.0, -1000.0], [0.0, 0.0], "kl_from_logits([0, -1000], [0, 0])").item()
    expect(not math.isnan(got),
           "got nan: softmax([0, -1000]) = [1, 0] in float64, and 0 * log(0 / q) is 0 * -inf = nan")
    expect(_close(got, math.log(2)),
           f"p = [1, e^-1000], q = [1/2, 1/2]: expected log 2 = {math.log(2):.6f}, got {got}")
    got = _kl_logits(ns, [0.0, 0.0], [0.0, -1000.0], "kl_from_logits([0, 0], [0, -1000])").item()
    # p = [1/2, 1/2], log q = [0, -1000] up to e^-1000: KL = 1/2 (log 1/2 - 0) + 1/2 (log 1/2 + 1000)
    want = 500.0 - math.log(2)
    expect(math.isfinite(got), f"got {got}: q_2 = e^-1000 is tiny but not 0, so the divergence is finite "
           f"(expected {want:.4f}); the log of q_2 is simply -1000")
    expect(_close(got, want), f"expected 1000 / 2 - log 2 = {want:.6f}, got {got:.6f}")


# ---------------------------------------------------------------- Q3 Gaussian log-density from the precision
@visible("ch01.q3.standard", "Q3 standard normal in 2-d (P = I) at the origin: -log(2 pi); P = 4 I at (1, 0)")
def _q3_standard(ns):
    f = need(ns, "mvn_log_prob_precision")
    zero2, eye2 = torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    out = tensor(f(torch.zeros(1, 2, dtype=torch.float64), zero2, eye2), "mvn_log_prob_precision")
    expect(out.shape == (1,), f"for x of shape (1, 2) expected shape (1,), got {tuple(out.shape)}")
    expect(
        _close(out.item(), -math.log(2 * math.pi)),
        f"expected -log(2 pi) = {-math.log(2 * math.pi):.6f}, got {out.item():.6f}",
    )
    x1 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    v1 = f(x1, zero2, 4.0 * eye2).item()
    # Sigma = I / 4: log det Sigma = -2 log 4, quadratic form 4
    want = -math.log(2 * math.pi) + math.log(4) - 2.0
    hint = ""
    if _close(v1, -math.log(2 * math.pi) - math.log(4) - 0.125):
        hint = " (that is the density with covariance 4 I: prec is the inverse covariance)"
    expect(
        _close(v1, want),
        f"P = 4 I (Sigma = I / 4) at x = (1, 0): expected -log(2 pi) + log 4 - 2 = {want:.6f}, got {v1:.6f}{hint}",
    )


@visible("ch01.q3.torch", "Q3 matches MultivariateNormal(mean, precision_matrix=P) on 5 points in 3-d")
def _q3_torch(ns):
    f = need(ns, "mvn_log_prob_precision")
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    prec = a @ a.T + 0.5 * torch.eye(3, dtype=torch.float64)
    mean = torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    # torch.distributions.MultivariateNormal(mean, precision_matrix=prec).log_prob(x), computed once
    want = torch.tensor(
        [-5.752505189084967, -3.1845579017681316, -11.909330620454213, -6.766948814666062, -16.38089696980697],
        dtype=torch.float64,
    )
    got = tensor(f(x, mean, prec), "mvn_log_prob_precision(x, mean, prec)")
    expect(got.shape == (5,), f"expected shape (5,), one log-density per row of x, got {tuple(got.shape)}")
    err = (got - want).abs().max().item()
    expect(
        err < 1e-8,
        f"largest difference to torch.distributions is {err:.3g}, expected < 1e-8; "
        f"expected {[round(v, 4) for v in want.tolist()]}, got {[round(v, 4) for v in got.tolist()]}",
    )


@visible("ch01.q3.scale", "Q3 a 300-d Gaussian with precision 100 I: det(P) overflows, the log-det must not")
def _q3_scale(ns):
    f = need(ns, "mvn_log_prob_precision")
    d = 300
    prec = 100.0 * torch.eye(d, dtype=torch.float64)
    zeros = torch.zeros(d, dtype=torch.float64)
    out = tensor(f(torch.zeros(1, d, dtype=torch.float64), zeros, prec), "mvn_log_prob_precision")
    expect(out.shape == (1,), f"for x of shape (1, {d}) expected shape (1,), got {tuple(out.shape)}")
    want = -0.5 * d * math.log(2 * math.pi * 0.01)
    v = out.item()
    expect(
        math.isfinite(v),
        f"got {v}: det(100 I) = 1e600 overflows to inf in float64. "
        "Take the log-determinant from the diagonal of the Cholesky factor",
    )
    expect(_close(v, want), f"expected -d/2 log(2 pi / 100) = {want:.4f}, got {v:.4f}")


# ---------------------------------------------------------------- Q4 KL between Laplace distributions
def _laplace_kl(ns, m1, b1, m2, b2):
    f = need(ns, "laplace_kl")
    args = [torch.tensor(v, dtype=torch.float64) for v in (m1, b1, m2, b2)]
    out = tensor(f(*args), "laplace_kl(m1, b1, m2, b2)")
    expect(tuple(out.shape) == tuple(args[0].shape),
           f"expected the shape of the inputs {tuple(args[0].shape)}, got {tuple(out.shape)}")
    expect(out.dtype == torch.float64, f"keep the input dtype: expected float64, got {out.dtype}")
    return out


@visible("ch01.q4.equal_scales", "Q4 equal scales: KL = 0 for equal laws, e^-1 for Laplace(0, 1) || Laplace(1, 1)")
def _q4_equal(ns):
    got = _laplace_kl(ns, [0.5, 0.0], [2.0, 1.0], [0.5, 1.0], [2.0, 1.0]).tolist()
    expect(_close(got[0], 0.0), f"KL of a distribution with itself should be 0, got {got[0]:.6f}")
    want = math.exp(-1)  # E|X - 1| = 1 + e^-1 under Laplace(0, 1), minus E|X| = 1
    expect(_close(got[1], want), f"KL(Laplace(0, 1) || Laplace(1, 1)) should be e^-1 = {want:.6f}, got {got[1]:.6f} "
           "(E|X - m2| under Laplace(m1, b1) is not simply |m1 - m2| + b1)")


@visible("ch01.q4.general", "Q4 different scales: log 2 - 1/2 for Laplace(0, 1) || Laplace(0, 2), and three more")
def _q4_general(ns):
    got = _laplace_kl(ns, [[0.0, 0.0], [1.0, -1.0]], [[1.0, 2.0], [0.5, 2.0]],
                      [[0.0, 0.0], [-1.0, 1.0]], [[2.0, 1.0], [2.0, 0.5]]).reshape(-1).tolist()
    # torch.distributions.kl_divergence of two Laplace distributions; the first two by hand
    want = [0.1931471805599454, 0.3068528194400546, 1.3908732708420741, 3.0852234035658785]
    expect(
        all(_close(a, b) for a, b in zip(got, want)),
        f"expected {[round(v, 6) for v in want]}, got {[round(v, 6) for v in got]} "
        "(KL(Laplace(0, 1) || Laplace(0, 2)) = log 2 + 1/2 - 1; the divergence is not symmetric)",
    )


# ---------------------------------------------------------------- Q5 inverse-CDF sampler
def _laplace_cdf(t: float, m: float, b: float) -> float:
    return 0.5 * math.exp((t - m) / b) if t < m else 1 - 0.5 * math.exp(-(t - m) / b)


@visible("ch01.q5.cdf", "Q5 20,000 samples of Laplace(1, 2): the CDF at 5 points and mean |x - m| (6 std. errors)")
def _q5_cdf(ns):
    f = need(ns, "sample_laplace")
    m, b, n = 1.0, 2.0, 20_000
    x = tensor(f(m, b, n, torch.Generator().manual_seed(0)), "sample_laplace(1.0, 2.0, 20000, generator)")
    expect(x.shape == (n,), f"expected shape ({n},), got {tuple(x.shape)}")
    expect(x.dtype == torch.float64, f"expected float64 samples, got {x.dtype}")
    expect(bool(torch.isfinite(x).all()), "some samples are nan or inf")
    for t in (-3.0, 0.0, 1.0, 2.0, 5.0):
        F = _laplace_cdf(t, m, b)
        emp = (x <= t).double().mean().item()
        se = math.sqrt(F * (1 - F) / n)
        expect(abs(emp - F) <= 6 * se, f"a fraction {emp:.4f} of the samples is <= {t}, expected F({t}) = {F:.4f} "
               f"+- {6 * se:.4f} (did you invert both halves of the CDF?)")
    mad = (x - m).abs().mean().item()
    expect(abs(mad - b) <= 6 * b / math.sqrt(n), f"mean |x - m| should be b = {b} +- {6 * b / math.sqrt(n):.3f}, "
           f"got {mad:.4f}")


@visible("ch01.q5.generator", "Q5 two generators with the same seed give the same samples")
def _q5_generator(ns):
    f = need(ns, "sample_laplace")
    x1 = tensor(f(0.0, 1.0, 1000, torch.Generator().manual_seed(3)), "sample_laplace(0.0, 1.0, 1000, generator)")
    x2 = tensor(f(0.0, 1.0, 1000, torch.Generator().manual_seed(3)), "sample_laplace(0.0, 1.0, 1000, generator)")
    expect(x1.shape == (1000,), f"expected shape (1000,), got {tuple(x1.shape)}")
    expect(bool(torch.equal(x1, x2)), "the same seed gave different samples: draw the uniforms with "
           "torch.rand(n, generator=generator, dtype=torch.float64)")
