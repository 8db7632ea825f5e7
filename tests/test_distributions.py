"""Distributions: densities normalise, match torch.distributions, MLE/EM/gradient fits agree, KL facts."""

import math

import pytest
import torch
import torch.distributions as td

from flowlib import train
from flowlib.distributions import (
    Bernoulli,
    Categorical,
    DiagGaussian,
    FullGaussian,
    GaussianMixture,
    StandardNormal,
    cross_entropy,
    entropy,
    kl_divergence,
)

D64 = torch.float64


def grid_integral_1d(log_prob, lo=-12.0, hi=12.0, n=20001):
    x = torch.linspace(lo, hi, n, dtype=D64)[:, None]
    with torch.no_grad():
        return float(torch.trapezoid(log_prob(x).exp(), x[:, 0]))


def grid_integral_2d(log_prob, lo=-10.0, hi=10.0, n=801):
    t = torch.linspace(lo, hi, n, dtype=D64)
    X, Y = torch.meshgrid(t, t, indexing="ij")
    with torch.no_grad():
        p = log_prob(torch.stack([X.reshape(-1), Y.reshape(-1)], 1)).exp().reshape(n, n)
    return float(torch.trapezoid(torch.trapezoid(p, t, dim=1), t))


def random_tril(d, gen):
    A = torch.randn(d, d, generator=gen, dtype=D64)
    return torch.linalg.cholesky(A @ A.T + 0.5 * torch.eye(d, dtype=D64))


def mixture_2d(cov="full"):
    g = torch.Generator().manual_seed(3)
    locs = torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.0, -2.5]], dtype=D64)
    logits = torch.tensor([0.3, -0.2, 0.5], dtype=D64)
    if cov == "full":
        L = torch.stack([0.6 * random_tril(2, g) for _ in range(3)])
        return GaussianMixture(logits, locs, scale_trils=L)
    return GaussianMixture(
        logits, locs, scales=torch.tensor([[0.5, 1.0], [0.8, 0.4], [1.2, 0.7]], dtype=D64)
    )


# --------------------------------------------------------------------------------------------------
# Densities
# --------------------------------------------------------------------------------------------------


def test_standard_normal_log_prob_and_shapes():
    p = StandardNormal((3, 2)).double()
    z = torch.randn(5, 3, 2, dtype=D64)
    ref = td.Normal(0.0, 1.0).log_prob(z).sum((1, 2))
    torch.testing.assert_close(p.log_prob(z), ref)
    assert p.sample(7).shape == (7, 3, 2) and p.sample(7).dtype == D64
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    torch.testing.assert_close(p.sample(4, generator=g1), p.sample(4, generator=g2))
    with pytest.raises(ValueError, match=r"shape \(batch, 3, 2\)"):
        p.log_prob(torch.randn(5, 6, dtype=D64))
    with pytest.raises(ValueError, match="integer >= 1"):
        p.sample(0)
    assert StandardNormal(2).state_dict() == {}  # nothing to checkpoint
    torch.testing.assert_close(p.entropy(), torch.tensor(3 * (1 + math.log(2 * math.pi)), dtype=D64))


@pytest.mark.parametrize(
    "dist",
    [
        StandardNormal(1).double(),
        DiagGaussian(torch.tensor([0.7], dtype=D64), torch.tensor([0.4], dtype=D64)),
        FullGaussian(torch.tensor([-1.0], dtype=D64), cov=torch.tensor([[2.5]], dtype=D64)),
        GaussianMixture(
            torch.tensor([0.0, 1.0], dtype=D64),
            torch.tensor([[-2.0], [3.0]], dtype=D64),
            scales=torch.tensor([[0.3], [1.5]], dtype=D64),
        ),
    ],
    ids=["standard", "diag", "full", "mixture"],
)
def test_densities_integrate_to_one_1d(dist):
    assert grid_integral_1d(dist.log_prob, -15, 15) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("name", ["standard", "diag", "full", "mixture_full", "mixture_diag"])
