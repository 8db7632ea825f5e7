"""Hidden checks of the chapter 5 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
"""

import math

import torch

from course_tools.hidden import (
    Checks,
    Generator,
    Source,
    central_differences,
    expect,
    expect_close,
    expect_float,
    expect_tensor,
    jacobian_from_differences,
)

checks = Checks("ch05_normalizing_flows")
F64 = torch.float64


def _pair(out, what):
    expect(isinstance(out, tuple) and len(out) == 2, f"{what} should return a tuple of two tensors")
    return out


# ---------------------------------------------------------------- Q1 sinh-arcsinh coupling (derive)
NET = Source(
    "(lambda W1, W2, b: (lambda xa: (0.8 * torch.tanh(xa @ W1 + b), xa @ W2)))("
    "torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), "
    "torch.randn(4, dtype=torch.float64))",
    seed=51,
)
MASK = torch.tensor([False, True, False, True, True, False, False])


def _sas_ref(x, net):
    """z and log|det dz/dx| of the sinh-arcsinh coupling, written from the derivative dz_i/dx_i."""
    s, t = net(x[:, MASK])
    xb = x[:, ~MASK]
    u = torch.exp(s) * torch.asinh(xb) + t
    z = x.clone()
    z[:, ~MASK] = torch.sinh(u)
    dz = torch.cosh(u) * torch.exp(s) / torch.sqrt(1 + xb**2)
    return z, dz.log().sum(1)


def _sas_inverse_ref(z, net):
    s, t = net(z[:, MASK])
    x = z.clone()
    x[:, ~MASK] = torch.sinh((torch.asinh(z[:, ~MASK]) - t) * torch.exp(-s))
    return x


@checks.cell("q1_forward_test")
def q1_forward(student):
    """sas_coupling_forward: z for a scattered mask and random conditioner outputs"""
    x = 1.5 * torch.randn(5, 7, generator=torch.Generator().manual_seed(52), dtype=F64)
    out = student.sas_coupling_forward(x, MASK, NET)
    z, _ = _pair(out, "sas_coupling_forward(x, mask, net)")
    z = expect_tensor(z, "z", shape=(5, 7), dtype=F64)
    ref_z, _ = _sas_ref(x, NET.build())
    expect(torch.equal(z[:, MASK], x[:, MASK]), "the entries with mask True must be copied unchanged")
    expect_close(z, ref_z, "z of the sinh-arcsinh coupling is wrong for a mask that is not a half split")


@checks.cell("q1_logdet_test")
def q1_logdet(student):
    """sas_coupling_forward: the log-det, against the Jacobian of your own map and the derived formula"""
    x0 = 1.2 * torch.randn(1, 7, generator=torch.Generator().manual_seed(53), dtype=F64)
    xs = central_differences(x0)
    xb = 2.0 * torch.randn(6, 7, generator=torch.Generator().manual_seed(54), dtype=F64)
    out0 = student.sas_coupling_forward(xs, MASK, NET)
    out1 = student.sas_coupling_forward(xb, MASK, NET)
    z0, ld0 = _pair(out0, "sas_coupling_forward(x, mask, net)")
    z0 = expect_tensor(z0, "z", shape=tuple(xs.shape), dtype=F64)
    ld0 = expect_tensor(ld0, "logdet", shape=(xs.shape[0],), dtype=F64)
    _, ld1 = _pair(out1, "sas_coupling_forward(x, mask, net)")
    ld1 = expect_tensor(ld1, "logdet", shape=(6,), dtype=F64)
    net = NET.build()
    own = torch.linalg.slogdet(jacobian_from_differences(z0)).logabsdet
    expect_close(ld0[0], own, "the log-det does not match log|det J| of your own map at a random point",
                 rtol=1e-6, atol=1e-6)
    expect_close(ld0, _sas_ref(xs, net)[1], "the log-det of the sinh-arcsinh coupling is wrong")
    expect_close(ld1, _sas_ref(xb, net)[1], "the log-det of the sinh-arcsinh coupling is wrong for a batch")


