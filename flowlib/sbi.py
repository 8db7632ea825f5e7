"""Simulation-based inference (chapter 7.4): two simulators whose posterior is known, neural posterior estimation
with a conditional flow, and the checks that compare it with the truth.

A **simulator** draws ``theta`` from a prior and data ``x`` given ``theta``; neural posterior estimation (NPE) fits a
conditional flow ``q(theta | x)`` by minimising

    L(q) = E_{theta ~ p(theta), x ~ p(x | theta)} [ -log q(theta | x) ],                              (1)

which needs simulations only, never the likelihood. Both simulators here also expose the likelihood, so that the
true posterior can be computed (in closed form for :class:`GaussianLinear`, on a grid for :class:`TwoModes`) and
compared with the learnt one: :func:`grid_log_posterior` normalises prior times likelihood on a grid,
:func:`kl_on_grid` measures ``KL(true || learnt)`` by quadrature, :func:`sbc_ranks` runs simulation-based
calibration.
"""

from __future__ import annotations

import math

import torch

from flowlib._validate import check_int, check_positive
from flowlib.distributions import StandardNormal
from flowlib.flow import Flow
from flowlib.transforms import Compose, SplineCoupling, half_mask

__all__ = [
    "GaussianLinear", "TwoModes", "OBSERVATIONS", "SIMULATORS", "npe_flow", "npe_loss", "train_npe",
    "grid_log_posterior", "kl_on_grid", "posterior_kls", "sbc_ranks", "simulated_observations",
]

_LOG_2PI = math.log(2 * math.pi)


def _check_theta(theta, d=2, name="theta"):
    if not isinstance(theta, torch.Tensor) or theta.dim() != 2 or theta.shape[1] != d:
        shape = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
        raise ValueError(f"{name} must be a tensor of shape (batch, {d}), got {shape}")
    if not torch.isfinite(theta).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return theta


class _Simulator:
    theta_dim = 2
    x_dim = 2
    prior_std = 1.0

    def sample_prior(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32):
        """``n`` draws from the prior ``N(0, prior_std^2 I_2)``, shape ``(n, 2)``."""
        check_int(n, "n")
        return self.prior_std * torch.randn(n, self.theta_dim, generator=generator, dtype=dtype)

    def log_prior(self, theta):
        _check_theta(theta, self.theta_dim)
        s = self.prior_std
        return -0.5 * (theta / s).pow(2).sum(1) - self.theta_dim * (math.log(s) + 0.5 * _LOG_2PI)

    def mean(self, theta):  # the noise-free output
        raise NotImplementedError

    def simulate(self, theta, generator: torch.Generator | None = None):
        """One draw ``x ~ p(x | theta)`` per row of ``theta``: ``x = m(theta) + noise_std * eps``."""
        _check_theta(theta, self.theta_dim)
        eps = torch.randn(theta.shape[0], self.x_dim, generator=generator, dtype=theta.dtype)
        return self.mean(theta) + self.noise_std * eps

    def log_likelihood(self, theta, x):
        """``log p(x | theta)``, shape ``(batch,)`` (rows of ``theta`` and ``x`` paired, or one ``x`` row for all)."""
        _check_theta(theta, self.theta_dim)
        _check_theta(x, self.x_dim, "x")
        r = (x - self.mean(theta)) / self.noise_std
        return -0.5 * r.pow(2).sum(1) - self.x_dim * (math.log(self.noise_std) + 0.5 * _LOG_2PI)