def test_densities_integrate_to_one_2d(name):
    g = torch.Generator().manual_seed(1)
    dist = {
        "standard": lambda: StandardNormal(2).double(),
        "diag": lambda: DiagGaussian(
            torch.tensor([0.5, -1.0], dtype=D64), torch.tensor([0.2, -0.3], dtype=D64)
        ),
        "full": lambda: FullGaussian(torch.tensor([0.5, -1.0], dtype=D64), scale_tril=random_tril(2, g)),
        "mixture_full": lambda: mixture_2d("full"),
        "mixture_diag": lambda: mixture_2d("diag"),
    }[name]()
    assert grid_integral_2d(dist.log_prob) == pytest.approx(1.0, abs=1e-5)


def test_gaussians_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    d = 4
    loc, L = torch.randn(d, generator=g, dtype=D64), random_tril(d, g)
    x = torch.randn(50, d, generator=g, dtype=D64)
    ref = td.MultivariateNormal(loc, scale_tril=L)
    full = FullGaussian(loc, scale_tril=L)
    torch.testing.assert_close(full.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(FullGaussian(loc, cov=L @ L.T).log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(full.entropy(), ref.entropy())
    log_scale = torch.randn(d, generator=g, dtype=D64) * 0.3
    diag = DiagGaussian(loc, log_scale)
    ref_diag = td.Independent(td.Normal(loc, log_scale.exp()), 1)
    torch.testing.assert_close(diag.log_prob(x), ref_diag.log_prob(x))
    torch.testing.assert_close(diag.entropy(), ref_diag.entropy())


def test_mixture_matches_torch_distributions():
    gm = mixture_2d("full")
    ref = td.MixtureSameFamily(
        td.Categorical(logits=gm.logits), td.MultivariateNormal(gm.locs, scale_tril=gm.scale_trils)
    )
    x = torch.randn(40, 2, dtype=D64) * 3
    torch.testing.assert_close(gm.log_prob(x), ref.log_prob(x))
    # stable log-sum-exp: far away points give finite (very negative) log-densities, not -inf
    assert torch.isfinite(gm.log_prob(torch.tensor([[60.0, -60.0]], dtype=D64))).all()


@pytest.mark.parametrize("method", ["cholesky", "eigen"])
def test_full_gaussian_sampling_methods(method):
    g = torch.Generator().manual_seed(0)
    loc = torch.tensor([1.0, -2.0, 0.5], dtype=D64)
    cov = torch.tensor([[2.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 0.5]], dtype=D64)
    x = FullGaussian(loc, cov=cov).sample(200_000, generator=g, method=method)
    torch.testing.assert_close(x.mean(0), loc, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.03, rtol=0)


def test_mixture_sample_moments():
    gm = mixture_2d("full")
    x = gm.sample(200_000, generator=torch.Generator().manual_seed(0))
    w = gm.weights.detach()
    mean = (w[:, None] * gm.locs.detach()).sum(0)
    torch.testing.assert_close(x.mean(0), mean, atol=0.03, rtol=0)
    gd = mixture_2d("diag")
    x = gd.sample(100_000, generator=torch.Generator().manual_seed(1))
    assert x.shape == (100_000, 2)


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def test_fit_mle_closed_form():
    g = torch.Generator().manual_seed(0)
    L = random_tril(3, g)
    x = torch.randn(5000, 3, generator=g, dtype=D64) @ L.T + 1.0
    full = FullGaussian.fit_mle(x)
    xc = x - x.mean(0)
    torch.testing.assert_close(full.loc.detach(), x.mean(0))
    torch.testing.assert_close(full.covariance.detach(), xc.T @ xc / len(x))
    diag = DiagGaussian.fit_mle(x)
    torch.testing.assert_close(diag.scale.detach(), x.std(0, unbiased=False))
    # the MLE maximises the likelihood: perturbing the parameters lowers it
    with torch.no_grad():
        best = full.log_prob(x).mean()
        full.loc += 0.05
        assert full.log_prob(x).mean() < best


def test_mle_matches_gradient_fitting():
    """Closed-form MLE and Adam on the NLL agree: NLL within 2e-4 nats, parameters within 0.02."""
    g = torch.Generator().manual_seed(1)
    L = random_tril(2, g)
    x = (torch.randn(4000, 2, generator=g, dtype=D64) @ L.T + torch.tensor([1.0, -0.5], dtype=D64)).float()
    mle = FullGaussian.fit_mle(x)
    model = FullGaussian(torch.zeros(2), cov=torch.eye(2), trainable=True)
    train.fit(model, x, steps=1500, batch_size=4000, lr=0.02, lr_schedule="cosine", progress=False)
    with torch.no_grad():
        nll_mle, nll_grad = -mle.log_prob(x).mean(), -model.log_prob(x).mean()
    assert float(nll_grad - nll_mle) == pytest.approx(0, abs=2e-4)
    torch.testing.assert_close(model.loc.detach(), mle.loc.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(model.covariance.detach(), mle.covariance.detach(), atol=0.02, rtol=0)


def two_cluster_data(n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 2, generator=g, dtype=D64) * torch.tensor([0.5, 1.0], dtype=D64) + torch.tensor(
        [-3.0, 0.0]
    )
    b = torch.randn(n // 2, 2, generator=g, dtype=D64) * 0.7 + torch.tensor([3.0, 2.0])
    return torch.cat([a, b])


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_em_monotone_and_recovers_mixture(cov):
    x = two_cluster_data()
    gm, hist = GaussianMixture.fit_em(x, 2, n_iter=200, seed=0, covariance_type=cov, tol=1e-10)
    diffs = torch.diff(torch.tensor(hist))
    assert (diffs >= -1e-9).all(), f"EM log-likelihood decreased: min diff {float(diffs.min())}"
    assert hist[-1] == pytest.approx(float(gm.log_prob(x).mean().detach()), abs=1e-9)
    order = gm.locs[:, 0].argsort()
    torch.testing.assert_close(
        gm.weights.detach()[order], torch.tensor([2 / 3, 1 / 3], dtype=D64), atol=0.01, rtol=0
    )
    torch.testing.assert_close(
        gm.locs.detach()[order], torch.tensor([[-3.0, 0.0], [3.0, 2.0]], dtype=D64), atol=0.08, rtol=0
    )
    # three components overfit a little: never worse than two
    _, hist3 = GaussianMixture.fit_em(x, 3, n_iter=200, seed=0, covariance_type=cov)
    assert hist3[-1] >= hist[-1] - 1e-3


def test_em_relative_tolerance_stops_on_relative_change_and_cap_is_visible():
    x = two_cluster_data()
    _, full = GaussianMixture.fit_em(x, 3, n_iter=400, tol=0.0, seed=1)
    _, rel = GaussianMixture.fit_em(x, 3, n_iter=400, tol=0.0, rtol=1e-4, seed=1)
    # same iterates until the relative rule stops: the last step is the first below rtol * |previous|
    assert rel == full[: len(rel)]
    steps = [b - a for a, b in zip(rel, rel[1:])]
    assert steps[-1] < 1e-4 * abs(rel[-2])
    assert all(s >= 1e-4 * abs(a) for s, a in zip(steps[:-1], rel))
    # a binding cap leaves n_iter + 1 entries, which callers use to detect it
    _, capped = GaussianMixture.fit_em(x, 3, n_iter=2, tol=0.0, seed=1)
    assert len(capped) == 3
    with pytest.raises(ValueError, match="rtol must be non-negative"):
        GaussianMixture.fit_em(x, 2, rtol=-1)


def test_em_seeded_and_gradient_fit_agree():
    x = two_cluster_data(seed=2)
    a, ha = GaussianMixture.fit_em(x, 2, seed=5)
    b, hb = GaussianMixture.fit_em(x, 2, seed=5)
    assert ha == hb and torch.equal(a.locs, b.locs)
    # gradient fitting of the same model (an nn.Module) from EM's start reaches the same likelihood
    init, _ = GaussianMixture.fit_em(x, 2, n_iter=2, seed=5, trainable=True)
    train.fit(init, x.float().double(), steps=600, batch_size=len(x), lr=0.02, progress=False)
    assert float(init.log_prob(x).mean().detach()) == pytest.approx(ha[-1], abs=2e-3)


# --------------------------------------------------------------------------------------------------
# Discrete distributions
# --------------------------------------------------------------------------------------------------


def test_bernoulli():
    logits = torch.tensor([0.3, -1.2, 2.0], dtype=D64)
    p = Bernoulli(logits)
    outcomes = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=D64)] * 3)
    assert float(p.log_prob(outcomes).exp().sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(
        p.log_prob(outcomes), td.Independent(td.Bernoulli(logits=logits), 1).log_prob(outcomes)
    )
    torch.testing.assert_close(p.entropy(), -(p.log_prob(outcomes).exp() * p.log_prob(outcomes)).sum())
    s = p.sample(100_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.mean(0), logits.sigmoid(), atol=0.01, rtol=0)
    with pytest.raises(ValueError, match="0s and 1s"):
        p.log_prob(torch.full((2, 3), 0.5, dtype=D64))


def test_categorical():
    logits = torch.tensor([[0.1, 1.0, -0.5], [2.0, 0.0, 0.0]], dtype=D64)  # two variables, 3 classes
    p = Categorical(logits)
    outcomes = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    assert float(p.log_prob(outcomes).exp().sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(p.entropy(), td.Categorical(logits=logits).entropy().sum())
    s = p.sample(100_000, generator=torch.Generator().manual_seed(0))
    assert s.shape == (100_000, 2)
    freq = torch.stack([torch.bincount(s[:, j], minlength=3) for j in range(2)]).double() / len(s)
    torch.testing.assert_close(freq, logits.softmax(-1), atol=0.01, rtol=0)
    with pytest.raises(ValueError, match="class indices"):
        p.log_prob(torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="integer"):
        p.log_prob(torch.zeros(1, 2))


def test_discrete_probs_match_logits():
    logits = torch.tensor([[0.1, 1.0, -0.5], [2.0, 0.0, 0.0]], dtype=D64)
    by_logits, by_probs = Categorical(logits), Categorical(probs=logits.softmax(-1))
    outcomes = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    torch.testing.assert_close(by_probs.log_prob(outcomes), by_logits.log_prob(outcomes))
    torch.testing.assert_close(by_probs.probs, by_logits.probs)
    torch.testing.assert_close(by_probs.entropy(), by_logits.entropy())
    a = torch.tensor([0.3, -1.2, 2.0], dtype=D64)
    bern = Bernoulli(probs=a.sigmoid())
    x = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=D64)] * 3)
    torch.testing.assert_close(bern.log_prob(x), Bernoulli(a).log_prob(x))
    torch.testing.assert_close(bern.entropy(), Bernoulli(a).entropy())
    assert Bernoulli(probs=0.25).event_shape == (1,)  # a scalar is one variable, as for logits


