"""MADE / MAF / IAF: autoregressive masks, exact inverses, log-dets against autograd, costs, API errors."""

import functools
import io

import pytest
import torch

from flowlib import Flow
from flowlib.testing import check_transform, per_sample_jacobian, perturb_parameters
from flowlib.transforms.autoregressive import IAF, MADE, MAF, MaskedLinear, iaf, maf

D = 5
ORDERS = [None, "reverse", "random", torch.tensor([2, 0, 4, 1, 3])]


perturb = functools.partial(perturb_parameters, scale=0.3)  # random weights, away from the init


def data(n=6, d=D, seed=1, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("order", ORDERS, ids=["natural", "reverse", "random", "tensor"])
def test_made_autoregressive_property(order):
    made = perturb(MADE(D, hidden=(16, 16), out_per_dim=2, order=order, seed=3)).double()
    x = data()
    J = per_sample_jacobian(lambda v: made(v), x).reshape(x.shape[0], 2, D, D).abs().sum(dim=(0, 1))
    o = made.order
    allowed = o[None, :] < o[:, None]  # output i may depend on input j iff order[j] < order[i]
    assert (J[~allowed] == 0).all(), "an output depends on an input at or after it in the ordering"
    # and the masks are not too strict: every allowed connection is used (hidden >= d-1 units)
    assert (J[allowed] > 0).all()


def test_made_degrees_and_orders():
    assert MADE(4, order="reverse").order.tolist() == [3, 2, 1, 0]
    assert MADE(4).order.tolist() == [0, 1, 2, 3]
    a, b = MADE(6, order="random", seed=7), MADE(6, order="random", seed=7)
    assert torch.equal(a.order, b.order) and sorted(a.order.tolist()) == list(range(6))
    made = MADE(4, hidden=(8, 5))
    assert [len(d) for d in made.degrees] == [4, 8, 5, 8]
    assert all(1 <= int(d.min()) and int(d.max()) <= 3 for d in made.degrees[1:-1])
    assert made(torch.randn(3, 4)).shape == (3, 2, 4)


def test_masked_linear_applies_mask():
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    lin = MaskedLinear(2, 3, mask)
    x = torch.randn(4, 2, requires_grad=True)
    lin(x).sum().backward()
    assert torch.equal(lin.weight.grad[mask == 0], torch.zeros(3))
    with pytest.raises(ValueError, match="mask must have shape"):
        MaskedLinear(2, 3, torch.ones(2, 3))


@pytest.mark.parametrize("cls", [MAF, IAF])
@pytest.mark.parametrize("order", ORDERS, ids=["natural", "reverse", "random", "tensor"])
def test_roundtrip_and_logdet_random_params(cls, order):
    layer = perturb(cls(D, hidden=(16, 16), order=order, seed=3)).double()
    out = check_transform(layer, data())  # exact inverse: standard 1e-10 round trip, 1e-8 log-det
    assert out["roundtrip"] < 1e-10


@pytest.mark.parametrize("cls", [MAF, IAF])
def test_jacobian_triangular_in_ordering(cls):
    layer = perturb(cls(D, hidden=(16, 16), order="random", seed=5)).double()
    x = data()
    J = per_sample_jacobian(lambda v: layer(v)[0], x)
    idx = torch.argsort(layer.order)  # coordinates sorted by their position in the ordering
    Jp = J[:, idx][:, :, idx]
    assert torch.equal(torch.triu(Jp, 1), torch.zeros_like(Jp))
    assert (torch.diagonal(Jp, dim1=1, dim2=2).abs() > 0).all()


@pytest.mark.parametrize("cls, n_forward, n_inverse", [(MAF, 1, D), (IAF, D, 1)])
def test_network_passes_match_documented_cost(cls, n_forward, n_inverse):
    layer = cls(D, hidden=(8,))
    calls = []
    layer.made.register_forward_hook(lambda *a: calls.append(1))
    z, _ = layer(data(dtype=torch.float32))
    assert len(calls) == n_forward
    calls.clear()
    layer.inverse(z)
    assert len(calls) == n_inverse


def test_identity_at_initialisation_and_float32():
    x = data(dtype=torch.float32)
    for cls in (MAF, IAF):
        z, ld = cls(D, identity_init=True)(x)
        assert torch.equal(z, x) and torch.equal(ld, torch.zeros(x.shape[0]))
        check_transform(perturb(cls(D, hidden=(16,))), x)  # float32 tolerances (1e-5)


def test_scale_bound_limits_log_scale():
    layer = perturb(MAF(D, hidden=(16,), scale_bound=0.5), scale=5.0).double()
    _, ld = layer(data() * 10)
    assert (ld.abs() <= D * 0.5 + 1e-12).all() and ld.abs().max() > 0.5  # the clamp is active
    check_transform(layer, data())


@pytest.mark.parametrize("builder", [maf, iaf])
@pytest.mark.parametrize("permutation", ["reverse", "random"])
def test_builders(builder, permutation):
    flow = builder(3, num_layers=3, hidden=(16, 16), permutation=permutation, seed=0).double()
    if builder is iaf:
        assert isinstance(flow, Flow) and len(flow.transform) == 5  # 3 layers + 2 permutations
    else:  # maf: the permutations folded into the masks, plus one final permutation unless their product is 1
        assert isinstance(flow, Flow) and len(flow.transform) in ((3,) if permutation == "reverse" else (3, 4))
    perturb(flow)
    x = data(d=3)
    check_transform(flow.transform, x)
    assert flow.log_prob(x).shape == (6,)
    torch.manual_seed(0)
    xs, lp = flow.sample_with_log_prob(4)
    assert torch.allclose(lp, flow.log_prob(xs), atol=1e-10)


def test_maf_log_prob_matches_change_of_variables():
    flow = perturb(maf(2, num_layers=2, hidden=(8,))).double()
    x = data(d=2)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0)
    z, ld = flow.transform(x)
    assert torch.allclose(flow.log_prob(x), normal.log_prob(z).sum(1) + ld, atol=1e-12)