@checks.cell("q1_inverse_test")
def q1_inverse(student):
    """sas_coupling_inverse: x and log|det dx/dz| for fresh random z"""
    # a fresh z, not the image of an earlier input: an inverse that only remembers the forward's answers gets 0
    z = 1.5 * torch.randn(5, 7, generator=torch.Generator().manual_seed(55), dtype=F64)
    z0 = torch.randn(1, 7, generator=torch.Generator().manual_seed(56), dtype=F64)
    zs = central_differences(z0)
    out = student.sas_coupling_inverse(z, MASK, NET)
    out0 = student.sas_coupling_inverse(zs, MASK, NET)
    xr, ld = _pair(out, "sas_coupling_inverse(z, mask, net)")
    xr = expect_tensor(xr, "x", shape=(5, 7), dtype=F64)
    ld = expect_tensor(ld, "logdet", shape=(5,), dtype=F64)
    x0, ld0 = _pair(out0, "sas_coupling_inverse(z, mask, net)")
    x0 = expect_tensor(x0, "x", shape=tuple(zs.shape), dtype=F64)
    ld0 = expect_tensor(ld0, "logdet", shape=(zs.shape[0],), dtype=F64)
    net = NET.build()
    x_ref = _sas_inverse_ref(z, net)
    expect_close(xr, x_ref, "sas_coupling_inverse does not invert the coupling for random z", atol=1e-8)
    # the generating log-det is minus the normalizing one at the recovered x (the forward's formula, not yours)
    expect_close(ld, -_sas_ref(x_ref, net)[1], "the log-det of sas_coupling_inverse is wrong (log|det dx/dz|)")
    own = torch.linalg.slogdet(jacobian_from_differences(x0)).logabsdet
    expect_close(ld0[0], own, "the inverse's log-det does not match log|det J| of your own inverse map",
                 rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- Q2 MADE masks (diagnose)
def _made_ref(degrees):
    masks = [(hi[:, None] >= lo[None, :]).to(F64) for lo, hi in zip(degrees[:-1], degrees[1:])]
    return masks + [(degrees[0][:, None] > degrees[-1][None, :]).to(F64)]


def _degrees(seed, d, widths):
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(d, generator=g) + 1] + [torch.randint(1, d, (w,), generator=g) for w in widths]


def _masks(out, n):
    expect(isinstance(out, (list, tuple)), f"made_masks should return a list of masks, got {type(out).__name__}")
    expect(len(out) == n, f"for {n - 1} hidden layers made_masks should return {n} masks, got {len(out)}")
    return out


@checks.cell("q2_hidden_test")
def q2_hidden(student):
    """made_masks: the hidden masks for a random ordering and two hidden layers"""
    degrees = _degrees(41, 6, (10, 8))
    out = _masks(student.made_masks(degrees), 3)
    ref = _made_ref(degrees)
    for k in range(2):
        m = expect_tensor(out[k], f"mask {k + 1}", shape=tuple(ref[k].shape), dtype=F64)
        expect(torch.equal(m, ref[k]), f"hidden mask {k + 1} (random ordering, two hidden layers) is wrong")