def test_discrete_exact_zeros():
    """p = 0 stays exactly 0: 0 log 0 = 0 in the entropy, log-mass -inf, never sampled, no NaN anywhere."""
    coin = Bernoulli(probs=torch.tensor([0.0, 1.0, 0.5], dtype=D64))
    assert coin.probs.tolist() == [0.0, 1.0, 0.5]
    assert float(coin.entropy()) == pytest.approx(math.log(2), abs=1e-15)
    lp = coin.log_prob(torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=D64))
    assert lp[0] == pytest.approx(-math.log(2), abs=1e-15) and lp[1] == -math.inf and lp[2] == -math.inf
    s = coin.sample(1000, generator=torch.Generator().manual_seed(0))
    assert (s[:, 0] == 0).all() and (s[:, 1] == 1).all()
    die = Categorical(probs=torch.tensor([0.5, 0.5, 0.0], dtype=D64))
    assert die.probs.tolist() == [0.5, 0.5, 0.0]
    assert float(die.entropy()) == pytest.approx(math.log(2), abs=1e-15)
    torch.testing.assert_close(die.entropy(), td.Categorical(probs=die.probs).entropy())
    assert die.log_prob(torch.tensor([2, 0])).tolist() == [-math.inf, -math.log(2)]
    assert not (die.sample(1000, generator=torch.Generator().manual_seed(0)) == 2).any()
    certain = Categorical(probs=torch.tensor([0.0, 1.0, 0.0], dtype=D64))
    assert float(certain.entropy()) == 0.0
    # fitted by gradient, a zero-probability class gives finite gradients (0 log 0 has no NaN slope)
    fitted = Categorical(probs=torch.tensor([0.5, 0.5, 0.0], dtype=D64), trainable=True)
    (fitted.entropy() + fitted.log_prob(torch.tensor([1])).sum()).backward()
    assert torch.isfinite(fitted.logits.grad).all()


