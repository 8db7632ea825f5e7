"""Ready-made flows: NICE, RealNVP and Glow (and MAF/IAF when available), each a ``flowlib.Flow`` with a
standard normal base distribution.

Every builder draws its random initialisation from torch's global generator, so ``torch.manual_seed``
before the call makes it reproducible.
"""

from __future__ import annotations

from flowlib._validate import check_int
from flowlib.flow import Flow
from flowlib.transforms.actnorm import ActNorm
from flowlib.transforms.base import Compose
from flowlib.transforms.coupling import MLP, AdditiveCoupling, AffineCoupling, half_mask
from flowlib.transforms.elementwise import NICEScaling, as_event_shape
from flowlib.transforms.glow import GlowStep
from flowlib.transforms.multiscale import MultiScale

__all__ = ["nice", "realnvp", "glow"]

try:  # written separately; re-exported here so that every model builder lives in one place
    from flowlib.transforms.autoregressive import iaf, maf

    __all__ += ["maf", "iaf"]
except ImportError:  # pragma: no cover
    pass


def _standard_normal(event_shape):
    from flowlib.distributions import StandardNormal

    return StandardNormal(event_shape)


def nice(dim: int, num_layers: int = 4, hidden=(64, 64)) -> Flow:
    """NICE (Dinh et al., 2014): ``num_layers`` additive couplings alternating the two halves of the
    input, then a diagonal scaling layer. Volume changes only in the last layer."""
    check_int(dim, "dim", minimum=2)
    check_int(num_layers, "num_layers")
    layers = [AdditiveCoupling(half_mask(dim, first=k % 2 == 0), hidden) for k in range(num_layers)]
    return Flow(Compose(*layers, NICEScaling(dim)), _standard_normal((dim,)))


def realnvp(dim: int, num_layers: int = 8, hidden=(64, 64), last_init="zeros", actnorm: bool = False) -> Flow:
    """RealNVP for vectors (Dinh et al., 2017): ``num_layers`` affine couplings alternating the two halves
    of the input (``half_mask(dim, first=True)``, then ``first=False``, ...), each with an ``MLP``
    conditioner of widths ``hidden`` and bounded scales (``AffineCoupling``).

    ``last_init`` initialises the last layer of every conditioner (see :class:`flowlib.transforms.MLP`:
    ``"zeros"``, ``"default"`` or a float std); ``actnorm=True`` puts an ``ActNorm`` in front of every
    coupling. ``benchmarks/RESULTS.md`` compares these choices at a fixed budget."""
    check_int(dim, "dim", minimum=2)
    check_int(num_layers, "num_layers")
    layers = []
    for k in range(num_layers):
        mask = half_mask(dim, first=k % 2 == 0)
        n_a = int(mask.sum())
        if actnorm:
            layers.append(ActNorm(dim))
        layers.append(AffineCoupling(mask, MLP(n_a, 2 * (dim - n_a), hidden, last_init=last_init)))
    return Flow(Compose(*layers), _standard_normal((dim,)))


def glow(image_shape, num_levels: int = 2, steps_per_level: int = 4, hidden_channels: int = 64) -> Flow:
    """Glow (Kingma & Dhariwal, 2018) for images of shape ``(C, H, W)``: a ``MultiScale`` architecture with
    ``num_levels`` levels of ``steps_per_level`` ``GlowStep``s each (squeeze before every level, factor
    out half of the channels after every level but the last). ``H`` and ``W`` must be divisible by
    ``2**num_levels``."""
    image_shape = as_event_shape(image_shape, "image_shape")
    check_int(steps_per_level, "steps_per_level")
    shapes = MultiScale.level_shapes(image_shape, num_levels)
    levels = [Compose(*[GlowStep(c, hidden_channels) for _ in range(steps_per_level)]) for c, _, _ in shapes]
    return Flow(MultiScale(image_shape, levels), _standard_normal(image_shape))
