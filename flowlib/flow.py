"""A normalizing-flow model: a transform plus a base distribution."""

from __future__ import annotations

import torch
from torch import nn

from flowlib._validate import check_dtype, check_int, check_tensor
from flowlib.transforms.base import Compose, Transform

__all__ = ["Flow"]


class Flow(nn.Module):
    """Density model ``x = f^{-1}(z)``, ``z ~ p_Z``.

    Change of variables (``f`` = ``transform.forward``, which normalizes):

        log p_X(x) = log p_Z(f(x)) + log|det J_f(x)|                       (1)

    Sampling draws ``z ~ p_Z`` and returns ``f^{-1}(z)``.

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

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample log-density in nats, shape ``(batch,)``: equation (1)."""
        check_tensor(x, name="x", event_shape=self.event_shape)
        check_dtype(x, self, "x")
        self.transform._check_shape(tuple(x.shape), "x")  # shapes only: no second scan of x
        z, logdet = self.transform._forward(x)  # validated once, here
        return self.base.log_prob(z) + logdet

    def forward(self, x):
        return self.log_prob(x)

    def sample(self, n: int) -> torch.Tensor:
        """Draw ``n`` samples: ``z ~ p_Z``, ``x = f^{-1}(z)``."""
        check_int(n, "n")
        z = self.base.sample(n)
        x, _ = self.transform._inverse(z)  # z comes from the base: already well formed
        return x

    def sample_with_log_prob(self, n: int):
        """Samples and their log-densities in one pass: ``log p_X(x) = log p_Z(z) - log|det J_{f^{-1}}(z)|``."""
        check_int(n, "n")
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
