"""Activation normalisation (Glow, Kingma & Dhariwal 2018): a per-channel affine map with data init."""

from __future__ import annotations

import torch
from torch import nn

from flowlib._validate import check_int, check_positive, check_tensor
from flowlib.transforms.base import Transform

__all__ = ["ActNorm"]


class ActNorm(Transform):
    """Per-channel shift and scale, initialised from the first batch it sees.

    Works on vectors ``(B, d)`` (one "channel" per coordinate, ``num_features = d``) and on images
    ``(B, C, H, W)`` (``num_features = C``, the same scale for every pixel of a channel).

    * map: ``z = (x - loc_c) * s_c`` with ``s_c = exp(log_scale_c) > 0``;
    * inverse: ``x = z / s_c + loc_c``;
    * log-det: ``log|det J| = sum_c log|s_c| = sum_c log_scale_c`` for vectors and
      ``h * w * sum_c log|s_c|`` for images (every one of the ``h*w`` pixels of channel ``c`` is
      scaled by ``s_c``);
    * cost: O(C) for the log-det, O(C h w) for the map and its inverse.

    **Data-dependent initialisation.** The first call of ``forward`` in training mode sets
    ``loc_c`` to the batch mean of channel ``c`` and ``s_c = 1 / (std_c + eps)``, so that this first
    output has zero mean and unit variance per channel; afterwards both are ordinary parameters. The
    boolean buffer ``initialized`` records that this has happened, so the choice survives
    ``state_dict`` save and load (a loaded model is not re-initialised). In eval mode, or when
    ``inverse`` is called first, no initialisation happens (the layer is then the identity).
    """

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        self.num_features = check_int(num_features, "num_features")
        self.eps = check_positive(eps, "eps")
        self.loc = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        self._init_seen = False  # Python copy of `initialized`, so that training steps need no device sync

    def _check(self, x, name):
        x = check_tensor(x, name=name)
        if x.dim() not in (2, 4) or x.shape[1] != self.num_features:
            raise ValueError(
                f"{name} must have shape (batch, {self.num_features}) or (batch, {self.num_features}, H, W), "
                f"got {tuple(x.shape)}"
            )
        return x

    def _view(self, p, x):
        """Reshape a per-channel vector so that it broadcasts against ``x``."""
        return p.view(1, -1, 1, 1) if x.dim() == 4 else p.view(1, -1)

    def _pixels(self, x):
        return x.shape[2] * x.shape[3] if x.dim() == 4 else 1

    @torch.no_grad()
    def _data_init(self, x):
        dims = [0, 2, 3] if x.dim() == 4 else [0]
        mean = x.mean(dim=dims)
        std = x.std(dim=dims, unbiased=False)
        self.loc.copy_(mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._init_seen = False  # re-read the loaded `initialized` buffer on the next call

    def _forward(self, x):
        if self.training and not self._init_seen:
            if not self.initialized:
                self._data_init(x)
            self._init_seen = True
        z = (x - self._view(self.loc, x)) * self._view(torch.exp(self.log_scale), x)
        return z, (self._pixels(x) * self.log_scale.sum()).repeat(x.shape[0])

    def _inverse(self, z):
        x = z * self._view(torch.exp(-self.log_scale), z) + self._view(self.loc, z)
        return x, (-self._pixels(z) * self.log_scale.sum()).repeat(z.shape[0])
