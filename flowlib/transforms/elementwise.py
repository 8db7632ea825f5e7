"""Elementwise (diagonal) affine maps: the simplest invertible layers.

Each output coordinate depends on one input coordinate only, so the Jacobian is diagonal and its
log-determinant is the sum of the logs of the diagonal entries: O(D) for D = prod(event_shape).
"""

from __future__ import annotations

import torch
from torch import nn

from flowlib._validate import check_int
from flowlib.transforms.base import Transform

__all__ = ["ElementwiseAffine", "NICEScaling", "as_event_shape"]


def as_event_shape(event_shape, name: str = "event_shape") -> tuple[int, ...]:
    """Turn an int or a sequence of positive ints into a shape tuple, or raise ``ValueError``."""
    if isinstance(event_shape, int) and not isinstance(event_shape, bool):
        event_shape = (event_shape,)
    if not isinstance(event_shape, (tuple, list, torch.Size)) or len(event_shape) == 0:
        raise ValueError(
            f"{name} must be a positive int or a non-empty tuple of positive ints, got {event_shape!r}"
        )
    return tuple(check_int(s, f"every entry of {name}") for s in event_shape)


class ElementwiseAffine(Transform):
    """Learnable shift and scale of every coordinate.

    * map: ``z = (x - shift) * exp(log_scale)`` (elementwise; parameters have shape ``event_shape``);
    * inverse: ``x = z * exp(-log_scale) + shift``;
    * log-det: ``log|det J| = sum_i log_scale_i`` (the scale ``exp(log_scale_i)`` is always positive,
      so ``log|s_i| = log_scale_i``); the same for every sample;
    * cost: O(D) for the map, its inverse and the log-det, D = prod(event_shape).

    Initialised to the identity (``shift = 0``, ``log_scale = 0``).
    """

    def __init__(self, event_shape):
        super().__init__()
        self.event_shape = as_event_shape(event_shape)
        self.shift = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def _forward(self, x):
        z = (x - self.shift) * torch.exp(self.log_scale)
        return z, self.log_scale.sum().repeat(x.shape[0])

    def _inverse(self, z):
        x = z * torch.exp(-self.log_scale) + self.shift
        return x, (-self.log_scale.sum()).repeat(z.shape[0])


class NICEScaling(Transform):
    """NICE's final diagonal scaling layer (Dinh et al., 2014, section 3.3).

    * map: ``z = exp(s) * x`` (elementwise, ``s`` has shape ``event_shape``);
    * inverse: ``x = exp(-s) * z``;
    * log-det: ``log|det J| = sum_i s_i``. The additive couplings of NICE are volume preserving, so this
      layer is the only place where a NICE model can change volume: it lets the model give more
      weight (large ``s_i``) to some dimensions than to others;
    * cost: O(D).
    """

    def __init__(self, event_shape):
        super().__init__()
        self.event_shape = as_event_shape(event_shape)
        self.s = nn.Parameter(torch.zeros(self.event_shape))

    def _forward(self, x):
        return x * torch.exp(self.s), self.s.sum().repeat(x.shape[0])

    def _inverse(self, z):
        return z * torch.exp(-self.s), (-self.s.sum()).repeat(z.shape[0])