def test_discrete_kl_infinite_and_zero_terms():
    p = Categorical(probs=torch.tensor([0.5, 0.5, 0.0], dtype=D64))
    q = Categorical(probs=torch.tensor([0.25, 0.25, 0.5], dtype=D64))
    r = Categorical(probs=torch.tensor([0.0, 0.5, 0.5], dtype=D64))
    # the term with p_3 = 0 contributes 0 (it would be 0 * log(0 / 0.5))
    assert float(kl_divergence(p, q)) == pytest.approx(math.log(2), abs=1e-15)
    # p puts mass where r has none: KL(p || r) = +inf, and so is H(p, r); the other way round too
    assert float(kl_divergence(p, r)) == math.inf and float(cross_entropy(p, r)) == math.inf
    assert float(kl_divergence(r, p)) == math.inf
    assert float(kl_divergence(q, p)) == math.inf  # q has mass on class 3, p has none
    torch.testing.assert_close(
        kl_divergence(p, q), td.kl_divergence(td.Categorical(probs=p.probs), td.Categorical(probs=q.probs))
    )
    a = Bernoulli(probs=torch.tensor([0.0, 1.0], dtype=D64))
    b = Bernoulli(probs=torch.tensor([0.5, 0.5], dtype=D64))
    assert float(kl_divergence(a, b)) == pytest.approx(2 * math.log(2), abs=1e-15)
    assert float(kl_divergence(b, a)) == math.inf
    assert float(kl_divergence(a, a)) == 0.0


