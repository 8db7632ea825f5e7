"""Visible tests of chapter 5 (normalizing flows).

Each test says what was expected. They use small, hand-checkable inputs; the hidden tests, run when grading,
use other inputs (random batches, negative scales, other masks and orderings).
"""

from __future__ import annotations

import math

import torch

from course_tools.check import expect, need, visible
from course_tools.checks._common import F64, LOG_2PI, close, fmt, tensor, tensors


# ---------------------------------------------------------------- Q1 change of variables in 1-D
@visible("ch05.q1.increasing", "Q1 f(x) = (x - 1) / 5 turns N(0, 1) into N(1, 25): log-density at 5 points")
def _q1_increasing(ns):
    f = need(ns, "cov_log_prob_1d")
    x = torch.tensor([-9.0, -1.0, 1.0, 3.5, 11.0], dtype=F64)
    got = tensor(f(x, lambda v: (v - 1) / 5), "cov_log_prob_1d(x, f)", shape=(5,))
    expect(got.dtype == F64, f"keep the input dtype: expected float64, got {got.dtype}")
    expect(not got.requires_grad, "return a detached tensor (call .detach() on the result)")
    want = -0.5 * (x - 1) ** 2 / 25 - 0.5 * math.log(2 * math.pi * 25)
    expect(
        close(got, want),
        f"expected log N(x; 1, 25) = {fmt(want)}, got {fmt(got)} "
        f"(forgot log|f'(x)| = log(1/5)? that would give {fmt(want + math.log(5))})",
    )


@visible("ch05.q1.decreasing", "Q1 a decreasing map f(x) = -2x: the derivative enters with its absolute value")
def _q1_decreasing(ns):
    f = need(ns, "cov_log_prob_1d")
    x = torch.tensor([-1.0, 0.0, 0.5], dtype=F64)
    got = tensor(f(x, lambda v: -2 * v), "cov_log_prob_1d(x, f)", shape=(3,))
    want = -0.5 * (2 * x) ** 2 - 0.5 * LOG_2PI + math.log(2)
    expect(
        close(got, want),
        f"expected log N(-2x; 0, 1) + log 2 = {fmt(want)}, got {fmt(got)} "
        "(nan here usually means log of a negative derivative: use its absolute value)",
    )


# ---------------------------------------------------------------- Q2 LU log-det
@visible("ch05.q2.lu", "Q2 log|det(P L U)| of a 3x3 example equals log(2 * 0.5 * 3) = log 3")
def _q2_lu(ns):
    f = need(ns, "lu_logabsdet")
    perm = torch.tensor([2, 0, 1])
    L = torch.tensor([[1.0, 0.0, 0.0], [0.3, 1.0, 0.0], [-2.0, 0.7, 1.0]], dtype=F64)
    U = torch.tensor([[2.0, 1.0, -1.0], [0.0, -0.5, 4.0], [0.0, 0.0, 3.0]], dtype=F64)
    got = tensor(f(perm, L, U), "lu_logabsdet(perm, L, U)", shape=())
    expect(
        close(got, torch.tensor(math.log(3.0), dtype=F64)),
        f"expected log 3 = {math.log(3):.6f}, got {got.item():.6f} (|det P| = 1 and det L = 1; "
        "the absolute value matters: one diagonal entry of U is negative)",
    )


# ---------------------------------------------------------------- Q3 affine autoregressive layer
def _ar_conditioner():
    A = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [-0.3, 0.8, 0.0]], dtype=F64)
    B = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.2, -0.4, 0.0]], dtype=F64)
    c = torch.tensor([0.1, -0.2, 0.3], dtype=F64)
    sign = torch.tensor([1.0, 1.0, -1.0], dtype=F64)

    def conditioner(x):
        return sign * torch.exp(c + torch.tanh(x @ A.T)), x @ B.T + 0.5

    return conditioner


_X3 = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]], dtype=F64)
# z and log|det dz/dx| of _X3 under _ar_conditioner, computed once; the log-dets agree with slogdet of the
# autograd Jacobian, and the model ar_inverse maps _Z3 back to _X3
_Z3 = torch.tensor(
    [[1.0525854590378239, -0.045942781977002856, -0.28835231824327345], [0.5, 0.7456192259233945, 1.5758064431493093]],
    dtype=F64,
)
_LOGDET3 = torch.tensor([-0.2948643888702952, 0.435495749538498], dtype=F64)


