"""Invertible linear maps ``z = W x + b`` of vectors ``(B, d)``, and what their structure costs.

The Jacobian of ``x -> W x + b`` is ``W`` itself, the same at every ``x``, so the log-det is the constant
``log|det W|``. How expensive that is depends entirely on how ``W`` is parametrised:

=====================  ==================================  ===========  ================  ================
class                  W                                   log-det      map (per sample)  inverse
=====================  ==================================  ===========  ================  ================
``LinearFull``         any invertible matrix               O(d^3)       O(d^2)            O(d^3) solve
``LinearDiagonal``     ``diag(s)``                         O(d)         O(d)              O(d)
``LinearTriangular``   lower triangular                    O(d)         O(d^2)            O(d^2) solve
``LinearLU``           ``P L (U + diag(s))``               O(d)         O(d^2)            O(d^2) 2 solves
``LinearHouseholder``  ``H_1...H_k [diag(s)]``             0 or O(d)    O(k d)            O(k d)
1x1 conv (``conv``)    ``c x c`` on every pixel            O(c^3)       O(c^2) per pixel  O(c^3 + c^2 hw)
=====================  ==================================  ===========  ================  ================

(The 1x1 convolution of Glow is in :mod:`flowlib.transforms.conv`; its whole cost on a ``c x h x w``
image is O(c^3 + c^2 hw), or O(c + c^2 hw) in its LU form.) Log-dets are always ``log|det W|`` (log of
an absolute value), never a sum of absolute values.
"""

from __future__ import annotations

import torch
from torch import nn

from flowlib._validate import check_int
from flowlib.transforms.base import Transform

__all__ = [
    "LinearFull",
    "LinearDiagonal",
    "LinearTriangular",
    "LinearLU",
    "LinearHouseholder",
    "random_rotation",
    "LUParams",
]


def _generator(seed: int | None) -> torch.Generator | None:
    """A generator seeded with ``seed``, or ``None`` (torch's global generator) when ``seed`` is None."""
    return None if seed is None else torch.Generator().manual_seed(seed)


