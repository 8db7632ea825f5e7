"""Monotonic rational-quadratic splines (Durkan et al. 2019, "Neural Spline Flows").

An affine transformer ``z = x e^s + t`` can only shift and stretch each coordinate. A **spline transformer**
bends it: a strictly increasing function of ``x`` with ``3K - 1`` free parameters, still invertible in closed
form and with an exact derivative. It is the elementwise map inside ``SplineCoupling``, ``SplineMAF`` and
``SplineIAF``; ``ElementwiseSpline`` is the same map with free (unconditioned) parameters.

The map
-------
On ``[-B, B]`` the spline passes through ``K + 1`` knots ``(x_0, y_0) = (-B, -B), ..., (x_K, y_K) = (B, B)``
with slopes ``d_0, ..., d_K`` at the knots; outside it is the identity (linear tails), and ``d_0 = d_K = 1``
so that the slope is continuous where the tails join. In bin ``k`` (``x_k <= x <= x_{k+1}``) write

    w = x_{k+1} - x_k,   h = y_{k+1} - y_k,   s = h / w,   xi = (x - x_k) / w in [0, 1],

and the map is the ratio of two quadratics in ``xi`` (Gregory and Delbourgo's rational-quadratic form)

    y = y_k + h (s xi^2 + d_k xi (1 - xi)) / (s + D xi (1 - xi)),   D = d_k + d_{k+1} - 2 s.      (1)

At ``xi = 0`` and ``xi = 1`` it takes the values ``y_k`` and ``y_{k+1}``, and differentiating (quotient rule,
then collecting terms) gives the slope

    dy/dx = s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) / (s + D xi (1 - xi))^2,         (2)

which equals ``d_k`` at ``xi = 0`` and ``d_{k+1}`` at ``xi = 1`` (so the pieces join with a continuous slope)
and is positive everywhere when ``s, d_k, d_{k+1} > 0`` (numerator: a sum of positive terms): the spline is
strictly increasing, hence invertible. The log-det of the elementwise map is ``sum_i log dy_i/dx_i``, each
term read from (2) as ``2 log s + log(numerator) - 2 log(s + D xi (1 - xi))``.

The inverse
-----------
Given ``y`` in bin ``k`` (found by comparing ``y`` with the ``y``-knots), put ``r = y - y_k`` and multiply (1)
out: ``r (s + D xi (1 - xi)) = h (s xi^2 + d_k xi (1 - xi))``, i.e. the quadratic ``a xi^2 + b xi + c = 0`` with

    a = h (s - d_k) + r D,   b = h d_k - r D,   c = -s r.

Since (1) is strictly increasing in ``xi`` and runs from ``y_k`` to ``y_{k+1}``, exactly one root lies in
``[0, 1]``. Written as ``(-b + sqrt(b^2 - 4ac)) / (2a)`` it divides by ``a``, which is 0 when the bin is linear,
and subtracts nearly equal numbers when ``4ac`` is small. We use the stable pair of forms instead:

    xi = 2c / (-b - sqrt(b^2 - 4ac))      if b >= 0   (multiply the usual form by (-b - sqrt)/(-b - sqrt)),
    xi = (-b + sqrt(b^2 - 4ac)) / (2a)    if b < 0    (then a > 0, because c <= 0 and the root is >= 0),

in each of which the two terms of the sum have the same sign, so nothing cancels and nothing divides by 0.
Then ``x = x_k + w xi`` and the inverse's log-det is ``-log dy/dx`` at that ``x``.

Parameterisation
----------------
A conditioner outputs unconstrained numbers: ``K`` for the widths, ``K`` for the heights, ``K - 1`` for the
interior slopes. Widths are ``min_bin_width + (1 - K min_bin_width) softmax(.)`` times ``2B`` (likewise the
heights), so every bin has width at least ``2 B min_bin_width``; slopes are
``min_derivative + softplus(. + c)`` with ``c`` chosen so that an unconstrained 0 gives slope 1. With all
unconstrained parameters 0 every bin has ``w = h`` and every slope is 1, so (1) reads ``y = y_k + h xi = x``:
**zero parameters are the identity** (a zero-initialised conditioner starts a spline layer at the identity).

Cost: ``O(K)`` per coordinate in both directions (knots by cumulative sums, bin by comparison with the
knots), no iteration: the inverse is as cheap as the map.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from flowlib._validate import check_int, check_positive, check_tensor
from flowlib.transforms.base import Transform
from flowlib.transforms.elementwise import as_event_shape

__all__ = [
    "rational_quadratic_spline",
    "ElementwiseSpline",
    "DEFAULT_MIN_BIN_WIDTH",
    "DEFAULT_MIN_BIN_HEIGHT",
    "DEFAULT_MIN_DERIVATIVE",
]

DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def rational_quadratic_spline(
    inputs: torch.Tensor,
    widths: torch.Tensor,
    heights: torch.Tensor,
    derivatives: torch.Tensor,
    *,
    bound: float = 3.0,
    inverse: bool = False,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The monotonic rational-quadratic spline on ``[-bound, bound]`` with identity tails, elementwise.

    Parameters
    ----------
    inputs : any shape ``S``; ``x`` (``inverse=False``) or ``y`` (``inverse=True``).
    widths, heights : shape ``S + (K,)``, unconstrained (see the module docstring); ``K >= 1`` bins.
    derivatives : shape ``S + (K - 1,)``, unconstrained slopes at the interior knots (the two boundary
        slopes are 1).
    bound : ``B > 0``, half the width of the interval where the spline bends.
    inverse : map ``y -> x`` instead of ``x -> y``.
    min_bin_width, min_bin_height, min_derivative : the smallest bin (as a fraction of ``2B``) and slope;
        ``K * min_bin_width`` and ``K * min_bin_height`` must be below 1.

    Returns
    -------
    ``(outputs, logabsdet)``, both of shape ``S``: the mapped values and ``log|d outputs / d inputs|``
    elementwise (0 in the tails). Raises ``ValueError`` on wrong shapes, ``K < 1``, ``bound <= 0`` or
    non-finite values.
    """
    bound = check_positive(bound, "bound")
    check_tensor(inputs, name="inputs", allow_empty=True)
    for name, t in (("widths", widths), ("heights", heights), ("derivatives", derivatives)):
        check_tensor(t, name=name, allow_empty=True)
        if t.dtype != inputs.dtype:
            raise ValueError(f"{name} must have the dtype of inputs ({inputs.dtype}), got {t.dtype}")
    shape = tuple(inputs.shape)
    if widths.dim() != len(shape) + 1 or tuple(widths.shape[:-1]) != shape:
        raise ValueError(f"widths must have shape inputs.shape + (K,) = {shape} + (K,), got {tuple(widths.shape)}")
    K = widths.shape[-1]
    if K < 1:
        raise ValueError(f"the spline needs K >= 1 bins (widths.shape[-1]), got K = {K}")
    if tuple(heights.shape) != (*shape, K):
        raise ValueError(f"heights must have shape {(*shape, K)} like widths, got {tuple(heights.shape)}")
    if tuple(derivatives.shape) != (*shape, K - 1):
        raise ValueError(
            f"derivatives must have shape inputs.shape + (K - 1,) = {(*shape, K - 1)} (interior knots), "
            f"got {tuple(derivatives.shape)}"
        )
    _check_minima(K, min_bin_width, min_bin_height, min_derivative)
    return _rqs(inputs, widths, heights, derivatives, bound, inverse, min_bin_width, min_bin_height, min_derivative)


