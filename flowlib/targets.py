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
"""

from __future__ import annotations

import math

import torch

from flowlib._validate import check_int, check_tensor

__all__ = ["potential", "POTENTIALS", "log_target", "reverse_kl"]


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