def test_discrete_bad_arguments():
    for cls in (Bernoulli, Categorical):
        with pytest.raises(ValueError, match="exactly one of logits or probs"):
            cls()
        with pytest.raises(ValueError, match="exactly one of logits or probs"):
            cls(torch.zeros(2), probs=torch.full((2,), 0.5))
        with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\], got values from -0.1 to 1.1"):
            cls(probs=torch.tensor([-0.1, 1.1]))
        with pytest.raises(ValueError, match="probs contains 1 NaN"):
            cls(probs=torch.tensor([float("nan"), 1.0]))
        with pytest.raises(ValueError, match="logits contains 1 NaN or infinite"):
            cls(torch.tensor([-math.inf, 0.0]))  # use probs= for an exact zero
    with pytest.raises(ValueError, match=r"probs must sum to 1 over the last axis \(within 1e-5\), off by 0.4"):
        Categorical(probs=torch.tensor([[0.5, 0.5], [0.3, 0.3]]))
    with pytest.raises(ValueError, match=r"probs must have shape \(\*event_shape, K\)"):
        Categorical(probs=torch.tensor(1.0))
    Categorical(probs=torch.full((10,), 0.1))  # float32 rounding (sum 1.0000001) is fine
    Bernoulli(probs=torch.tensor([0.3, 0.3]))  # independent coins need not sum to 1


