"""The no-grad fast paths of ``AffineCoupling`` (``Flow.log_prob`` and ``sample`` under ``torch.no_grad()``) compute
exactly what the autograd path computes, and are taken where they apply."""

import contextlib

import pytest
import torch
from torch import nn

from flowlib.models import realnvp
from flowlib.testing import check_transform, perturb_parameters
from flowlib.transforms.coupling import MLP, AffineCoupling, SplineCoupling, alternating_mask, half_mask


def _data(d, n=7, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    "make",
    [
        lambda: AffineCoupling(half_mask(5), (16, 16)),
        lambda: AffineCoupling(half_mask(5, first=False), (16,), scale_bound=0.5),
        lambda: AffineCoupling(alternating_mask(6, 1), (16, 16, 16)),
        lambda: AffineCoupling(half_mask(4), MLP(2, 4, (8,), activation=nn.Tanh)),
    ],
    ids=["half", "half-second-bound", "alternating", "tanh-mlp"],
)
def test_affine_coupling_no_grad_equals_autograd(make):
    layer = perturb_parameters(make(), scale=0.5, seed=1).double()
    assert layer._fast
    x = _data(layer.event_shape[0])
    z, ld = layer(x)
    x_back, ld_inv = layer.inverse(z)
    assert z.requires_grad
    with torch.no_grad():
        z_fast, ld_fast = layer(x)
        x_fast, ld_inv_fast = layer.inverse(z)
    for a, b in ((z, z_fast), (ld, ld_fast), (x_back, x_fast), (ld_inv, ld_inv_fast)):
        assert torch.allclose(a.detach(), b, rtol=0, atol=1e-12), (a - b).abs().max()
    check_transform(layer, x)  # round trip on the fast path, log-det against the autograd Jacobian


def test_fast_path_only_for_flowlibs_mlp_in_split_mode():
    assert not AffineCoupling(half_mask(4), nn.Linear(2, 4))._fast  # any module: the general path
    seq = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4))
    assert not AffineCoupling(half_mask(4), seq)._fast


def test_realnvp_log_prob_and_sample_same_with_and_without_grad():
    flow = perturb_parameters(realnvp(4, num_layers=4, hidden=(16, 16)), scale=0.3).double()
    x = _data(4)
    lp = flow.log_prob(x)
    with torch.no_grad():
        lp_fast = flow.log_prob(x)
        torch.manual_seed(0)
        s_fast = flow.sample(5)
    torch.manual_seed(0)
    s = flow.sample(5)
    assert torch.allclose(lp.detach(), lp_fast, rtol=0, atol=1e-12)
    assert torch.allclose(s.detach(), s_fast, rtol=0, atol=1e-12)


@contextlib.contextmanager
def _threads(n):
    """``torch.set_num_threads(n)`` inside the block, the previous count restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("builder", ["maf", "iaf"])
def test_blocked_no_grad_log_prob_and_sample_equal_the_whole_batch(builder):
    """``Flow`` evaluates large no-grad batches of wide vectors in blocks of ``block_rows`` rows (cache-sized); the
    result is the one of the whole batch."""
    from flowlib.transforms.autoregressive import iaf, maf

    make = {"maf": lambda: maf(16, 2, (8,)), "iaf": lambda: iaf(16, 2, (8,))}[builder]
    flow = perturb_parameters(make(), scale=0.2).double()
    x = _data(16, n=50)
    flow.block_rows = 8
    with torch.no_grad(), _threads(1):
        assert flow._blocks(x) is not None and len(flow._blocks(x)) == 7
        lp = flow.log_prob(x)
        torch.manual_seed(3)
        s = flow.sample(50)
    flow.block_rows = None
    with torch.no_grad():
        assert flow._blocks(x) is None
        lp_whole = flow.log_prob(x)
        torch.manual_seed(3)
        s_whole = flow.sample(50)
    assert torch.allclose(lp, lp_whole, rtol=0, atol=1e-12) and torch.allclose(s, s_whole, rtol=0, atol=1e-12)


def test_no_blocks_with_autograd_narrow_data_or_stateful_layers():
    from flowlib import Flow
    from flowlib.distributions import StandardNormal
    from flowlib.transforms.actnorm import ActNorm
    from flowlib.transforms.autoregressive import maf

    flow = maf(16, 2, (8,))
    x = torch.randn(5000, 16)
    assert flow._blocks(x) is None  # autograd on
    with torch.no_grad(), _threads(2):
        assert flow._blocks(x) is None  # two intra-op threads: each already takes half of the rows
    with torch.no_grad(), _threads(1):
        assert flow._blocks(x) is not None
        assert maf(2, 2, (8,))._blocks(torch.randn(5000, 2)) is None  # narrow: no gain measured
        assert realnvp(16, num_layers=2, hidden=(8,))._blocks(x) is None  # runs in place: nothing to keep in cache
        assert Flow([ActNorm(16)], StandardNormal(16))._blocks(x) is None  # data-dependent initialisation


@pytest.mark.parametrize(
    "make",
    [
        lambda: SplineCoupling(half_mask(5), (16, 16), num_bins=4, bound=2.0),
        lambda: SplineCoupling(half_mask(6, first=False), (16,), num_bins=3),
        lambda: SplineCoupling(alternating_mask(5, 1), (16, 16), num_bins=5),
        lambda: SplineCoupling(half_mask(4), (16,), num_bins=4, context_dim=2),
    ],
    ids=["half", "half-second", "alternating", "context"],
)
def test_spline_coupling_no_grad_equals_autograd(make):
    """``SplineCoupling``'s no-grad path reads the conditioner's output as an entry-major view (its last layer's
    rows reordered): the same spline parameters as the autograd path's ``torch.stack`` of the chunks, so the same
    map, inverse and log-dets; the state dict keeps the conditioner's own layout (no extra entry)."""
    layer = perturb_parameters(make(), scale=0.5, seed=1).double()
    kw = {} if layer.context_dim is None else {"context": _data(2, seed=3)}
    x = _data(layer.event_shape[0]) * 2
    z, ld = layer(x, **kw)
    x_back, ld_inv = layer.inverse(z, **kw)
    with torch.no_grad():
        assert layer._fast
        z_fast, ld_fast = layer(x, **kw)
        x_fast, ld_inv_fast = layer.inverse(z, **kw)
    assert not layer._fast  # autograd on: the general path
    for a, b in ((z, z_fast), (ld, ld_fast), (x_back, x_fast), (ld_inv, ld_inv_fast)):
        assert torch.allclose(a.detach(), b, rtol=0, atol=1e-12), (a - b).abs().max()
    assert (ld_fast.abs() > 1e-3).all()  # the splines bend: the parameters reach the right entries
    assert "_entry_major" not in layer.state_dict()
    assert not SplineCoupling(half_mask(4), nn.Sequential(nn.Linear(2, 22)), num_bins=4)._fast