@checks.cell("q2_output_test")
def q2_output(student):
    """made_masks: the output mask, the autoregressive property and no lost connection"""
    degrees = _degrees(42, 7, (9, 12, 6))
    full = [torch.tensor([3, 1, 5, 2, 4]), torch.tensor([1, 2, 3, 4, 4, 3, 2, 1]), torch.tensor([4, 3, 2, 1, 2, 3])]
    out, out_full = student.made_masks(degrees), student.made_masks(full)
    out, out_full = _masks(out, 4), _masks(out_full, 3)
    ref = _made_ref(degrees)
    m = expect_tensor(out[3], "the output mask", shape=tuple(ref[3].shape), dtype=F64)
    expect(torch.equal(m, ref[3]), "the output mask (random ordering, three hidden layers) is wrong")
    shapes = [(8, 5), (6, 8), (5, 6)]
    for k, shape in enumerate(shapes):
        expect_tensor(out_full[k], f"mask {k + 1}", shape=shape, dtype=F64)
    paths = out_full[2] @ out_full[1] @ out_full[0]  # paths[i, j]: number of paths from input j to output i
    m_in = full[0]
    allowed = m_in[None, :] < m_in[:, None]
    expect(bool((paths[~allowed] == 0).all()), "some output can see an input that is not before it in the ordering")
    expect(bool((paths[allowed] > 0).all()), "some output cannot see an input that is before it in the ordering "
           "(every hidden degree 1..d-1 is present, so every allowed connection should exist)")


# ---------------------------------------------------------------- Q3 how many passes (predict)
def _masked_conditioner(m_in, seed):
    g = torch.Generator().manual_seed(seed)
    d = len(m_in)
    M = (m_in[None, :] < m_in[:, None]).to(F64)
    A, B = torch.randn(d, d, generator=g, dtype=F64) * M, torch.randn(d, d, generator=g, dtype=F64) * M
    c = 0.3 * torch.randn(d, generator=g, dtype=F64)
    return lambda v: (0.5 * torch.tanh(v @ A.T) + c, v @ B.T)


