"""Fixed permutations of features (vectors) or channels (images).

Coupling layers leave part of their input unchanged; permuting between them makes every coordinate
get transformed eventually. A permutation matrix has determinant +-1, so the log-det is 0.
"""

from __future__ import annotations

import torch

from flowlib._validate import check_int
from flowlib.transforms.base import Transform

__all__ = ["Permutation", "Reverse"]


class Permutation(Transform):
    """Reorder the entries along axis ``dim`` (1: the features of ``(B, d)`` or the channels of
    ``(B, C, H, W)``).

    * map: ``z[:, i] = x[:, perm[i]]`` (along ``dim``);
    * inverse: ``x[:, perm[i]] = z[:, i]``, i.e. ``x = z[:, inv_perm]`` with ``inv_perm = argsort(perm)``;
    * log-det: ``log|det P| = log 1 = 0``;
    * cost: O(D) memory moves, no arithmetic.

    Parameters
    ----------
    num_features : size of axis ``dim``.
    perm : a permutation of ``0..num_features-1``; if ``None``, a random one is drawn (from ``seed``
        when given, so that it is reproducible). It is stored as a buffer, so it is saved in the
        ``state_dict``.
    seed : seed of the random permutation (only used when ``perm is None``; ``None`` draws from torch's
        global generator).
    dim : the axis to permute, ``>= 1`` (axis 0 is the batch).
    """

    volume_preserving = True

    def __init__(self, num_features: int, perm=None, seed: int | None = None, dim: int = 1):
        super().__init__()
        self.num_features = check_int(num_features, "num_features")
        self.dim = check_int(dim, "dim")
        if perm is None:  # seeded generator, or torch's global one
            gen = None if seed is None else torch.Generator().manual_seed(seed)
            perm = torch.randperm(num_features, generator=gen)
        try:
            perm = torch.as_tensor(perm)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"perm must be a permutation of 0..{num_features - 1}, got {perm!r}") from None
        if perm.dtype.is_floating_point or perm.dtype == torch.bool or perm.shape != (num_features,):
            raise ValueError(
                f"perm must be a 1-D integer tensor of length num_features={num_features}, "
                f"got {perm.tolist()!r}"
            )
        perm = perm.long()
        if not torch.equal(torch.sort(perm).values, torch.arange(num_features)):
            raise ValueError(f"perm must be a permutation of 0..{num_features - 1}, got {perm.tolist()}")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def _check_shape(self, shape, name, inverse=False):
        if len(shape) <= self.dim or shape[self.dim] != self.num_features:
            raise ValueError(
                f"{name} must have size {self.num_features} along dim {self.dim}, got shape {tuple(shape)}"
            )
        return tuple(shape)

    def _forward(self, x):
        return x.index_select(self.dim, self.perm), x.new_zeros(x.shape[0])

    def _inverse(self, z):
        return z.index_select(self.dim, self.inv_perm), z.new_zeros(z.shape[0])


class Reverse(Permutation):
    """Reverse the order along ``dim``: ``perm = (d-1, ..., 1, 0)``, its own inverse; log-det 0, cost O(D).

    Between two half-mask couplings this swaps which half is transformed.
    """

    def __init__(self, num_features: int, dim: int = 1):
        n = check_int(num_features, "num_features")
        super().__init__(n, perm=torch.arange(n - 1, -1, -1), dim=dim)
