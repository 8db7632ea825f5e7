"""Simulation-based inference (lecture 7.4, ``flowlib.sbi``): the answer keys are right, the checks can fail, and
the committed checkpoints reproduce the numbers the lecture states.

Cost: about 3 s on one core (the grid posteriors, 8 KL integrals of the two committed flows, a 60-step training).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from scipy import stats

from flowlib.io import load_checkpoint
from flowlib.sbi import (
    OBSERVATIONS,
    SIMULATORS,
    GaussianLinear,
    TwoModes,
    grid_log_posterior,
    kl_on_grid,
    npe_flow,
    npe_loss,
    posterior_kls,
    sbc_ranks,
    train_npe,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "chapters" / "07_residual_continuous" / "results"
f64 = torch.float64


def test_grid_posterior_matches_the_closed_form_on_the_linear_model():
    sim = GaussianLinear()
    for x_o in OBSERVATIONS["linear"]:
        theta, log_p, cell = grid_log_posterior(sim, x_o, n=200)
        exact = sim.posterior_log_prob(theta, torch.tensor([x_o], dtype=f64))
        assert (log_p - exact).abs().max() < 1e-6
        assert abs(float(log_p.exp().sum()) * cell - 1) < 1e-9


def test_closed_form_posterior_is_bayes_rule():
    # log p(theta | x) - log p(theta) - log p(x | theta) must not depend on theta (it is -log p(x))
    sim = GaussianLinear(prior_std=1.3, noise_std=0.7)
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(50, 2, generator=g, dtype=f64)
    x = torch.randn(1, 3, generator=g, dtype=f64)
    diff = sim.posterior_log_prob(theta, x) - sim.log_prior(theta) - sim.log_likelihood(theta, x.expand(50, -1))
    assert diff.std() < 1e-10


def test_two_mode_posterior_has_the_two_predicted_modes():
    sim = TwoModes()
    theta, log_p, _ = grid_log_posterior(sim, (4.0, 0.0), n=161)
    p = log_p.exp()
    right, left = theta[:, 0] > 0, theta[:, 0] < 0
    for half, mode in ((right, (2.0, -2.0)), (left, (-2.0, 2.0))):
        best = theta[half][p[half].argmax()]
        assert (best - torch.tensor(mode, dtype=f64)).abs().max() < 0.25
    assert abs(float(p[right].sum() / p.sum()) - 0.5) < 1e-6      # the sign of theta_1 is not identified


def test_kl_on_grid_matches_the_gaussian_closed_form():
    theta = grid_log_posterior(GaussianLinear(), (0.0, 0.0, 0.0), n=241, bounds=((-6, 6), (-6, 6)))[0]
    cell = (12 / 240) ** 2
    p = torch.distributions.MultivariateNormal(torch.tensor([0.3, -0.2], dtype=f64), 0.5 * torch.eye(2, dtype=f64))
    q = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=f64), torch.eye(2, dtype=f64))
    exact = float(torch.distributions.kl_divergence(p, q))
    assert abs(kl_on_grid(p.log_prob(theta), q.log_prob(theta), cell) - exact) < 1e-6


class _ExactPosterior:
    """The linear model's closed-form posterior, widened or narrowed by ``scale``, with ``Flow.sample``'s API."""

    def __init__(self, sim, scale=1.0):
        self.sim, self.scale = sim, scale

    def sample(self, n, context):
        mu, cov = self.sim.posterior(context.double())
        L = torch.linalg.cholesky(cov)
        return (mu + self.scale * torch.randn(n, 2, dtype=f64) @ L.T).to(context.dtype)


def _uniformity_p_values(ranks, num_samples):
    return [stats.chisquare(torch.bincount(ranks[:, j] * 10 // (num_samples + 1), minlength=10).numpy()).pvalue
            for j in range(2)]


def test_sbc_ranks_are_uniform_for_the_true_posterior_and_not_for_a_narrow_one():
    sim = GaussianLinear()
    exact = sbc_ranks(_ExactPosterior(sim), sim, 2000, 49, torch.Generator().manual_seed(1))
    assert exact.shape == (2000, 2) and exact.min() >= 0 and exact.max() <= 49
    assert min(_uniformity_p_values(exact, 49)) > 1e-3
    narrow = sbc_ranks(_ExactPosterior(sim, 0.6), sim, 2000, 49, torch.Generator().manual_seed(1))
    assert max(_uniformity_p_values(narrow, 49)) < 1e-6


def test_npe_training_lowers_the_loss():
    sim = GaussianLinear()
    flow = npe_flow(sim.x_dim, num_layers=2, hidden=(16,))
    g = torch.Generator().manual_seed(5)
    theta = sim.sample_prior(2000, g)
    x = sim.simulate(theta, g)
    with torch.no_grad():
        before = float(npe_loss(flow, theta, x))
    train_npe(flow, sim, 60, batch_size=256, lr=1e-2)
    with torch.no_grad():
        after = float(npe_loss(flow, theta, x))
    assert after < before - 0.3


def test_bad_inputs_get_clear_errors():
    sim = TwoModes()
    with pytest.raises(ValueError, match="theta must be a tensor of shape"):
        sim.simulate(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="x_o must have shape"):
        grid_log_posterior(sim, (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="A must have shape"):
        GaussianLinear(A=torch.eye(2))
    with pytest.raises(ValueError, match="noise_std"):
        TwoModes(noise_std=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        sim.log_prior(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="same shape"):
        kl_on_grid(torch.zeros(4), torch.zeros(5), 0.1)


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_committed_checkpoints_reproduce_the_stated_kl(name):
    info = json.loads((RESULTS / "sbi.json").read_text())
    sim = SIMULATORS[name]()
    flow = npe_flow(sim.x_dim)
    load_checkpoint(flow, RESULTS / f"sbi_{name}.pt")
    kls = posterior_kls(flow.eval(), sim, OBSERVATIONS[name], n=info["protocol"]["grid"])
    for got, stated in zip(kls, info[name]["kl"], strict=True):
        assert math.isclose(got, stated, rel_tol=1e-3, abs_tol=1e-5), (got, stated)
    assert max(kls) < 0.1           # the lecture says the learnt posteriors match the truth (largest 0.05)
