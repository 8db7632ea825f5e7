"""Unnormalised 2-D target densities and the reverse-KL loss of flows for variational inference.

Variational inference with a flow fits ``q(x)`` (a ``Flow``) to a target known only up to a constant,
``p(x) = exp(-U(x)) / Z``, by minimising the **reverse** KL divergence

    KL(q || p) = E_q[log q(x) - log p(x)] = E_q[log q(x) + U(x)] + log Z.                     (1)

``log Z`` does not depend on ``q``, so the loss is ``E_q[log q(x) + U(x)]`` (it equals ``KL - log Z`` >= -log Z).
It is estimated with samples of ``q`` drawn by the **reparameterisation trick**: ``z ~ p_Z`` (fixed base),
``x = f^{-1}(z)`` (in flowlib sampling runs the transform's ``inverse``), and
``log q(x) = log p_Z(z) - log|det df^{-1}/dz|`` from the same pass. Every sample is a differentiable function
of the flow's parameters, so the gradient of the Monte-Carlo average is an unbiased estimate of the gradient
of (1). For this, sampling must be cheap and exact: IAF layers (``flowlib.transforms.IAF``) and the paper's
planar flows (``InverseTransform(Planar(d))``) sample in one pass.

Reverse KL is **mode-seeking**: where ``p`` is small and ``q`` is not, ``log q - log p`` is large, so ``q`` is
pushed off regions the target does not cover, and a ``q`` too simple for a multimodal target settles on one
mode (the forward KL of maximum likelihood does the opposite: it covers every mode).

The potentials ``U1``-``U4`` are the four 2-D test energies of Rezende & Mohamed (2015, table 1), with

    w1(x) = sin(2 pi x1 / 4),   w2(x) = 3 exp(-((x1 - 1) / 0.6)^2 / 2),   w3(x) = 3 sigmoid((x1 - 1) / 0.3):

* ``U1`` (a ring split in two): ``((|x| - 2) / 0.4)^2 / 2 - log(e^{-((x1 - 2)/0.6)^2/2} + e^{-((x1 + 2)/0.6)^2/2})``;
* ``U2`` (a sine wave): ``((x2 - w1) / 0.4)^2 / 2``;
* ``U3`` (two waves that part): ``-log(e^{-((x2 - w1)/0.35)^2/2} + e^{-((x2 - w1 + w2)/0.35)^2/2})``;
* ``U4`` (two waves joined by a step): ``-log(e^{-((x2 - w1)/0.4)^2/2} + e^{-((x2 - w1 + w3)/0.35)^2/2})``.

(``U2``-``U4`` are improper in ``x1``; like the paper's figures, draw them on ``[-4, 4]^2``.) The sums of
exponentials are computed with ``logsumexp``, so nothing underflows far from the modes.

To report the KL itself (not only up to ``log Z``) the target must be normalisable: ``confined`` adds a soft
quadratic wall outside the square ``[-a, a]^2`` (``U2``-``U4`` then have a finite ``Z``), ``log_normaliser``
computes ``log Z`` by the midpoint rule on a grid (in float64), and ``kl_estimate`` gives the Monte-Carlo
estimate of ``KL(q || p)`` with its standard error.
"""

from __future__ import annotations

import math

import torch

from flowlib._validate import check_int, check_positive, check_tensor

__all__ = ["potential", "POTENTIALS", "log_target", "reverse_kl", "confined", "log_normaliser", "kl_estimate"]


def _w(x1):
    w1 = torch.sin(2 * math.pi * x1 / 4)
    w2 = 3 * torch.exp(-0.5 * ((x1 - 1) / 0.6) ** 2)
    w3 = 3 * torch.sigmoid((x1 - 1) / 0.3)
    return w1, w2, w3


def _lse2(a, b):
    return torch.logsumexp(torch.stack([a, b]), dim=0)


def _u1(x):
    x1 = x[:, 0]
    ring = 0.5 * ((x.norm(dim=1) - 2) / 0.4) ** 2
    return ring - _lse2(-0.5 * ((x1 - 2) / 0.6) ** 2, -0.5 * ((x1 + 2) / 0.6) ** 2)


def _u2(x):
    w1, _, _ = _w(x[:, 0])
    return 0.5 * ((x[:, 1] - w1) / 0.4) ** 2


def _u3(x):
    w1, w2, _ = _w(x[:, 0])
    x2 = x[:, 1]
    return -_lse2(-0.5 * ((x2 - w1) / 0.35) ** 2, -0.5 * ((x2 - w1 + w2) / 0.35) ** 2)


def _u4(x):
    w1, _, w3 = _w(x[:, 0])
    x2 = x[:, 1]
    return -_lse2(-0.5 * ((x2 - w1) / 0.4) ** 2, -0.5 * ((x2 - w1 + w3) / 0.35) ** 2)


POTENTIALS = {"U1": _u1, "U2": _u2, "U3": _u3, "U4": _u4}


def potential(name: str, x: torch.Tensor) -> torch.Tensor:
    """The energy ``U(x)`` of target ``name`` (``"U1"``...``"U4"``) at ``x`` of shape ``(batch, 2)``: shape
    ``(batch,)``; the target density is ``exp(-U) / Z``."""
    if name not in POTENTIALS:
        raise ValueError(f"name must be one of {sorted(POTENTIALS)}, got {name!r}")
    check_tensor(x, name="x", event_shape=(2,))
    return POTENTIALS[name](x)