def _measured_sequential_passes(m_in, seed):
    """Undo one layer by the parallel fixed-point iteration x <- (z - t(x)) e^{-s(x)} from x = 0, one conditioner
    pass per sweep, and count the sweeps until x stops changing: the number of passes the inverse needs."""
    cond = _masked_conditioner(m_in, seed)
    z = torch.randn(3, m_in.numel(), generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    x = torch.zeros_like(z)
    for sweep in range(1, m_in.numel() + 2):
        s, t = cond(x)
        x_new = (z - t) * torch.exp(-s)
        if torch.equal(x_new, x):
            return sweep - 1
        x = x_new
    raise AssertionError("the fixed-point iteration did not settle")


def _measured(layers, seed):
    density = sampling = 0
    for k, (kind, m_in) in enumerate(layers):
        seq = _measured_sequential_passes(m_in, seed + 10 * k)
        density += 1 if kind == "MAF" else seq
        sampling += seq if kind == "MAF" else 1
    return density, sampling


def _count(x, what):
    value = expect_float(x, what)
    expect(value == int(value), f"{what} should be a whole number of passes")
    return int(value)


def _passes(out, what):
    expect(isinstance(out, (tuple, list)) and len(out) == 2,
           f"{what} should return a tuple (density passes, sampling passes)")
    return _count(out[0], "the density passes"), _count(out[1], "the sampling passes")


@checks.cell("q3_layer_test")
def q3_layer(student):
    """sampling_passes: one MAF layer and one IAF layer whose degrees have ties"""
    maf = [("MAF", torch.tensor([2, 1, 4, 4, 1, 6, 2, 7]))]
    iaf = [("IAF", torch.tensor([3, 3, 1, 3, 5, 1]))]
    out_maf, out_iaf = student.sampling_passes(maf), student.sampling_passes(iaf)
    got_maf = _passes(out_maf, "sampling_passes([MAF layer])")
    got_iaf = _passes(out_iaf, "sampling_passes([IAF layer])")
    expect(got_maf == _measured(maf, 71), "the passes of a MAF layer whose degrees have ties are wrong")
    expect(got_iaf == _measured(iaf, 72), "the passes of an IAF layer whose degrees have ties are wrong")


@checks.cell("q3_stack_test")
def q3_stack(student):
    """sampling_passes: a stack of MAF and IAF layers with different degrees"""
    g = torch.Generator().manual_seed(73)
    layers = [("MAF", torch.randperm(9, generator=g) + 1), ("IAF", torch.randint(1, 4, (9,), generator=g)),
              ("MAF", torch.tensor([1, 1, 1, 2, 2, 2, 1, 1, 2])), ("IAF", torch.randperm(9, generator=g) + 1),
              ("MAF", torch.randint(1, 6, (9,), generator=g))]
    got = _passes(student.sampling_passes(layers), "sampling_passes(layers)")
    expect(got == _measured(layers, 74), "the passes of a stack of five MAF and IAF layers are wrong")


# ---------------------------------------------------------------- Q4 sampling from a MAF (sample)
def _budget_conditioner(m_in, seed, budget):
    """A masked conditioner as a Source; after `budget` calls it answers nan (more passes than needed)."""
    d = len(m_in)
    M = (m_in[None, :] < m_in[:, None]).to(torch.int64).tolist()
    return Source(
        "(lambda A, B, c, M, calls: (lambda x: (calls.append(1), "
        "(0.6 * torch.tanh(x @ (A * M).T) + c, x @ (B * M).T - c) "
        f"if len(calls) <= {budget} else (torch.full_like(x, math.nan), torch.full_like(x, math.nan)))[1]))("
        f"torch.randn({d}, {d}, dtype=torch.float64), torch.randn({d}, {d}, dtype=torch.float64), "
        f"0.5 * torch.randn({d}, dtype=torch.float64), torch.tensor({M}, dtype=torch.float64), [])",
        seed=seed,
    )


def _check_samples(x, cond, n, d, what):
    x = expect_tensor(x, "maf_sample(...)", shape=(n, d), dtype=F64)
    expect(bool(torch.isfinite(x).all()), f"{what}: the samples contain nan or inf (did the sampler call the "
           "conditioner more often than the distinct degrees require?)")
    s, t = cond(x)
    z = x * torch.exp(s) + t  # the normalizing direction: correct samples come back as N(0, I) noise
    se = 1 / math.sqrt(n)
    expect(bool((z.mean(0).abs() < 5 * se).all()), f"{what}: the samples do not have the model's distribution "
           "(their normalized means are off by more than 5 standard errors)")
    expect(bool(((z.var(0) - 1).abs() < 5 * math.sqrt(2) * se).all()), f"{what}: the samples do not have the "
           "model's distribution (their normalized variances are off by more than 5 standard errors)")
    cov = torch.cov(z.T) - torch.eye(d, dtype=F64)
    off = ~torch.eye(d, dtype=torch.bool)
    expect(bool((cov[off].abs() < 5 * se).all()), f"{what}: the samples do not have the model's distribution "
           "(their normalized coordinates are correlated)")


@checks.cell("q4_distinct_test")
def q4_distinct(student):
    """maf_sample: 3000 samples, random ordering without ties, at most d conditioner passes"""
    m_in = torch.tensor([3, 5, 1, 4, 2])
    src = _budget_conditioner(m_in, 81, budget=5)
    x = student.maf_sample(3000, src, m_in, Generator(82))
    _check_samples(x, src.build(), 3000, 5, "ordering without ties")


@checks.cell("q4_ties_test")
def q4_ties(student):
    """maf_sample: 3000 samples, degrees with ties, as few passes as there are distinct degrees"""
    m_in = torch.tensor([2, 1, 3, 2, 1, 3])
    src = _budget_conditioner(m_in, 83, budget=3)
    x = student.maf_sample(3000, src, m_in, Generator(84))
    _check_samples(x, src.build(), 3000, 6, "degrees with ties")


# ---------------------------------------------------------------- Q5 NLL of a sinh-arcsinh flow (derive)
def _sas_nll_ref(theta, x):
    """Average NLL by the density of X = m + e^l sinh((asinh(Z) - t) e^{-s}), written with torch.distributions."""
    m, l, s, t = theta
    y = (x - m) * torch.exp(-l)
    u = torch.exp(s) * torch.asinh(y) + t
    dz_dx = torch.cosh(u) * torch.exp(s) / torch.sqrt(1 + y**2) * torch.exp(-l)
    normal = torch.distributions.Normal(torch.zeros((), dtype=F64), torch.ones((), dtype=F64))
    return -(normal.log_prob(torch.sinh(u)) + dz_dx.log()).mean()


@checks.cell("q5_test")
def q5_nll(student):
    """sas_nll: the average NLL at two random parameter vectors"""
    g = torch.Generator().manual_seed(91)
    xs = [2 * torch.randn(40, generator=g, dtype=F64) + 0.5, torch.randn(25, generator=g, dtype=F64).exp() - 1]
    thetas = [0.6 * torch.randn(4, generator=g, dtype=F64) for _ in range(2)]
    got = [student.sas_nll(th, x) for th, x in zip(thetas, xs)]
    for k, (th, x, v) in enumerate(zip(thetas, xs, got)):
        v = expect_tensor(v, "sas_nll(theta, x)", shape=(), dtype=F64)
        expect_close(v, _sas_nll_ref(th, x), f"the NLL at a random parameter vector ({k + 1} of 2) is wrong")


# ---------------------------------------------------------------- Q6 fit the flow (training)
def _best_nll(x):
    """The model's best average NLL on x, by damped Newton steps (Levenberg-Marquardt) with the exact Hessian:
    another optimiser than the one the question asks for, run to a gradient of 1e-10."""

    def f(th):
        return _sas_nll_ref(th, x)

    theta, lam = torch.zeros(4, dtype=F64), 1.0
    current = f(theta)
    for _ in range(200):
        grad = torch.autograd.functional.jacobian(f, theta)
        if grad.abs().max() < 1e-10:
            break
        hess = torch.autograd.functional.hessian(f, theta)
        while lam < 1e12:
            trial = theta - torch.linalg.solve(hess + lam * torch.eye(4, dtype=F64), grad)
            value = f(trial)
            if torch.isfinite(value) and value < current:
                theta, current, lam = trial, value, max(lam / 3, 1e-9)
                break
            lam *= 10
        else:
            break
    return current.item()


@checks.cell("q6_test")
def q6_fit(student):
    """fit_sas: maximum likelihood on 400 skewed points reaches the best NLL within 0.02 nats"""
    u = torch.rand(400, 3, generator=torch.Generator().manual_seed(95), dtype=F64)
    x = -torch.log(u).sum(1) - 1.0  # a Gamma(3, 1) sample shifted by -1: skewed to the right
    theta = student.fit_sas(x, 200, 0.1)
    theta = expect_tensor(theta, "fit_sas(x, steps, lr)", shape=(4,), dtype=F64)
    expect(bool(torch.isfinite(theta).all()), "the fitted parameters contain nan or inf")
    got = _sas_nll_ref(theta, x).item()
    expect(math.isfinite(got), "the NLL of your fitted parameters is not finite")
    expect(got <= _best_nll(x) + 0.02, "the NLL of your fitted parameters is more than 0.02 nats above "
           "the best this model reaches on the data (train longer, or check the gradient of your loss)")


# ---------------------------------------------------------------- Q8 quantiles of a spline flow (derive)
def _knots(seed, M):
    """Random knots (increasing in x and y, neither symmetric) and positive slopes, also at the ends."""
    g = torch.Generator().manual_seed(seed)
    xk = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(0.2 + torch.rand(M, generator=g, dtype=F64), 0)])
    yk = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(0.1 + torch.rand(M, generator=g, dtype=F64), 0)])
    dk = torch.exp(0.8 * torch.randn(M + 1, generator=g, dtype=F64))
    return xk - 1.7 - 0.3 * torch.rand(1, generator=g, dtype=F64), yk - 1.1, dk