def random_rotation(n: int, seed: int | None = None) -> torch.Tensor:
    """A uniformly random ``n x n`` rotation (orthogonal, ``det = +1``), in the default dtype.

    Drawn from ``torch.Generator().manual_seed(seed)``, or from torch's global generator if ``seed`` is None
    (so ``torch.manual_seed`` makes model construction reproducible)."""
    a = torch.randn(n, n, generator=_generator(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # makes the distribution uniform (Haar)
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(torch.get_default_dtype())


class LUParams(nn.Module):
    """The LU parametrisation of Glow: ``W = P L (U + diag(s))`` with

    * ``P`` a fixed permutation (buffer ``perm``: ``(P y)_i = y_{perm[i]}``),
    * ``L`` lower triangular with ones on the diagonal (learn the strictly lower part),
    * ``U`` strictly upper triangular (learnt), ``s = sign * exp(log_s)`` (``sign`` fixed, ``log_s`` learnt).

    Then ``det W = det P * prod_i s_i`` and ``log|det W| = sum_i log|s_i| = sum_i log_s_i``: O(d), and
    ``W`` is invertible for every value of the parameters. Initialised from a random rotation.
    """

    def __init__(self, n: int, seed: int | None = None):
        super().__init__()
        P, L, U = torch.linalg.lu(random_rotation(n, seed))
        s = torch.diagonal(U)
        self.register_buffer("perm", P.argmax(dim=1))
        self.register_buffer("inv_perm", torch.argsort(P.argmax(dim=1)))
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(n, n), -1))
        self.register_buffer("eye", torch.eye(n))
        self.lower = nn.Parameter(torch.tril(L, -1))
        self.upper = nn.Parameter(torch.triu(U, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, U + diag(s))`` with the masks applied."""
        L = self.lower * self.lower_mask + self.eye
        U = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return L, U

    def logabsdet(self) -> torch.Tensor:
        return self.log_s.sum()

    def weight(self) -> torch.Tensor:
        L, U = self.factors()
        return (L @ U)[self.perm]

    def inverse_weight(self) -> torch.Tensor:
        """``W^{-1} = U^{-1} L^{-1} P^T`` by two triangular solves."""
        L, U = self.factors()
        Pt = self.eye[self.perm].T
        Linv_Pt = torch.linalg.solve_triangular(L, Pt, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(U, Linv_Pt, upper=True)


class _Linear(Transform):
    """Common part: ``event_shape = (dim,)`` and an optional bias ``b`` (zeros at init)."""

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.dim = check_int(dim, "dim")
        self.event_shape = (dim,)
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def _add_bias(self, y):
        return y if self.bias is None else y + self.bias

    def _sub_bias(self, z):
        return z if self.bias is None else z - self.bias


class LinearFull(_Linear):
    """A dense invertible matrix: the most expressive and the most expensive linear flow.

    * map: ``z = W x + b``;
    * inverse: ``x = W^{-1}(z - b)`` by an LU solve, O(d^3) (plus O(d^2) per sample);
    * log-det: ``log|det W|`` via ``torch.linalg.slogdet``, O(d^3);
    * nothing keeps ``W`` invertible during training; it is initialised as a random rotation.
    """

    def __init__(self, dim: int, bias: bool = True, seed: int | None = None):
        super().__init__(dim, bias)
        self.weight = nn.Parameter(random_rotation(dim, seed))

    def _forward(self, x):
        z = self._add_bias(x @ self.weight.T)
        return z, torch.linalg.slogdet(self.weight)[1].repeat(x.shape[0])

    def _inverse(self, z):
        x = torch.linalg.solve(self.weight, self._sub_bias(z).T).T
        return x, (-torch.linalg.slogdet(self.weight)[1]).repeat(z.shape[0])


class LinearDiagonal(_Linear):
    """A diagonal matrix with free (possibly negative) entries.

    * map: ``z = s * x + b`` (elementwise);
    * inverse: ``x = (z - b) / s``;
    * log-det: ``sum_i log|s_i|``, O(d). Invertible as long as no ``s_i`` is exactly 0 (it starts at 1).
    """

    def __init__(self, dim: int, bias: bool = True):
        super().__init__(dim, bias)
        self.diag = nn.Parameter(torch.ones(dim))

    def _logdet(self):
        return torch.log(self.diag.abs()).sum()

    def _forward(self, x):
        return self._add_bias(x * self.diag), self._logdet().repeat(x.shape[0])

    def _inverse(self, z):
        return self._sub_bias(z) / self.diag, (-self._logdet()).repeat(z.shape[0])


class LinearTriangular(_Linear):
    """A lower-triangular matrix ``W = L + diag(s)`` (``L`` strictly lower triangular).

    * map: ``z = W x + b``, i.e. ``z_i = s_i x_i + sum_{j<i} L_ij x_j + b_i``: O(d^2) per sample;
    * inverse: forward substitution ``x = W^{-1}(z - b)`` (``torch.linalg.solve_triangular``), O(d^2);
    * log-det: the determinant of a triangular matrix is the product of its diagonal, so
      ``log|det W| = sum_i log|s_i|``: O(d).

    ``positive_diagonal=True`` parametrises ``s = exp(log_s)`` (always invertible);
    ``positive_diagonal=False`` learns ``s`` freely (starts at 1; must not hit 0).
    """

    def __init__(self, dim: int, bias: bool = True, positive_diagonal: bool = True):
        super().__init__(dim, bias)
        self.positive_diagonal = bool(positive_diagonal)
        self.lower = nn.Parameter(torch.zeros(dim, dim))
        self.diag = nn.Parameter(torch.zeros(dim) if self.positive_diagonal else torch.ones(dim))
        self.register_buffer("lower_mask", torch.tril(torch.ones(dim, dim), -1))

    def _s(self):
        return torch.exp(self.diag) if self.positive_diagonal else self.diag

    def _logdet(self):
        return self.diag.sum() if self.positive_diagonal else torch.log(self.diag.abs()).sum()

    def weight(self) -> torch.Tensor:
        return self.lower * self.lower_mask + torch.diag(self._s())

    def _forward(self, x):
        return self._add_bias(x @ self.weight().T), self._logdet().repeat(x.shape[0])

    def _inverse(self, z):
        x = torch.linalg.solve_triangular(self.weight(), self._sub_bias(z).T, upper=False).T
        return x, (-self._logdet()).repeat(z.shape[0])


class LinearLU(_Linear):
    """Glow's LU-parametrised matrix ``W = P L (U + diag(s))`` (see :class:`LUParams`).

    * map: ``z = W x + b``, applied factor by factor: ``P (L ((U + diag s) x))``, O(d^2) per sample;
    * inverse: ``x = (U + diag s)^{-1} L^{-1} P^T (z - b)``: a permutation and two triangular solves, O(d^2);
    * log-det: ``log|det W| = sum_i log|s_i|`` (``det P = +-1``, ``det L = 1``), O(d);
    * ``W`` is invertible for any parameter value; initialised as a random rotation (seeded by ``seed``).
    """

    def __init__(self, dim: int, bias: bool = True, seed: int | None = None):
        super().__init__(dim, bias)
        self.lu = LUParams(dim, seed)

    def weight(self) -> torch.Tensor:
        return self.lu.weight()

    def _forward(self, x):
        L, U = self.lu.factors()
        z = (x @ U.T @ L.T)[:, self.lu.perm]
        return self._add_bias(z), self.lu.logabsdet().repeat(x.shape[0])

    def _inverse(self, z):
        L, U = self.lu.factors()
        y = self._sub_bias(z)[:, self.lu.inv_perm].T
        y = torch.linalg.solve_triangular(L, y, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(U, y, upper=True).T
        return x, (-self.lu.logabsdet()).repeat(z.shape[0])


class LinearHouseholder(_Linear):
    """An orthogonal matrix made of Householder reflections, optionally times a positive diagonal.

    * map: ``z = Q diag(s) x + b`` with ``Q = H_1 H_2 ... H_k`` and ``H_i = I - 2 v_i v_i^T / |v_i|^2``
      (the reflection through the hyperplane orthogonal to ``v_i``); ``s = exp(log_s)`` if
      ``diagonal=True``, else ``s = 1``. Every orthogonal matrix is a product of at most ``d``
      reflections, so ``k = d`` (the default) can reach any of them (with ``diag(s)`` this is a
      "QR"-style factorisation ``W = Q R`` with a diagonal ``R``);
    * inverse: each ``H_i`` is symmetric and its own inverse, so ``Q^{-1} = Q^T = H_k ... H_1`` and
      ``x = diag(s)^{-1} H_k ... H_1 (z - b)``;
    * log-det: ``log|det Q| = 0`` (reflections have ``det = -1``), plus ``sum_i log_s_i`` with the diagonal;
    * cost: O(k d) per sample for the map and the inverse (no matrix is formed), O(d) or 0 for the log-det.
    """

    def __init__(
        self,
        dim: int,
        num_reflections: int | None = None,
        diagonal: bool = False,
        bias: bool = True,
        seed: int | None = None,
    ):
        super().__init__(dim, bias)
        k = dim if num_reflections is None else check_int(num_reflections, "num_reflections")
        v = torch.randn(k, dim, generator=_generator(seed), dtype=torch.float64)
        self.vectors = nn.Parameter(v.to(torch.get_default_dtype()))
        self.log_s = nn.Parameter(torch.zeros(dim)) if diagonal else None

    @staticmethod
    def _reflect(y, v):
        """``H y = y - 2 (v . y) / (v . v) v``, for every row of ``y``."""
        return y - (2.0 * (y @ v) / (v @ v)).unsqueeze(1) * v

    def _logdet(self, ref):
        return ref.new_zeros(()) if self.log_s is None else self.log_s.sum()

    def _forward(self, x):
        y = x if self.log_s is None else x * torch.exp(self.log_s)
        for v in reversed(self.vectors):  # Q y = H_1(H_2(...H_k y))
            y = self._reflect(y, v)
        return self._add_bias(y), self._logdet(x).repeat(x.shape[0])

    def _inverse(self, z):
        y = self._sub_bias(z)
        for v in self.vectors:  # Q^T y = H_k(...H_1 y)
            y = self._reflect(y, v)
        x = y if self.log_s is None else y * torch.exp(-self.log_s)
        return x, (-self._logdet(z)).repeat(z.shape[0])
