"""Rational-quadratic spline transformer and the layers that use it (issue 23): round trips inside and outside
the interval, log-dets against autograd (elementwise and as the slogdet of whole-layer Jacobians), monotonicity,
the identity at zero parameters, triangular Jacobians, densities that integrate to 1, and bad inputs.
Everything in float64 on random (perturbed) parameters."""

from __future__ import annotations

import math

import pytest
import torch

from flowlib import Compose, Flow, StandardNormal
from flowlib.testing import check_transform, per_sample_jacobian, perturb_parameters
from flowlib.transforms import (
    ElementwiseSpline,
    Reverse,
    SplineCoupling,
    SplineIAF,
    SplineMAF,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
    rational_quadratic_spline,
    spline_maf,
)
from flowlib.transforms.splines import DEFAULT_MIN_BIN_WIDTH, _knots

B, K = 2.0, 5
f64 = torch.float64


def params(shape, K=K, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    w, h = (scale * torch.randn(*shape, K, generator=g, dtype=f64) for _ in range(2))
    return w, h, scale * torch.randn(*shape, K - 1, generator=g, dtype=f64)


def points(n=400, seed=1):
    """Half inside [-B, B], half in the tails, plus the two ends and the knots' neighbourhood."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([(2 * torch.rand(n // 2, generator=g, dtype=f64) - 1) * B,
                   torch.sign(torch.randn(n // 2 - 2, generator=g, dtype=f64)) * (B + 3 * torch.rand(n // 2 - 2,
                                                                                     generator=g, dtype=f64)),
                   torch.tensor([-B, B], dtype=f64)])
    return x


def test_round_trip_inside_and_outside_the_interval():
    x = points()
    w, h, d = params(x.shape)
    y, ld = rational_quadratic_spline(x, w, h, d, bound=B)
    x_back, ld_inv = rational_quadratic_spline(y, w, h, d, bound=B, inverse=True)
    assert (x.abs() > B).sum() > 100 and (x.abs() < B).sum() > 100
    assert (x_back - x).abs().max() < 1e-10
    assert (ld + ld_inv).abs().max() < 1e-10
    tails = x.abs() > B
    assert torch.equal(y[tails], x[tails]) and torch.equal(ld[tails], torch.zeros_like(ld[tails]))
    assert ((y.abs() <= B) == (x.abs() <= B)).all()  # [-B, B] is mapped onto itself


@pytest.mark.parametrize("inverse", [False, True])
def test_logdet_is_log_of_the_autograd_derivative(inverse):
    x = points()
    w, h, d = params(x.shape, seed=4)
    v = x.clone().requires_grad_()
    y, ld = rational_quadratic_spline(v, w, h, d, bound=B, inverse=inverse)
    (grad,) = torch.autograd.grad(y.sum(), v)  # elementwise map: the gradient is the derivative
    assert (grad > 0).all()
    assert (grad.log() - ld).abs().max() < 1e-10


def test_monotone_and_continuous_with_continuous_slope():
    x = torch.linspace(-B - 1, B + 1, 20001, dtype=f64)
    w, h, d = (p[0].expand(x.shape[0], -1) for p in params((1,), K=7, scale=1.5, seed=2))
    y, ld = rational_quadratic_spline(x, w, h, d, bound=B)
    assert (y.diff() > 0).all()  # strictly increasing
    slope = ld.exp()
    # no jumps: every increment is the integral of the slope (trapezoid rule, relative error)
    trap = 0.5 * (slope[1:] + slope[:-1]) * (x[1] - x[0])
    assert ((y.diff() - trap).abs() / trap).max() < 0.05  # measured 0.015; a jump of size J adds J / trap
    # the slope is continuous at every knot, also where the tails join (slope 1 at -B and B)
    knots = _knots(w[:1], B, DEFAULT_MIN_BIN_WIDTH)[0][0]
    eps = 1e-9
    for xk in knots.tolist():
        around = torch.tensor([xk - eps, xk + eps], dtype=f64)
        _, l2 = rational_quadratic_spline(around, w[:2], h[:2], d[:2], bound=B)
        assert abs(float(l2[0] - l2[1])) < 1e-5, xk
    assert abs(float(slope[0]) - 1) < 1e-12 and abs(float(slope[-1]) - 1) < 1e-12
    assert slope.max() > 3 and slope.min() < 0.3  # a spline that really bends


def test_equal_bins_with_unit_slopes_are_the_identity():
    x = points()
    n = x.shape[0]
    for raw in (0.0, 0.7):  # any constant gives equal bins; raw slope 0 is slope 1
        w = torch.full((n, K), raw, dtype=f64)
        y, ld = rational_quadratic_spline(x, w, w.clone(), torch.zeros(n, K - 1, dtype=f64), bound=B)
        assert (y - x).abs().max() < 1e-12 and ld.abs().max() < 1e-12
    layer = ElementwiseSpline(3, num_bins=4).double()
    xs = torch.randn(6, 3, dtype=f64) * 3
    z, ld = layer(xs)
    assert (z - xs).abs().max() < 1e-12 and ld.abs().max() < 1e-12


def test_one_bin_and_extreme_parameters():
    x = points()
    y, ld = rational_quadratic_spline(x, *params(x.shape, K=1, seed=3), bound=B)  # K = 1: one bin, d0 = d1 = 1
    assert (y - x).abs().max() < 1e-12  # one bin from -B to B with unit end slopes is the identity
    w, h, d = params(x.shape, scale=30.0, seed=5)  # nearly degenerate bins and slopes: still invertible
    y, ld = rational_quadratic_spline(x, w, h, d, bound=B)
    x_back, ld_inv = rational_quadratic_spline(y, w, h, d, bound=B, inverse=True)
    assert torch.isfinite(ld).all() and (x_back - x).abs().max() < 1e-8


def test_bad_inputs_get_clear_errors():
    x = torch.zeros(4, dtype=f64)
    w, h, d = params((4,))
    cases = [
        (dict(widths=w[:, :3]), "heights must have shape"),
        (dict(heights=h[:3]), "heights must have shape"),
        (dict(derivatives=d[:, :2]), "derivatives must have shape"),
        (dict(widths=w[None]), "widths must have shape"),
        (dict(widths=w[:, :0], heights=h[:, :0], derivatives=d[:, :0]), "K >= 1"),
        (dict(bound=0.0), "bound must be positive"),
        (dict(bound=-1.0), "bound must be positive"),
        (dict(inputs=torch.tensor([0.0, float("nan"), 0.0, 0.0], dtype=f64)), "inputs contains 1 NaN"),
        (dict(heights=torch.where(h > 0, float("nan"), h)), "heights contains"),
        (dict(derivatives=d.float()), "dtype of inputs"),
        (dict(min_bin_width=0.25), "min_bin_width \\* K must be below 1"),
        (dict(min_derivative=0.0), "min_derivative must be positive"),
    ]
    for change, match in cases:
        kw = dict(inputs=x, widths=w, heights=h, derivatives=d, bound=B) | change
        with pytest.raises(ValueError, match=match):
            rational_quadratic_spline(**kw)
    for bad in (0, -2, 2.5, "8"):
        with pytest.raises(ValueError, match="num_bins"):
            ElementwiseSpline(2, num_bins=bad)
        with pytest.raises(ValueError, match="num_bins"):
            SplineCoupling(half_mask(4), 8, num_bins=bad)
        with pytest.raises(ValueError, match="num_bins"):
            SplineMAF(4, (8,), num_bins=bad)
    for cls_args in ((ElementwiseSpline, (2,)), (SplineMAF, (4,))):
        with pytest.raises(ValueError, match="bound must be positive"):
            cls_args[0](*cls_args[1], bound=0)
    with pytest.raises(ValueError, match="bound must be positive"):
        SplineCoupling(half_mask(4), 8, bound=-1)
    with pytest.raises(ValueError, match="checkerboard"):
        SplineCoupling(checkerboard_mask(4, 4), 8)
    with pytest.raises(ValueError, match="min_bin_width"):
        ElementwiseSpline(2, num_bins=1000)  # 1000 bins of at least 1/1000 of the interval: no room left


LAYERS = {
    "ElementwiseSpline": lambda: ElementwiseSpline(4, num_bins=K, bound=B),
    "SplineCoupling[half]": lambda: SplineCoupling(half_mask(4), (16,), num_bins=K, bound=B),
    "SplineCoupling[alternating]": lambda: SplineCoupling(alternating_mask(5, 1), (16,), num_bins=K, bound=B),
    "SplineMAF[random]": lambda: SplineMAF(4, (16, 16), num_bins=K, bound=B, order="random", seed=2),
    "SplineIAF[reverse]": lambda: SplineIAF(4, (16, 16), num_bins=K, bound=B, order="reverse"),
}


def layer_data(layer, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = layer.event_shape[0]
    return 1.6 * B * torch.randn(n, d, generator=g, dtype=f64)  # most inside, some in the tails


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_logdet_matches_autograd_jacobian(name):
    torch.manual_seed(0)
    layer = perturb_parameters(LAYERS[name](), scale=0.5).double()
    x = layer_data(layer)
    out = check_transform(layer, x)  # round trip 1e-10, cancellation, slogdet of the autograd Jacobian
    assert out["roundtrip"] < 1e-10 and out["jacobian"] < 1e-9
    z, ld = layer(x)
    assert ld.abs().max() > 0.1  # the parameters are really away from the identity
    loss = -(ld.sum() - 0.5 * (z**2).sum())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_channel_coupling_on_images():
    torch.manual_seed(0)
    layer = perturb_parameters(SplineCoupling(channel_mask(4), 8, num_bins=3, bound=B), scale=0.3).double()
    x = torch.randn(2, 4, 2, 2, dtype=f64) * 2
    check_transform(layer, x)


@pytest.mark.parametrize("cls", [SplineMAF, SplineIAF])
def test_autoregressive_jacobian_is_triangular_in_the_ordering(cls):
    torch.manual_seed(0)
    layer = perturb_parameters(cls(5, (16, 16), num_bins=K, bound=B, order="random", seed=7), 0.5).double()
    x = layer_data(layer, n=4)
    J = per_sample_jacobian(lambda v: layer(v)[0], x)
    idx = torch.argsort(layer.order)
    Jp = J[:, idx][:, :, idx]
    assert torch.equal(torch.triu(Jp, 1), torch.zeros_like(Jp))
    assert (torch.tril(Jp, -1).abs() > 0).any()  # it does condition on earlier coordinates
    assert (torch.diagonal(Jp, dim1=1, dim2=2) > 0).all()


@pytest.mark.parametrize("cls", [SplineMAF, SplineIAF])
def test_no_grad_sequential_path_equals_the_autograd_path(cls):
    torch.manual_seed(0)
    layer = perturb_parameters(cls(5, (16, 16), num_bins=K, bound=B, order="random", seed=1), 0.5).double()
    v = layer_data(layer, n=8)
    fn = layer._sequential
    a, la = fn(v)
    with torch.no_grad():
        b, lb = fn(v)
    assert (a - b).abs().max() < 1e-12 and (la - lb).abs().max() < 1e-12


@pytest.mark.parametrize("cls", [SplineMAF, SplineIAF])
def test_no_grad_one_pass_equals_the_autograd_path(cls):
    """Without autograd the one-pass direction reads the MADE's output entry-major (``MADE(entry_major=True)``,
    no transposed copy): the same numbers as the autograd path, which reshapes and transposes."""
    layer = perturb_parameters(cls(5, (16, 16), num_bins=K, bound=B, order="random", seed=2), 0.5).double()
    v = layer_data(layer, n=9)
    a, la = layer._one_pass(v)
    with torch.no_grad():
        b, lb = layer._one_pass(v)
        made = layer.made(v, entry_major=True)
        assert made.is_contiguous() and made.shape == (9, 5, 3 * K - 1)
        assert torch.allclose(made, layer.made(v).transpose(1, 2), rtol=0, atol=1e-12)
    assert (a - b).abs().max() < 1e-12 and (la - lb).abs().max() < 1e-12
    with pytest.raises(RuntimeError, match="no-grad"):
        layer.made(v, entry_major=True)


def _grid_mass(flow, L=9.0, n=500):
    t = torch.linspace(-L, L, n + 1, dtype=f64)
    mid = (t[1:] + t[:-1]) / 2
    xx, yy = torch.meshgrid(mid, mid, indexing="ij")
    with torch.no_grad():
        p = flow.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).exp()
    return float(p.sum()) * (2 * L / n) ** 2


def test_flows_of_spline_layers_integrate_to_one_on_a_grid():
    torch.manual_seed(0)
    coupling = Flow(Compose(SplineCoupling(half_mask(2), (16,), num_bins=6, bound=3.0), Reverse(2),
                            SplineCoupling(half_mask(2), (16,), num_bins=6, bound=3.0)), StandardNormal((2,)))
    autoregressive = spline_maf(2, num_layers=2, hidden=(16,), num_bins=6, bound=3.0)
    for flow in (coupling, autoregressive):
        perturb_parameters(flow, scale=0.2).double()  # larger: narrow spikes that a 500 x 500 grid misses
        mass = _grid_mass(flow)
        assert abs(mass - 1) < 1e-3, mass  # measured within 7e-5
        # and the model is far from the base (measured mean |log p - log N(0, I)| about 2 nats)
        with torch.no_grad():
            x = torch.randn(2000, 2, dtype=f64)
            assert (flow.log_prob(x) - StandardNormal((2,)).double().log_prob(x)).abs().mean() > 0.5


def test_sample_and_log_prob_agree_for_a_spline_flow():
    torch.manual_seed(0)
    flow = spline_maf(3, num_layers=2, hidden=(16,), num_bins=4, bound=2.0)
    perturb_parameters(flow, 0.4).double()
    with torch.no_grad():
        x, lp = flow.sample_with_log_prob(50)
        assert (flow.log_prob(x) - lp).abs().max() < 1e-10
    assert math.isfinite(float(lp.sum()))