@visible("ch05.q3.forward", "Q3 ar_forward returns z = alpha * x + beta for a 3-d example")
def _q3_forward(ns):
    f = need(ns, "ar_forward")
    cond = _ar_conditioner()
    z, _ = tensors(f(_X3.clone(), cond), "ar_forward(x, conditioner)")
    z = tensor(z, "z", shape=(2, 3))
    expect(close(z, _Z3), f"expected z = {fmt(_Z3)}, got {fmt(z)}")


@visible("ch05.q3.logdet", "Q3 ar_forward's log-det is sum_i log|alpha_i| (one alpha is negative)")
def _q3_logdet(ns):
    f = need(ns, "ar_forward")
    cond = _ar_conditioner()
    _, ld = tensors(f(_X3.clone(), cond), "ar_forward(x, conditioner)")
    ld = tensor(ld, "logdet", shape=(2,))
    expect(
        close(ld, _LOGDET3),
        f"expected sum_i log|alpha_i| = {fmt(_LOGDET3)}, got {fmt(ld)} "
        "(nan: log of a negative alpha; sum_i |alpha_i| would be [2.7953, 3.6322], which is the slide's mistake)",
    )


@visible("ch05.q3.inverse", "Q3 ar_inverse undoes ar_forward and its log-det is the negative of the forward one")
def _q3_inverse(ns):
    g = need(ns, "ar_inverse")
    cond = _ar_conditioner()
    z = _Z3
    z_in = z.clone()
    x, ld = tensors(g(z_in, cond), "ar_inverse(z, conditioner)")
    x, ld = tensor(x, "x", shape=(2, 3)), tensor(ld, "logdet", shape=(2,))
    expect(torch.equal(z_in, z), "ar_inverse modified its input z in place")
    expect(
        close(x, _X3),
        f"expected x = {fmt(_X3)}, got {fmt(x)} (solve for x_1 first, then x_2 with the conditioner "
        "evaluated at the x recovered so far, ...)",
    )
    want = -_LOGDET3
    expect(close(ld, want), f"expected log|det dx/dz| = -sum_i log|alpha_i| = {fmt(want)}, got {fmt(ld)}")


# ---------------------------------------------------------------- Q4 MADE masks
_DEG = [torch.tensor([1, 2, 3]), torch.tensor([1, 2, 1, 2])]


@visible("ch05.q4.hidden", "Q4 the input-to-hidden mask for d = 3 and hidden degrees (1, 2, 1, 2)")
def _q4_hidden(ns):
    f = need(ns, "made_masks")
    masks = f([d.clone() for d in _DEG])
    expect(isinstance(masks, (list, tuple)) and len(masks) == 2, "expected a list of 2 masks for 1 hidden layer")
    m = tensor(masks[0], "mask 1", shape=(4, 3))
    want = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0]], dtype=F64)
    expect(m.dtype == F64, f"masks should be float64 tensors of 0s and 1s, got {m.dtype}")
    expect(
        torch.equal(m, want),
        f"expected rows (hidden units) {want.int().tolist()}, got {m.int().tolist()} (keep m(k) >= m(j))",
    )


@visible("ch05.q4.output", "Q4 the hidden-to-output mask uses a strict inequality: output 1 sees nothing")
def _q4_output(ns):
    f = need(ns, "made_masks")
    masks = f([d.clone() for d in _DEG])
    expect(isinstance(masks, (list, tuple)) and len(masks) == 2, "expected a list of 2 masks for 1 hidden layer")
    m = tensor(masks[1], "the output mask", shape=(3, 4))
    want = torch.tensor([[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]], dtype=F64)
    expect(
        torch.equal(m.to(F64), want),
        f"expected rows (outputs) {want.int().tolist()}, got {m.int().tolist()} "
        "(the output rule is m(i) > m(k), strictly: otherwise output i could see x_i itself)",
    )


# ---------------------------------------------------------------- Q5 affine coupling
_MASK = torch.tensor([True, False, True, False])


