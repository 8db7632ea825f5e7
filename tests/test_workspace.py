"""The no-grad workspace (``flowlib._workspace``): hidden activations of one ``log_prob``/``sample`` call reuse a
few buffers; the numbers are exactly those of fresh tensors, buffers never outlive the call, and two threads
evaluating one model at once do not share them."""

import contextlib
import threading

import pytest
import torch

from flowlib import _workspace
from flowlib.models import realnvp
from flowlib.testing import perturb_parameters
from flowlib.transforms.autoregressive import iaf, maf, spline_maf


def _x(d, n=300, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


BUILDERS = {
    "maf": lambda: maf(8, 4, (16, 16)),
    "iaf": lambda: iaf(8, 3, (16, 12)),
    "spline-maf": lambda: spline_maf(6, 3, (16, 16), num_bins=4),
    "realnvp": lambda: realnvp(8, num_layers=4, hidden=(16, 16, 16)),
    "conditional-maf": lambda: maf(5, 3, (16, 16), context_dim=2),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_workspace_changes_no_number_and_reuses_its_buffers(name, monkeypatch):
    flow = perturb_parameters(BUILDERS[name](), scale=0.3, seed=1).double()
    d = flow.event_shape[0]
    x = _x(d)
    kw = {"context": _x(2, seed=4)} if flow.context_dim else {}
    with monkeypatch.context() as m:  # reference: no workspace, every hidden activation a fresh tensor
        m.setattr("flowlib.flow.workspace", contextlib.nullcontext)
        m.setattr("flowlib.transforms.base.workspace", contextlib.nullcontext)
        with torch.no_grad():
            lp_plain = flow.log_prob(x, **kw)
            torch.manual_seed(7)
            s_plain = flow.sample(50, **({"context": kw["context"][:50]} if kw else {}))
    outs = []
    real = _workspace.linear_relu

    def spy(*a):
        out = real(*a)
        outs.append(out.data_ptr())
        return out

    monkeypatch.setattr(_workspace, "linear_relu", spy)
    for mod in ("flowlib.transforms.autoregressive",):
        monkeypatch.setattr(f"{mod}.linear_relu", spy)
    with torch.no_grad():
        lp = flow.log_prob(x, **kw)
        torch.manual_seed(7)
        s = flow.sample(50, **({"context": kw["context"][:50]} if kw else {}))
    monkeypatch.undo()
    assert torch.equal(lp, lp_plain) and torch.equal(s, s_plain)  # the same products into other memory
    lp_grad = flow.log_prob(x, **kw)  # autograd: no workspace, the same density (up to sigmoid-for-tanh)
    assert torch.allclose(lp_grad.detach(), lp, rtol=1e-10, atol=1e-10)
    lp_grad.sum().backward()
    if name != "realnvp":  # realnvp's couplings go through mlp_body, checked below
        assert len(outs) > len(set(outs)), "hidden layers did not share the workspace's buffers"
    assert _workspace._local.buffers is None  # nothing kept after the call


def test_mlp_body_reuses_buffers_inside_a_workspace_and_matches_the_module():
    from flowlib.transforms.coupling import MLP

    net = perturb_parameters(MLP(5, 4, (16, 16, 16)), scale=0.3).double()
    x = _x(5)
    *body, _ = net
    ref = torch.nn.Sequential(*body)(x)
    with torch.no_grad(), _workspace.workspace():
        h1 = _workspace.mlp_body(body, x)
        p1 = h1.data_ptr()
        assert torch.equal(h1, ref.detach())
        h2 = _workspace.mlp_body(body, x * 2)  # a second network pass: the same memory
        assert h2.data_ptr() == p1
    with torch.no_grad():  # no workspace open: fresh tensors
        first = _workspace.mlp_body(body, x)
        assert _workspace.mlp_body(body, x).data_ptr() != first.data_ptr()
    assert _workspace._local.buffers is None


def test_two_threads_evaluating_one_model_get_their_own_buffers():
    flow = perturb_parameters(maf(8, 4, (32, 32)), scale=0.3, seed=2).double()
    xs = [_x(8, n=2000, seed=s) for s in (1, 2)]
    with torch.no_grad():
        ref = [flow.log_prob(x) for x in xs]
    results, errors = {}, []

    def work(i):
        try:
            with torch.no_grad():
                results[i] = [flow.log_prob(xs[i]) for _ in range(15)]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in (0, 1):
        assert all(torch.equal(r, ref[i]) for r in results[i])


def test_linear_relu_with_autograd_never_uses_a_buffer():
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    x = _x(3, n=10)
    with _workspace.workspace():
        a = _workspace.linear_relu(x, w, None, 0)
        b = _workspace.linear_relu(x, w, None, 0)
    assert a.data_ptr() != b.data_ptr() and a.requires_grad
    a.sum().backward()
    assert w.grad is not None


@pytest.mark.parametrize("w", [1, 2, 3, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_sum_is_exactly_the_sum(w, dtype):
    """``row_sum`` (a matrix-vector product for one or two columns without autograd) gives exactly ``sum(dim=1)``,
    NaN and infinities included; with autograd it is the sum itself."""
    t = torch.randn(1000, w, generator=torch.Generator().manual_seed(w), dtype=dtype) * 100
    t[3, 0], t[5, -1], t[7, 0] = float("nan"), float("inf"), -float("inf")
    with torch.no_grad():
        assert torch.equal(_workspace.row_sum(t).isnan(), t.sum(dim=1).isnan())
        ok = ~t.sum(dim=1).isnan()
        assert torch.equal(_workspace.row_sum(t)[ok], t.sum(dim=1)[ok])
    g = t.clone().requires_grad_()
    out = _workspace.row_sum(g)
    assert out.grad_fn is not None and "Sum" in type(out.grad_fn).__name__