# --------------------------------------------------------------------------------------------------
# Entropy, cross-entropy, KL
# --------------------------------------------------------------------------------------------------


def gaussian_pairs():
    g = torch.Generator().manual_seed(4)
    loc1, loc2 = torch.randn(3, generator=g, dtype=D64), torch.randn(3, generator=g, dtype=D64)
    ls1, ls2 = 0.3 * torch.randn(3, generator=g, dtype=D64), 0.3 * torch.randn(3, generator=g, dtype=D64)
    L1, L2 = random_tril(3, g) * 0.7, random_tril(3, g) * 0.7
    return {
        "std-diag": (StandardNormal(3).double(), DiagGaussian(loc1, ls1)),
        "diag-diag": (DiagGaussian(loc1, ls1), DiagGaussian(loc2, ls2)),
        "full-full": (
            FullGaussian(loc1, scale_tril=L1),
            FullGaussian(loc2, scale_tril=L2),
        ),
        "diag-full": (
            DiagGaussian(loc1, ls1),
            FullGaussian(loc2, scale_tril=L2),
        ),
        "full-std": (FullGaussian(loc2, scale_tril=L2), StandardNormal(3).double()),
        "bernoulli": (
            Bernoulli(torch.tensor([0.5, -1.0], dtype=D64)),
            Bernoulli(torch.tensor([2.0, 0.1], dtype=D64)),
        ),
        "categorical": (
            Categorical(torch.tensor([0.5, -1.0, 0.2], dtype=D64)),
            Categorical(torch.tensor([0.0, 1.0, -2.0], dtype=D64)),
        ),
    }


@pytest.mark.parametrize("pair", list(gaussian_pairs()))
def test_closed_form_kl_matches_monte_carlo(pair):
    p, q = gaussian_pairs()[pair]
    exact = float(kl_divergence(p, q))
    est, se = kl_divergence(p, q, n_samples=100_000, seed=0, return_stderr=True)
    assert exact > 0
    assert abs(float(est) - exact) < 5 * float(se) + 1e-6
    # H(p, q) = H(p) + KL(p || q), and its MC estimate agrees
    ce, ce_se = cross_entropy(p, q, n_samples=100_000, seed=1, return_stderr=True)
    assert abs(float(ce) - float(cross_entropy(p, q))) < 5 * float(ce_se)
    h, h_se = entropy(p, n_samples=100_000, seed=2, return_stderr=True)
    assert abs(float(h) - float(entropy(p))) < 5 * float(h_se)


def test_kl_against_torch():
    pairs = gaussian_pairs()
    p, q = pairs["full-full"]
    ref = td.kl_divergence(
        td.MultivariateNormal(p.loc, scale_tril=p.scale_tril),
        td.MultivariateNormal(q.loc, scale_tril=q.scale_tril),
    )
    torch.testing.assert_close(kl_divergence(p, q), ref)
    p, q = pairs["bernoulli"]
    torch.testing.assert_close(
        kl_divergence(p, q),
        td.kl_divergence(td.Bernoulli(logits=p.logits), td.Bernoulli(logits=q.logits)).sum(),
    )


@pytest.mark.parametrize("pair", list(gaussian_pairs()))
def test_kl_zero_only_at_equality(pair):
    p, q = gaussian_pairs()[pair]
    assert float(kl_divergence(p, p)) == pytest.approx(0.0, abs=1e-12)
    assert float(kl_divergence(q, q)) == pytest.approx(0.0, abs=1e-12)
    assert float(kl_divergence(p, q)) > 1e-3 and float(kl_divergence(q, p)) > 1e-3
    # a small move away from equality gives a small positive KL
    if isinstance(p, DiagGaussian):
        near = DiagGaussian(p.loc + 1e-3, p.log_scale)
        assert 0 < float(kl_divergence(p, near)) < 1e-4


