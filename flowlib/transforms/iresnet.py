"""Invertible residual blocks (i-ResNet, Behrmann et al. 2019; Residual Flows, Chen et al. 2019)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from flowlib._validate import check_int, check_positive
from flowlib.transforms.autoregressive import _check_hidden
from flowlib.transforms.base import Transform

__all__ = ["IResBlock", "LipSwish"]


class LipSwish(nn.Module):
    """``x * sigmoid(x) / 1.1``: smooth, 1-Lipschitz (the swish slope never exceeds 1.1)."""

    def forward(self, x):
        return F.silu(x) / 1.1


class IResBlock(Transform):
    """Invertible residual block ``y = x + g(x)`` with ``Lip(g) < 1``.

    * map (``forward``): ``z = x + g(x)``, ``g`` an MLP whose linear layers are spectrally normalised
      (each weight is scaled so its spectral norm is at most ``lipschitz``, estimated by power iteration)
      and whose activations are 1-Lipschitz (LipSwish or ELU). So ``Lip(g) <= lipschitz**L < 1`` for ``L``
      linear layers, and the map is invertible.
    * inverse (numerical): Banach fixed-point iteration ``x_{k+1} = z - g(x_k)``, ``x_0 = z``; the error
      shrinks by ``Lip(g)`` per step. We stop when ``max |x_{k+1} - x_k| <= inverse_tol`` and raise
      ``RuntimeError`` if that has not happened after ``inverse_iterations`` steps. Cost: one ``g`` pass per
      iteration, about ``log(tol) / log(Lip(g))`` of them.
    * log-det: ``log det(I + J_g)`` (positive determinant, since ``Lip(g) < 1``), either
      ``logdet='exact'``: the Jacobian by ``d`` autograd passes, then ``slogdet``; O(d) passes + O(d^3),
      for small ``d``; or
      ``logdet='series'``: ``sum_{k=1}^{n} (-1)^{k+1} tr(J_g^k) / k``, the power series of
      ``log det(I + J) = tr log(I + J)``, truncated after ``n = n_series_terms`` terms. The traces are
      exact (from the full Jacobian) if ``n_hutchinson_samples`` is None, otherwise Hutchinson estimates
      ``tr(J^k) ~ v^T J^k v`` with Rademacher ``v`` and ``k`` vector-Jacobian products; O(n) passes.
      Truncation bias: the dropped tail is at most ``d * sum_{k>n} Lip^k / k <= d Lip^{n+1} / ((n+1)(1-Lip))``
      in absolute value, so it is small only when ``Lip(g)`` is well below 1. Residual Flows (Chen et al.
      2019) remove the bias with a "Russian roulette" estimator: draw a random number of terms ``N`` and
      reweight term ``k`` by ``1 / P(N >= k)`` (not implemented here).

    Spectral normalisation: buffers ``u_i``, ``v_i`` hold the power-iteration vectors of each weight. They
    are refined ``n_power_iterations`` times per call only in training mode with autograd enabled (a
    training step); otherwise the stored vectors are used, so ``forward`` and ``inverse`` see the same
    weights. ``sigma = u^T W v`` and the weight used is ``W * min(1, lipschitz / sigma)``. Power iteration
    approaches the top singular value from below, so during training a layer can exceed ``lipschitz`` by the
    (small) estimation error.

    Guarantee outside training steps. The block keeps a copy of every weight as it was when ``u``, ``v``
    were last refined. On every call that is not a training step (eval mode, ``no_grad``, ``inverse``), a
    weight that differs from its copy (edited by hand, loaded, perturbed, or changed by the optimizer since
    the last training step) gets ``u``, ``v`` recomputed exactly from its SVD before use, so
    ``Lip(g) <= lipschitz**L < 1`` holds whatever was done to the parameters (cost: one SVD per changed
    weight, once). ``power_iterate(n)`` still refines the estimates by hand.
    ``seed`` seeds the Hutchinson probe vectors.
    """

    def __init__(self, dim: int, hidden=(64, 64), lipschitz: float = 0.9, n_power_iterations: int = 5,
                 logdet: str = "exact", n_series_terms: int = 10, n_hutchinson_samples: int | None = 1,
                 inverse_iterations: int = 200, inverse_tol: float | None = None,
                 activation: str = "lipswish", seed: int | None = None):
        super().__init__()
        dim = check_int(dim, "dim")
        hidden = _check_hidden(hidden)
        lipschitz = check_positive(lipschitz, "lipschitz")
        if lipschitz >= 1:
            raise ValueError(f"lipschitz must lie in (0, 1) so that the block is invertible, got {lipschitz}")
        if logdet not in ("exact", "series"):
            raise ValueError(f"logdet must be 'exact' or 'series', got {logdet!r}")
        if activation not in ("lipswish", "elu"):
            raise ValueError(f"activation must be 'lipswish' or 'elu', got {activation!r}")
        self.event_shape = (dim,)
        self.lipschitz = lipschitz
        self.n_power_iterations = check_int(n_power_iterations, "n_power_iterations")
        self.logdet = logdet
        self.n_series_terms = check_int(n_series_terms, "n_series_terms")
        self.n_hutchinson_samples = (
            None if n_hutchinson_samples is None else check_int(n_hutchinson_samples, "n_hutchinson_samples")
        )
        self.inverse_iterations = check_int(inverse_iterations, "inverse_iterations")
        self.inverse_tol = None if inverse_tol is None else check_positive(inverse_tol, "inverse_tol")
        self.act = LipSwish() if activation == "lipswish" else nn.ELU()
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

        sizes = (dim, *hidden, dim)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for i, lin in enumerate(self.linears):
            self.register_buffer(f"u{i}", F.normalize(torch.randn(lin.out_features), dim=0))
            self.register_buffer(f"v{i}", F.normalize(torch.randn(lin.in_features), dim=0))
            # the weight as it was when u_i, v_i were last refined (not saved: a loaded model re-syncs)
            self.register_buffer(f"w_seen{i}", torch.full_like(lin.weight, float("nan")), persistent=False)
        self.power_iterate(50)  # start from converged estimates

    @torch.no_grad()
    def _remember_weights(self) -> None:
        for i, lin in enumerate(self.linears):
            getattr(self, f"w_seen{i}").copy_(lin.weight)

    @torch.no_grad()
    def _sync_singular_vectors(self) -> None:
        """Recompute ``u_i``, ``v_i`` exactly (SVD) for every weight changed since they were last refined."""
        for i, lin in enumerate(self.linears):
            seen, W = getattr(self, f"w_seen{i}"), lin.weight
            if seen.shape == W.shape and seen.dtype == W.dtype and torch.equal(seen, W):
                continue
            U, _, Vh = torch.linalg.svd(W, full_matrices=False)
            u, v = U[:, 0], Vh[0]
            if (u @ W @ v) < 0:  # keep sigma = u^T W v positive
                u = -u
            getattr(self, f"u{i}").copy_(u)
            getattr(self, f"v{i}").copy_(v)
            if seen.shape == W.shape:
                seen.copy_(W)
            else:
                setattr(self, f"w_seen{i}", W.detach().clone())

    @torch.no_grad()
    def power_iterate(self, n: int = 1) -> None:
        """Refine the singular-vector estimates of every weight by ``n`` power iterations."""
        for i, lin in enumerate(self.linears):
            u, v, W = getattr(self, f"u{i}"), getattr(self, f"v{i}"), lin.weight
            for _ in range(n):
                v.copy_(F.normalize(W.T @ u, dim=0))
                u.copy_(F.normalize(W @ v, dim=0))
        self._remember_weights()

    def normalized_weights(self) -> list[torch.Tensor]:
        """Each weight scaled to spectral norm ``<= lipschitz`` (``sigma`` estimated by power iteration)."""
        if self.training and torch.is_grad_enabled():
            self.power_iterate(self.n_power_iterations)
        else:
            self._sync_singular_vectors()
        weights = []
        for i, lin in enumerate(self.linears):
            # clones: a later power iteration updates u, v in place, and autograd needs these values
            sigma = getattr(self, f"u{i}").clone() @ lin.weight @ getattr(self, f"v{i}").clone()
            weights.append(lin.weight * torch.clamp(self.lipschitz / sigma, max=1.0))
        return weights

    def _g(self, x, weights):
        for i, (W, lin) in enumerate(zip(weights, self.linears)):
            x = F.linear(x, W, lin.bias)
            if i < len(weights) - 1:
                x = self.act(x)
        return x

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``g(x)`` (the residual branch), with the current normalised weights."""
        return self._g(x, self.normalized_weights())

    def _g_and_logdet(self, x, weights):
        """``g(x)`` and the log-det of ``I + J_g(x)`` by the chosen method (differentiable if grad is on)."""
        create = torch.is_grad_enabled()
        d = x.shape[1]
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            gx = self._g(xg, weights)

            def vjp(v):
                return torch.autograd.grad(gx, xg, v, create_graph=create, retain_graph=True)[0]

            if self.logdet == "exact" or self.n_hutchinson_samples is None:
                eye = torch.eye(d, dtype=x.dtype, device=x.device)
                J = torch.stack([vjp(eye[i].expand_as(gx)) for i in range(d)], dim=1)  # J[:, i] = d g_i/dx
            if self.logdet == "exact":
                ld = torch.linalg.slogdet(eye + J)[1]
            elif self.n_hutchinson_samples is None:
                ld, Jk = x.new_zeros(x.shape[0]), J
                for k in range(1, self.n_series_terms + 1):
                    ld = ld + (-1) ** (k + 1) * torch.diagonal(Jk, dim1=1, dim2=2).sum(1) / k
                    Jk = Jk @ J
            else:
                ld = x.new_zeros(x.shape[0])
                for _ in range(self.n_hutchinson_samples):
                    v = torch.randint(0, 2, x.shape, generator=self.generator).to(x) * 2 - 1
                    w = v
                    for k in range(1, self.n_series_terms + 1):
                        w = vjp(w)  # w = v^T J^k
                        ld = ld + (-1) ** (k + 1) * (w * v).sum(1) / k
                ld = ld / self.n_hutchinson_samples
        if not create:
            gx, ld = gx.detach(), ld.detach()
        return gx, ld

    def _forward(self, x):
        gx, ld = self._g_and_logdet(x, self.normalized_weights())
        return x + gx, ld

    def _inverse(self, z):
        weights = self.normalized_weights()
        tol = self.inverse_tol
        if tol is None:
            tol = 1e-12 if z.dtype == torch.float64 else 1e-5
        x = z
        for _ in range(self.inverse_iterations):
            x_new = z - self._g(x, weights)
            step = float((x_new - x).detach().abs().max())
            x = x_new
            if step <= tol:
                break
        else:
            raise RuntimeError(
                f"IResBlock.inverse did not converge: the last fixed-point step was {step:.2e} > inverse_tol "
                f"= {tol:.1e} after {self.inverse_iterations} iterations; increase inverse_iterations or "
                f"lower lipschitz (now {self.lipschitz})"
            )
        _, ld = self._g_and_logdet(x, weights)
        return x, -ld
