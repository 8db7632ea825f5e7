"""Visible tests of chapter 5 (normalizing flows).

Each test says what was expected. They use small, hand-checkable inputs and literal values (computed once and
confirmed by another route: the slogdet of an autograd Jacobian, a round trip, torch.distributions); the hidden
tests, run when grading, use other inputs (random batches, scattered masks, other orderings, other data).
"""

from __future__ import annotations

import math

import torch

from course_tools.check import expect, need, visible
from course_tools.checks._common import F64, LOG_2PI, close, fmt, tensor, tensors

# ---------------------------------------------------------------- Q1 sinh-arcsinh coupling
_MASK1 = torch.tensor([False, True, False])


def _net1(xa):
    return torch.cat([0.5 * xa, -0.3 * xa], 1), torch.cat([0.2 + 0 * xa, xa], 1)


def _zero_net(xa):
    return xa.new_zeros(xa.shape[0], 2), xa.new_zeros(xa.shape[0], 2)


_X1 = torch.tensor([[0.5, -1.0, 2.0], [-1.5, 0.4, 0.3]], dtype=F64)
# z and log|det dz/dx| of _X1, computed once; the log-dets agree with slogdet of the autograd Jacobian
_Z1 = torch.tensor([[0.5119445187524889, -1.0, 1.097559183425217], [-1.6195263761927639, 0.4, 0.7117162420080564]],
                   dtype=F64)
_LD1 = torch.tensor([-0.6046260620279543, 0.29612414109250884], dtype=F64)
# a separate z for the inverse; the forward maps _XI1 back to _ZI1 (round trip 2e-15)
_ZI1 = torch.tensor([[1.0, 0.7, -2.0], [0.25, -1.2, 3.0]], dtype=F64)
_XI1 = torch.tensor([[0.4988196641321699, 0.7, -7.003078651115038], [0.0865974022579428, -1.2, 4.0463726475341275]],
                    dtype=F64)
_LDI1 = torch.tensor([0.7762498524707302, 0.4895931343711193], dtype=F64)


@visible("ch05.q1.forward", "Q1 sas_coupling_forward: the identity when s = t = 0, and z for a 3-d example")
def _q1_forward(ns):
    f = need(ns, "sas_coupling_forward")
    z0, ld0 = tensors(f(_X1.clone(), _MASK1.clone(), _zero_net), "sas_coupling_forward(x, mask, net)")
    z0, ld0 = tensor(z0, "z", shape=(2, 3)), tensor(ld0, "logdet", shape=(2,))
    expect(close(z0, _X1) and close(ld0, torch.zeros(2, dtype=F64)),
           "with s = t = 0 the transformer is sinh(asinh(x)) = x: expected z = x and log-det 0")
    z, _ = tensors(f(_X1.clone(), _MASK1.clone(), _net1), "sas_coupling_forward(x, mask, net)")
    z = tensor(z, "z", shape=(2, 3))
    expect(torch.equal(z[:, _MASK1], _X1[:, _MASK1]), "the entries with mask True must be copied unchanged")
    expect(close(z, _Z1), f"expected z = {fmt(_Z1)}, got {fmt(z)} (entries in their original positions)")


@visible("ch05.q1.logdet", "Q1 sas_coupling_forward's log-det for the 3-d example")
def _q1_logdet(ns):
    f = need(ns, "sas_coupling_forward")
    _, ld = tensors(f(_X1.clone(), _MASK1.clone(), _net1), "sas_coupling_forward(x, mask, net)")
    ld = tensor(ld, "logdet", shape=(2,))
    expect(
        close(ld, _LD1),
        f"expected log|det dz/dx| = {fmt(_LD1)}, got {fmt(ld)} (the sum over b of log dz_i/dx_i; "
        "sum(s) alone, the affine coupling's log-det, would give [-0.8, 0.32])",
    )


