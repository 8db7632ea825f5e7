"""Reshaping transforms: they move numbers around without changing them, so their log-det is 0."""

from __future__ import annotations

from flowlib._validate import check_int
from flowlib.transforms.base import Transform

__all__ = ["Squeeze"]


class Squeeze(Transform):
    """Space-to-depth: ``(B, C, H, W) -> (B, C f^2, H/f, W/f)`` with ``f = factor`` (RealNVP, Glow).

    * map: every ``f x f`` block of pixels of a channel becomes ``f^2`` channels of one pixel:
      ``z[b, c f^2 + i f + j, h, w] = x[b, c, h f + i, w f + j]``;
    * inverse: the same indices read the other way (depth-to-space);
    * log-det: ``0`` (a permutation of the entries);
    * cost: O(D) memory moves.

    It trades spatial size for channels, so that channel-wise couplings and 1x1 convolutions can mix
    neighbouring pixels. ``H`` and ``W`` must be divisible by ``factor``.
    """

    volume_preserving = True
    shape_preserving = False

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = check_int(factor, "factor")

    def _check_shape(self, shape, name, inverse=False):
        if len(shape) != 4:
            raise ValueError(f"{name} must have 4 dimensions (batch, C, H, W), got shape {tuple(shape)}")
        b, c, h, w = shape
        f = self.factor
        if inverse:
            if c % (f * f):
                raise ValueError(
                    f"{name} must have a number of channels divisible by factor**2={f * f}, got shape {tuple(shape)}"
                )
            return (b, c // (f * f), h * f, w * f)
        if h % f or w % f:
            raise ValueError(
                f"{name} must have height and width divisible by factor={f}, got shape {tuple(shape)}"
            )
        return (b, c * f * f, h // f, w // f)

    def _forward(self, x):
        b, c, h, w = x.shape
        f = self.factor
        if h % f or w % f:
            raise ValueError(
                f"x must have height and width divisible by factor={f}, got shape {tuple(x.shape)}"
            )
        z = x.reshape(b, c, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4)
        return z.reshape(b, c * f * f, h // f, w // f), x.new_zeros(b)

    def _inverse(self, z):
        b, c, h, w = z.shape
        f = self.factor
        if c % (f * f):
            raise ValueError(f"z must have a number of channels divisible by factor**2={f * f}, got {c}")
        x = z.reshape(b, c // (f * f), f, f, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // (f * f), h * f, w * f), z.new_zeros(b)