def _spline_forward(x, xk, yk, dk):
    """tau(x), from the bin formula y_m + h (s xi^2 + d_m xi (1 - xi)) / (s + (d_m+1 + d_m - 2 s) xi (1 - xi))."""
    M = xk.numel() - 1
    m = (torch.bucketize(x, xk, right=True) - 1).clamp(0, M - 1)
    w, h = xk[m + 1] - xk[m], yk[m + 1] - yk[m]
    s, e = h / w, (x - xk[m]) / w
    inner = yk[m] + h * (s * e**2 + dk[m] * e * (1 - e)) / (s + (dk[m + 1] + dk[m] - 2 * s) * e * (1 - e))
    inner = torch.where(x < xk[0], yk[0] + dk[0] * (x - xk[0]), inner)
    return torch.where(x > xk[-1], yk[-1] + dk[-1] * (x - xk[-1]), inner)


def _quantile_ref(u, xk, yk, dk):
    """F_X^{-1}(u) by bisection of Phi(tau(x)) = u on a bracket wide enough for u in [1e-12, 1 - 1e-12]."""
    y = torch.special.ndtri(u)
    spread = float(y.abs().max() + yk.abs().max()) / float(dk.min()) + float(xk.abs().max()) + 1.0
    lo, hi = torch.full_like(u, -spread), torch.full_like(u, spread)
    for _ in range(200):
        mid = (lo + hi) / 2
        below = _spline_forward(mid, xk, yk, dk) < y
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


