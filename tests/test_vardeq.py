"""Variational dequantisation (issue 23): ``flowlib.dequantization``.

``log q(u | x)`` against the change of variables computed by autograd, and ``q`` normalised on the cube (1-D
quadrature); ``u`` strictly inside the open cube and ``y`` inside the cell of ``x`` even with saturating
parameters in float32; on a 1-D model whose exact discrete log-mass ``log P(x)`` is known by quadrature, the
bound lies below it, ``E_q[p / q] = P(x)`` and the importance-weighted estimate closes the gap; with ``q`` at its
(uniform) initialisation the bound is the uniform-dequantisation bound draw for draw; bad input gets clear errors;
the committed measurement (``scripts/train_ch05_vardeq.py``) is what its checkpoints give. About 3 s.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowlib import (
    Compose,
    Flow,
    Logit,
    UniformDequantization,
    VariationalDequantization,
    load_checkpoint,
    log_mass_estimate,
)
from flowlib.dequantization import ConditionalElementwiseAffine
from flowlib.distributions import DiagGaussian
from flowlib.testing import per_sample_jacobian, perturb_parameters

f64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


def _ints(shape, L, seed=0, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, L, shape, generator=g).to(dtype)


def _deq(event_shape, L, seed=0, scale=0.5, dtype=f64):
    torch.manual_seed(seed)
    deq = VariationalDequantization(event_shape, num_levels=L, hidden=(8,)).to(dtype)
    return perturb_parameters(deq, scale=scale, seed=seed)


@pytest.mark.parametrize("event_shape", [(1,), (3,), (1, 2, 2)])
def test_log_q_against_autograd(event_shape):
    """``log q(u | x)`` from ``sample`` and from ``log_prob`` equal the change of variables
    ``log q = sum log logistic(eps) + log|det d eps / d u|`` with the Jacobian of ``u -> eps`` by autograd."""
    L = 5
    deq = _deq(event_shape, L)
    x = _ints((6, *event_shape), L)
    u, log_q = deq.sample(x, generator=torch.Generator().manual_seed(1))
    assert u.shape == x.shape and log_q.shape == (6,)
    assert torch.allclose(deq.log_prob(u, x), log_q, atol=1e-10)
    ctx = deq.context(x)

    def u_to_eps(uf):  # one row at a time (per_sample_jacobian), so the context row is found by value
        row = int(((uf_all - uf.detach()).abs().sum(1) == 0).nonzero()[0])
        v = torch.log(uf) - torch.log1p(-uf)
        return deq.flow._forward(v, ctx[row:row + 1])[0]

    uf_all = u.reshape(6, -1)
    J = per_sample_jacobian(u_to_eps, uf_all)
    eps = torch.cat([u_to_eps(uf_all[i:i + 1]) for i in range(6)])
    log_logistic = -eps - 2 * torch.nn.functional.softplus(-eps)
    expected = log_logistic.sum(1) + torch.linalg.slogdet(J)[1]
    assert torch.allclose(log_q, expected, atol=1e-9)
    assert (log_q.abs() > 1e-3).any()  # random parameters: q is not uniform, so the check has teeth


def test_q_is_normalised_on_the_cell():
    """1-D: ``int_0^1 q(u | x) du = 1`` for every level ``x`` (Gauss-Legendre in the logit variable, where
    ``q`` is smooth and the tails are integrable)."""
    L = 4
    deq = _deq((1,), L, scale=0.5)
    nodes, weights = np.polynomial.legendre.leggauss(300)
    v = torch.tensor(nodes * 36.0, dtype=f64)  # v = logit(u) in [-36, 36]: sigmoid(36) < 1 in float64
    w = torch.tensor(weights * 36.0, dtype=f64)
    u = torch.sigmoid(v)
    du_dv = u * (1 - u)
    for level in range(L):
        x = torch.full((len(v), 1), float(level), dtype=f64)
        with torch.no_grad():
            mass = (deq.log_prob(u[:, None], x).exp() * du_dv * w).sum()
        assert abs(float(mass) - 1.0) < 1e-6, (level, float(mass))


def _model_1d(L):
    """A density on y in (0, 1), a Gaussian on the logit scale (all its mass inside), and its exact discrete
    log-mass per level."""
    model = Flow(Compose(Logit(0.0)), DiagGaussian(torch.tensor([0.3], dtype=f64), torch.tensor([-0.2], dtype=f64)))
    nodes, weights = np.polynomial.legendre.leggauss(200)
    exact = []
    for level in range(L):  # P(x) = int_0^1 p_Y((x + u) / L) / L du
        u = torch.tensor((nodes + 1) / 2, dtype=f64)
        py = model.log_prob(((level + u) / L)[:, None]).exp()
        exact.append(math.log(float((py * torch.tensor(weights / 2, dtype=f64)).sum()) / L))
    return model, torch.tensor(exact, dtype=f64)


@torch.no_grad()
def test_bound_below_exact_log_mass_and_iw_closes_the_gap():
    L, n = 4, 20000
    model, exact = _model_1d(L)
    assert abs(float(exact.exp().sum()) - 1.0) < 1e-8  # the cells tile [0, 1): the masses sum to 1
    deq = _deq((1,), L, scale=0.8)
    g = torch.Generator().manual_seed(3)
    for level in range(L):
        x = torch.full((n, 1), float(level), dtype=f64)
        w = log_mass_estimate(model.log_prob, x, deq, 1, g)  # n single-draw bounds
        bound, se = float(w.mean()), float(w.std()) / math.sqrt(n)
        assert bound < float(exact[level]) - 5 * se  # Jensen: strictly below (q is not the posterior)
        # E_q[p / q] = P(x): the bound's exponent is an unbiased estimate of the mass
        ratio = w.exp() / math.exp(float(exact[level]))
        assert abs(float(ratio.mean()) - 1.0) < 5 * float(ratio.std()) / math.sqrt(n)
        iw = float(log_mass_estimate(model.log_prob, x[:50], deq, 400, g).mean())
        tol = 5 * float(ratio.std()) / math.sqrt(400 * 50)  # Monte Carlo noise of the IW estimate
        assert bound < iw <= float(exact[level]) + tol
        assert float(exact[level]) - iw < 0.2 * (float(exact[level]) - bound)


def test_uniform_q_gives_the_uniform_bound():
    """At initialisation (zero last layers) the flow is the identity: ``u`` is the uniform draw of the same
    generator, ``log q = 0``, and ``log_mass_estimate`` equals that of ``UniformDequantization`` draw for draw."""
    L = 6
    deq = VariationalDequantization((1, 2, 3), num_levels=L).double()
    x = _ints((7, 1, 2, 3), L)
    y, log_q = deq(x, generator=torch.Generator().manual_seed(5))
    y_uni = UniformDequantization(num_levels=L)(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(log_q, torch.zeros(7, dtype=f64))
    assert torch.allclose(y, y_uni, atol=1e-12)
    model, _ = _model_1d(L)

    def lp(v):
        return model.log_prob(v.reshape(-1, 1)).reshape(v.shape[0], -1).sum(1)

    a = log_mass_estimate(lp, x, deq, 3, torch.Generator().manual_seed(9))
    b = log_mass_estimate(lp, x, UniformDequantization(num_levels=L), 3, torch.Generator().manual_seed(9))
    assert torch.allclose(a, b, atol=1e-9)


def test_u_inside_open_cube_and_y_inside_cell_float32():
    """Saturating parameters in float32 (the sigmoid would round to 0 or 1): ``u`` stays strictly inside, ``y``
    inside the cell of ``x`` and ``log q`` finite; and the gradient reaches the dequantiser (reparameterisation)."""
    L = 17
    deq = _deq((16,), L, scale=6.0, dtype=torch.float32)
    x = _ints((4000, 16), L, dtype=torch.float32)
    y, log_q = deq(x, generator=torch.Generator().manual_seed(0))
    u, _ = deq.sample(x, generator=torch.Generator().manual_seed(0))
    assert ((u > 0) & (u < 1)).all()
    assert (u.min() < 1e-6) or (u.max() > 1 - 1e-6)  # the clamp was needed: the parameters saturate
    assert torch.equal(torch.floor(y * L), x) and (y < 1).all()
    assert torch.isfinite(log_q).all()
    deq2 = _deq((16,), L, scale=0.3, dtype=torch.float32)
    log_q2 = deq2(x[:8])[1]
    log_q2.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in deq2.parameters())


def test_bad_inputs():
    L = 5
    deq = VariationalDequantization((3,), num_levels=L).double()
    x = _ints((2, 3), L)
    with pytest.raises(ValueError, match="integers in 0..4"):
        deq(x + 0.5)
    with pytest.raises(ValueError, match="integers in 0..4"):
        deq(x + L)
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        deq(x[:, :2])
    with pytest.raises(TypeError, match="dtype"):
        deq(x.float())
    with pytest.raises(ValueError, match="open unit cube"):
        deq.log_prob(torch.ones_like(x), x)
    with pytest.raises(ValueError, match="shape of x"):
        deq.log_prob(torch.full((2, 2), 0.5, dtype=f64), x)
    with pytest.raises(ValueError, match="context_dim=3"):
        VariationalDequantization((3,), num_levels=L, flow=Compose(Logit()))
    with pytest.raises(ValueError, match="num_levels"):
        VariationalDequantization((3,), num_levels=1)
    with pytest.raises(ValueError, match="dequantizer must be"):
        log_mass_estimate(lambda y: y.sum(1), x, Logit())
    with pytest.raises(ValueError, match="num_samples"):
        log_mass_estimate(lambda y: y.sum(1), x, deq, 0)
    with pytest.raises(ValueError, match="callable"):
        log_mass_estimate(None, x, deq)
    layer = ConditionalElementwiseAffine(3, 2).double()
    with pytest.raises(ValueError, match="context"):
        layer(x)  # a conditional layer without its context
    with pytest.raises(ValueError, match="context"):
        layer(x, torch.zeros(2, 5, dtype=f64))  # the wrong width
    with pytest.raises(ValueError, match="context_dim"):
        ConditionalElementwiseAffine(3, None)


def test_committed_measurement_matches_checkpoints():
    """``vardeq.json`` is what ``scripts/train_ch05_vardeq.py`` measured: its seed-0 rows are reproduced from the
    committed checkpoints (same fixed evaluation noise), and the table has every method and seed."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_ch05_vardeq as script
    finally:
        sys.path.pop(0)
    from flowlib.data import digits

    result = json.loads((script.OUT / "vardeq.json").read_text())
    runs = result["runs"]
    assert sorted((r["method"], r["seed"]) for r in runs) == sorted(
        (m, s) for m in script.METHODS for s in script.SEEDS)
    torch.set_num_threads(1)
    test = digits("test")
    for method in script.METHODS:
        joint = script.build(method, 0)
        load_checkpoint(joint, script.OUT / f"vardeq_{method}.pt")
        got = script.evaluate(joint, test)
        row = next(r for r in runs if r["method"] == method and r["seed"] == 0)
        for key in ("bound_bpd", "iw_bpd"):
            assert abs(got[key] - row[key]) < 2e-4, (method, key, got[key], row[key])
        assert row["iw_bpd"] <= row["bound_bpd"] + 1e-6
