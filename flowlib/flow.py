"""A normalizing-flow model: a transform plus a base distribution."""

from __future__ import annotations

import functools

import torch
from torch import nn

from flowlib._validate import check_context, check_dtype, check_int, check_tensor
from flowlib._workspace import workspace
from flowlib.transforms.base import Compose, Transform

__all__ = ["Flow"]


def _in_workspace(method):
    """Without autograd, run ``method`` inside one ``flowlib._workspace.workspace()``: the hidden layers of every
    conditioner (and every row block) of the call reuse the same buffers."""

    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        if torch.is_grad_enabled():
            return method(*args, **kwargs)
        with workspace():
            return method(*args, **kwargs)

    return wrapped


class Flow(nn.Module):
    """Density model ``x = f^{-1}(z)``, ``z ~ p_Z``.

    Change of variables (``f`` = ``transform.forward``, which normalizes):

        log p_X(x) = log p_Z(f(x)) + log|det J_f(x)|                       (1)

    Sampling draws ``z ~ p_Z`` and returns ``f^{-1}(z)``.

    **Conditional flows.** When the transform has conditional layers (built with ``context_dim = c``: couplings,
    MAF/IAF and their spline versions), the model is a conditional density ``p(x | context)``: ``f`` depends on
    the context, ``log p(x | ctx) = log p_Z(f(x; ctx)) + log|det df/dx(x; ctx)|`` (for each fixed context (1)
    holds as it is), and ``log_prob(x, context)``, ``sample(n, context)`` take it. Without context nothing
    changes.

    Parameters
    ----------
    transform : a ``Transform`` (a list is wrapped in ``Compose``).
    base : a distribution with ``log_prob(z)`` returning shape ``(batch,)`` and ``sample(n)``;
        ``flowlib.distributions.StandardNormal`` is the usual choice.
    """

    def __init__(self, transform, base):
        super().__init__()
        if isinstance(transform, (list, tuple)):
            transform = Compose(*transform)
        if not isinstance(transform, Transform):
            raise ValueError(f"transform must be a flowlib Transform, got {type(transform).__name__}")
        self.transform = transform
        self.base = base

    @property
    def event_shape(self):
        return getattr(self.base, "event_shape", None)

    @property
    def context_dim(self) -> int | None:
        """Width of the context of a conditional flow (``None``: unconditional)."""
        return self.transform.context_dim

    #: Rows per block when ``log_prob``/``sample`` run without autograd on a large batch of vectors (see
    #: ``_blocks``); ``None`` switches the blocking off.
    block_rows: int | None = 2048

    @_in_workspace
    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample log-density in nats, shape ``(batch,)``: equation (1). A conditional flow needs
        ``context`` of shape ``(batch, context_dim)`` (one context per row of ``x``)."""
        check_tensor(x, name="x", event_shape=self.event_shape)
        check_dtype(x, self, "x")
        self.transform._check_shape(tuple(x.shape), "x")  # shapes only: no second scan of x
        if context is not None or self.transform.context_dim is not None:
            return self._log_prob_context(x, check_context(self.transform, context, x.shape[0]))
        blocks = self._blocks(x)
        if blocks is not None:
            return torch.cat([self._log_prob(b) for b in blocks])
        return self._log_prob(x)

    def _log_prob(self, x):
        z, logdet = self.transform._forward(x)  # validated once, in log_prob
        return self.base.log_prob(z) + logdet

    def _log_prob_context(self, x, context):
        blocks = self._blocks(x)
        if blocks is not None:
            return torch.cat([self._log_prob_context(b, c) for b, c in zip(blocks, context.split(self.block_rows))])
        z, logdet = self.transform._forward(x, context)
        return self.base.log_prob(z) + logdet

    def _sample_context(self, n: int, context):
        """``context`` of a conditional ``sample``: ``(n, c)`` (one per sample) or ``(c,)`` (the same for all)."""
        c = self.transform.context_dim
        if c is not None and isinstance(context, torch.Tensor) and context.dim() == 1:
            if context.shape[0] != c:
                raise ValueError(f"context must have shape ({c},) or (n, {c}) = ({n}, {c}), got {tuple(context.shape)}")
            context = context.expand(n, c)
        return check_context(self.transform, context, n)

    def _blocks(self, x):
        """Without autograd, a large batch of wide vectors (``d >= 16``) through a stack of row-wise layers
        (couplings, autoregressive layers, permutations) goes through in blocks of ``block_rows`` rows: each
        block's activations stay in the CPU cache, which cut the time of ``log_prob`` and ``sample`` of 10,000
        8x8 digits by a quarter (``benchmarks/RESULTS.md``). Only with one intra-op thread: with two, each thread
        already works on half of the rows, and blocks only make every kernel smaller (blocks of 2048 rows cost
        digits RealNVP 15-25 % at 2 threads, measured in ``benchmarks/RESULTS.md``). Nor for a stack that runs in
        place (``Compose._run_in_place_all``: RealNVP), which allocates nothing per layer. The rows do not interact,
        so the result is the same; ``None`` where blocking does not apply."""
        rows = self.block_rows
        if rows is None or torch.is_grad_enabled() or x.dim() != 2 or x.shape[1] < 16 or x.shape[0] < 2 * rows:
            return None
        if torch.get_num_threads() > 1:
            return None
        if not _rowwise(self.transform) or (
                isinstance(self.transform, Compose) and Compose._all_in_place(self.transform.transforms)):
            return None  # a stack that runs in place allocates nothing per layer: blocks only add kernels
        return x.split(rows)

    def forward(self, x, context=None):
        return self.log_prob(x, context)

    @_in_workspace
    def sample(self, n: int, context: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``n`` samples: ``z ~ p_Z``, ``x = f^{-1}(z)``. A conditional flow needs ``context``: shape
        ``(n, context_dim)`` (one context per sample) or ``(context_dim,)`` (``n`` samples of one context)."""
        check_int(n, "n")
        if context is not None or self.transform.context_dim is not None:
            context = self._sample_context(n, context)
            z = self.base.sample(n)
            check_dtype(z, self.transform, "the base's samples")
            blocks = self._blocks(z)
            if blocks is not None:
                rows = self.block_rows
                return torch.cat([self.transform._inverse(b, c)[0] for b, c in zip(blocks, context.split(rows))])
            return self.transform._inverse(z, context)[0]
        z = self.base.sample(n)
        blocks = self._blocks(z)
        if blocks is not None:
            return torch.cat([self.transform._inverse(b)[0] for b in blocks])
        x, _ = self.transform._inverse(z)  # z comes from the base: already well formed
        return x

    @_in_workspace
    def sample_with_log_prob(self, n: int, context: torch.Tensor | None = None):
        """Samples and their log-densities in one pass: ``log p_X(x) = log p_Z(z) - log|det J_{f^{-1}}(z)|``.
        ``context`` as in ``sample``."""
        check_int(n, "n")
        if context is not None or self.transform.context_dim is not None:
            context = self._sample_context(n, context)
            z = self.base.sample(n)
            x, logdet_inv = self.transform._inverse(z, context)
            return x, self.base.log_prob(z) - logdet_inv
        z = self.base.sample(n)
        x, logdet_inv = self.transform._inverse(z)
        return x, self.base.log_prob(z) - logdet_inv

    def intermediates(self, x: torch.Tensor, direction: str = "forward") -> list[torch.Tensor]:
        """Every layer's output ``[h_0, h_1, ..., h_K]`` when mapping ``x`` in ``direction``
        (``"forward"``: data to base; ``"inverse"``: base to data). Used by the book's plots."""
        if direction not in ("forward", "inverse"):
            raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
        t = self.transform if isinstance(self.transform, Compose) else Compose(self.transform)
        with torch.no_grad():
            if direction == "forward":
                return t.forward(x, return_intermediates=True)[2]
            return t.inverse(x, return_intermediates=True)[2]


def _rowwise(transform) -> bool:
    """Whether ``transform`` maps every row of a batch on its own, with no state that a call changes (so that
    splitting a batch into blocks cannot change the result): vector couplings with flowlib's ``MLP``, MADE
    layers, permutations, and compositions of them."""
    from flowlib.transforms.autoregressive import MAF, SplineMAF
    from flowlib.transforms.coupling import MLP, _Coupling
    from flowlib.transforms.permutation import Permutation

    if isinstance(transform, Compose):
        return all(_rowwise(t) for t in transform.transforms)
    if isinstance(transform, _Coupling):  # flowlib's own MLP: no batch statistics, whatever the mode
        return not transform.image and type(transform.conditioner) is MLP
    return isinstance(transform, (MAF, SplineMAF, Permutation))  # IAF, SplineIAF are subclasses
