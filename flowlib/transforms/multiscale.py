"""Multi-scale architecture with factor-out (RealNVP, Dinh et al. 2017; Glow).

Design. A ``MultiScale`` transform runs ``K`` levels on an image ``x`` of shape ``(C, H, W)``::

    h = x
    for k in 0..K-1:
        h = squeeze(h)                  # (c, h, w) -> (4c, h/2, w/2)            [squeeze=True]
        h = level_k(h)                  # any shape-preserving transform, e.g. Glow steps
        if k < K-1:
            z_k, h = split(h)           # factor out the first half of the channels
    z_K = h

Factored-out halves ``z_k`` are not transformed any further: they are already "Gaussianised", and only
half of the variables go on to the deeper (coarser, more expensive) levels, which halves the cost per
level and lets early levels model local structure and later levels global structure.

``z`` is the concatenation of the flattened ``z_0, ..., z_K`` reshaped to ``x``'s shape ``(C, H, W)``,
so ``Flow(MultiScale(...), StandardNormal((C, H, W)))`` is a valid density (the base is i.i.d., so the
order in which the pieces are laid out does not matter). The inverse cuts ``z`` into the same pieces
and runs the levels backwards, concatenating each ``z_k`` back before inverting level ``k``.
"""

from __future__ import annotations

import torch
from torch import nn

from flowlib._validate import check_int
from flowlib.transforms.base import Transform
from flowlib.transforms.elementwise import as_event_shape
from flowlib.transforms.reshape import Squeeze

__all__ = ["MultiScale"]


class MultiScale(Transform):
    """Run ``levels`` at successively coarser scales, factoring out half of the channels after each level
    except the last (see the module docstring for the design).

    * map: the loop above; ``z`` has the shape of ``x``;
    * inverse: reassemble ``h`` from the factored-out pieces, level by level, last level first;
    * log-det: the sum of the levels' log-dets (squeezes and splits are permutations: log-det 0);
    * cost: the sum of the levels' costs; level ``k`` sees ``C H W / 2^k`` numbers.

    Parameters
    ----------
    input_shape : ``(C, H, W)`` of one image.
    levels : list of ``K >= 1`` shape-preserving transforms; level ``k`` works on the shape
        ``MultiScale.level_shapes(input_shape, K, squeeze)[k]``.
    squeeze : whether to apply ``Squeeze(2)`` before every level (then ``H`` and ``W`` must be divisible
        by ``2**K``). Every factor-out needs an even number of channels.
    """

    def __init__(self, input_shape, levels, squeeze: bool = True):
        super().__init__()
        self.event_shape = as_event_shape(input_shape, "input_shape")
        levels = list(levels)
        for level in levels:
            if not isinstance(level, Transform):
                raise ValueError(f"levels must be flowlib Transforms, got {type(level).__name__}")
        self.shapes = self.level_shapes(self.event_shape, len(levels), squeeze)
        for k, (level, shape) in enumerate(zip(levels, self.shapes)):
            if level.event_shape is not None and tuple(level.event_shape) != shape:
                raise ValueError(
                    f"level {k} must work on shape {shape}, but its event_shape is {level.event_shape}"
                )
            if not level.shape_preserving:
                raise ValueError(f"level {k} ({type(level).__name__}) must preserve the shape of its input")
            try:  # also the layers that know only their width (ActNorm, GlowStep, ...)
                level._check_shape((1, *shape), "x")
            except ValueError as e:
                raise ValueError(f"level {k} ({type(level).__name__}) must work on shape {shape}: {e}") from None
        self.levels = nn.ModuleList(levels)
        self.squeeze = Squeeze(2) if squeeze else None
        # sizes of the pieces of the flattened z: half of each level's output but the last, then all of it
        sizes = [c * h * w // 2 for c, h, w in self.shapes[:-1]]
        self.sizes = sizes + [self.shapes[-1][0] * self.shapes[-1][1] * self.shapes[-1][2]]

    @staticmethod
    def level_shapes(input_shape, num_levels: int, squeeze: bool = True) -> list[tuple[int, int, int]]:
        """The shape ``(c, h, w)`` that each level works on; raises ``ValueError`` if they do not exist."""
        shape = as_event_shape(input_shape, "input_shape")
        if len(shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {shape}")
        check_int(num_levels, "num_levels")
        c, h, w = shape
        shapes = []
        for k in range(num_levels):
            if squeeze:
                if h % 2 or w % 2:
                    raise ValueError(
                        f"input height and width must be divisible by 2**num_levels={2**num_levels}, "
                        f"got {shape}"
                    )
                c, h, w = 4 * c, h // 2, w // 2
            shapes.append((c, h, w))
            if k < num_levels - 1:
                if c % 2:
                    raise ValueError(
                        f"factor-out halves the channels and needs an even number, level {k} has {c}"
                    )
                c //= 2
        return shapes

    def _forward(self, x):
        b, last = x.shape[0], len(self.levels) - 1
        h, logdet, pieces = x, x.new_zeros(x.shape[0]), []
        for k, level in enumerate(self.levels):
            if self.squeeze is not None:
                h, _ = self.squeeze._forward(h)
            h, ld = level._forward(h)
            logdet = logdet + ld
            if k < last:
                z_k, h = h.chunk(2, dim=1)
                pieces.append(z_k.reshape(b, -1))
        pieces.append(h.reshape(b, -1))
        return torch.cat(pieces, dim=1).reshape(x.shape), logdet

    def _inverse(self, z):
        b, last = z.shape[0], len(self.levels) - 1
        pieces = z.reshape(b, -1).split(self.sizes, dim=1)
        h, logdet = pieces[-1].reshape(b, *self.shapes[-1]), z.new_zeros(b)
        for k in range(last, -1, -1):
            if k < last:
                c, hh, ww = self.shapes[k]
                h = torch.cat([pieces[k].reshape(b, c // 2, hh, ww), h], dim=1)
            h, ld = self.levels[k]._inverse(h)
            logdet = logdet + ld
            if self.squeeze is not None:
                h, _ = self.squeeze._inverse(h)
        return h, logdet