def log_target(name: str):
    """``x -> -U(x)``: the unnormalised log-density of target ``name``, as ``reverse_kl`` takes it."""
    if name not in POTENTIALS:
        raise ValueError(f"name must be one of {sorted(POTENTIALS)}, got {name!r}")
    return lambda x: -POTENTIALS[name](x)


def reverse_kl(flow, log_target, n: int, context: torch.Tensor | None = None) -> torch.Tensor:
    """Monte-Carlo estimate of ``E_q[log q(x) - log_target(x)]`` (equation (1) of the module docstring without
    ``log Z``), from ``n`` reparameterised samples of the ``Flow`` ``q``: differentiable in the flow's
    parameters, so ``reverse_kl(...).backward()`` gives the reverse-KL gradient.

    Parameters
    ----------
    flow : a ``flowlib.Flow``; it is sampled through its transform's ``inverse`` (one pass for IAF layers and
        ``InverseTransform(Planar(d))``).
    log_target : a callable ``x -> log p~(x)``, shape ``(n,)`` (e.g. ``log_target("U1")``).
    n : number of samples, ``>= 1``.
    context : for a conditional flow, as in ``Flow.sample_with_log_prob``.

    Returns a scalar tensor. The loss is bounded below by ``-log Z``, reached when ``q`` equals the target.
    """
    check_int(n, "n")
    if not callable(log_target):
        raise ValueError(f"log_target must be a callable x -> log density, got {type(log_target).__name__}")
    x, log_q = flow.sample_with_log_prob(n, context=context) if context is not None else flow.sample_with_log_prob(n)
    log_p = log_target(x)
    if not isinstance(log_p, torch.Tensor) or log_p.shape != (n,):
        shape = tuple(log_p.shape) if isinstance(log_p, torch.Tensor) else type(log_p).__name__
        raise ValueError(f"log_target must return a tensor of shape ({n},) (one value per sample), got {shape}")
    return (log_q - log_p).mean()


def confined(log_target, half_width: float = 4.0, wall: float = 0.25):
    """``x -> log_target(x) - sum_i relu(|x_i| - half_width)^2 / (2 wall^2)``: the target with a soft quadratic
    wall outside the cube ``[-half_width, half_width]^d``. Inside the cube nothing changes; outside, the density
    falls like a half-Gaussian of standard deviation ``wall``, so targets that are improper along a direction
    (``U2``-``U4`` in ``x1``) get a finite normaliser."""
    if not callable(log_target):
        raise ValueError(f"log_target must be a callable x -> log density, got {type(log_target).__name__}")
    half_width, wall = check_positive(half_width, "half_width"), check_positive(wall, "wall")

    def log_p(x):
        out = torch.relu(x.abs() - half_width)
        return log_target(x) - 0.5 * (out / wall).pow(2).sum(1)

    return log_p


def log_normaliser(log_target, bounds=((-6.0, 6.0), (-6.0, 6.0)), grid: int = 1200) -> float:
    """``log Z = log of the integral of exp(log_target)`` over the rectangle ``bounds = ((x0, x1), (y0, y1))``
    by the midpoint rule with ``grid x grid`` cells, summed in float64 with ``logsumexp``. Accurate when the
    rectangle holds all but a negligible part of the mass and a cell is small next to the target's narrowest
    feature (error O(h^2) for a smooth target). Cost: ``grid^2`` evaluations of ``log_target``."""
    grid = check_int(grid, "grid", minimum=2)
    if not callable(log_target):
        raise ValueError(f"log_target must be a callable x -> log density, got {type(log_target).__name__}")
    (x0, x1), (y0, y1) = bounds
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"bounds must be ((x0, x1), (y0, y1)) with x0 < x1 and y0 < y1, got {bounds}")
    hx, hy = (x1 - x0) / grid, (y1 - y0) / grid
    xs = x0 + hx * (torch.arange(grid, dtype=torch.float64) + 0.5)
    ys = y0 + hy * (torch.arange(grid, dtype=torch.float64) + 0.5)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    points = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    with torch.no_grad():
        log_p = torch.cat([log_target(chunk) for chunk in points.split(65536)]).double()
    return float(torch.logsumexp(log_p, 0)) + math.log(hx * hy)


def kl_estimate(flow, log_target, log_z: float, n: int = 20_000, generator_seed: int | None = None):
    """``(KL(q || p), standard error)`` from ``n`` samples of the ``Flow`` ``q``: the average of
    ``log q(x) - log_target(x) + log_z`` and its standard deviation over ``sqrt(n)``, with ``log_z`` the log
    normaliser of ``log_target`` (e.g. from ``log_normaliser``). ``generator_seed`` seeds torch's global
    generator first, for a reproducible estimate. No gradients."""
    check_int(n, "n", minimum=2)
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    with torch.no_grad():
        x, log_q = flow.sample_with_log_prob(n)
        d = (log_q.double() - log_target(x).double()) + log_z
    return float(d.mean()), float(d.std() / math.sqrt(n))