def test_kl_mixture_needs_monte_carlo():
    p, q = mixture_2d("full"), mixture_2d("diag")
    with pytest.raises(ValueError, match="n_samples"):
        kl_divergence(p, q)
    with pytest.raises(ValueError, match="n_samples"):
        entropy(p)
    est = kl_divergence(p, q, n_samples=20_000, seed=0)
    assert float(est) > 0
    assert float(kl_divergence(p, p, n_samples=1000, seed=0)) == 0.0
    # seeded: same seed, same estimate
    assert float(est) == float(kl_divergence(p, q, n_samples=20_000, seed=0))


def test_diag_gaussian_scale_or_log_scale():
    loc, sd = torch.tensor([0.5, -1.0], dtype=D64), torch.tensor([2.0, 0.3], dtype=D64)
    a, b = DiagGaussian(loc, sd.log()), DiagGaussian(loc, scale=sd)
    torch.testing.assert_close(b.scale, sd)
    torch.testing.assert_close(b.log_scale, a.log_scale)
    x = torch.randn(10, 2, dtype=D64)
    torch.testing.assert_close(b.log_prob(x), a.log_prob(x))
    torch.testing.assert_close(b.entropy(), a.entropy())
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    torch.testing.assert_close(b.sample(5, generator=g1), a.sample(5, generator=g2))
    assert {n for n, _ in DiagGaussian(loc, scale=sd, trainable=True).named_parameters()} == {"loc", "log_scale"}
    with pytest.raises(ValueError, match="exactly one of log_scale or scale"):
        DiagGaussian(loc)
    with pytest.raises(ValueError, match="exactly one of log_scale or scale"):
        DiagGaussian(loc, sd.log(), scale=sd)
    with pytest.raises(ValueError, match=r"scale must be positive \(it is the standard deviation sigma\)"):
        DiagGaussian(loc, scale=torch.tensor([1.0, 0.0], dtype=D64))
    with pytest.raises(ValueError, match=r"scale must be positive"):
        DiagGaussian(loc, scale=torch.tensor([1.0, -2.0], dtype=D64))
    with pytest.raises(ValueError, match=r"loc and scale must have the same non-scalar shape, got \(2,\) and \(3,\)"):
        DiagGaussian(loc, scale=torch.ones(3, dtype=D64))


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_mixture_scales_and_covariances(cov):
    gm = mixture_2d(cov)
    L = gm.scale_trils
    torch.testing.assert_close(gm.covariances, L @ L.mT)
    torch.testing.assert_close(gm.scales, torch.diagonal(gm.covariances, dim1=-2, dim2=-1).sqrt())
    if cov == "diag":
        torch.testing.assert_close(gm.scales, torch.tensor([[0.5, 1.0], [0.8, 0.4], [1.2, 0.7]], dtype=D64))
    # component k is the Gaussian N(locs[k], covariances[k]); in the diagonal case DiagGaussian(scale=scales[k])
    k, x = 1, torch.randn(6, 2, dtype=D64)
    comp = FullGaussian(gm.locs[k], cov=gm.covariances[k])
    torch.testing.assert_close(gm.component_log_prob(x)[:, k], comp.log_prob(x))
    if cov == "diag":
        torch.testing.assert_close(DiagGaussian(gm.locs[k], scale=gm.scales[k]).log_prob(x), comp.log_prob(x))


