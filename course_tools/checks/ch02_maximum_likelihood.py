"""Visible tests of chapter 2 (maximum likelihood and the KL divergence).

Each test says what was expected. They are deliberately small: the hidden tests, run when grading, use other
inputs (random batches, zeros, other dimensions) and are decided outside the student's kernel.
"""

from __future__ import annotations

import functools
import math

import torch

from course_tools.check import expect, need, visible
from course_tools.checks._common import F64, close, tensor

_close = functools.partial(close, tol=1e-6)


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


# ---------------------------------------------------------------- Q1 categorical MLE
@visible("ch02.q1.basic", "Q1 counts [3, 0, 1] give the frequencies [0.75, 0, 0.25]; rows of a batch separately")
def _q1_basic(ns):
    f = need(ns, "categorical_mle")
    got = tensor(f(torch.tensor([3.0, 0.0, 1.0], dtype=F64)), "categorical_mle(counts)")
    expect(got.shape == (3,), f"for counts of shape (3,) expected shape (3,), got {tuple(got.shape)}")
    expect(got.dtype == F64, f"keep the input dtype: expected float64, got {got.dtype}")
    want = [0.75, 0.0, 0.25]
    expect(
        all(_close(a, b) for a, b in zip(got.tolist(), want)),
        f"expected N_k / N = {want}, got {_fmt(got.tolist())}",
    )
    expect(got[1].item() == 0.0, "an unseen category has MLE exactly 0 when alpha = 0")
    batch = torch.tensor([[1.0, 1.0], [0.0, 4.0]], dtype=F64)
    gb = tensor(f(batch), "categorical_mle(batch)")
    expect(gb.shape == (2, 2), f"for counts of shape (2, 2) expected shape (2, 2), got {tuple(gb.shape)}")
    expect(
        all(_close(a, b) for a, b in zip(gb.flatten().tolist(), [0.5, 0.5, 0.0, 1.0])),
        f"each row is normalised by its own total: expected [[0.5, 0.5], [0, 1]], got {gb.tolist()} "
        "(did you divide by the total of the whole tensor? sum over the last axis with keepdim=True)",
    )


@visible("ch02.q1.smoothing", "Q1 with alpha = 1, counts [3, 0, 1] give [4, 1, 2] / 7")
def _q1_smoothing(ns):
    f = need(ns, "categorical_mle")
    got = tensor(f(torch.tensor([3.0, 0.0, 1.0], dtype=F64), alpha=1.0), "categorical_mle(counts, alpha=1.0)")
    want = [4 / 7, 1 / 7, 2 / 7]
    expect(
        all(_close(a, b) for a, b in zip(got.tolist(), want)),
        f"expected (N_k + alpha) / (N + K alpha) = {_fmt(want)}, got {_fmt(got.tolist())} "
        "(the denominator gets K alpha, one alpha per category, so that the result sums to 1)",
    )


# ---------------------------------------------------------------- Q2 Gaussian MLE
@visible("ch02.q2.basic", "Q2 the corners of a square: mean (1, 1) and covariance I (divide by N)")
def _q2_basic(ns):
    f = need(ns, "gaussian_mle")
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=F64)
    out = f(x)
    expect(isinstance(out, tuple) and len(out) == 2, f"expected a tuple (mean, cov), got {type(out).__name__}")
    mean, cov = tensor(out[0], "mean"), tensor(out[1], "cov")
    expect(mean.shape == (2,), f"for x of shape (4, 2) the mean should have shape (2,), got {tuple(mean.shape)}")
    expect(cov.shape == (2, 2), f"for x of shape (4, 2) cov should have shape (2, 2), got {tuple(cov.shape)}")
    expect(all(_close(v, 1.0) for v in mean.tolist()), f"expected mean (1, 1), got {_fmt(mean.tolist())}")
    got = cov.flatten().tolist()
    hint = " (that is the N - 1 estimate: the MLE divides by N)" if _close(got[0], 4 / 3) else ""
    expect(
        all(_close(a, b) for a, b in zip(got, [1.0, 0.0, 0.0, 1.0])),
        f"expected covariance [[1, 0], [0, 1]], got {cov.tolist()}{hint}",
    )