@visible("ch05.q1.inverse", "Q1 sas_coupling_inverse: x and log|det dx/dz| for a 3-d example")
def _q1_inverse(ns):
    g = need(ns, "sas_coupling_inverse")
    z_in = _ZI1.clone()
    x, ld = tensors(g(z_in, _MASK1.clone(), _net1), "sas_coupling_inverse(z, mask, net)")
    x, ld = tensor(x, "x", shape=(2, 3)), tensor(ld, "logdet", shape=(2,))
    expect(torch.equal(z_in, _ZI1), "sas_coupling_inverse modified its input z in place")
    expect(close(x, _XI1), f"expected x = {fmt(_XI1)}, got {fmt(x)} (undo sinh, then the affine step, then asinh)")
    expect(close(ld, _LDI1), f"expected log|det dx/dz| = {fmt(_LDI1)}, got {fmt(ld)}")


# ---------------------------------------------------------------- Q2 MADE masks
_DEG = [torch.tensor([1, 2, 3]), torch.tensor([1, 2, 1, 2])]


def _mask_list(f, degrees, n):
    masks = f([d.clone() for d in degrees])
    expect(isinstance(masks, (list, tuple)) and len(masks) == n, f"expected a list of {n} masks")
    return masks


@visible("ch05.q2.hidden", "Q2 the input-to-hidden mask for d = 3 and hidden degrees (1, 2, 1, 2)")
def _q2_hidden(ns):
    f = need(ns, "made_masks")
    m = tensor(_mask_list(f, _DEG, 2)[0], "mask 1", shape=(4, 3))
    want = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0]], dtype=F64)
    expect(m.dtype == F64, f"masks should be float64 tensors of 0s and 1s, got {m.dtype}")
    expect(torch.equal(m, want), f"expected rows (hidden units) {want.int().tolist()}, got {m.int().tolist()} "
           "(a hidden unit of degree 1 must see the input of degree 1)")


