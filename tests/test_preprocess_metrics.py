"""Dequantisation, the logit transform, and likelihood metrics (bits/dim known answers)."""

import math

import pytest
import torch

from flowlib.distributions import StandardNormal
from flowlib.flow import Flow
from flowlib.metrics import bits_per_dim, nll_nats
from flowlib.preprocess import Logit, UniformDequantization, quantize
from flowlib.testing import check_transform

D64 = torch.float64


# --------------------------------------------------------------------------------------------------
# Logit
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("shape", [(6, 3), (4, 1, 2, 2)])
def test_logit_check_transform(alpha, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g, dtype=D64) * 0.98 + 0.01
    out = check_transform(Logit(alpha), x)
    assert out["jacobian"] < 1e-8


def test_logit_endpoints_and_formula():
    t = Logit(0.05)
    x = torch.tensor([[0.0, 1.0, 0.5]], dtype=D64)
    y, ld = t(x)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    torch.testing.assert_close(
        y, torch.tensor([[math.log(0.05 / 0.95), math.log(0.95 / 0.05), 0.0]], dtype=D64)
    )
    # dy/dx at x = 1/2: (1 - 2 alpha) / (1/4)
    torch.testing.assert_close(
        Logit(0.05)(torch.full((1, 1), 0.5, dtype=D64))[1], torch.tensor([math.log(0.9 * 4)], dtype=D64)
    )
    torch.testing.assert_close(t.inverse(y)[0], x)


def test_logit_flow_density_on_unit_interval():
    """Change of variables with the exact log-det: p(x) = N(logit(s)) |dy/dx| integrates to the base mass."""
    flow = Flow(Logit(0.05), StandardNormal(1)).double()
    x = torch.linspace(0, 1, 200_001, dtype=D64)[:, None]
    with torch.no_grad():
        p = flow.log_prob(x).exp()
    # the base mass of logit([alpha, 1 - alpha]) = [-c, c] lands in [0, 1]; the rest maps outside
    c = math.log(0.95 / 0.05)
    expected = math.erf(c / math.sqrt(2))
    assert float(torch.trapezoid(p, x[:, 0])) == pytest.approx(expected, abs=1e-8)