@visible("ch02.q2.batch", "Q2 a batch (2, 3, 5, 2): one mean (2, 3, 2) and covariance (2, 3, 2, 2) per data set")
def _q2_batch(ns):
    f = need(ns, "gaussian_mle")
    x = torch.randn(2, 3, 5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x[1, 2] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [1.0, 0.0]], dtype=F64)
    mean, cov = f(x)
    mean, cov = tensor(mean, "mean"), tensor(cov, "cov")
    expect(mean.shape == (2, 3, 2), f"expected mean of shape (2, 3, 2), got {tuple(mean.shape)}")
    expect(cov.shape == (2, 3, 2, 2), f"expected cov of shape (2, 3, 2, 2), got {tuple(cov.shape)}")
    # data set [1, 2]: mean (1, 1); deviations (-1, -1), (0, -1), (-1, 1), (2, 2), (0, -1)
    want = torch.tensor([[1.2, 0.8], [0.8, 1.6]], dtype=F64)
    expect(
        _close(cov[1, 2], want, tol=1e-10) and _close(mean[1, 2], [1.0, 1.0], tol=1e-10),
        f"the estimate of data set [1, 2] is wrong: expected cov {want.tolist()}, got {cov[1, 2].tolist()} "
        "(average over the points axis -2, and transpose only the last two axes: xc.transpose(-1, -2) @ xc)",
    )


# ---------------------------------------------------------------- Q3 average NLL
@visible("ch02.q3.nats", "Q3 N(0, 1) at the points 0 and 2: NLL = log(2 pi)/2 + 1 nats")
def _q3_nats(ns):
    f = need(ns, "average_nll")
    x = torch.tensor([[0.0], [2.0]], dtype=F64)
    got = tensor(f(x, torch.zeros(1, dtype=F64), torch.eye(1, dtype=F64)), "average_nll(x, mean, cov)")
    expect(got.shape == (), f"expected a scalar tensor (shape ()), got shape {tuple(got.shape)}")
    want = 0.5 * math.log(2 * math.pi) + 1.0
    expect(
        _close(got.item(), want),
        f"expected -(1/2)[log N(0; 0, 1) + log N(2; 0, 1)] = {want:.6f}, got {got.item():.6f} "
        "(the NLL is the negative of the mean log-density, positive here)",
    )


@visible("ch02.q3.bits", "Q3 per dimension and in bits: a 3-d standard normal at the origin gives log2(2 pi)/2")
def _q3_bits(ns):
    f = need(ns, "average_nll")
    x = torch.zeros(4, 3, dtype=F64)
    mean, cov = torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)
    nats = f(x, mean, cov).item()
    per_dim_bits = f(x, mean, cov, per_dim=True, bits=True).item()
    want, want_bits = 0.5 * math.log(2 * math.pi), 0.5 * math.log2(2 * math.pi)
    expect(_close(nats, 3 * want), f"expected {3 * want:.6f} nats, got {nats:.6f}")
    expect(
        _close(per_dim_bits, want_bits),
        f"expected {want_bits:.6f} bits per dimension (nats / d / ln 2), got {per_dim_bits:.6f}",
    )


# ---------------------------------------------------------------- Q4 forward and reverse KL by Monte Carlo
def _kl_1d(a_logp, b_logp, t):
    """(KL(a || b), standard deviation of log a - log b under a) by the trapezoid rule on the grid t."""
    la, lb = a_logp(t), b_logp(t)
    w = la.exp()
    kl = torch.trapezoid(w * (la - lb), t).item()
    second = torch.trapezoid(w * (la - lb) ** 2, t).item()
    return kl, math.sqrt(max(second - kl**2, 0.0))


