"""Glow's invertible 1x1 convolution: a learnt channel-mixing matrix applied at every pixel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flowlib._validate import check_int
from flowlib.transforms.base import Transform
from flowlib.transforms.linear import LUParams, random_rotation

__all__ = ["Invertible1x1Conv"]


class Invertible1x1Conv(Transform):
    """Invertible 1x1 convolution (Kingma & Dhariwal, 2018) on images ``(B, C, H, W)``.

    A 1x1 convolution multiplies the channel vector of every pixel by the same ``c x c`` matrix ``W``;
    it generalises a fixed channel permutation to a learnt one.

    * map: ``z[:, :, i, j] = W x[:, :, i, j]`` for every pixel ``(i, j)``;
    * inverse: ``x[:, :, i, j] = W^{-1} z[:, :, i, j]``;
    * log-det: the Jacobian is block diagonal with ``h*w`` copies of ``W``, so
      ``log|det J| = h * w * log|det W|``;
    * cost, plain (``lu=False``): ``slogdet(W)`` is O(c^3), applying ``W`` O(c^2 hw): O(c^3 + c^2 hw).
      ``W`` is initialised as a random rotation (``log|det W| = 0``) and learnt freely;
    * cost, LU (``lu=True``): ``W = P L (U + diag(s))`` (see :class:`flowlib.transforms.linear.LUParams`),
      ``log|det W| = sum_c log|s_c|`` is O(c): O(c + c^2 hw) in all. ``W`` stays invertible for
      every parameter value. The inverse needs ``W^{-1}`` (two triangular solves, O(c^3)) in both forms.
    """

    def __init__(self, num_channels: int, lu: bool = False, seed: int | None = None):
        super().__init__()
        self.num_channels = check_int(num_channels, "num_channels")
        self.lu = LUParams(num_channels, seed) if lu else None
        if not lu:
            self.weight = nn.Parameter(random_rotation(num_channels, seed))

    def _check_shape(self, shape, name, inverse=False):
        if len(shape) != 4 or shape[1] != self.num_channels:
            raise ValueError(f"{name} must have shape (batch, {self.num_channels}, H, W), got {tuple(shape)}")
        return tuple(shape)

    def _weight_and_logabsdet(self):
        if self.lu is not None:
            return self.lu.weight(), self.lu.logabsdet()
        return self.weight, torch.linalg.slogdet(self.weight)[1]

    def _forward(self, x):
        W, logabsdet = self._weight_and_logabsdet()
        z = F.conv2d(x, W[:, :, None, None])
        return z, (x.shape[2] * x.shape[3] * logabsdet).repeat(x.shape[0])

    def _inverse(self, z):
        if self.lu is not None:
            W_inv, logabsdet = self.lu.inverse_weight(), self.lu.logabsdet()
        else:
            W_inv, logabsdet = torch.linalg.inv(self.weight), torch.linalg.slogdet(self.weight)[1]
        x = F.conv2d(z, W_inv[:, :, None, None])
        return x, (-z.shape[2] * z.shape[3] * logabsdet).repeat(z.shape[0])
