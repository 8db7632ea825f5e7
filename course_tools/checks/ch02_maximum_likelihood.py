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


# ---------------------------------------------------------------- Q1 Poisson rate with exposures
@visible("ch02.q1.basic", "Q1 counts [2, 0, 4] over exposures [1, 1, 2]: the rate is 6 clicks / 4 s = 1.5")
def _q1_basic(ns):
    f = need(ns, "poisson_rate_mle")
    got = tensor(f(torch.tensor([2.0, 0.0, 4.0], dtype=F64), torch.tensor([1.0, 1.0, 2.0], dtype=F64)),
                 "poisson_rate_mle(x, t)")
    expect(got.shape == (), f"for x of shape (3,) expected a scalar tensor (shape ()), got {tuple(got.shape)}")
    expect(got.dtype == F64, f"keep the input dtype: expected float64, got {got.dtype}")
    hint = ""
    if _close(got.item(), 4 / 3):
        hint = (" (4/3 is the average of the ratios x_n / t_n: a sensible estimate, but not the maximiser of "
                "the likelihood)")
    expect(_close(got.item(), 1.5), f"expected 1.5, got {got.item():.6f}{hint}")


@visible("ch02.q1.batch", "Q1 one rate per data set of a (2, 2) batch; no clicks at all gives rate 0")
def _q1_batch(ns):
    f = need(ns, "poisson_rate_mle")
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=F64)
    t = torch.tensor([[1.0, 3.0], [2.0, 2.0]], dtype=F64)
    got = tensor(f(x, t), "poisson_rate_mle(x, t)")
    expect(got.shape == (2,), f"for x of shape (2, 2) expected shape (2,), one rate per row, got {tuple(got.shape)}")
    expect(not bool(torch.isnan(got).any()), "got nan: a data set without clicks has rate 0")
    expect(_close(got, [0.5, 0.0]), f"expected [0.5, 0.0] (2 clicks in 4 s; 0 clicks), got {_fmt(got.tolist())}")


# ---------------------------------------------------------------- Q2 Laplace MLE
def _laplace_out(ns, x, what):
    f = need(ns, "laplace_mle")
    out = f(torch.tensor(x, dtype=F64))
    expect(isinstance(out, tuple) and len(out) == 2, f"expected a tuple (m, b), got {type(out).__name__}")
    m, b = tensor(out[0], f"m of {what}"), tensor(out[1], f"b of {what}")
    rows = len(x)
    expect(m.shape == (rows,) and b.shape == (rows,),
           f"for x of shape ({rows}, {len(x[0])}) expected m and b of shape ({rows},), got {tuple(m.shape)} and "
           f"{tuple(b.shape)}")
    return m.tolist(), b.tolist()


@visible("ch02.q2.odd", "Q2 the data [0, 1, 5] and [4, -2, 3]: locations 1 and 3, scales 5/3 and 2")
def _q2_odd(ns):
    m, b = _laplace_out(ns, [[0.0, 1.0, 5.0], [4.0, -2.0, 3.0]], "two data sets of 3 points")
    hint = " (that is the mean: it minimises squared, not absolute, deviations)" if _close(m[0], 2.0) else ""
    expect(_close(m, [1.0, 3.0]), f"expected locations [1, 3], got {_fmt(m)}{hint}")
    expect(_close(b, [5 / 3, 2.0]), f"expected scales [5/3, 2] (mean |x_n - m|), got {_fmt(b)}")


@visible("ch02.q2.even", "Q2 the data [0, 1, 3, 10]: any m in [1, 3] maximises the likelihood, and b = 3")
def _q2_even(ns):
    m, b = _laplace_out(ns, [[0.0, 1.0, 3.0, 10.0]], "one data set of 4 points")
    expect(1.0 - 1e-9 <= m[0] <= 3.0 + 1e-9, f"expected a location between the middle values 1 and 3, got {m[0]:.6f}")
    expect(_close(b[0], 3.0), f"expected scale (|0 - m| + |1 - m| + |3 - m| + |10 - m|) / 4 = 3, got {b[0]:.6f}")


# ---------------------------------------------------------------- Q3 seeded gradient fit
def _fit(ns, x, t, steps):
    f = need(ns, "fit_poisson_rate")
    out = f(torch.tensor(x, dtype=F64), torch.tensor(t, dtype=F64), steps, 0.05)
    expect(isinstance(out, tuple) and len(out) == 2, f"expected a tuple (rate, losses), got {type(out).__name__}")
    rate, losses = tensor(out[0], "rate"), tensor(out[1], "losses")
    expect(rate.shape == (), f"rate should be a scalar tensor (shape ()), got {tuple(rate.shape)}")
    expect(losses.shape == (steps,), f"losses should have shape ({steps},), one per step, got {tuple(losses.shape)}")
    return rate.item(), losses