def _net(xa):
    s = 0.5 * torch.tanh(xa[:, :1] + xa[:, 1:]).repeat(1, 2) * torch.tensor([1.0, -1.0], dtype=xa.dtype)
    t = xa.flip(1) * 0.3
    return s, t


_X5 = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.3, -0.2, 0.8, -1.5]], dtype=F64)


# z and log|det dz/dx| of _X5 under the coupling layer with _MASK and _net, computed once; the log-dets agree with
# slogdet of the autograd Jacobian (s sums to 0 here), and the model coupling_inverse maps _Z5 back to _X5
_Z5 = torch.tensor([[1.0, 1.7, -1.0, 0.8], [0.3, -0.05843939411519938, 0.8, -0.9152292221321098]], dtype=F64)
_LOGDET5 = torch.tensor([0.0, 0.0], dtype=F64)


@visible("ch05.q5.forward", "Q5 coupling_forward copies x_a, transforms x_b, and returns sum(s) as log-det")
def _q5_forward(ns):
    f = need(ns, "coupling_forward")
    z, ld = tensors(f(_X5.clone(), _MASK.clone(), _net), "coupling_forward(x, mask, net)")
    z, ld = tensor(z, "z", shape=(2, 4)), tensor(ld, "logdet", shape=(2,))
    want_z, want_ld = _Z5, _LOGDET5
    expect(torch.equal(z[:, _MASK], _X5[:, _MASK]), "the entries with mask True must be copied unchanged")
    expect(close(z, want_z), f"expected z = {fmt(want_z)}, got {fmt(z)} (entries in their original positions)")
    expect(close(ld, want_ld), f"expected log-det = sum of s = {fmt(want_ld)}, got {fmt(ld)}")


@visible("ch05.q5.inverse", "Q5 coupling_inverse undoes coupling_forward, with the opposite log-det")
def _q5_inverse(ns):
    g = need(ns, "coupling_inverse")
    z, ld_f = _Z5, _LOGDET5
    z_in = z.clone()
    x, ld = tensors(g(z_in, _MASK.clone(), _net), "coupling_inverse(z, mask, net)")
    x, ld = tensor(x, "x", shape=(2, 4)), tensor(ld, "logdet", shape=(2,))
    expect(torch.equal(z_in, z), "coupling_inverse modified its input z in place")
    expect(close(x, _X5), f"expected x = {fmt(_X5)}, got {fmt(x)}")
    expect(close(ld, -ld_f), f"expected log|det dx/dz| = -sum of s = {fmt(-ld_f)}, got {fmt(ld)}")


# ---------------------------------------------------------------- Q6 NLL of a flow
@visible("ch05.q6.single", "Q6 one layer z = 2x: NLL of three 2-d points")
def _q6_single(ns):
    f = need(ns, "flow_nll")
    x = torch.tensor([[0.0, 0.0], [0.5, -0.5], [1.0, 0.25]], dtype=F64)

    def double(h):
        return 2 * h, torch.full((h.shape[0],), 2 * math.log(2.0), dtype=h.dtype)

    got = tensor(f(x.clone(), [double]), "flow_nll(x, layers)", shape=())
    want = 1.4932493719561215  # x ~ N(0, I / 4): -log_prob of torch.distributions.MultivariateNormal, averaged
    expect(
        close(got, want),
        f"expected {want:.6f} nats, got {got.item():.6f} "
        "(the average of -log p_Z(z) - log-det; log p_Z includes -(d/2) log 2 pi)",
    )


@visible("ch05.q6.stack", "Q6 two layers: log-dets add and the second layer acts on the first's output")
def _q6_stack(ns):
    f = need(ns, "flow_nll")
    x = torch.tensor([[0.2, -0.1, 0.4]], dtype=F64)

    def shift(h):
        return h - 1.0, h.new_zeros(h.shape[0])

    def halve(h):
        return 0.5 * h, torch.full((h.shape[0],), 3 * math.log(0.5), dtype=h.dtype)

    got = tensor(f(x.clone(), [shift, halve]), "flow_nll(x, layers)", shape=())
    want = 5.112507141293854  # x = 1 + 2 z ~ N(1, 4 I): -log_prob of torch.distributions.Normal(1, 2), summed
    expect(close(got, want), f"expected {want:.6f} nats, got {got.item():.6f} (apply the layers in order)")