@visible("ch05.q2.output", "Q2 the output mask for the same case, and every allowed connection with 2 hidden layers")
def _q2_output(ns):
    f = need(ns, "made_masks")
    m = tensor(_mask_list(f, _DEG, 2)[1], "the output mask", shape=(3, 4))
    want = torch.tensor([[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]], dtype=F64)
    expect(torch.equal(m.to(F64), want), f"expected rows (outputs) {want.int().tolist()}, got {m.int().tolist()}")
    # ordering 2, 4, 1, 3 and two hidden layers with every degree 1..3: output i may use input j iff m(j) < m(i)
    degrees = [torch.tensor([2, 4, 1, 3]), torch.tensor([1, 2, 3, 3, 2, 1]), torch.tensor([3, 1, 2, 1, 2])]
    m1, m2, m3 = _mask_list(f, degrees, 3)
    paths = tensor(m3, "the output mask", shape=(4, 5)) @ tensor(m2, "mask 2", shape=(5, 6)) @ tensor(
        m1, "mask 1", shape=(6, 4))
    want = torch.tensor([[0, 0, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    expect(torch.equal((paths > 0).int(), want),
           f"expected the connections (paths > 0) {want.tolist()}, got {(paths > 0).int().tolist()}")


# ---------------------------------------------------------------- Q3 passes
def _pair_of_ints(out, what):
    expect(isinstance(out, (tuple, list)) and len(out) == 2, f"{what} should return a tuple of two integers")
    return [int(v) if isinstance(v, int) or (isinstance(v, torch.Tensor) and v.numel() == 1) else v for v in out]


@visible("ch05.q3.layer", "Q3 one layer: the lecture's d = 64 case, and d = 4 with degrees (1, 1, 2, 2)")
def _q3_layer(ns):
    f = need(ns, "sampling_passes")
    got = _pair_of_ints(f([("MAF", torch.arange(1, 65))]), "sampling_passes")
    expect(got == [1, 64], f"a MAF with 64 different degrees: expected (1, 64) as measured in lecture 5.2, got {got}")
    got = _pair_of_ints(f([("MAF", torch.tensor([1, 1, 2, 2]))]), "sampling_passes")
    expect(got == [1, 2], f"a MAF with degrees (1, 1, 2, 2): expected (1, 2), got {got} (x_1 and x_2 are "
           "found in the same pass, then x_3 and x_4; the second pass also gives every scale)")
    got = _pair_of_ints(f([("IAF", torch.tensor([1, 1, 2, 2]))]), "sampling_passes")
    expect(got == [2, 1], f"an IAF with degrees (1, 1, 2, 2): expected (2, 1), got {got}")


@visible("ch05.q3.stack", "Q3 a stack: MAF with degrees (1, 2, 3), then IAF with degrees (2, 2, 1)")
def _q3_stack(ns):
    f = need(ns, "sampling_passes")
    got = _pair_of_ints(f([("MAF", torch.tensor([1, 2, 3])), ("IAF", torch.tensor([2, 2, 1]))]), "sampling_passes")
    expect(got == [3, 4], f"expected (1 + 2, 3 + 1) = (3, 4), got {got} (the passes of the layers add)")


# ---------------------------------------------------------------- Q4 sampling from a MAF
def _linear_conditioner(m_in, calls):
    """s constant, t linear in the earlier coordinates (x is then Gaussian); counts its calls."""
    d = m_in.numel()
    allowed = (m_in[None, :] < m_in[:, None]).to(F64)
    B = allowed * torch.linspace(-0.9, 0.9, d * d, dtype=F64).reshape(d, d)
    s = torch.linspace(-0.5, 0.5, d, dtype=F64)

    def conditioner(x):
        calls.append(1)
        return s.expand(x.shape[0], d), x @ B.T + 0.3

    return conditioner, s, B


def _check_sampler(ns, m_in, seed):
    f = need(ns, "maf_sample")
    calls: list = []
    cond, s, B = _linear_conditioner(m_in, calls)
    n, d = 4000, m_in.numel()
    x = tensor(f(n, cond, m_in.clone(), torch.Generator().manual_seed(seed)), "maf_sample(...)", shape=(n, d))
    levels = len(set(m_in.tolist()))
    expect(len(calls) <= levels, f"expected at most {levels} conditioner calls (the distinct degrees), "
           f"the sampler made {len(calls)}")
    expect(x.dtype == F64 and bool(torch.isfinite(x).all()), "expected finite float64 samples")
    z = x * torch.exp(s) + x @ B.T + 0.3  # back through the normalizing direction: should be N(0, I)
    se = 1 / math.sqrt(n)
    expect(bool((z.mean(0).abs() < 5 * se).all()) and bool(((z.var(0) - 1).abs() < 5 * math.sqrt(2) * se).all()),
           f"mapped back through the layer, the samples should look N(0, 1) per coordinate: means "
           f"{fmt(z.mean(0), 3)}, variances {fmt(z.var(0), 3)} (5 standard errors: {5 * se:.3f}, "
           f"{5 * math.sqrt(2) * se:.3f}); did you fill the coordinates in the order of their degrees?")


@visible("ch05.q4.distinct", "Q4 4000 samples for degrees (2, 3, 1): at most 3 passes, right distribution")
def _q4_distinct(ns):
    _check_sampler(ns, torch.tensor([2, 3, 1]), 5)


@visible("ch05.q4.ties", "Q4 4000 samples for degrees (1, 2, 1, 2, 3): at most 3 passes, right distribution")
def _q4_ties(ns):
    _check_sampler(ns, torch.tensor([1, 2, 1, 2, 3]), 6)


# ---------------------------------------------------------------- Q5 NLL of the 1-D flow
@visible("ch05.q5", "Q5 sas_nll at theta = 0 (a standard normal) and at theta = (0.5, 0.3, -0.2, 0.4)")
def _q5(ns):
    f = need(ns, "sas_nll")
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=F64)
    got = tensor(f(torch.zeros(4, dtype=F64), x.clone()), "sas_nll(theta, x)", shape=())
    want = 0.5 * 5 / 3 + 0.5 * LOG_2PI
    expect(close(got, want), f"theta = 0 is the identity map: expected the N(0, 1) NLL {want:.6f}, "
           f"got {got.item():.6f}")
    theta = torch.tensor([0.5, 0.3, -0.2, 0.4], dtype=F64, requires_grad=True)
    got = tensor(f(theta, x.clone()), "sas_nll(theta, x)", shape=())
    want = 1.8823372796824798  # log N(z(x)) + log dz/dx with dz/dx from autograd, averaged
    expect(close(got, want), f"expected {want:.6f} nats, got {got.item():.6f} (both layers' log-dets: -l, "
           "and the transformer's)")
    expect(got.requires_grad, "sas_nll should stay differentiable in theta (it is Q6's loss): do not detach")


# ---------------------------------------------------------------- Q6 training
@visible("ch05.q6", "Q6 fit_sas(x, 200, 0.1) on 200 skewed points gets within 0.02 nats of the best NLL")
def _q6(ns):
    f, nll = need(ns, "fit_sas"), need(ns, "sas_nll")
    u = torch.rand(200, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    x = -torch.log(u).sum(1) - 1.0  # Gamma(3, 1) minus 1: skewed to the right
    theta = tensor(f(x.clone(), 200, 0.1), "fit_sas(x, steps, lr)", shape=(4,), dtype=F64)
    expect(not theta.requires_grad, "return a detached tensor (call .detach() on the result)")
    best = 1.8794179352212461  # the minimum, found by Newton steps with the exact Hessian (at theta = 0: 4.5176)
    got = float(nll(theta, x))
    expect(got <= best + 0.02, f"expected an NLL (by your sas_nll) at most {best + 0.02:.4f} nats, got {got:.4f} "
           "(Adam from theta = 0, with bias correction; is Q5 right?)")


# ---------------------------------------------------------------- Q8 quantiles of a spline flow
# two bins: knots (-1, -0.5), (0, 0.5), (2, 1); the expected quantiles were computed once and agree to 1e-15 with a
# bisection of Phi(tau(x)) = u on the forward spline
def _knots8(slopes):
    return (torch.tensor([-1.0, 0.0, 2.0], dtype=F64), torch.tensor([-0.5, 0.5, 1.0], dtype=F64),
            torch.tensor(slopes, dtype=F64))


def _q8_call(ns, u, slopes):
    f = need(ns, "spline_quantile")
    u = torch.tensor(u, dtype=F64)
    return tensor(f(u, *_knots8(slopes)), "spline_quantile(u, xk, yk, dk)", shape=tuple(u.shape), dtype=F64)


@visible("ch05.q8.bins", "Q8 three quantiles of a two-bin spline flow, inside the knots")
def _q8_bins(ns):
    got = _q8_call(ns, [0.4, 0.6, 0.8], [1.5, 0.8, 0.4])
    want = [-0.81703102650339, -0.3047012195510759, 1.2306568605189032]
    expect(close(got, want), f"expected {fmt(want, 6)}, got {fmt(got, 6)} (first y = Phi^-1(u), then the bin of y "
           "among the y-knots, then the root of that bin's quadratic)")
    got = _q8_call(ns, [0.3085375387259869, 0.6914624612740131, 0.841344746068543], [1.5, 0.8, 0.4])
    expect(close(got, [-1.0, 0.0, 2.0]), f"the levels u = Phi(y_k) should give the knots x_k = [-1, 0, 2], "
           f"got {fmt(got, 6)}")


@visible("ch05.q8.edges", "Q8 the two tails (slopes 1.5 and 0.4, not 1) and a bin that is a straight line")
def _q8_edges(ns):
    got = _q8_call(ns, [0.05, 0.95], [1.5, 0.8, 0.4])
    want = [-1.7632357513009818, 3.6121340673786797]
    expect(close(got, want), f"expected {fmt(want, 6)}, got {fmt(got, 6)} (beyond the end knots tau is a straight "
           "line with the end slope: 1.5 on the left, 0.4 on the right)")
    # slopes (1, 1) at both ends of the first bin, whose chord has slope 1: the spline is a straight line there
    got = _q8_call(ns, [0.35, 0.5], [1.0, 1.0, 0.25])
    want = [-0.8853204664075678, -0.5]
    expect(close(got, want), f"expected {fmt(want, 6)}, got {fmt(got, 6)} in a bin where the spline is a straight "
           "line (the quadratic's a is 0 there: nan means a division by a)")
