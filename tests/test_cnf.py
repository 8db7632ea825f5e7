"""Continuous normalizing flow: ODE round trip, instantaneous change of variables vs autograd, Hutchinson."""

import functools
import io

import pytest
import torch

from flowlib.testing import check_transform, perturb_parameters
from flowlib.transforms.cnf import CNF

HID = (16,)


perturb = functools.partial(perturb_parameters, scale=0.7)  # random weights, away from the init


def data(n=3, d=2, seed=1, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def make_cnf(d, tol=1e-8, **kwargs):
    """A float64 CNF with random weights; the same arguments give the same weights."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        cnf = CNF(d, HID, atol=tol, rtol=tol, **kwargs)
    return perturb(cnf).double()


@pytest.mark.parametrize("d", [2, 3])
def test_roundtrip_and_exact_trace_logdet(d):
    # The inverse is a second ODE solve, so the round trip is exact only up to the solver error:
    # with rtol = atol = 1e-8 we require 1e-6 (round trip, log-det cancellation and log-det vs
    # slogdet of the autograd Jacobian of the solver's map).
    cnf = make_cnf(d)
    check_transform(cnf, data(d=d), atol=1e-6, logdet_atol=1e-6)
    z, ld = cnf(data(d=d))
    assert (z - data(d=d)).abs().max() > 0.1 and ld.abs().min() > 1e-2  # the map is far from identity


def test_identity_at_initialisation():
    x = data(dtype=torch.float32)
    z, ld = CNF(2, HID)(x)  # f = 0; the solver's interpolation at t1 adds float32 rounding only
    assert torch.allclose(z, x, atol=1e-6) and torch.equal(ld, torch.zeros(3))


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_trace_is_unbiased_and_seeded(noise):
    # Same weights, exact vs Hutchinson trace, solver tolerance 1e-6. Each repeated row gets its own
    # probe vector; the mean of 100 estimates must lie within 4 standard errors (+ 1e-4 for the solver).
    exact = make_cnf(2, tol=1e-6)
    x, reps = data(n=2), 100
    xr = x.repeat_interleave(reps, dim=0)
    with torch.no_grad():
        z_exact, ld_exact = exact(x)
        z_h, ld_h = make_cnf(2, tol=1e-6, trace="hutchinson", noise=noise, seed=0)(xr)
        ld_again = make_cnf(2, tol=1e-6, trace="hutchinson", noise=noise, seed=0)(xr)[1]
    assert torch.allclose(z_h.reshape(2, reps, 2), z_exact[:, None], atol=1e-4)  # same ODE for z
    ld_h = ld_h.reshape(2, reps)
    assert ((ld_h.mean(1) - ld_exact).abs() <= 4 * ld_h.std(1) / reps**0.5 + 1e-4).all()
    assert (ld_h.std(1) > 1e-3).all() and ld_exact.abs().min() > 0.1  # random estimates of a non-zero...
    assert torch.equal(ld_again, ld_h.flatten())  # ...but reproducible with a seed


@pytest.mark.parametrize("adjoint", [False, True])
def test_every_parameter_gets_a_gradient(adjoint):
    cnf = perturb(CNF(2, HID, adjoint=adjoint, trace="hutchinson", seed=0))
    z, ld = cnf(data(dtype=torch.float32))
    (0.5 * z.pow(2).sum() - ld.sum()).backward()
    for name, p in cnf.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_adjoint_gradient_matches_backprop():
    grads = []
    for adjoint in (False, True):
        cnf = make_cnf(2, tol=1e-7, adjoint=adjoint)
        z, ld = cnf(data())
        (0.5 * z.pow(2).sum() - ld.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in cnf.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_fixed_step_solver_and_float32():
    cnf = perturb(CNF(2, HID, solver="rk4", step_size=0.05))
    check_transform(cnf, data(dtype=torch.float32), atol=1e-4, logdet_atol=1e-4)  # RK4, h = 0.05


def test_state_dict_roundtrip():
    cnf = make_cnf(2)
    buf = io.BytesIO()
    torch.save(cnf.state_dict(), buf)
    buf.seek(0)
    other = CNF(2, HID, atol=1e-8, rtol=1e-8).double()
    other.load_state_dict(torch.load(buf, weights_only=True))
    x = data()
    assert torch.equal(other(x)[0], cnf(x)[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=0), "dim"),
        (dict(dim=2, hidden=(0,)), "hidden"),
        (dict(dim=2, hidden=[]), "hidden"),
        (dict(dim=2, t1=0.0), "t1"),
        (dict(dim=2, t1=-1.0), "t1"),
        (dict(dim=2, trace="diagonal"), "trace"),
        (dict(dim=2, noise="uniform"), "noise"),
        (dict(dim=2, solver="leapfrog"), "solver"),
        (dict(dim=2, atol=0.0), "atol"),
        (dict(dim=2, rtol=-1e-3), "rtol"),
        (dict(dim=2, solver="rk4", step_size=0.0), "step_size"),
    ],
)
def test_invalid_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CNF(**kwargs)


def test_bad_inputs():
    cnf = CNF(2, HID)
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        cnf(torch.randn(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        cnf.inverse(torch.tensor([[float("nan"), 0.0]]))


# ---------------------------------------------------------------- issue 16: the adjoint inside compositions


def _before_and_cnf(adjoint, tol=1e-8):
    """A float64 ``ElementwiseAffine`` with random parameters followed by a random CNF."""
    from flowlib.transforms import ElementwiseAffine

    with torch.random.fork_rng():
        torch.manual_seed(3)
        before = perturb(ElementwiseAffine(2)).double()
    return before, make_cnf(2, tol=tol, adjoint=adjoint)


def _nll(before, cnf, x):
    from flowlib import Compose, Flow, StandardNormal

    flow = Flow(Compose(before, cnf), StandardNormal(2).double())
    return -flow.log_prob(x).sum()


def test_adjoint_cnf_after_another_layer_matches_backprop_and_finite_differences():
    # Regression: with adjoint=True the CNF crashed whenever its input required grad ("The differentiated
    # Tensor ... appears to not have been used in the graph"), i.e. after any layer with parameters.
    x = data(n=4)
    grads = []
    for adjoint in (False, True):
        before, cnf = _before_and_cnf(adjoint)
        _nll(before, cnf, x).backward()
        grads.append(torch.cat([before.shift.grad, before.log_scale.grad]))
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cnf.parameters())
    assert grads[1].abs().min() > 1e-3  # the parameter before the CNF really gets a gradient
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-5)
    # and that gradient is the derivative: central differences on one parameter of the layer before
    before, cnf = _before_and_cnf(True)
    h = 1e-5
    with torch.no_grad():
        before.log_scale[0] += h
        up = _nll(before, cnf, x)
        before.log_scale[0] -= 2 * h
        down = _nll(before, cnf, x)
    assert abs((up - down) / (2 * h) - grads[1][2]) < 1e-5


def test_two_stacked_adjoint_cnfs_and_the_autograd_jacobian():
    from flowlib import Compose
    from flowlib.transforms import ActNorm

    with torch.random.fork_rng():  # a fixed-step solver keeps this cheap; the bug did not depend on it
        torch.manual_seed(5)
        first = perturb(CNF(2, (8,), solver="rk4", step_size=0.1, adjoint=True)).double()
        second = perturb(CNF(2, (8,), solver="rk4", step_size=0.1, adjoint=True)).double()
    t = Compose(first, second)
    check_transform(t, data(n=2), atol=1e-4, logdet_atol=1e-4)  # includes jacobian() through both adjoints
    z, ld = t(data())
    (0.5 * z.pow(2).sum() - ld.sum()).backward()
    for p in t.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    # the reproducer of the issue, as written
    from flowlib import Flow, StandardNormal

    flow = Flow(Compose(ActNorm(2), CNF(2, (8, 8), adjoint=True)), StandardNormal(2))
    lp = flow.log_prob(torch.randn(4, 2))
    lp.sum().backward()
    assert torch.isfinite(lp).all() and flow.transform[0].loc.grad is not None