class GaussianLinear(_Simulator):
    """``theta ~ N(0, s0^2 I_2)``, ``x = A theta + sigma eps`` with ``A`` of shape ``(3, 2)``: a conjugate model.

    Its posterior is Gaussian, ``N(mu(x), Sigma)`` with

        Sigma = (I / s0^2 + A^T A / sigma^2)^{-1},        mu(x) = Sigma A^T x / sigma^2,

    (:meth:`posterior`); the posterior covariance does not depend on ``x``, the mean is linear in it.
    """

    x_dim = 3

    def __init__(self, A=((1.0, 0.8), (0.6, 0.9), (-0.2, 0.3)), prior_std: float = 1.0, noise_std: float = 0.5):
        A = torch.as_tensor(A, dtype=torch.float64)
        if A.shape != (3, 2):
            raise ValueError(f"A must have shape (3, 2), got {tuple(A.shape)}")
        self.A = A
        self.prior_std = check_positive(prior_std, "prior_std")
        self.noise_std = check_positive(noise_std, "noise_std")

    def mean(self, theta):
        return theta @ self.A.to(theta.dtype).T

    def posterior(self, x):
        """Closed-form posterior: ``(mu, Sigma)`` with ``mu`` of shape ``(batch, 2)`` and ``Sigma`` ``(2, 2)``."""
        _check_theta(x, self.x_dim, "x")
        A, s2 = self.A, self.noise_std**2
        prec = torch.eye(2, dtype=torch.float64) / self.prior_std**2 + A.T @ A / s2
        cov = torch.linalg.inv(prec)
        mu = x.double() @ (cov @ A.T / s2).T
        return mu.to(x.dtype), cov.to(x.dtype)

    def posterior_log_prob(self, theta, x):
        """``log p(theta | x)`` from :meth:`posterior` (rows paired, or one ``x`` row for all ``theta``)."""
        _check_theta(theta, 2)
        mu, cov = self.posterior(x)
        L = torch.linalg.cholesky(cov.to(theta.dtype))
        r = torch.linalg.solve_triangular(L, (theta - mu).T, upper=False).T
        return -0.5 * r.pow(2).sum(1) - torch.log(torch.diagonal(L)).sum() - _LOG_2PI


class TwoModes(_Simulator):
    """A nonlinear simulator with a bimodal posterior: ``theta ~ N(0, I_2)`` and

        x_1 = theta_1^2 + sigma eps_1,        x_2 = theta_2 + theta_1 + sigma eps_2.

    ``x_1`` fixes ``|theta_1|`` but not its sign, and ``x_2`` ties ``theta_2`` to ``theta_1``: for ``x_1``
    well above ``0`` the posterior has two tilted modes near ``(+sqrt(x_1), x_2 - sqrt(x_1))`` and
    ``(-sqrt(x_1), x_2 + sqrt(x_1))``; for ``x_1`` near or below ``0`` they merge into one. It has no closed form;
    :func:`grid_log_posterior` integrates it numerically.
    """

    def __init__(self, noise_std: float = 0.3):
        self.noise_std = check_positive(noise_std, "noise_std")

    def mean(self, theta):
        return torch.stack([theta[:, 0] ** 2, theta[:, 1] + theta[:, 0]], 1)


def npe_loss(flow, theta, x):
    """Monte Carlo estimate of (1): ``-mean log q(theta_i | x_i)`` over simulated pairs."""
    return -flow.log_prob(theta, context=x).mean()


def _grid(bounds, n):
    (a1, b1), (a2, b2) = bounds
    g1 = torch.linspace(a1, b1, n, dtype=torch.float64)
    g2 = torch.linspace(a2, b2, n, dtype=torch.float64)
    T1, T2 = torch.meshgrid(g1, g2, indexing="ij")
    cell = float((g1[1] - g1[0]) * (g2[1] - g2[0]))
    return torch.stack([T1.reshape(-1), T2.reshape(-1)], 1), cell


def grid_log_posterior(sim, x_o, bounds=((-4.0, 4.0), (-4.0, 4.0)), n: int = 200):
    """True posterior of ``sim`` at one observation ``x_o`` (shape ``(x_dim,)``) on an ``n x n`` grid.

    ``log p(theta | x_o) = log p(theta) + log p(x_o | theta) - log Z`` with ``Z`` the Riemann sum of the numerator
    over the grid (cell area ``cell``). Returns ``(theta_grid (n*n, 2), log_post (n*n,), cell)`` in float64; the
    grid must hold nearly all the posterior mass (the bounds' job).
    """
    check_int(n, "n", minimum=2)
    x_o = torch.as_tensor(x_o, dtype=torch.float64)
    if x_o.shape != (sim.x_dim,):
        raise ValueError(f"x_o must have shape ({sim.x_dim},), got {tuple(x_o.shape)}")
    theta, cell = _grid(bounds, n)
    logu = sim.log_prior(theta) + sim.log_likelihood(theta, x_o.expand(theta.shape[0], -1))
    log_z = torch.logsumexp(logu, 0) + math.log(cell)
    return theta, logu - log_z, cell


