"""Preprocessing for discrete data: uniform dequantisation and the logit transform.

Pipeline for images with ``L`` intensity levels (``L = 256`` for 8 bits):

    x in {0, ..., L-1}^D  --dequantise-->  y = (x + u) / L in [0, 1)^D  --Logit-->  logit space  --flow-->  z

Fit the flow to ``y`` (with ``Logit`` as its first layer, so that its log-det is part of
``log p(y)``) and report ``flowlib.metrics.bits_per_dim(log_p_y, D, num_levels=L)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flowlib._validate import check_int, check_tensor
from flowlib.transforms.base import Transform, _sum_except_batch

__all__ = ["UniformDequantization", "Logit", "quantize"]


def _num_levels(num_bits, num_levels) -> int:
    if num_levels is not None:
        return check_int(num_levels, "num_levels", minimum=2)
    return 2 ** check_int(num_bits, "num_bits")


class UniformDequantization(nn.Module):
    """Turn integers ``x in {0, ..., L-1}^D`` into continuous ``y = (x + u) / L``, ``u ~ U[0, 1)^D``.

    ``L = 2**num_bits`` (256 by default), or ``num_levels`` if given (17 for scikit-learn's digits).
    ``y`` lies in ``[0, 1)``; ``floor(L * y) = x`` recovers the integers (``quantize``).

    Why it is the right thing to do. For a density ``p`` on the integer scale, the probability the model
    gives to the cell ``x + [0, 1)^D`` is

        P(x) = int_{[0,1)^D} p(x + u) du = E_u[p(x + u)] = E_u[p_Y((x + u) / L)] / L^D,

    using ``p(x + u) = p_Y(y) / L^D`` for the rescaled variable ``y`` (change of variables, the log-det of
    ``x -> x / L`` is ``-D log L``). By Jensen's inequality

        log P(x) >= E_u[log p_Y((x + u) / L)] - D log L,

    so the continuous log-likelihood of dequantised, rescaled data, minus ``D log L``, is a lower bound on
    the discrete model's log-likelihood. ``flowlib.metrics.bits_per_dim(..., num_levels=L)`` adds exactly
    this ``D log L`` offset.

    ``forward(x, generator=None)`` draws ``u`` (pass a ``torch.Generator`` for reproducibility). ``y`` is
    computed in float64 and returned in ``x``'s dtype; in float32, the few draws that rounding would put on
    the cell's upper edge (``y == 1.0`` for ``x = L - 1``) are moved to the largest float inside the cell, so
    both promises hold exactly in either dtype.
    """

    def __init__(self, num_bits: int = 8, num_levels: int | None = None):
        super().__init__()
        self.num_levels = _num_levels(num_bits, num_levels)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_tensor(x, name="x")
        L = self.num_levels
        _check_levels(x, L)
        # u is drawn in x's dtype (the same random stream as ever, so seeded results do not move)
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return _into_cells(x, u, L)

    def extra_repr(self):
        return f"num_levels={self.num_levels}"


def _check_levels(x: torch.Tensor, L: int) -> None:
    if ((x < 0) | (x > L - 1) | (x != x.round())).any():
        raise ValueError(f"x must hold integers in 0..{L - 1} (stored as floats)")


def _into_cells(x: torch.Tensor, u: torch.Tensor, L: int) -> torch.Tensor:
    """``y = (x + u) / L`` computed in float64, rounded to ``x``'s dtype, then every ``y`` that rounding pushed out
    of its cell (``y == 1.0``, or ``floor(L * y) != x`` in ``x``'s dtype, as ``quantize`` computes it) moved to the
    nearest float inside the cell: in float32 this happens a few times per million draws."""
    y = ((x.to(torch.float64) + u.to(torch.float64)) / L).to(x.dtype)
    for _ in range(8):
        cell = torch.floor(y * L)
        high, low = cell > x, cell < x
        if not (high.any() or low.any()):
            return y
        y = torch.where(high, torch.nextafter(y, torch.zeros_like(y)), y)
        y = torch.where(low, torch.nextafter(y, torch.ones_like(y)), y)
    raise RuntimeError("could not place y = (x + u) / L inside its cell")  # pragma: no cover


def quantize(y: torch.Tensor, num_bits: int = 8, num_levels: int | None = None) -> torch.Tensor:
    """Back from ``[0, 1]`` to integers: ``x = clamp(floor(L * y), 0, L - 1)`` (as floats)."""
    check_tensor(y, name="y")
    L = _num_levels(num_bits, num_levels)
    return torch.floor(y * L).clamp(0, L - 1)


class Logit(Transform):
    """Logit transform from ``[0, 1]`` to the real line, with a squeeze ``alpha`` away from 0 and 1.

    * map: ``s = alpha + (1 - 2 alpha) x``, ``y = logit(s) = log s - log(1 - s)``;
    * inverse: ``x = (sigmoid(y) - alpha) / (1 - 2 alpha)``;
    * log-det: ``dy/dx = (1 - 2 alpha) / (s (1 - s))`` per entry, so
      ``log|det J| = sum_i [log(1 - 2 alpha) - log s_i - log(1 - s_i)]``; the inverse uses
      ``log s = logsigmoid(y)``, ``log(1 - s) = logsigmoid(-y)`` (stable);
    * cost: elementwise, O(D).

    ``alpha`` in ``[0, 1/2)`` keeps ``y`` finite at ``x = 0`` and ``x = 1`` (``alpha = 0`` is the plain logit
    and requires ``0 < x < 1``). Works on any event shape. ``forward`` requires ``x`` in ``[0, 1]`` (in
    ``(0, 1)`` when ``alpha = 0``) and raises ``ValueError`` otherwise, also inside a ``Compose`` or a
    ``Flow`` (the range is checked in ``_forward``, one comparison per entry).

    Range of the inverse. ``inverse`` accepts any real ``y``, and with ``alpha > 0`` it maps the real line
    onto the open interval ``(-alpha / (1 - 2 alpha), (1 - alpha) / (1 - 2 alpha))``, wider than
    ``[0, 1]`` (about ``(-0.056, 1.056)`` for ``alpha = 0.05``): samples of a flow with a ``Logit`` layer
    can fall slightly outside ``[0, 1]``; clamp them (or ``quantize``) before showing them as images.
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        alpha = float(alpha)
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha must lie in [0, 0.5), got {alpha!r}")
        self.alpha = alpha

    def _forward(self, x):
        a = self.alpha
        if a == 0:
            if ((x <= 0) | (x >= 1)).any():
                raise ValueError("x must lie in the open interval (0, 1) for Logit(alpha=0) (0 and 1 map to "
                                 "-inf and +inf); use alpha > 0 to allow the endpoints")
        elif ((x < 0) | (x > 1)).any():
            raise ValueError(f"x must lie in [0, 1] for the Logit transform, got values in "
                             f"[{float(x.min()):.4g}, {float(x.max()):.4g}]")
        s = a + (1 - 2 * a) * x
        y = torch.log(s) - torch.log1p(-s)
        logdet = _sum_except_batch(math.log(1 - 2 * a) - torch.log(s) - torch.log1p(-s))
        return y, logdet

    def _inverse(self, y):
        a = self.alpha
        x = (torch.sigmoid(y) - a) / (1 - 2 * a)
        logdet = _sum_except_batch(F.logsigmoid(y) + F.logsigmoid(-y) - math.log(1 - 2 * a))
        return x, logdet

    def extra_repr(self):
        return f"alpha={self.alpha}"