def _in_place_stacks():
    from flowlib.transforms import Compose

    cond = Compose(AffineCoupling(half_mask(6), (16,), context_dim=2),
                   AffineCoupling(half_mask(6, first=False), (16, 16), scale_bound=0.7, context_dim=2),
                   AffineCoupling(half_mask(6), (8,), context_dim=2))
    mixed = Compose(AffineCoupling(half_mask(6), (16,)), AffineCoupling(alternating_mask(6, 1), (16,)))
    return {"realnvp": (realnvp(6, num_layers=5, hidden=(16, 16)).transform, True),
            "conditional": (cond, True), "with-alternating-mask": (mixed, False)}


@pytest.mark.parametrize("name", ["realnvp", "conditional", "with-alternating-mask"])
def test_stack_of_half_couplings_runs_in_place_and_equals_autograd(name, monkeypatch):
    """Without autograd a ``Compose`` of half-split affine couplings runs on one copy of its input
    (``Compose._run_in_place_all``); its map, inverse and log-dets are those of the autograd path, in float64 on
    random parameters, the caller's tensor is left as it was, and a stack with any other layer (here an
    alternating mask) takes the layer-by-layer path."""
    from flowlib.transforms import Compose

    stack, in_place = _in_place_stacks()[name]
    stack = perturb_parameters(stack, scale=0.5, seed=2).double()
    kw = {"context": _data(2, n=9, seed=5)} if stack.context_dim else {}
    x = _data(6, n=9) * 1.5
    z, ld = stack(x, **kw)
    x_back, ld_inv = stack.inverse(z, **kw)
    calls = []
    run = Compose._run_in_place_all
    monkeypatch.setattr(Compose, "_run_in_place_all", staticmethod(lambda *a: calls.append(1) or run(*a)))
    x_before, z_in = x.clone(), z.detach().clone()
    with torch.no_grad():
        z_fast, ld_fast = stack(x, **kw)
        x_fast, ld_inv_fast = stack.inverse(z_in, **kw)
    assert len(calls) == (2 if in_place else 0)
    assert torch.equal(x, x_before) and torch.equal(z_in, z.detach())  # inputs not overwritten
    for a, b in ((z, z_fast), (ld, ld_fast), (x_back, x_fast), (ld_inv, ld_inv_fast)):  # float64 round-off of
        assert torch.allclose(a.detach(), b, rtol=0, atol=1e-10), (a - b).abs().max()  # 5 layers' sigmoid-for-tanh
    assert (ld_fast.abs() > 1e-2).all()  # the couplings scale: the in-place layers did something
    with torch.no_grad():  # intermediates for the book's figures: the layer-by-layer path, the same result
        z_int, ld_int, hs = stack(x, return_intermediates=True, **kw)
    assert len(hs) == len(stack) + 1 and torch.allclose(z_int, z_fast, rtol=0, atol=1e-12)


def test_realnvp_flow_in_place_log_prob_and_sample_at_one_and_two_threads():
    """``Flow.log_prob``/``sample`` of a RealNVP on a large batch (no blocks, in place) equal the autograd path."""
    flow = perturb_parameters(realnvp(16, num_layers=4, hidden=(8,)), scale=0.3, seed=4).double()
    x = _data(16, n=5000)
    lp = flow.log_prob(x).detach()
    for n in (1, 2):
        with torch.no_grad(), _threads(n):
            assert torch.allclose(flow.log_prob(x), lp, rtol=0, atol=1e-10)
            torch.manual_seed(n)
            s_fast = flow.sample(3000)
        torch.manual_seed(n)
        assert torch.allclose(flow.sample(3000).detach(), s_fast, rtol=0, atol=1e-10)
