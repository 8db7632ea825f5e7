"""Planar and radial flows (Rezende & Mohamed 2015) and Sylvester flows (van den Berg et al. 2018).

Direction. These maps were introduced as *generative* maps for variational inference, where only the
log-det of the map itself is needed. In flowlib the map itself is ``forward`` (the normalizing direction,
data -> base), so ``Flow.log_prob`` is exact and cheap; ``inverse`` (sampling) is solved numerically for
``Planar`` and ``Radial`` (a 1-D equation each) and is not available for ``Sylvester``. To use any of
them the paper's way (closed-form sampling and log-density of the samples), wrap it:
``InverseTransform(Planar(d))``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from flowlib._validate import check_int
from flowlib.transforms.base import NoAnalyticInverse, Transform

__all__ = ["Planar", "Radial", "Sylvester"]


class Planar(Transform):
    """Planar flow: a single "ridge" ``f(x) = x + u_hat * tanh(w^T x + b)``.

    * map (``forward``): ``z = x + u_hat h(a)`` with ``a = w^T x + b``, ``h = tanh``;
    * invertibility: ``u_hat = u + (m(w^T u) - w^T u) w / |w|^2`` with ``m(s) = -1 + softplus(s)``, so that
      ``w^T u_hat = m(w^T u) > -1`` and ``f`` is strictly increasing along ``w`` (Rezende & Mohamed, App. A);
    * log-det: ``log|det dz/dx| = log|1 + h'(a) w^T u_hat|`` (matrix determinant lemma), O(d), computed
      as ``log(tanh(a)^2 + (1 - tanh(a)^2) softplus(w^T u))`` to stay accurate when ``w^T u_hat ~ -1``;
    * inverse (numerical): along ``w`` the map is 1-D, ``w^T z + b = a + (w^T u_hat) tanh(a)``. We solve
      this increasing scalar equation for ``a`` by Newton's method safeguarded by bisection on the bracket
      ``[c - |w^T u_hat|, c + |w^T u_hat|]`` (``c = w^T z + b``), to machine precision, then
      ``x = z - u_hat tanh(a)``. Cost O(d) plus a few scalar iterations. The iterations run without autograd
      and a final Newton step with autograd gives the exact (implicit-function) gradient.
    """

    def __init__(self, dim: int):
        super().__init__()
        dim = check_int(dim, "dim")
        self.event_shape = (dim,)
        self.w = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.u = nn.Parameter(0.01 * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> torch.Tensor:
        """The constrained ``u`` with ``w^T u_hat > -1``."""
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w).clamp_min(1e-30)

    def _slope(self, t):
        """``1 + h'(a) w^T u_hat = tanh(a)^2 + (1 - tanh(a)^2) softplus(w^T u)``: a sum of non-negative
        terms (no cancellation even when ``w^T u_hat`` is close to -1)."""
        return t**2 + (1 - t**2) * F.softplus(self.w @ self.u)

    def _forward(self, x):
        t = torch.tanh(x @ self.w + self.b)
        return x + t[:, None] * self.u_hat(), torch.log(self._slope(t))

    def _inverse(self, z):
        u = self.u_hat()
        s, c = self.w @ u, z @ self.w + self.b

        def g(a):  # increasing in a; its root is a = w^T x + b
            return a + s * torch.tanh(a) - c, self._slope(torch.tanh(a))

        with torch.no_grad():
            lo, hi, a = c - s.abs(), c + s.abs(), c.clone()
            for _ in range(200):
                val, slope = g(a)
                lo, hi = torch.where(val < 0, a, lo), torch.where(val > 0, a, hi)
                new = a - val / slope
                new = torch.where((new > lo) & (new < hi), new, (lo + hi) / 2)  # Newton, else bisect
                done = ((new - a).abs() <= 4 * torch.finfo(a.dtype).eps * (1 + a.abs())).all()
                a = new
                if done:
                    break
        val, slope = g(a)
        a = a - val / slope  # one Newton step with autograd: exact gradient at the root
        t = torch.tanh(a)
        return z - t[:, None] * u, -torch.log(self._slope(t))


class Radial(Transform):
    """Radial flow: contract or expand around a centre ``z0``, ``f(x) = x + beta h(r) (x - z0)``.

    * map (``forward``): ``z = x + beta/(alpha + r) (x - z0)``, ``r = |x - z0|``, with
      ``alpha = softplus(.) > 0`` and ``beta = -alpha + softplus(.) > -alpha`` (the invertibility constraint);
    * log-det: ``(d-1) log(1 + beta h) + log(1 + beta h + beta h'(r) r) =
      (d-1) log(1 + beta/(alpha+r)) + log(1 + alpha beta/(alpha+r)^2)``, O(d);
    * inverse: the direction of ``x - z0`` is preserved, and taking norms gives a 1-D equation for ``r``,
      ``r_z = r + beta r/(alpha + r)``, i.e. the quadratic ``r^2 + (alpha + beta - r_z) r - alpha r_z = 0``.
      Its unique root ``r >= 0`` is computed in closed form (cancellation-free formula), then
      ``x = z0 + (z - z0) / (1 + beta/(alpha + r))``. Cost O(d), exact to rounding.

    Numerics: with ``c = alpha + beta = softplus(.) > 0`` every factor is written as a ratio of positive
    sums, e.g. ``1 + beta/(alpha + r) = (r + c)/(alpha + r)``, so nothing cancels when ``beta ~ -alpha``.

    Initialised to the identity (``beta = 0``).
    """

    def __init__(self, dim: int):
        super().__init__()
        dim = check_int(dim, "dim")
        self.event_shape = (dim,)
        self.z0 = nn.Parameter(torch.zeros(dim))
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(torch.zeros(()))  # softplus(0) = softplus(0): beta = 0 at start

    def alpha_beta(self):
        alpha = F.softplus(self.alpha_raw)
        return alpha, F.softplus(self.beta_raw) - alpha

    def _logdet(self, r):
        # with a = alpha, c = alpha + beta = softplus(beta_raw) > 0, written without cancellation:
        # 1 + beta/(a+r) = (r+c)/(a+r) and 1 + a beta/(a+r)^2 = (r^2 + 2ar + ac)/(a+r)^2
        a, c = F.softplus(self.alpha_raw), F.softplus(self.beta_raw)
        log_ar = torch.log(a + r)
        radial_part = torch.log(r**2 + 2 * a * r + a * c) - 2 * log_ar
        return (self.event_shape[0] - 1) * (torch.log(r + c) - log_ar) + radial_part

    def _forward(self, x):
        a, c = F.softplus(self.alpha_raw), F.softplus(self.beta_raw)
        diff = x - self.z0
        r = diff.norm(dim=1)
        return self.z0 + ((r + c) / (a + r))[:, None] * diff, self._logdet(r)

    def _inverse(self, z):
        a, c = F.softplus(self.alpha_raw), F.softplus(self.beta_raw)
        diff = z - self.z0
        rz = diff.norm(dim=1)
        B = c - rz
        disc = torch.sqrt(B**2 + 4 * a * rz)
        # positive root of r^2 + B r - a rz = 0, without subtracting nearly equal numbers
        r = torch.where(B > 0, 2 * a * rz / (B + disc), (disc - B) / 2)
        return self.z0 + ((a + r) / (r + c))[:, None] * diff, -self._logdet(r)


class Sylvester(Transform):
    """Sylvester flow (van den Berg et al. 2018): a planar flow with an ``m``-dimensional bottleneck.

    * map (``forward``): ``z = x + Q R h(R~ Q^T x + b)``, ``h = tanh``, where ``Q`` (``d x m``) has
      orthonormal columns (the Q factor of a QR decomposition of a free ``d x m`` matrix), ``R`` and
      ``R~`` are ``m x m`` upper triangular with diagonals ``tanh(.)`` in (-1, 1), so
      ``R_kk R~_kk > -1`` and the map is invertible;
    * log-det (Sylvester's determinant identity): ``log|det(I_m + diag(h'(a)) R~ R)|`` with
      ``a = R~ Q^T x + b``; ``R~ R`` is triangular, so this is ``sum_k log|1 + h'(a_k) R~_kk R_kk|``,
      O(m) after the O(dm + m^2) map;
    * inverse: none in closed form (an ``m``-dimensional nonlinear system); ``inverse`` raises
      ``NoAnalyticInverse``. Use it as the generative map of variational inference via
      ``InverseTransform(Sylvester(d, m))``, as in the paper.
    """

    def __init__(self, dim: int, m: int):
        super().__init__()
        dim, m = check_int(dim, "dim"), check_int(m, "m")
        if m > dim:
            raise ValueError(f"m must be an integer with 1 <= m <= dim = {dim}, got {m}")
        self.event_shape = (dim,)
        self.q_raw = nn.Parameter(torch.randn(dim, m))
        self.r_raw = nn.Parameter(0.01 * torch.randn(m, m))
        self.rt_raw = nn.Parameter(0.01 * torch.randn(m, m))
        self.r_diag_raw = nn.Parameter(torch.zeros(m))
        self.rt_diag_raw = nn.Parameter(torch.zeros(m))
        self.b = nn.Parameter(torch.zeros(m))

    def factors(self):
        """``(Q, R, R~)`` as used in the map."""
        Q = torch.linalg.qr(self.q_raw).Q
        R = torch.triu(self.r_raw, 1) + torch.diag(torch.tanh(self.r_diag_raw))
        Rt = torch.triu(self.rt_raw, 1) + torch.diag(torch.tanh(self.rt_diag_raw))
        return Q, R, Rt

    def _forward(self, x):
        Q, R, Rt = self.factors()
        t = torch.tanh(x @ Q @ Rt.T + self.b)
        z = x + t @ R.T @ Q.T
        diag = torch.diagonal(R) * torch.diagonal(Rt)
        return z, torch.log1p((1 - t**2) * diag).sum(dim=1)

    def _inverse(self, z):
        raise NoAnalyticInverse(
            "Sylvester has no closed-form inverse: inverting it means solving an m-dimensional nonlinear "
            "system. Use it in the direction it is cheap: as a normalizing map for log_prob, or wrapped as "
            "InverseTransform(Sylvester(d, m)) as a generative map for variational inference."
        )
