"""Planar, radial and Sylvester flows: invertibility constraints, numerical inverses, log-dets vs autograd."""

import functools
import io

import pytest
import torch

from flowlib import Compose, Flow, InverseTransform, NoAnalyticInverse
from flowlib.distributions import StandardNormal
from flowlib.testing import check_transform, jacobian_logdet, perturb_parameters
from flowlib.transforms.planar import Planar, Radial, Sylvester

D = 4


perturb = functools.partial(perturb_parameters, scale=1.0)  # random weights, away from the init


def data(n=8, d=D, seed=1, dtype=torch.float64):
    return 2 * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cls", [Planar, Radial])
def test_roundtrip_and_logdet_random_params(cls, seed):
    # The inverses are numerical (planar: safeguarded Newton on a scalar to machine precision; radial:
    # closed-form root of a quadratic), yet accurate enough for the standard 1e-10 float64 tolerance.
    layer = perturb(cls(D), seed=seed).double()
    out = check_transform(layer, data(seed=seed))
    assert out["roundtrip"] < 1e-10


def test_planar_constraint_and_nearly_singular_case():
    layer = Planar(D).double()
    with torch.no_grad():
        layer.w.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))
        layer.u.copy_(-3 * layer.w)  # w^T u = -15.75: unconstrained, this map would fold
    slope_min = 1 + float((layer.w @ layer.u_hat()).detach())  # det of the Jacobian at a = 0, about 1.4e-7
    assert 0 < slope_min < 1e-6
    x = (torch.linspace(-3, 3, 41, dtype=torch.float64)[:, None] * layer.w / layer.w.norm()).detach()
    check_transform(layer, x)  # points along w, where the map is flattest
    for seed in range(5):
        perturb(layer, scale=3.0, seed=seed)
        assert float((layer.w @ layer.u_hat()).detach()) > -1


def test_radial_constraint_and_points_near_centre():
    layer = Radial(D).double()
    with torch.no_grad():
        layer.alpha_raw.fill_(0.7)
        layer.beta_raw.fill_(-12.0)  # beta close to -alpha: strong contraction
        layer.z0.copy_(torch.tensor([0.5, -1.0, 0.0, 2.0]))
    alpha, beta = (t.detach() for t in layer.alpha_beta())
    assert float(beta) > -float(alpha)
    # (much closer than 1e-3 to z0, z - z0 is below the resolution of z itself: no method can invert it)
    x = layer.z0.detach() + torch.cat([1e-3 * torch.randn(3, D, dtype=torch.float64), data()])
    check_transform(layer, x)


def test_sylvester_logdet_and_no_inverse():
    for m in (1, 3, D):
        layer = perturb(Sylvester(D, m), scale=0.5).double()
        x = data()
        z, ld = layer(x)
        ref = jacobian_logdet(lambda v, f=layer: f(v)[0], x)
        assert torch.allclose(ld, ref, atol=1e-10, rtol=0)
        Q, _, _ = layer.factors()
        assert torch.allclose(Q.T @ Q, torch.eye(m, dtype=Q.dtype), atol=1e-12)
        with pytest.raises(NoAnalyticInverse, match="InverseTransform"):
            layer.inverse(z)
    gen = InverseTransform(layer)  # the paper's direction: generative map with closed-form log-det
    x_gen, ld_gen = gen.inverse(x)
    assert torch.equal(x_gen, layer(x)[0]) and torch.equal(ld_gen, layer(x)[1])


def test_flow_with_planar_and_radial_layers():
    torch.manual_seed(0)
    layers = Compose(perturb(Planar(2), seed=1), perturb(Radial(2), seed=2))
    flow = Flow(layers, StandardNormal((2,))).double()
    x, lp = flow.sample_with_log_prob(16)
    assert torch.allclose(flow.log_prob(x), lp, atol=1e-10)


@pytest.mark.parametrize("make", [lambda: Planar(D), lambda: Radial(D), lambda: Sylvester(D, 2)])
def test_every_parameter_gets_a_gradient(make):
    layer = perturb(make(), scale=0.5)
    z, ld = layer(data(dtype=torch.float32))
    (z.pow(2).sum() - ld.sum()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_planar_inverse_gradient_matches_implicit_function():
    layer = perturb(Planar(3), seed=3).double()
    z = data(n=4, d=3).requires_grad_(True)
    # d x / d z of the numerical inverse must be the inverse of the forward Jacobian
    from flowlib.testing import per_sample_jacobian

    J_inv = per_sample_jacobian(lambda v: layer.inverse(v)[0], z.detach())
    x = layer.inverse(z.detach())[0]
    J_fwd = per_sample_jacobian(lambda v: layer(v)[0], x)
    assert torch.allclose(J_inv @ J_fwd, torch.eye(3, dtype=z.dtype).expand(4, 3, 3), atol=1e-10)


@pytest.mark.parametrize("make", [lambda: Planar(D), lambda: Radial(D), lambda: Sylvester(D, 2)])
def test_state_dict_roundtrip(make):
    layer = perturb(make()).double()
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    other = make().double()
    other.load_state_dict(torch.load(buf, weights_only=True))
    x = data()
    assert torch.equal(other(x)[0], layer(x)[0]) and torch.equal(other(x)[1], layer(x)[1])


def test_float32():
    for make in (lambda: Planar(D), lambda: Radial(D)):
        check_transform(perturb(make(), scale=0.5), data(dtype=torch.float32))


def test_invalid_hyperparameters_and_inputs():
    for cls in (Planar, Radial):
        for bad in (0, -3, 2.0):
            with pytest.raises(ValueError, match="dim"):
                cls(bad)
    with pytest.raises(ValueError, match="m must be"):
        Sylvester(3, 4)
    with pytest.raises(ValueError, match="m"):
        Sylvester(3, 0)
    for layer in (Planar(3), Radial(3), Sylvester(3, 2)):
        with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
            layer(torch.randn(5, 4))
        with pytest.raises(ValueError, match="NaN"):
            layer(torch.tensor([[1.0, float("inf"), 0.0]]))
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        Planar(3).inverse(torch.randn(3))