def _check_minima(K, min_bin_width, min_bin_height, min_derivative):
    for name, v in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
        v = check_positive(v, name)
        if K * v >= 1:
            raise ValueError(f"{name} * K must be below 1 (K = {K} bins cannot each be wider), got {name} = {v}")
    check_positive(min_derivative, "min_derivative")


def _knots(raw, bound, minimum):
    """Knot positions ``(..., K + 1)`` from ``-B`` to ``B`` and bin sizes ``(..., K)`` from unconstrained ``raw``."""
    K = raw.shape[-1]
    frac = minimum + (1 - minimum * K) * torch.softmax(raw, dim=-1)
    knots = F.pad(torch.cumsum(frac, dim=-1), (1, 0)) * (2 * bound) - bound
    # the ends exactly at -B and B (the cumulative sum may miss 1 by a rounding error); in place: no copy of
    # the knots (a constant written into a fresh tensor, so autograd gives those entries zero gradient)
    knots[..., 0] = -bound
    knots[..., -1] = bound
    return knots, knots[..., 1:] - knots[..., :-1]


def _slopes(raw, min_derivative):
    """Slopes at all ``K + 1`` knots: 1 at both ends, ``min_d + softplus(raw + c)`` inside (1 at ``raw = 0``)."""
    shift = math.log(math.expm1(1.0 - min_derivative))
    return F.pad(min_derivative + F.softplus(raw + shift), (1, 1), value=1.0)


def spline_defaults() -> tuple[float, float, float]:
    """``(min_bin_width, min_bin_height, min_derivative)`` used by the spline layers."""
    return DEFAULT_MIN_BIN_WIDTH, DEFAULT_MIN_BIN_HEIGHT, DEFAULT_MIN_DERIVATIVE