def test_logit_bad_input():
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 0.5\)"):
        Logit(0.5)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 0.5\)"):
        Logit(-0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Logit()(torch.tensor([[1.5]]))
    with pytest.raises(ValueError, match="NaN"):
        Logit()(torch.tensor([[float("nan")]]))


# --------------------------------------------------------------------------------------------------
# Dequantisation
# --------------------------------------------------------------------------------------------------


def test_dequantization_range_and_roundtrip():
    x = torch.arange(256, dtype=torch.float32).repeat(40, 1)
    deq = UniformDequantization(num_bits=8)
    y = deq(x, generator=torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() < 1
    assert torch.equal(quantize(y), x)
    assert torch.all((y * 256 >= x) & (y * 256 < x + 1))
    y2 = deq(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, y2)
    assert not torch.equal(y, deq(x, generator=torch.Generator().manual_seed(1)))
    # 17-level data (the digits): cells of width 1/17
    x17 = torch.arange(17, dtype=D64)[None]
    y17 = UniformDequantization(num_levels=17)(x17)
    assert y17.dtype == D64 and torch.equal(quantize(y17, num_levels=17), x17)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [256, 17])
def test_dequantization_cells_are_exact_at_the_boundaries(dtype, levels):
    # Regression (issue 16): in float32, (x + u) / L rounded to y == 1.0 at x = L - 1 a few times per
    # million draws, and some random x landed in the next cell. 2 million draws per case.
    n, gen = 2_000_000, torch.Generator().manual_seed(0)
    deq = UniformDequantization(num_levels=levels)
    for x in (
        torch.full((n, 1), levels - 1.0, dtype=dtype),
        torch.zeros(n, 1, dtype=dtype),
        torch.randint(0, levels, (n, 1), generator=gen).to(dtype),
    ):
        y = deq(x, generator=gen)
        assert y.dtype == dtype
        assert y.min() >= 0 and y.max() < 1
        assert torch.equal(quantize(y, num_levels=levels), x)  # floor(L y) in y's dtype
        y64 = y.double() * levels  # and the cell holds exactly, in float64 too
        assert torch.all((y64 >= x.double()) & (y64 < x.double() + 1))


def test_naive_float32_dequantization_really_hits_the_edge():
    """The test above can fail: the formula flowlib used before gives y == 1.0 within 2 million draws."""
    u = torch.rand(2_000_000, generator=torch.Generator().manual_seed(0))
    assert ((255 + u) / 256 == 1.0).any()


def test_dequantization_bad_input():
    deq = UniformDequantization()
    with pytest.raises(ValueError, match=r"integers in 0..255"):
        deq(torch.tensor([[256.0]]))
    with pytest.raises(ValueError, match=r"integers in 0..255"):
        deq(torch.tensor([[1.5]]))
    with pytest.raises(ValueError, match="num_bits"):
        UniformDequantization(num_bits=0)
    with pytest.raises(ValueError, match="floating-point"):
        deq(torch.tensor([[3]]))


def test_dequantization_bound():
    """log P(x) >= E_u[log p_Y((x + u)/L)] - log L; P(x) is the mass of the cell (1-D, p_Y(y) = 2y)."""
    L = 8
    x = torch.arange(L, dtype=D64)[:, None].repeat(1, 20000)  # each level, many u draws
    y = UniformDequantization(num_levels=L)(x.reshape(-1, 1), generator=torch.Generator().manual_seed(0))
    log_p_y = torch.log(2 * y).reshape(L, -1)
    bound = log_p_y.mean(1) - math.log(L)
    exact = torch.log(((torch.arange(L, dtype=D64) + 1) ** 2 - torch.arange(L, dtype=D64) ** 2) / L**2)
    assert torch.all(bound <= exact + 1e-3)
    # strict where p_Y varies strongly inside the cell: the gap at level 0 is 1 - log 2 = 0.307
    assert exact[0] - bound[0] == pytest.approx(1 - math.log(2), abs=0.02)
    assert torch.allclose(bound[-1], exact[-1], atol=1e-2)  # tight where p_Y is nearly flat


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def test_bits_per_dim_uniform_is_exactly_num_bits():
    D = 3 * 32 * 32
    zeros = torch.zeros(10, dtype=D64)  # uniform density on [0,1]^D: log p = 0
    assert float(bits_per_dim(zeros, D)) == pytest.approx(8.0, abs=1e-12)
    assert float(bits_per_dim(zeros, D, num_bits=5)) == pytest.approx(5.0, abs=1e-12)
    assert float(bits_per_dim(zeros, 64, num_levels=17)) == pytest.approx(math.log2(17), abs=1e-12)
    assert float(bits_per_dim(zeros, D, num_bits=None)) == 0.0


def test_bits_per_dim_matches_discrete_model():
    """A model with density p_Y on [0,1]^D, evaluated at dequantised points, has bpd equal to the bits of
    the discrete distribution it induces when p_Y is constant on each cell (then Jensen is an equality)."""
    L, D = 4, 2
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D64)  # per-dimension mass of each level
    x = torch.tensor([[0.0, 3.0], [1.0, 2.0], [3.0, 3.0]], dtype=D64)
    y = UniformDequantization(num_levels=L)(x)
    log_p_y = torch.log(probs[(y * L).floor().long()] * L).sum(1)  # piecewise-constant density on [0,1]^D
    discrete_bits = -torch.log2(probs[x.long()]).sum(1).mean() / D
    torch.testing.assert_close(bits_per_dim(log_p_y, D, num_levels=L), discrete_bits)


def test_nll_and_bits_no_offset():
    lp = torch.tensor([-1.0, -3.0])
    assert float(nll_nats(lp)) == pytest.approx(2.0)
    assert float(bits_per_dim(lp, 2, num_bits=None)) == pytest.approx(2.0 / (2 * math.log(2)))


def test_metrics_bad_input():
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(torch.zeros(3), 0)
    with pytest.raises(ValueError, match="1 dimensions"):
        nll_nats(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="NaN"):
        bits_per_dim(torch.tensor([float("nan")]), 2)