@pytest.mark.parametrize("builder", [maf, iaf])
def test_every_parameter_gets_a_gradient(builder):
    flow = perturb(builder(3, num_layers=2, hidden=(8, 8)))
    loss = -flow.log_prob(data(d=3, dtype=torch.float32)).mean()
    loss.backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_state_dict_roundtrip():
    layer = perturb(MAF(D, hidden=(16,), order="random", seed=1)).double()
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    other = MAF(D, hidden=(16,), order="random", seed=2).double()  # another order: restored from the file
    other.load_state_dict(torch.load(buf, weights_only=True))
    x = data()
    assert torch.equal(other.order, layer.order)
    assert torch.equal(other(x)[0], layer(x)[0]) and torch.equal(other.inverse(x)[0], layer.inverse(x)[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=0), "dim"),
        (dict(dim=-2), "dim"),
        (dict(dim=2.5), "dim"),
        (dict(dim=3, hidden=()), "hidden"),
        (dict(dim=3, hidden=16), "hidden"),
        (dict(dim=3, hidden=(16, 0)), "hidden"),
        (dict(dim=3, order="sideways"), "order"),
        (dict(dim=3, order=[0, 1]), "permutation"),
        (dict(dim=3, order=[0, 0, 1]), "permutation"),
        (dict(dim=3, order=[0.0, 1.0, 2.0]), "permutation"),
        (dict(dim=3, scale_bound=0.0), "scale_bound"),
        (dict(dim=3, scale_bound=-1.0), "scale_bound"),
    ],
)
def test_invalid_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MAF(**kwargs)


def test_invalid_made_and_builder_arguments():
    with pytest.raises(ValueError, match="out_per_dim"):
        MADE(3, out_per_dim=0)
    with pytest.raises(ValueError, match="num_layers"):
        maf(3, num_layers=0)
    with pytest.raises(ValueError, match="permutation"):
        iaf(3, permutation="shuffle")