def _q4_case(ns, reverse):
    f = need(ns, "mixture_kl_mc")
    lp = need(ns, "mixture_log_prob")
    w = torch.tensor([0.5, 0.5], dtype=F64)
    mu = torch.tensor([-2.0, 2.0], dtype=F64)
    sd = torch.tensor([0.5, 0.5], dtype=F64)
    m, s, n = 2.0, 0.5, 20_000
    got = tensor(f(m, s, w, mu, sd, n, torch.Generator().manual_seed(0), reverse=reverse), "mixture_kl_mc(...)")
    expect(got.shape == (), f"expected a scalar tensor (shape ()), got shape {tuple(got.shape)}")
    t = torch.linspace(-12, 12, 48_001, dtype=F64)

    log_q = torch.distributions.Normal(torch.tensor(m, dtype=F64), torch.tensor(s, dtype=F64)).log_prob

    def log_p(x):
        return lp(x, w, mu, sd)

    fwd, fsd = _kl_1d(log_p, log_q, t)
    rev, rsd = _kl_1d(log_q, log_p, t)
    want, sd_ = (rev, rsd) if reverse else (fwd, fsd)
    other = fwd if reverse else rev
    tol = 5 * sd_ / math.sqrt(n) + 1e-3
    name = "KL(q || p), samples of q" if reverse else "KL(p || q), samples of p"
    hint = " (that is the other direction)" if abs(got.item() - other) < 5 * max(fsd, rsd) / math.sqrt(n) + 1e-3 else ""
    expect(
        abs(got.item() - want) <= tol,
        f"p = 0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2), q = N(2, 0.5^2): expected {name} = {want:.4f} "
        f"(within {tol:.4f}), got {got.item():.4f}{hint}",
    )


@visible("ch02.q4.forward", "Q4 forward KL(p || q) of a Gaussian on one mode of a two-mode mixture (about 16 nats)")
def _q4_forward(ns):
    _q4_case(ns, reverse=False)


@visible("ch02.q4.reverse", "Q4 reverse KL(q || p) of the same pair (about log 2)")
def _q4_reverse(ns):
    _q4_case(ns, reverse=True)


# ---------------------------------------------------------------- Q5 bandwidth by validation NLL
@visible("ch02.q5.nll", "Q5 validation NLLs of a 1-d KDE for h in [0.1, 1.0]; one training point gives a Gaussian")
def _q5_nll(ns):
    f = need(ns, "select_bandwidth")
    train = torch.zeros(1, 1, dtype=F64)
    val = torch.tensor([[0.0], [1.0]], dtype=F64)
    out = f(train, val, [1.0])
    expect(isinstance(out, tuple) and len(out) == 2, f"expected a tuple (val_nll, best), got {type(out).__name__}")
    nll = tensor(out[0], "val_nll")
    expect(nll.shape == (1,), f"for one bandwidth expected val_nll of shape (1,), got {tuple(nll.shape)}")
    want = 0.5 * math.log(2 * math.pi) + 0.25
    expect(
        _close(nll[0].item(), want),
        f"with one training point at 0 and h = 1 the KDE is N(0, 1): expected NLL {want:.6f} on the points 0 and 1, "
        f"got {nll[0].item():.6f}",
    )
    tr = torch.tensor([[-1.0], [0.0], [2.0]], dtype=F64)
    va = torch.tensor([[0.5], [1.0], [-2.0]], dtype=F64)
    got = tensor(f(tr, va, [0.1, 1.0])[0], "val_nll").tolist()
    # -log of the mixture 1/3 sum_n N(x; train_n, h^2) (torch.distributions.MixtureSameFamily), averaged
    want = [36.98391666869208, 1.8751420678012118]
    expect(
        _close(got, want, tol=1e-8),
        f"training points -1, 0, 2 and validation points 0.5, 1, -2, h = 0.1 and 1: expected {_fmt(want)}, "
        f"got {_fmt(got)} "
        "(average over validation points of -log p_h; p_h averages N kernels, each with its 1/(2 pi h^2)^(d/2))",
    )


@visible("ch02.q5.choice", "Q5 the chosen bandwidth minimises the validation NLL (not the training NLL)")
def _q5_choice(ns):
    f = need(ns, "select_bandwidth")
    g = torch.Generator().manual_seed(6)
    tr, va = torch.randn(40, 2, generator=g, dtype=F64), torch.randn(40, 2, generator=g, dtype=F64)
    hs = [0.01, 0.1, 0.5, 2.0]
    out = f(tr, va, hs)
    best = out[1]
    expect(isinstance(best, float), f"best should be a Python float (one of the bandwidths), got {type(best).__name__}")
    want = 0.5  # validation NLLs 1145.15, 12.30, 3.14, 3.65 (torch.distributions.MixtureSameFamily)
    expect(
        best == want,
        f"expected h = {want} (smallest validation NLL), got {best}"
        + (" (the smallest bandwidth always wins on training data: score the validation set)" if best == 0.01 else ""),
    )
