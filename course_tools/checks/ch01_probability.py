"""Visible tests of chapter 1 (probability and information theory review).

Each test says what was expected. They are deliberately small: the hidden tests, run when grading, use other
inputs (random batches, zeros, several dimensions) and do not trust anything the notebook may have redefined.
"""

from __future__ import annotations

import math

import torch

from course_tools.check import expect, need, visible


def _tensor(x, what: str) -> torch.Tensor:
    expect(isinstance(x, torch.Tensor), f"{what} should be a torch.Tensor, got {type(x).__name__}")
    return x


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return math.isfinite(a) and abs(a - b) <= tol * (1 + abs(b))


# ---------------------------------------------------------------- Q1 entropy
@visible("ch01.q1.basic", "Q1 entropy of a uniform distribution over 4 outcomes is log 4, batched over rows")
def _q1_basic(ns):
    entropy = need(ns, "entropy")
    p = torch.full((4,), 0.25, dtype=torch.float64)
    h = _tensor(entropy(p), "entropy(p)")
    expect(
        h.shape == (),
        f"entropy of a (4,) tensor should have shape () (a scalar tensor), got {tuple(h.shape)}",
    )
    expect(h.dtype == torch.float64, f"keep the input dtype: expected float64, got {h.dtype}")
    expect(_close(h.item(), math.log(4)), f"expected log 4 = {math.log(4):.6f} nats, got {h.item():.6f}")
    rows = [[0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]]
    hb = _tensor(entropy(torch.tensor(rows, dtype=torch.float64)), "entropy(batch)")
    expect(
        hb.shape == (3,),
        f"for a (3, 4) batch expected shape (3,), one entropy per row; got {tuple(hb.shape)}",
    )
    want = [-sum(v * math.log(v) for v in r) for r in rows]
    expect(
        all(_close(a, b) for a, b in zip(hb.tolist(), want)),
        f"expected {[round(w, 4) for w in want]}, got {[round(v, 4) for v in hb.tolist()]}",
    )


@visible("ch01.q1.zeros", "Q1 zero probabilities contribute 0 (0 log 0 = 0): H([0.5, 0.5, 0]) = log 2")
def _q1_zeros(ns):
    entropy = need(ns, "entropy")
    h = _tensor(entropy(torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)), "entropy(p)").item()
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
    v0 = _tensor(kl(p, p), "kl_divergence(p, p)")
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
    out = _tensor(
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
    want = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)
    got = _tensor(f(x, mean, cov), "mvn_log_prob(x, mean, cov)")
    expect(got.shape == (5,), f"expected shape (5,), one log-density per row of x, got {tuple(got.shape)}")
    err = (got - want).abs().max().item()
    expect(
        err < 1e-8,
        f"largest difference to torch.distributions is {err:.3g}, expected < 1e-8; "
        f"expected {[round(v, 4) for v in want.tolist()]}, got {[round(v, 4) for v in got.tolist()]}",
    )


# ---------------------------------------------------------------- Q4 Monte Carlo
@visible("ch01.q4.contract", "Q4 returns (estimate, standard error) as scalar tensors from torch.randn(n, d)")
def _q4_contract(ns):
    f = need(ns, "mc_estimate")
    out = f(lambda z: z[:, 0], 2, 10, torch.Generator().manual_seed(0))
    expect(
        isinstance(out, tuple) and len(out) == 2,
        f"expected a tuple (estimate, stderr), got {type(out).__name__}",
    )
    est, se = (_tensor(o, "each returned value") for o in out)
    expect(
        est.shape == () and se.shape == (),
        f"expected two scalar tensors, got shapes {tuple(est.shape)}, {tuple(se.shape)}",
    )
    z = torch.randn(10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = z[:, 0]
    expect(
        _close(est.item(), v.mean().item()),
        "draw exactly torch.randn(n, d, generator=generator, "
        f"dtype=torch.float64) once: expected estimate {v.mean().item():.6f}, got {est.item():.6f}",
    )
    want_se = v.std().item() / math.sqrt(10)
    expect(
        _close(se.item(), want_se),
        f"expected stderr = sample std (with n - 1) / sqrt(n) = {want_se:.6f}, got {se.item():.6f}",
    )


@visible("ch01.q4.stderr", "Q4 E|Z|^2 = 3 for Z ~ N(0, I_3): the estimate is within 4 standard errors")
def _q4_stderr(ns):
    f = need(ns, "mc_estimate")
    est, se = f(lambda z: (z**2).sum(-1), 3, 4000, torch.Generator().manual_seed(1))
    est, se = est.item(), se.item()
    expect(se > 0, f"the standard error should be positive, got {se}")
    expect(abs(est - 3) < 4 * se, f"expected 3 +- 4 x {se:.4f}, got {est:.4f}")
    expect(
        abs(se - math.sqrt(6 / 4000)) < 0.1 * math.sqrt(6 / 4000),
        f"Var|Z|^2 = 6, so expected stderr close to sqrt(6 / 4000) = {math.sqrt(6 / 4000):.4f}, got {se:.4f}",
    )
