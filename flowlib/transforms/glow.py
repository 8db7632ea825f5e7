"""One step of Glow (Kingma & Dhariwal, 2018)."""

from __future__ import annotations

from flowlib._validate import check_int
from flowlib.transforms.actnorm import ActNorm
from flowlib.transforms.base import Compose
from flowlib.transforms.conv import Invertible1x1Conv
from flowlib.transforms.coupling import AffineCoupling, channel_mask

__all__ = ["GlowStep"]


class GlowStep(Compose):
    """ActNorm -> invertible 1x1 convolution -> affine coupling on the channels, for ``(B, C, H, W)``.

    * map: ``z = coupling(conv1x1(actnorm(x)))``; inverse: the three inverses in reverse order;
    * log-det: ``h w sum_c log|s_c|`` (ActNorm) ``+ h w log|det W|`` (1x1 conv, ``h w sum log|s|`` in LU
      form) ``+ sum s(x_a)`` (coupling);
    * cost: O(c + c^2 hw) for ActNorm and the LU 1x1 conv, plus one ``ConvNet`` evaluation.

    The 1x1 convolution replaces a fixed channel permutation: the coupling always transforms the second
    half of the channels given the first (``channel_mask(C)``), and the learnt ``W`` decides which
    mixtures of channels end up in each half. ``num_channels`` must be even.

    Input shape: ``(batch, num_channels, H, W)`` for any ``H, W`` (the layers are convolutional), so
    ``event_shape`` is ``None`` and ``forward``/``inverse`` check the number of axes and of channels.
    """

    def __init__(
        self,
        num_channels: int,
        hidden_channels: int = 64,
        lu: bool = True,
        scale_bound: float = 2.0,
        seed: int | None = None,
    ):
        c = check_int(num_channels, "num_channels")
        super().__init__(
            ActNorm(c),
            Invertible1x1Conv(c, lu=lu, seed=seed),
            AffineCoupling(channel_mask(c), check_int(hidden_channels, "hidden_channels"), scale_bound),
        )
        self.num_channels = c

    def _check_shape(self, shape, name, inverse=False):
        c = self.num_channels
        if len(shape) != 4 or shape[1] != c:
            raise ValueError(f"{name} must have shape (batch, {c}, H, W) for GlowStep({c}), got {tuple(shape)}")
        return super()._check_shape(shape, name, inverse)
