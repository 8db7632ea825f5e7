"""Activation normalisation (Glow, Kingma & Dhariwal 2018): a per-channel affine map with data init."""

from __future__ import annotations

import torch
from torch import nn

from flowlib._validate import check_int, check_positive
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
    ``inverse`` is called first, no initialisation happens (the layer is then the identity); note that
    ``inverse`` does not count as "seen": the first ``forward`` in training mode initialises the layer even
    if ``inverse`` (e.g. ``Flow.sample``) was called before, and from then on both directions change.

    The initialising batch must have a spread in every channel: a single sample (vectors), or a channel
    whose values are all equal (standard deviation ``<= eps``), would set the scale to about ``1 / eps``
    (1e6) without a word, so ``ValueError`` is raised instead. Initialise with a batch of several distinct
    samples, or skip the data initialisation: ``layer.initialized.fill_(True)`` (or call it in eval mode).
    """

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        self.num_features = check_int(num_features, "num_features")
        self.eps = check_positive(eps, "eps")
        self.loc = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        self._init_seen = False  # Python copy of `initialized`, so that training steps need no device sync

    def _check_shape(self, shape, name, inverse=False):
        if len(shape) not in (2, 4) or shape[1] != self.num_features:
            raise ValueError(
                f"{name} must have shape (batch, {self.num_features}) or (batch, {self.num_features}, H, W), "
                f"got {tuple(shape)}"
            )
        return tuple(shape)

    def _view(self, p, x):
        """Reshape a per-channel vector so that it broadcasts against ``x``."""
        return p.view(1, -1, 1, 1) if x.dim() == 4 else p.view(1, -1)

    def _pixels(self, x):
        return x.shape[2] * x.shape[3] if x.dim() == 4 else 1

    @torch.no_grad()
    def _data_init(self, x):
        dims = [0, 2, 3] if x.dim() == 4 else [0]
        if x.numel() // self.num_features < 2:
            raise ValueError(
                f"ActNorm initialises its scale from the spread of the first training batch, but that batch has "
                f"one value per channel (shape {tuple(x.shape)}); call it first with a batch of several samples, "
                f"or skip the data initialisation with layer.initialized.fill_(True)"
            )
        mean = x.mean(dim=dims)
        std = x.std(dim=dims, unbiased=False)
        flat = (std <= self.eps).nonzero().flatten().tolist()
        if flat:
            raise ValueError(
                f"ActNorm initialises its scale to 1 / std of the first training batch, but channel(s) {flat[:10]} "
                f"have std <= eps = {self.eps:g} (constant in this batch), which would give a scale of about "
                f"{1 / (2 * self.eps):.0e}; initialise with a batch whose channels vary, or skip the data "
                f"initialisation with layer.initialized.fill_(True)"
            )
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