@checks.cell("q8_bins_test")
def q8_bins(student):
    """spline_quantile: levels inside the knots, for random knots with 7 bins"""
    xk, yk, dk = _knots(81, 7)
    lo, hi = torch.special.ndtr(yk[0]), torch.special.ndtr(yk[-1])
    u = lo + (hi - lo) * torch.rand(40, generator=torch.Generator().manual_seed(82), dtype=F64)
    got = expect_tensor(student.spline_quantile(u, xk, yk, dk), "spline_quantile(u, xk, yk, dk)", shape=(40,),
                        dtype=F64)
    expect_close(got, _quantile_ref(u, xk, yk, dk),
                 "the quantiles inside the knots are wrong (F_X(x) = Phi(tau(x)); invert tau bin by bin)",
                 rtol=1e-8, atol=1e-9)


@checks.cell("q8_edges_test")
def q8_edges(student):
    """spline_quantile: both tails, the knots themselves and a bin where the spline is a straight line"""
    xk, yk, dk = _knots(83, 5)
    dk[2] = dk[3] = (yk[3] - yk[2]) / (xk[3] - xk[2])         # bin 2 is a straight line: a = 0 in the quadratic
    g = torch.Generator().manual_seed(84)
    inside = yk[2] + (yk[3] - yk[2]) * torch.rand(6, generator=g, dtype=F64)
    tails = torch.cat([yk[0] - 4 * torch.rand(4, generator=g, dtype=F64),
                       yk[-1] + 4 * torch.rand(4, generator=g, dtype=F64)])
    u = torch.special.ndtr(torch.cat([inside, tails, yk]))
    u = torch.cat([u, torch.tensor([1e-7], dtype=F64)])
    got = expect_tensor(student.spline_quantile(u, xk, yk, dk), "spline_quantile(u, xk, yk, dk)",
                        shape=(u.numel(),), dtype=F64)
    ref = _quantile_ref(u, xk, yk, dk)
    expect_close(got[:6], ref[:6], "the quantiles inside a bin where the spline is a straight line are wrong "
                 "(there a = 0: does your root divide by a?)", rtol=1e-8, atol=1e-9)
    expect_close(got[6:14], ref[6:14], "the quantiles in the tails are wrong (the tails are straight lines with the "
                 "end slopes, not the identity)", rtol=1e-8, atol=1e-9)
    expect_close(got[14:20], ref[14:20], "the levels u = Phi(y_k) should land on the knots x_k", rtol=1e-8, atol=1e-9)
    expect_close(got[20:], ref[20:], "the quantile far in the left tail (u = 1e-7) is wrong", rtol=1e-8, atol=1e-9)