def _gather(t, idx):
    return t.gather(-1, idx[..., None]).squeeze(-1)


def _rqs(inputs, widths, heights, derivatives, bound, inverse, min_bin_width=DEFAULT_MIN_BIN_WIDTH,
         min_bin_height=DEFAULT_MIN_BIN_HEIGHT, min_derivative=DEFAULT_MIN_DERIVATIVE):
    """``rational_quadratic_spline`` without the checks (the layers validate their input once, at the entry)."""
    inside = (inputs >= -bound) & (inputs <= bound)
    u = inputs.clamp(-bound, bound)  # tail points run through the spline at the boundary, then are replaced
    xk, w_all = _knots(widths, bound, min_bin_width)
    yk, h_all = _knots(heights, bound, min_bin_height)
    d_all = _slopes(derivatives, min_derivative)
    search = yk if inverse else xk
    idx = (u[..., None] >= search[..., 1:-1]).sum(dim=-1)  # bin index in 0..K-1 (no gradient needed)
    x0, w, y0, h = _gather(xk, idx), _gather(w_all, idx), _gather(yk, idx), _gather(h_all, idx)
    d0, d1 = _gather(d_all, idx), _gather(d_all, idx + 1)
    s = h / w
    D = d0 + d1 - 2 * s
    if inverse:
        r = u - y0
        a = h * (s - d0) + r * D
        b = h * d0 - r * D
        c = -s * r
        root = torch.sqrt((b * b - 4 * a * c).clamp_min(0))
        pos = b >= 0  # the stable form of the root in [0, 1] (module docstring); safe denominators in both
        xi = torch.where(pos, 2 * c / torch.where(pos, -b - root, -1.0), (root - b) / torch.where(pos, 1.0, 2 * a))
        xi = xi.clamp(0, 1)
        out = x0 + w * xi
    else:
        xi = (u - x0) / w
        out = y0 + h * (s * xi * xi + d0 * xi * (1 - xi)) / (s + D * xi * (1 - xi))
    t = xi * (1 - xi)
    numer = d1 * xi * xi + 2 * s * t + d0 * (1 - xi) * (1 - xi)
    logdet = 2 * torch.log(s) + torch.log(numer) - 2 * torch.log(s + D * t)
    if inverse:
        logdet = -logdet
    return torch.where(inside, out, inputs), torch.where(inside, logdet, torch.zeros_like(logdet))


def _spline_num_params(num_bins) -> int:
    return 3 * check_int(num_bins, "num_bins") - 1


def _split_params(p, num_bins):
    """``(widths, heights, derivatives)`` from the last axis of ``p`` (``3K - 1`` entries)."""
    K = num_bins
    return p[..., :K], p[..., K : 2 * K], p[..., 2 * K :]


class ElementwiseSpline(Transform):
    """A rational-quadratic spline on every coordinate, with its own free parameters (no conditioner).

    * map: ``z_i = g(x_i; theta_i)``, ``g`` the spline of ``rational_quadratic_spline`` on ``[-bound, bound]``
      with ``num_bins`` bins and identity tails, one parameter vector ``theta_i`` (``3K - 1`` numbers) per
      coordinate;
    * inverse: ``x_i = g^{-1}(z_i; theta_i)``, one quadratic per coordinate (closed form);
    * log-det: ``sum_i log g'(x_i; theta_i)`` (the Jacobian is diagonal), 0 from coordinates in the tails;
    * cost: O(K d) in both directions.

    Initialised to the identity (all parameters 0). The same transformer, with its parameters computed by a
    conditioner, is what ``SplineCoupling`` and ``SplineMAF`` apply.
    """

    def __init__(self, event_shape, num_bins: int = 8, bound: float = 3.0):
        super().__init__()
        self.event_shape = as_event_shape(event_shape)
        self.num_bins = check_int(num_bins, "num_bins")
        self.bound = check_positive(bound, "bound")
        _check_minima(self.num_bins, *spline_defaults())
        self.params = nn.Parameter(torch.zeros(*self.event_shape, _spline_num_params(num_bins)))

    def _spline(self, x, inverse):
        p = self.params.expand(x.shape[0], *self.params.shape)
        y, ld = _rqs(x, *_split_params(p, self.num_bins), self.bound, inverse)
        return y, ld.reshape(x.shape[0], -1).sum(dim=1)

    def _forward(self, x):
        return self._spline(x, False)

    def _inverse(self, z):
        return self._spline(z, True)