def kl_on_grid(log_p, log_q, cell: float):
    """``KL(p || q) = sum_cells p (log p - log q) * cell`` by quadrature (``p`` normalised on the grid)."""
    if log_p.shape != log_q.shape:
        raise ValueError(f"log_p and log_q must have the same shape, got {tuple(log_p.shape)} and {tuple(log_q.shape)}")
    log_p, log_q = log_p.double(), log_q.double()
    return float((log_p.exp() * (log_p - log_q)).sum() * cell)


@torch.no_grad()
def sbc_ranks(flow, sim, num_obs: int, num_samples: int, generator: torch.Generator):
    """Simulation-based calibration: for ``num_obs`` pairs ``theta* ~ prior``, ``x ~ p(x | theta*)``, the rank of
    each coordinate of ``theta*`` among ``num_samples`` draws of ``q(theta | x)``. If ``q`` is the true posterior
    the ranks are uniform on ``{0, ..., num_samples}``. Returns an integer tensor ``(num_obs, 2)``.
    """
    check_int(num_obs, "num_obs")
    check_int(num_samples, "num_samples")
    theta = sim.sample_prior(num_obs, generator)
    x = sim.simulate(theta, generator)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))  # the flow's base draws
    draws = flow.sample(num_obs * num_samples, context=x.repeat_interleave(num_samples, 0))
    draws = draws.reshape(num_obs, num_samples, 2)
    return (draws < theta[:, None, :]).sum(1)


def train_npe(flow, sim, steps: int, batch_size: int = 512, lr: float = 3e-3, seed: int = 0):
    """Minimise (1) with Adam on fresh simulations every step (an endless training set), a cosine learning-rate
    schedule and gradient clipping at 10. Returns the loss of every step."""
    check_int(steps, "steps")
    check_int(batch_size, "batch_size")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        theta = sim.sample_prior(batch_size, g)
        loss = npe_loss(flow, theta, sim.simulate(theta, g))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


#: Observations ``x_o`` at which lecture 7.4 compares the learnt and true posteriors (one row each).
OBSERVATIONS = {
    "linear": ((1.0, 0.6, -0.2), (-0.2, 0.3, 0.5), (-0.7, -1.0, -0.5), (0.0, 0.0, 0.0)),
    "twomodes": ((0.0, 0.5), (1.0, 0.0), (4.0, 0.0), (2.25, -1.0)),
}
SIMULATORS = {"linear": GaussianLinear, "twomodes": TwoModes}


def npe_flow(x_dim: int, num_layers: int = 4, hidden=(64, 64), num_bins: int = 8, bound: float = 4.0, seed: int = 0):
    """The conditional flow ``q(theta | x)`` of lecture 7.4: ``num_layers`` spline couplings on ``theta`` in
    ``R^2`` with alternating half masks, each conditioner seeing ``[theta_a, x]``, and a standard normal base."""
    check_int(x_dim, "x_dim")
    torch.manual_seed(seed)
    layers = [SplineCoupling(half_mask(2, first=k % 2 == 0), hidden, num_bins=num_bins, bound=bound,
                             context_dim=x_dim) for k in range(num_layers)]
    return Flow(Compose(*layers), StandardNormal((2,)))


@torch.no_grad()
def posterior_kls(flow, sim, observations, bounds=((-4.0, 4.0), (-4.0, 4.0)), n: int = 200):
    """``KL(true || learnt)`` (nats) at each observation, by quadrature on an ``n x n`` grid: a list of floats."""
    out = []
    for x_o in observations:
        theta, log_p, cell = grid_log_posterior(sim, x_o, bounds, n)
        dtype = next(flow.parameters()).dtype
        ctx = torch.as_tensor(x_o, dtype=dtype).expand(theta.shape[0], -1)
        out.append(kl_on_grid(log_p, flow.log_prob(theta.to(dtype), context=ctx), cell))
    return out


def simulated_observations(sim, n: int, seed: int = 123):
    """``n`` observations drawn from the simulator's marginal ``p(x)`` (``theta`` from the prior, then ``x``), as
    a list of tuples: the observations over which lecture 7.4 averages the KL."""
    check_int(n, "n")
    g = torch.Generator().manual_seed(seed)
    return [tuple(r) for r in sim.simulate(sim.sample_prior(n, g, dtype=torch.float64), g).tolist()]
