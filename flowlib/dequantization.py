"""Variational dequantisation (Ho et al., 2019, Flow++): a learnt noise distribution ``q(u | x)`` on the unit cube.

Uniform dequantisation (``flowlib.preprocess.UniformDequantization``) trains a density ``p`` on
``x + u``, ``u ~ U[0, 1)^D``, and so maximises a lower bound on the log-mass of the integers ``x``. The bound is
tight only where ``p`` is flat on each unit cube. Variational dequantisation draws ``u`` from a learnt
``q(u | x)`` instead, trained jointly with the model, which tightens the bound.

The bound. The mass a density ``p`` (on the integer scale) gives to the cell of ``x`` is, for any density ``q``
on the cube that is positive wherever ``p(x + .)`` is,

    P(x) = int_{[0,1)^D} p(x + u) du = int q(u | x) p(x + u) / q(u | x) du = E_{u ~ q}[p(x + u) / q(u | x)],

and since ``log`` is concave, Jensen's inequality ``log E[V] >= E[log V]`` gives

    log P(x) >= E_{u ~ q}[log p(x + u) - log q(u | x)].                                   (1)

The gap is ``KL(q(u | x) || p(x + u) / P(x))``: zero when ``q`` is the model's own conditional density of ``u``
inside the cell. ``q = 1`` (uniform) gives back the uniform-dequantisation bound. On the rescaled scale
``y = (x + u) / L`` that the book's models use, ``p(x + u) = p_Y(y) / L^D``, so the per-sample bound is
``log p_Y(y) - D log L - log q(u | x)``; ``log_mass_estimate`` computes it, and, with ``K > 1`` draws, the
importance-weighted estimate

    log P(x) ~ log (1/K) sum_k p(x + u_k) / q(u_k | x),   u_k ~ q(. | x),                   (2)

whose expectation is still a lower bound that grows with ``K`` and tends to ``log P(x)`` (Burda et al., 2016).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flowlib._validate import check_int, check_tensor
from flowlib.preprocess import UniformDequantization, _check_levels, _into_cells, _num_levels
from flowlib.transforms.base import Compose, Transform, _context_dim, _sum_except_batch
from flowlib.transforms.coupling import MLP, AffineCoupling, alternating_mask
from flowlib.transforms.elementwise import as_event_shape

__all__ = ["ConditionalElementwiseAffine", "VariationalDequantization", "log_mass_estimate"]


def _log_logistic(t: torch.Tensor) -> torch.Tensor:
    """Elementwise log-density of the standard logistic distribution, ``log sigmoid(t) + log sigmoid(-t)``
    (which is also ``log sigmoid'(t)``)."""
    return F.logsigmoid(t) + F.logsigmoid(-t)


class ConditionalElementwiseAffine(Transform):
    """Conditional elementwise affine map ``z = x * exp(s(c)) + t(c)`` on ``(batch, d)``, with ``s, t`` computed
    from a context ``c`` of width ``context_dim`` by an ``MLP`` (zero-initialised last layer: the identity at
    the start). ``s = scale_bound * tanh(raw / scale_bound)`` keeps the scales bounded.

    * inverse: ``x = (z - t(c)) * exp(-s(c))``;
    * log-det: ``sum_i s_i(c)`` (``-sum_i s_i(c)`` for the inverse);
    * cost: one MLP pass on the context, O(d) for the map.
    """

    def __init__(self, dim: int, context_dim: int, hidden=(64,), scale_bound: float = 3.0):
        super().__init__()
        self.dim = check_int(dim, "dim")
        self.context_dim = _context_dim(context_dim)
        if self.context_dim is None:
            raise ValueError("ConditionalElementwiseAffine needs a context_dim")
        self.scale_bound = float(scale_bound)
        if not self.scale_bound > 0:
            raise ValueError(f"scale_bound must be positive, got {scale_bound!r}")
        self.event_shape = (self.dim,)
        self.net = MLP(self.context_dim, 2 * self.dim, hidden)

    def _scale_shift(self, context):
        raw_s, t = self.net(context).chunk(2, dim=1)
        return self.scale_bound * torch.tanh(raw_s / self.scale_bound), t

    def _forward(self, x, context=None):
        s, t = self._scale_shift(context)
        return x * torch.exp(s) + t, s.sum(dim=1)

    def _inverse(self, z, context=None):
        s, t = self._scale_shift(context)
        return (z - t) * torch.exp(-s), -s.sum(dim=1)


class VariationalDequantization(nn.Module):
    """Learnt dequantisation noise ``q(u | x)`` on the open unit cube ``(0, 1)^D``, for integers ``x`` in
    ``{0, ..., L-1}^D`` (``L = 2**num_bits``, or ``num_levels``), trained jointly with a density model.

    The noise distribution is a conditional flow followed by a sigmoid:

        eps ~ Logistic(0, 1)^D,   v = g^{-1}(eps; c(x)),   u = sigmoid(v),   y = (x + u) / L,

    with ``g`` a conditional ``Transform`` on ``R^D`` (``forward`` normalises, ``v -> eps``) whose context is
    ``c(x) = 2 x / (L - 1) - 1`` (flattened). The base is the standard *logistic* distribution, the
    distribution of ``logit(w)`` for ``w ~ U(0, 1)``: when ``g`` is the identity, ``u = w`` is uniform and
    ``log q = 0``, so the default ``g`` (zero-initialised conditioners) **starts as uniform dequantisation**.

    * map: ``x -> (y, log q(u | x))`` (``forward``), with ``u`` drawn as above; ``sample`` returns ``u``;
    * inverse (quantisation): ``x = floor(L y)`` (``flowlib.preprocess.quantize``); ``y`` is placed inside
      the cell of ``x`` in either dtype, as ``UniformDequantization`` does;
    * log-det: by the change of variables through ``g^{-1}`` and the sigmoid,

          log q(u | x) = sum_i log logistic(eps_i) - log|det dg^{-1}/d eps| - sum_i log sigmoid'(v_i),

      with ``log sigmoid'(v) = log sigmoid(v) + log sigmoid(-v)``; ``log_prob(u, x)`` evaluates it from ``u``
      (``v = logit(u)``, ``eps = g(v)``, ``log q = sum log logistic(eps) + log|det dg/dv| - sum log(u (1 - u))``);
    * cost: one pass of ``g`` (a few couplings on ``D`` numbers), O(D) besides.

    The bound it serves (derivation in the module docstring, equation (1)): for a model density ``p_Y`` on
    ``y``, ``log P(x) >= E_q[log p_Y(y) - D log L - log q(u | x)]``; ``log_mass_estimate`` computes it, and its
    importance-weighted version. ``bits_per_dim(log_p_y - log_q, D, num_levels=L)`` is the bound in bits/dim.

    Parameters
    ----------
    event_shape : shape of one ``x`` (``(D,)`` or ``(C, H, W)``).
    num_bits, num_levels : as in ``UniformDequantization``.
    flow : a conditional ``Transform`` on ``(batch, D)`` with ``context_dim == D``; default: a
        ``ConditionalElementwiseAffine`` followed (for ``D >= 2``) by ``num_layers`` conditional
        ``AffineCoupling`` s on alternating masks, conditioners with ``hidden`` units.
    """

    def __init__(self, event_shape, num_bits: int = 8, num_levels: int | None = None, flow: Transform | None = None,
                 num_layers: int = 2, hidden=(64,)):
        super().__init__()
        self.event_shape = as_event_shape(event_shape, "event_shape")
        self.num_levels = _num_levels(num_bits, num_levels)
        self.dim = D = int(torch.Size(self.event_shape).numel())
        if flow is None:
            check_int(num_layers, "num_layers", minimum=0)
            layers = [ConditionalElementwiseAffine(D, D, hidden)]
            if D >= 2:
                layers += [AffineCoupling(alternating_mask(D, k % 2), hidden, context_dim=D) for k in range(num_layers)]
            flow = Compose(*layers)
        if not isinstance(flow, Transform):
            raise ValueError(f"flow must be a flowlib Transform, got {type(flow).__name__}")
        if flow.context_dim != D:
            raise ValueError(f"flow must be a conditional transform on (batch, {D}) with context_dim={D} (the "
                             f"context is the flattened x), got context_dim={flow.context_dim}")
        self.flow = flow

    # ------------------------------------------------------------------------------------------ checks
    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, name="x")
        es = tuple(self.event_shape)
        if x.dim() != len(es) + 1 or tuple(x.shape[1:]) != es:
            raise ValueError(f"x must have shape (batch, {', '.join(map(str, es))}), got {tuple(x.shape)}")
        _check_levels(x, self.num_levels)
        ref = next(self.parameters(), None)
        if ref is not None and x.dtype != ref.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the dequantiser's parameters are {ref.dtype}")
        return x

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The flow's context ``c(x) = 2 x / (L - 1) - 1``, flattened to ``(batch, D)``."""
        return (2.0 * x / (self.num_levels - 1) - 1.0).reshape(x.shape[0], -1)

    # ------------------------------------------------------------------------------------------ maps
    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """``(u, log q(u | x))``: ``u`` of ``x``'s shape, strictly inside ``(0, 1)``; ``log q`` of shape
        ``(batch,)`` (differentiable in the flow's parameters: the reparameterisation trick)."""
        self._check_x(x)
        B = x.shape[0]
        w = torch.rand((B, self.dim), generator=generator, dtype=x.dtype, device=x.device)
        w = w.clamp_min(torch.finfo(x.dtype).tiny)
        eps = torch.log(w) - torch.log1p(-w)                       # logit(w): a standard logistic draw
        v, logdet_inv = self.flow._inverse(eps, self.context(x))
        log_q = _sum_except_batch(_log_logistic(eps)) - logdet_inv - _sum_except_batch(_log_logistic(v))
        one = torch.ones((), dtype=x.dtype, device=x.device)
        u = torch.sigmoid(v).clamp(torch.finfo(x.dtype).tiny, torch.nextafter(one, 0 * one))
        return u.reshape(x.shape), log_q

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """``(y, log q(u | x))`` with ``y = (x + u) / L`` inside the cell of ``x`` (``floor(L y) = x``)."""
        u, log_q = self.sample(x, generator)
        return _into_cells(x, u, self.num_levels), log_q

    def log_prob(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log q(u | x)``, shape ``(batch,)``, for ``u`` strictly inside ``(0, 1)`` of ``x``'s shape."""
        self._check_x(x)
        check_tensor(u, name="u")
        if u.shape != x.shape:
            raise ValueError(f"u must have the shape of x, {tuple(x.shape)}, got {tuple(u.shape)}")
        if ((u <= 0) | (u >= 1)).any():
            raise ValueError("u must lie in the open unit cube (0, 1)^D")
        u = u.reshape(u.shape[0], -1)
        v = torch.log(u) - torch.log1p(-u)
        eps, logdet = self.flow._forward(v, self.context(x))
        return _sum_except_batch(_log_logistic(eps)) + logdet - _sum_except_batch(torch.log(u) + torch.log1p(-u))

    def extra_repr(self):
        return f"event_shape={self.event_shape}, num_levels={self.num_levels}"


def log_mass_estimate(log_prob_y, x: torch.Tensor, dequantizer, num_samples: int = 1,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample estimate of ``log P(x)`` (nats, shape ``(batch,)``) of integers ``x`` under a model of
    ``y = (x + u) / L``, from ``K = num_samples`` draws of the dequantiser:

        log (1/K) sum_k exp(log p_Y(y_k) - D log L - log q(u_k | x)).

    ``K = 1`` is the variational bound (1) of ``flowlib.dequantization`` (the training objective); ``K > 1`` the
    importance-weighted estimate (2), a tighter bound in expectation. ``dequantizer`` is a
    ``VariationalDequantization`` or a ``UniformDequantization`` (``log q = 0``); ``log_prob_y`` maps a batch
    ``y`` (the shape of ``x``) to ``(batch,)`` log-densities, e.g. ``model.log_prob``. Bits/dim:
    ``-estimate.mean() / (D log 2)``.
    """
    check_tensor(x, name="x")
    K = check_int(num_samples, "num_samples")
    if not callable(log_prob_y):
        raise ValueError("log_prob_y must be a callable y -> (batch,) log-densities, e.g. model.log_prob")
    if not isinstance(dequantizer, (VariationalDequantization, UniformDequantization)):
        raise ValueError(f"dequantizer must be a VariationalDequantization or a UniformDequantization, got "
                         f"{type(dequantizer).__name__}")
    L = dequantizer.num_levels
    D = x[0].numel()
    xs = x.repeat(K, *([1] * (x.dim() - 1)))
    if isinstance(dequantizer, UniformDequantization):
        y, log_q = dequantizer(xs, generator=generator), xs.new_zeros(xs.shape[0])
    else:
        y, log_q = dequantizer(xs, generator=generator)
    w = (log_prob_y(y) - log_q - D * math.log(L)).reshape(K, x.shape[0])
    return torch.logsumexp(w, dim=0) - math.log(K)