def test_fixed_by_default_trainable_on_request():
    """A distribution is a fixed object (buffers, results need no grad, e.g. for plotting) unless
    ``trainable=True``; closed-form fits return fixed distributions too."""
    x = two_cluster_data(n=300)
    fixed = [
        DiagGaussian(torch.zeros(2), torch.zeros(2)),
        DiagGaussian(torch.zeros(2), scale=torch.ones(2)),
        FullGaussian(torch.zeros(2), cov=torch.eye(2)),
        GaussianMixture(torch.zeros(2), torch.zeros(2, 2), scales=torch.ones(2, 2)),
        DiagGaussian.fit_mle(x),
        FullGaussian.fit_mle(x),
        GaussianMixture.fit_em(x, 2, n_iter=3)[0],
    ]
    for dist in fixed:
        assert not list(dist.parameters()), type(dist).__name__
        out = [dist.log_prob(x.to(dist._ref().dtype)), dist.sample(3)]
        assert not any(t.requires_grad for t in out), type(dist).__name__
        out[0].numpy()  # what matplotlib calls
    for dist in (Bernoulli(torch.zeros(2)), Categorical(probs=torch.full((3,), 1 / 3))):
        assert not list(dist.parameters()) and not dist.entropy().requires_grad and not dist.probs.requires_grad
    assert not kl_divergence(fixed[0], fixed[1]).requires_grad
    trainable = [
        DiagGaussian(torch.zeros(2), torch.zeros(2), trainable=True),
        FullGaussian.fit_mle(x, trainable=True),
        GaussianMixture.fit_em(x, 2, n_iter=3, trainable=True)[0],
        Bernoulli(torch.zeros(2), trainable=True),
        Categorical(probs=torch.full((3,), 1 / 3), trainable=True),
    ]
    for dist in trainable:
        params = list(dist.parameters())
        assert params and all(p.requires_grad for p in params), type(dist).__name__
    with pytest.raises(TypeError):
        DiagGaussian(torch.zeros(2), torch.zeros(2), True)  # trainable is keyword-only


# --------------------------------------------------------------------------------------------------
# Bad input, dtype/device, use as a flow base
# --------------------------------------------------------------------------------------------------


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="positive diagonal"):
        FullGaussian(torch.zeros(2), scale_tril=torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="positive definite"):
        FullGaussian(torch.zeros(2), cov=torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="symmetric"):
        FullGaussian(torch.zeros(2), cov=torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="exactly one"):
        FullGaussian(torch.zeros(2))
    with pytest.raises(ValueError, match="same non-scalar shape"):
        DiagGaussian(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        DiagGaussian(torch.zeros(2), torch.zeros(2)).log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        FullGaussian(torch.zeros(2), cov=torch.eye(2)).log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="'cholesky' or 'eigen'"):
        FullGaussian(torch.zeros(2), cov=torch.eye(2)).sample(3, method="svd")
    with pytest.raises(ValueError, match="scales must be positive"):
        GaussianMixture(torch.zeros(2), torch.zeros(2, 2), scales=-torch.ones(2, 2))
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        GaussianMixture.fit_em(torch.randn(10, 2), 0)
    with pytest.raises(ValueError, match="tol must be non-negative"):
        GaussianMixture.fit_em(torch.randn(10, 2), 2, tol=-1)
    with pytest.raises(ValueError, match="different event shapes"):
        kl_divergence(Bernoulli(torch.zeros(2)), Bernoulli(torch.zeros(3)))


def test_dtype_moves_and_learnable_base():
    from flowlib.flow import Flow
    from flowlib.transforms.base import Compose

    base = DiagGaussian(torch.zeros(2), torch.zeros(2), trainable=True)
    assert {n for n, _ in base.named_parameters()} == {"loc", "log_scale"}
    fixed = DiagGaussian(torch.zeros(2), torch.zeros(2)).double()
    assert fixed.loc.dtype == D64 and not list(fixed.parameters())
    gm = mixture_2d("full").float()
    assert gm.sample(3).dtype == torch.float32
    flow = Flow(Compose(), FullGaussian(torch.zeros(2), cov=torch.eye(2)))
    x = torch.randn(5, 2)
    torch.testing.assert_close(flow.log_prob(x), StandardNormal(2).log_prob(x))
    assert flow.sample(4).shape == (4, 2)
