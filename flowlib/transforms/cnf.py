"""Continuous normalizing flows (Chen et al. 2018, Neural ODEs; Grathwohl et al. 2019, FFJORD)."""

from __future__ import annotations

import torch
from torch import nn

from flowlib._validate import check_int, check_positive
from flowlib.transforms.autoregressive import _check_hidden
from flowlib.transforms.base import Transform

__all__ = ["CNF"]

ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
FIXED_STEP_SOLVERS = ("rk4", "midpoint", "euler")


class _ODEFunc(nn.Module):
    """Right-hand side of the augmented ODE: ``d/dt (z, l) = (f(z, t), tr(df/dz))``."""

    def __init__(self, dim, hidden, trace):
        super().__init__()
        sizes = (dim + 1, *hidden, dim)
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        self.net = nn.Sequential(*layers[:-1])
        nn.init.zeros_(self.net[-1].weight)  # f = 0 at start: the flow starts as the identity
        nn.init.zeros_(self.net[-1].bias)
        self.trace = trace
        self.noise = None  # Hutchinson probe vectors, fixed during one solve
        self.nfe = 0  # number of function evaluations, for the curious

    def velocity(self, t, z):
        """The dynamics ``f(z, t)``: an MLP on ``(z, t)``."""
        return self.net(torch.cat([z, t.expand(z.shape[0], 1)], dim=1))

    def forward(self, t, state):
        self.nfe += 1
        z = state[0]
        create = torch.is_grad_enabled()  # False inside a no_grad solve: then nothing is kept
        with torch.enable_grad():
            # Differentiate through z itself only when a graph is being built and z is part of it. In a
            # no_grad solve (the forward pass of odeint_adjoint) z may still carry requires_grad=True from an
            # earlier layer without being connected to this graph: take a fresh leaf then.
            z = z if (create and z.requires_grad) else z.detach().requires_grad_(True)
            dz = self.velocity(t, z)
            if self.trace == "exact":  # d backward passes, one per diagonal entry
                tr = sum(
                    torch.autograd.grad(dz[:, i].sum(), z, create_graph=create, retain_graph=True)[0][:, i]
                    for i in range(z.shape[1])
                )
            else:  # Hutchinson: tr(A) ~ e^T A e, one vector-Jacobian product
                e = self.noise
                tr = (torch.autograd.grad(dz, z, e, create_graph=create, retain_graph=True)[0] * e).sum(1)
        if not create:
            dz, tr = dz.detach(), tr.detach()
        return dz, tr


class CNF(Transform):
    """Continuous normalizing flow: the time-``t1`` map of the ODE ``dz/dt = f(z, t)``, ``f`` an MLP.

    * map (``forward``, data -> base): integrate ``z(0) = x`` from ``t = 0`` to ``t1``; ``z = z(t1)``;
    * inverse (generating): integrate the same ODE backwards, from ``t1`` to ``0``;
    * log-det (instantaneous change of variables): along a trajectory ``d log p(z(t))/dt = -tr(df/dz)``,
      so ``log|det dz(t1)/dx| = int_0^t1 tr(df/dz(z(t), t)) dt`` and ``log p_X(x) = log p_Z(z) + logdet``.
      The integral is a second component of the ODE state, solved together with ``z``.
      ``trace='exact'`` costs ``d`` autograd passes per function evaluation (small ``d``);
      ``trace='hutchinson'`` costs one: ``tr(A) ~ e^T A e`` with Rademacher (``noise='rademacher'``) or
      Gaussian probes ``e``, drawn once per solve (so the ODE stays smooth) from a ``seed``-ed generator.
      The Hutchinson log-det is unbiased but random, and then ``forward``/``inverse`` log-dets only cancel
      on average.
    * cost: (number of solver steps) x (function evaluations per step); adaptive solvers pick the steps
      to meet ``atol``/``rtol``. The map is invertible up to the solver error.

    ``adjoint=True`` uses ``torchdiffeq.odeint_adjoint`` (memory O(1) in the number of steps, gradients by
    a backward ODE solve); it works anywhere in a composition (gradients flow to the input and to the
    parameters of earlier layers). The last layer of ``f`` starts at zero, so the flow starts as the identity.

    Batches and adaptive solvers: the whole batch is one ODE system, so an adaptive solver picks one step
    size for all samples (the one the hardest sample needs). A sample's ``z`` and log-det therefore change
    slightly (within the solver tolerance) with the other samples in its batch; use a fixed-step solver
    (``solver='rk4'``) when results must not depend on the batch.
    """

    def __init__(self, dim: int, hidden=(64, 64), t1: float = 1.0, trace: str = "exact",
                 solver: str = "dopri5", atol: float = 1e-5, rtol: float = 1e-5, adjoint: bool = False,
                 noise: str = "rademacher", step_size: float | None = None, seed: int | None = None):
        super().__init__()
        dim = check_int(dim, "dim")
        hidden = _check_hidden(hidden)
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
        if noise not in ("rademacher", "gaussian"):
            raise ValueError(f"noise must be 'rademacher' or 'gaussian', got {noise!r}")
        if solver not in ADAPTIVE_SOLVERS + FIXED_STEP_SOLVERS:
            raise ValueError(f"solver must be one of {ADAPTIVE_SOLVERS + FIXED_STEP_SOLVERS}, got {solver!r}")
        self.event_shape = (dim,)
        self.t1 = check_positive(t1, "t1")
        self.atol, self.rtol = check_positive(atol, "atol"), check_positive(rtol, "rtol")
        self.solver, self.adjoint, self.noise = solver, bool(adjoint), noise
        self.options = None
        if solver in FIXED_STEP_SOLVERS:
            step = self.t1 / 20 if step_size is None else check_positive(step_size, "step_size")
            self.options = {"step_size": step}
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.odefunc = _ODEFunc(dim, hidden, trace)

    def _solve(self, h, t_start, t_end):
        if self.odefunc.trace == "hutchinson":
            if self.noise == "rademacher":
                e = torch.randint(0, 2, h.shape, generator=self.generator).to(h) * 2 - 1
            else:
                e = torch.randn(h.shape, generator=self.generator).to(h)
            self.odefunc.noise = e
        t = torch.tensor([t_start, t_end], dtype=h.dtype, device=h.device)
        # imported here, not with the module: torchdiffeq brings scipy (~0.7 s of CPU at every `import flowlib`,
        # i.e. in every lecture notebook's kernel, twice in `make test`)
        from torchdiffeq import odeint, odeint_adjoint

        solve = odeint_adjoint if self.adjoint else odeint
        z, logdet = solve(self.odefunc, (h, h.new_zeros(h.shape[0])), t, rtol=self.rtol, atol=self.atol,
                          method=self.solver, options=self.options)
        return z[-1], logdet[-1]

    def _forward(self, x):
        return self._solve(x, 0.0, self.t1)

    def _inverse(self, z):
        return self._solve(z, self.t1, 0.0)