@visible("ch02.q3.losses", "Q3 one reading of 3 clicks in 1 s: the first loss is 1 + log 3! = 2.791759 nats")
def _q3_losses(ns):
    rate, losses = _fit(ns, [3.0], [1.0], 5)
    want = 1.0 + math.log(6.0)  # -log Poisson(3; 1) = 1 + log 3!
    hint = " (without the log x! term it would be 1.0)" if _close(losses[0].item(), 1.0) else ""
    expect(_close(losses[0].item(), want), f"expected the NLL at rate 1 = {want:.6f}, got {losses[0].item():.6f}{hint}")
    expect(bool((losses[1:] < losses[:-1]).all()), f"the first 5 losses should fall, got {_fmt(losses.tolist())}")


@visible("ch02.q3.fit", "Q3 400 steps on that reading land on the MLE, rate 3, with final loss 3 - 3 log 3 + log 6")
def _q3_fit(ns):
    rate, losses = _fit(ns, [3.0], [1.0], 400)
    expect(abs(rate - 3.0) < 1e-3, f"expected a rate of 3 (the MLE 3 clicks / 1 s) to 3 decimals, got {rate:.6f}")
    want = 3.0 - 3.0 * math.log(3.0) + math.log(6.0)
    expect(abs(losses[-1].item() - want) < 1e-6, f"expected the final loss {want:.6f}, got {losses[-1].item():.6f}")


# ---------------------------------------------------------------- Q4 covariance by centring
def _mle_out(ns, x, what):
    f = need(ns, "gaussian_mle")
    out = f(x)
    expect(isinstance(out, tuple) and len(out) == 2, f"expected a tuple (mean, cov), got {type(out).__name__}")
    return tensor(out[0], f"the mean of {what}"), tensor(out[1], f"the covariance of {what}")


@visible("ch02.q4.basic", "Q4 the corners of a square: mean (1, 1) and covariance I; a (2, 3, 5, 2) batch")
def _q4_basic(ns):
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=F64)
    mean, cov = _mle_out(ns, x, "the square")
    expect(mean.shape == (2,) and cov.shape == (2, 2),
           f"for x of shape (4, 2) expected shapes (2,) and (2, 2), got {tuple(mean.shape)} and {tuple(cov.shape)}")
    expect(_close(mean, [1.0, 1.0]), f"expected mean (1, 1), got {_fmt(mean.tolist())}")
    hint = " (that divides by N - 1: the MLE divides by N)" if _close(cov[0, 0].item(), 4 / 3) else ""
    expect(_close(cov.flatten(), [1.0, 0.0, 0.0, 1.0]), f"expected covariance I, got {cov.tolist()}{hint}")
    xb = torch.randn(2, 3, 5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    xb[1, 2] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [1.0, 0.0]], dtype=F64)
    mean, cov = _mle_out(ns, xb, "a (2, 3, 5, 2) batch")
    expect(mean.shape == (2, 3, 2) and cov.shape == (2, 3, 2, 2),
           f"expected shapes (2, 3, 2) and (2, 3, 2, 2), got {tuple(mean.shape)} and {tuple(cov.shape)}")
    # data set [1, 2]: mean (1, 1); deviations (-1, -1), (0, -1), (-1, 1), (2, 2), (0, -1)
    expect(_close(cov[1, 2].flatten(), [1.2, 0.8, 0.8, 1.6]),
           f"data set [1, 2] of the batch: expected covariance [[1.2, 0.8], [0.8, 1.6]], got {cov[1, 2].tolist()}")


@visible("ch02.q4.offset", "Q4 the same square moved 1e8 and 1e9 away: the covariance is still I")
def _q4_offset(ns):
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=F64)
    for offset in (1e8, -1e9):
        mean, cov = _mle_out(ns, square + offset, f"the square moved by {offset:g}")
        expect(_close(mean, [offset + 1.0, offset + 1.0], tol=1e-12), f"expected mean {offset + 1:g} in each "
               f"coordinate, got {_fmt(mean.tolist())}")
        expect(_close(cov.flatten(), [1.0, 0.0, 0.0, 1.0], tol=1e-6),
               f"moved by {offset:g}: expected covariance I (a shift does not change the spread), got "
               f"{_fmt(cov.flatten().tolist())}: E[x x^T] and mean mean^T are about {offset ** 2:.0e} each, "
               "and float64 keeps only about 16 significant digits of each")


# ---------------------------------------------------------------- Q5 forward and reverse KL by Monte Carlo
def _kl_1d(a_logp, b_logp, t):
    """(KL(a || b), standard deviation of log a - log b under a) by the trapezoid rule on the grid t."""
    la, lb = a_logp(t), b_logp(t)
    w = la.exp()
    kl = torch.trapezoid(w * (la - lb), t).item()
    second = torch.trapezoid(w * (la - lb) ** 2, t).item()
    return kl, math.sqrt(max(second - kl**2, 0.0))


def _q5_case(ns, reverse):
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


@visible("ch02.q5.forward", "Q5 forward KL(p || q) of a Gaussian on one mode of a two-mode mixture (about 16 nats)")
def _q5_forward(ns):
    _q5_case(ns, reverse=False)


@visible("ch02.q5.reverse", "Q5 reverse KL(q || p) of the same pair (about log 2)")
def _q5_reverse(ns):
    _q5_case(ns, reverse=True)