@pytest.mark.parametrize("cls", [MAF, IAF])
def test_bad_inputs(cls):
    layer = cls(3)
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        layer(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        layer.inverse(torch.randn(4))
    with pytest.raises(ValueError, match="NaN"):
        layer(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="floating-point"):
        layer(torch.ones(2, 3, dtype=torch.long))


@pytest.mark.parametrize("cls", [MAF, IAF])
@pytest.mark.parametrize("order", ORDERS, ids=["natural", "reverse", "random", "tensor"])
@pytest.mark.parametrize("hidden, bound", [((16,), 3.0), ((16, 16, 8), None), ((16, 16), 0.7)])
def test_no_grad_fast_path_equals_the_autograd_path(cls, order, hidden, bound):
    """Under ``torch.no_grad()`` MAF/IAF take a fast path (masks applied once, in-place kernels, rank-1 updates in
    the sequential direction); it must compute the same map, inverse and log-dets as the autograd path."""
    layer = perturb(cls(D, hidden=hidden, order=order, seed=3, scale_bound=bound)).double()
    x = data()
    z, ld = layer(x)  # parameters require grad: the autograd path
    x_back, ld_inv = layer.inverse(z)
    assert z.requires_grad and x_back.requires_grad
    with torch.no_grad():
        z_fast, ld_fast = layer(x)
        x_fast, ld_inv_fast = layer.inverse(z)
    for a, b in ((z, z_fast), (ld, ld_fast), (x_back, x_fast), (ld_inv, ld_inv_fast)):
        assert torch.allclose(a.detach(), b, rtol=0, atol=1e-12), (a - b).abs().max()


@pytest.mark.parametrize("cls, n_forward, n_inverse", [(MAF, 1, D), (IAF, D, 1)])
def test_no_grad_path_makes_the_documented_made_passes(cls, n_forward, n_inverse):
    """The no-grad path (``Flow.log_prob``/``sample`` under ``torch.no_grad()``) goes through ``MADE.__call__``
    as often as the documented cost says (chapter 5 counts the passes with a forward hook)."""
    layer = cls(D, hidden=(8,))
    calls = []
    layer.made.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        z, _ = layer(data(dtype=torch.float32))
        assert len(calls) == n_forward
        calls.clear()
        layer.inverse(z)
    assert len(calls) == n_inverse


# ---------------------------------------------------------------- permutations folded into the MADE masks


def _unfolded(builder_cls, dim, num_layers, permutation, **kw):
    """The stack that ``maf``/``spline_maf`` built before the fold: explicit permutation layers."""
    from flowlib.transforms.autoregressive import _stack

    return _stack(builder_cls, dim, num_layers, permutation, 0, **kw)


FOLD_CASES = [(MAF, {}, 2, "reverse"), (MAF, {}, 3, "reverse"), (MAF, {}, 4, "random"),
              (MAF, {"context_dim": 2}, 3, "reverse"), ("spline", {"num_bins": 4}, 2, "reverse"),
              ("spline", {"num_bins": 4}, 3, "random")]


@pytest.mark.parametrize("cls, kw, num_layers, permutation", FOLD_CASES)
def test_folded_stack_is_the_unfolded_map(cls, kw, num_layers, permutation):
    """``maf``/``spline_maf`` fold the permutations into the masks: for the same seed the folded model is the
    same map as the stack with explicit permutations (forward, inverse, log-det, densities, samples), and the
    folded layers' MADEs are still autoregressive (Jacobian triangular in their own, relabelled order)."""
    from flowlib.transforms.autoregressive import FoldedStack, SplineMAF, spline_maf

    cls = SplineMAF if cls == "spline" else cls
    build = maf if cls is MAF else spline_maf
    torch.manual_seed(0)
    old = _unfolded(cls, D, num_layers, permutation, hidden=(16, 16), **kw)
    torch.manual_seed(0)
    new = build(D, num_layers=num_layers, hidden=(16, 16), permutation=permutation, seed=0, **kw)
    assert isinstance(new.transform, FoldedStack)
    assert not any(type(t).__name__ in ("Reverse",) for t in list(new.transform)[:num_layers])
    assert torch.equal(new.transform[1].made.order, old.transform[2].made.order[torch.argsort(old.transform[1].perm)])
    old, new = old.double(), new.double()
    perturb(old)
    new.load_state_dict(old.state_dict())  # an unfolded state dict: converted on load
    x = data()
    ctx = {} if "context_dim" not in kw else {"context": data(d=2, seed=4)}
    assert torch.allclose(new.log_prob(x, **ctx), old.log_prob(x, **ctx), atol=1e-12)
    z_old, ld_old = old.transform(x, **ctx)
    z_new, ld_new = new.transform(x, **ctx)
    assert torch.allclose(z_new, z_old, atol=1e-12) and torch.allclose(ld_new, ld_old, atol=1e-12)
    x_old, _ = old.transform.inverse(z_old, **ctx)
    x_new, _ = new.transform.inverse(z_old, **ctx)
    assert torch.allclose(x_new, x_old, atol=1e-12) and torch.allclose(x_new, x, atol=1e-9)
    with torch.no_grad():  # the no-grad fast paths too
        assert torch.allclose(new.log_prob(x, **ctx), old.log_prob(x, **ctx), atol=1e-12)
        assert torch.allclose(new.transform.inverse(z_old, **ctx)[0], x_old, atol=1e-12)
    if not ctx:
        check_transform(new.transform, x)  # exact inverse, log-det against autograd's Jacobian
        for layer in list(new.transform)[:num_layers]:
            J = per_sample_jacobian(lambda v, m=layer.made: m(v), x).reshape(x.shape[0], -1, D, D).abs().sum(dim=(0, 1))
            o = layer.made.order
            assert (J[~(o[None, :] < o[:, None])] == 0).all()


@pytest.mark.parametrize("num_layers", [2, 5])
def test_fresh_folded_maf_equals_the_unfolded_one(num_layers):
    """The same seed builds the same model as before the fold (initialisation unchanged), whose own state dict
    round-trips; a folded state dict is refused by an unfolded stack (the layouts differ)."""
    torch.manual_seed(0)
    old = _unfolded(MAF, 16, num_layers, "reverse", hidden=(32, 32))
    torch.manual_seed(0)
    new = maf(16, num_layers=num_layers, hidden=(32, 32))
    x = data(n=64, d=16, dtype=torch.float32)
    assert torch.allclose(new.log_prob(x), old.log_prob(x), atol=1e-5)
    torch.manual_seed(2)
    s_new = new.sample(8)
    torch.manual_seed(2)
    assert torch.allclose(s_new, old.sample(8), atol=1e-5)
    buf = io.BytesIO()
    torch.save(new.state_dict(), buf)
    other = maf(16, num_layers=num_layers, hidden=(32, 32))
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert torch.equal(other.log_prob(x), new.log_prob(x))
    with pytest.raises(RuntimeError):
        old.load_state_dict(new.state_dict())
