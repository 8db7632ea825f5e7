"""Hidden checks of the chapter 7 assignment, decided by the grader outside the student's kernel.

Never released: the student version, the feedback and the student repository do not contain this file.
See ``course_tools/hidden.py`` for how a check runs (record the calls, run them in the kernel, replay here).
Every reference is computed here by another route than the model answer: the d x d Jacobian instead of Sylvester's
m x m identity, a measured Euler error beside the leading term, an enumeration of every Rademacher probe, explicit
matrix powers per draw, and the closed-form Gaussian maximum likelihood.
"""

import itertools
import math

import torch

from course_tools.hidden import (
    Checks,
    Source,
    central_differences,
    expect,
    expect_close,
    expect_tensor,
    jacobian_from_differences,
)

checks = Checks("ch07_residual_continuous")
F64 = torch.float64


def _pair(out, what):
    expect(isinstance(out, (tuple, list)) and len(out) == 2, f"{what} should return a tuple of two tensors")
    return out


def _randn(*shape, seed, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---------------------------------------------------------------- Q1 Sylvester layer, unconstrained factors
def _sylvester_params(seed, d, m, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    A = scale * torch.randn(d, m, generator=g, dtype=F64)
    B = torch.randn(m, d, generator=g, dtype=F64)
    b = torch.randn(m, generator=g, dtype=F64)
    return A, B, b


def _sylvester_ref(x, A, B, b):
    """z, and log|det| of the full d x d Jacobian I + A diag(h'(a)) B (not the m x m identity)."""
    a = x @ B.T + b
    z = x + torch.tanh(a) @ A.T
    J = torch.eye(x.shape[1], dtype=F64) + torch.einsum("im,nm,mj->nij", A, 1 - torch.tanh(a) ** 2, B)
    return z, torch.linalg.slogdet(J).logabsdet


@checks.cell("q1_map_test")
def q1_map(student):
    """the map z on a batch of 7 points in 6-d with m = 3"""
    x = _randn(7, 6, seed=111)
    A, B, b = _sylvester_params(112, 6, 3)
    out = _pair(student.sylvester_forward(x, A, B, b), "sylvester_forward")
    z = expect_tensor(out[0], "z", shape=(7, 6), dtype=F64)
    expect_close(z, _sylvester_ref(x, A, B, b)[0], "z = x + A tanh(B x + b) is wrong on random 6-d inputs with m = 3")


@checks.cell("q1_logdet_test")
def q1_logdet(student):
    """the log-det against the d x d Jacobian (also where det < 0), and against the Jacobian of your own map"""
    x = _randn(6, 8, seed=121)
    A, B, b = _sylvester_params(122, 8, 3)
    # large A: 1 + h' (BA) has negative eigenvalues near the origin, so the determinant changes sign
    x2 = _randn(9, 5, seed=123, scale=0.3)
    A2, B2, b2 = _sylvester_params(124, 5, 2, scale=3.0)
    x0 = _randn(1, 5, seed=125)
    A3, B3, b3 = _sylvester_params(126, 5, 2)
    out = student.sylvester_forward(x, A, B, b)
    out2 = student.sylvester_forward(x2, A2, B2, b2)
    near = student.sylvester_forward(central_differences(x0), A3, B3, b3)
    out, out2, near = (_pair(o, "sylvester_forward") for o in (out, out2, near))
    ld = expect_tensor(out[1], "logdet", shape=(6,), dtype=F64)
    ld2 = expect_tensor(out2[1], "logdet", shape=(9,), dtype=F64)
    expect_close(ld, _sylvester_ref(x, A, B, b)[1], "the log-det is wrong on random 8-d inputs with m = 3")
    ref2 = _sylvester_ref(x2, A2, B2, b2)[1]
    expect_close(ld2, ref2, "the log-det is wrong where the determinant is negative (log of its absolute value)")
    # the Jacobian of the student's own map, from their z at x0 +- h e_i, computed here
    z = expect_tensor(near[0], "z", shape=(11, 5), dtype=F64)
    ld0 = expect_tensor(near[1], "logdet", shape=(11,), dtype=F64)[:1]
    J = jacobian_from_differences(z)
    expect_close(torch.linalg.slogdet(J).logabsdet.reshape(1), ld0,
                 "your log-det does not match log|det J| of your own map (J from your z at nearby points)",
                 rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- Q2 error of the Euler log-det
def _euler_measured(A, T, K):
    eye = torch.eye(A.shape[0], dtype=F64)
    return K * torch.linalg.slogdet(eye + (T / K) * A).logabsdet - T * torch.trace(A)


def _leading(A, T, K):
    eigenvalues = torch.linalg.eigvals(A)                   # tr(A^2) as the sum of squared eigenvalues
    return -(T**2) / (2 * K) * (eigenvalues**2).sum().real


@checks.cell("q2_test")
def q2_error(student):
    """the leading Euler log-det error for two random non-symmetric matrices, against the formula and a measurement"""
    A = _randn(3, 3, seed=211)
    A2 = _randn(4, 4, seed=212, scale=0.8)
    got = student.euler_logdet_error(A, 1.5, 400)
    got2 = student.euler_logdet_error(A2, 0.7, 1000)
    for out, M, T, K in ((got, A, 1.5, 400), (got2, A2, 0.7, 1000)):
        out = expect_tensor(out, f"euler_logdet_error(A, {T}, {K})", shape=(), dtype=F64)
        expect_close(out, _leading(M, T, K),
                     f"the leading error term is wrong for a random {M.shape[0]}x{M.shape[0]} A, T = {T}, K = {K}",
                     rtol=1e-8, atol=1e-12)
        measured = _euler_measured(M, T, K)
        expect(abs(float(out) - float(measured)) <= 0.05 * abs(float(measured)),
               f"for T = {T}, K = {K} your prediction is not within 5% of the measured error")


# ---------------------------------------------------------------- Q3 variance of the one-probe series
def _normalised(seed, d, norm):
    J = _randn(d, d, seed=seed)
    return norm * J / torch.linalg.matrix_norm(J, 2)


def _values(J, probes, n):
    """The estimate for each probe (rows), from explicit vector-matrix products."""
    total, v = torch.zeros(probes.shape[0], dtype=F64), probes
    for k in range(1, n + 1):
        v = v @ J
        total = total + (-1) ** (k + 1) / k * (v * probes).sum(1)
    return total


def _rademacher_variance(J, n):
    """Exact: the population variance over all 2^d equally likely sign vectors."""
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=J.shape[0])), dtype=F64)
    return _values(J, signs, n).var(unbiased=False)


def _gaussian_variance(J, n):
    """Exact: Var[eps^T P eps] = tr(P P^T) + tr(P P) for standard normal eps (Isserlis)."""
    P = sum((-1) ** (k + 1) / k * torch.linalg.matrix_power(J, k) for k in range(1, n + 1))
    return torch.trace(P @ P.T) + torch.trace(P @ P)


@checks.cell("q3_rademacher_test")
def q3_rademacher(student):
    """Rademacher probes: random non-symmetric 5x5 and 7x7 Jacobians with 4, 1 and 9 terms"""
    J = _normalised(311, 5, 0.8)
    J2 = _normalised(312, 7, 0.6)
    J3 = _normalised(313, 7, 0.9)
    got = student.series_probe_variance(J, 4, "rademacher")
    got1 = student.series_probe_variance(J2, 1, "rademacher")
    got9 = student.series_probe_variance(J3, 9, "rademacher")
    for out, M, n in ((got, J, 4), (got1, J2, 1), (got9, J3, 9)):
        out = expect_tensor(out, f"the variance with {n} term(s)", shape=(), dtype=F64)
        expect_close(out, _rademacher_variance(M, n),
                     f"the variance of the {n}-term estimator with Rademacher probes is wrong "
                     f"(a random {M.shape[0]}x{M.shape[0]} J; one probe is shared by every term)", rtol=1e-8)


@checks.cell("q3_gaussian_test")
def q3_gaussian(student):
    """Gaussian probes: a random non-symmetric 6x6 Jacobian with 5 terms"""
    J = _normalised(321, 6, 0.7)
    out = expect_tensor(student.series_probe_variance(J, 5, "gaussian"), "the variance", shape=(), dtype=F64)
    expect_close(out, _gaussian_variance(J, 5),
                 "the variance of the 5-term estimator with Gaussian probes is wrong (a random 6x6 J)", rtol=1e-8)


# ---------------------------------------------------------------- Q4 Russian roulette
def _roulette_ref(J, eps, N, p):
    """One draw at a time, with explicit matrix powers: sum_{k <= N} (-1)^(k+1)/k eps^T J^k eps / P(N >= k)."""
    out = []
    for e, n in zip(eps, N.tolist()):
        terms = [(-1) ** (k + 1) / k * (e @ torch.linalg.matrix_power(J, k) @ e) / (1 - p) ** (k - 1)
                 for k in range(1, n + 1)]
        out.append(torch.stack(terms).sum())
    return torch.stack(out)


def _draws(seed, P, d, p):
    g = torch.Generator().manual_seed(seed)
    eps = torch.randint(0, 2, (P, d), generator=g).to(F64) * 2 - 1
    u = torch.rand(P, generator=g, dtype=F64)
    N = 1 + torch.floor(torch.log(u) / math.log(1 - p)).long()       # geometric on {1, 2, ...}
    return eps, N


@checks.cell("q4_values_test")
def q4_values(student):
    """the estimate for 40 given (probe, N) pairs on a random 4x4 J, p = 0.3, and with N = 1 everywhere"""
    J = _normalised(411, 4, 0.6)
    eps, N = _draws(412, 40, 4, 0.3)
    J2 = _normalised(413, 3, 0.5)
    eps2, _ = _draws(414, 6, 3, 0.5)
    ones = torch.ones(6, dtype=torch.int64)
    got = student.roulette_logdet(J, eps, N, 0.3)
    got1 = student.roulette_logdet(J2, eps2, ones, 0.7)
    got = expect_tensor(got, "roulette_logdet(J, eps, N, 0.3)", shape=(40,), dtype=F64)
    got1 = expect_tensor(got1, "roulette_logdet with N = 1", shape=(6,), dtype=F64)
    expect_close(got1, _roulette_ref(J2, eps2, ones, 0.7),
                 "with N = 1 every draw keeps exactly the first term, eps^T J eps (P(N >= 1) = 1)")
    expect_close(got, _roulette_ref(J, eps, N, 0.3), "the estimates for given probes and N are wrong (p = 0.3)")


@checks.cell("q4_unbiased_test")
def q4_unbiased(student):
    """averaged over 1500 geometric draws, the estimate matches log det(I + J) within 5 standard errors"""
    # 1500 results: a larger payload than about 64 KB makes the kernel's messaging start a thread
    J = _normalised(421, 3, 0.5)
    eps, N = _draws(423, 1500, 3, 0.3)
    got = expect_tensor(student.roulette_logdet(J, eps, N, 0.3), "roulette_logdet", shape=(1500,), dtype=F64)
    expect(bool(torch.isfinite(got).all()), "the estimates should be finite")
    exact = torch.linalg.slogdet(torch.eye(3, dtype=F64) + J).logabsdet
    se = got.std() / math.sqrt(got.numel())
    expect(abs(float(got.mean() - exact)) < 5 * float(se),
           "the average of many estimates is not log det(I + J): the estimator is biased")
    # the same draws through the reference, one at a time
    expect_close(got[:100], _roulette_ref(J, eps[:100], N[:100], 0.3), "the estimates for given probes and N are wrong")


# ---------------------------------------------------------------- Q5 linear CNF
@checks.cell("q5_test")
def q5_linear(student):
    """log-density of the flow dz/dt = A z for a random non-symmetric 3x3 A"""
    g = torch.Generator().manual_seed(501)
    A = 0.7 * torch.randn(3, 3, generator=g, dtype=F64)
    x = torch.randn(8, 3, generator=g, dtype=F64)
    got = expect_tensor(student.linear_cnf_log_prob(x, A, 1.5), "linear_cnf_log_prob", shape=(8,), dtype=F64)
    M = torch.linalg.matrix_exp(1.5 * A)
    ref = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)).log_prob(x @ M.T)
    ref = ref + torch.linalg.slogdet(M).logabsdet            # an independent route: slogdet of expm, not T tr A
    expect_close(got, ref, "the log-density of a linear continuous flow is wrong (z(T) = expm(T A) x)", rtol=1e-8)


# ---------------------------------------------------------------- Q6 fitting a linear CNF
def _data(seed, L):
    L = torch.tensor(L, dtype=F64)
    return torch.randn(300, L.shape[0], generator=torch.Generator().manual_seed(seed), dtype=F64) @ L.T


def _nll(x, A, T):
    """Mean NLL of the linear CNF with this A, by torch.distributions and slogdet of expm (not T tr A)."""
    M = torch.linalg.matrix_exp(T * A)
    d = x.shape[1]
    base = torch.distributions.MultivariateNormal(torch.zeros(d, dtype=F64), torch.eye(d, dtype=F64))
    return -(base.log_prob(x @ M.T) + torch.linalg.slogdet(M).logabsdet).mean()


def _best_nll(x):
    """The smallest mean NLL of any zero-mean Gaussian, which every linear CNF is and which one reaches."""
    S = x.T @ x / x.shape[0]
    return 0.5 * torch.linalg.slogdet(2 * math.pi * math.e * S).logabsdet


def _fit_check(student, x, T, what):
    A = expect_tensor(student.fit_linear_cnf(x, T), "fit_linear_cnf(x, T)", shape=(x.shape[1],) * 2, dtype=F64)
    expect(bool(torch.isfinite(A).all()), "the fitted A should be finite")
    gap = float(_nll(x, A, T) - _best_nll(x))
    expect(gap < 0.01, f"on {what} the mean NLL of your A is not within 0.01 nats of the best linear flow")


@checks.cell("q6_2d_test")
def q6_2d(student):
    """a fit on 300 correlated 2-d points with T = 1: mean NLL within 0.01 nats of the optimum"""
    _fit_check(student, _data(611, [[1.2, 0.0], [-0.8, 0.4]]), 1.0, "300 correlated 2-d points (T = 1)")


@checks.cell("q6_3d_test")
def q6_3d(student):
    """a fit on 300 correlated 3-d points with T = 0.5: mean NLL within 0.01 nats of the optimum"""
    _fit_check(student, _data(621, [[0.7, 0.0, 0.0], [0.4, 1.5, 0.0], [-0.3, 0.5, 0.4]]), 0.5,
               "300 correlated 3-d points (T = 0.5)")


# ---------------------------------------------------------------- Q8 reverse KL for an elementwise affine flow
def _spd(seed, d, jitter):
    B = _randn(d, d, seed=seed)
    return B @ B.T / d + jitter * torch.eye(d, dtype=F64)


def _gauss_kl(m, var, mu, P):
    """KL(N(m, diag var) || N(mu, P^-1)) in closed form, through torch.distributions (covariance P^-1)."""
    q = torch.distributions.MultivariateNormal(m, torch.diag(var))
    p = torch.distributions.MultivariateNormal(mu, precision_matrix=P)
    return torch.distributions.kl_divergence(q, p)


@checks.cell("q8_estimate_test")
def q8_estimate(student):
    """reverse_kl_estimate: a banana-shaped target on fresh draws, and the average over many draws for a Gaussian"""
    eps = _randn(50, 2, seed=801)
    m, log_s = _randn(2, seed=802, scale=0.5), _randn(2, seed=803, scale=0.3)
    banana = "lambda x: -0.5 * x[:, 0] ** 2 - 2.0 * (x[:, 1] - 0.5 * x[:, 0] ** 2) ** 2 + 1.3"
    eps_many = _randn(2000, 3, seed=804)
    P, mu = _spd(805, 3, 0.4), _randn(3, seed=806)
    m3, log_s3 = _randn(3, seed=807, scale=0.4), _randn(3, seed=808, scale=0.3) - 0.5
    gauss = ("(lambda P, mu: lambda x: -0.5 * (((x - mu) @ P) * (x - mu)).sum(1) + 2.0)("
             f"torch.tensor({P.tolist()}, dtype=torch.float64), torch.tensor({mu.tolist()}, dtype=torch.float64))")
    got = student.reverse_kl_estimate(eps, m, log_s, Source(banana))
    got3 = student.reverse_kl_estimate(eps_many, m3, log_s3, Source(gauss))
    got = expect_tensor(got, "reverse_kl_estimate(eps, m, log_s, log_target)", shape=(), dtype=F64)
    got3 = expect_tensor(got3, "reverse_kl_estimate(eps, m, log_s, log_target)", shape=(), dtype=F64)
    # the reference: x through the flow, log q(x) by torch.distributions.Normal in x-space
    x = m + torch.exp(log_s) * eps
    log_q = torch.distributions.Normal(m, torch.exp(log_s)).log_prob(x).sum(1)
    expect_close(got, (log_q - Source(banana).build()(x)).mean(),
                 "the estimate for given draws is wrong (log q(x) = log N(eps) minus the flow's log-det)")
    x3 = m3 + torch.exp(log_s3) * eps_many
    terms = torch.distributions.Normal(m3, torch.exp(log_s3)).log_prob(x3).sum(1) - Source(gauss).build()(x3)
    log_Z = 2.0 + 1.5 * math.log(2 * math.pi) - 0.5 * torch.linalg.slogdet(P).logabsdet
    exact = _gauss_kl(m3, torch.exp(2 * log_s3), mu, P) - log_Z
    se = terms.std() / math.sqrt(terms.numel())
    # 5 standard errors of the mean of the 2000 terms: a correct estimator fails with probability below 1e-6
    expect(abs(float(got3 - exact)) < 5 * float(se),
           "averaged over 2000 draws, the estimate is not KL(q || p) - log Z for a Gaussian target")
    expect_close(got3, terms.mean(), "the estimate for given draws is wrong for a Gaussian target")


@checks.cell("q8_optimum_test")
def q8_optimum(student):
    """reverse_kl_optimum: the closed-form minimiser for a correlated Gaussian target, and no better neighbour"""
    P, mu = _spd(811, 4, 0.3), _randn(4, seed=812)
    out = _pair(student.reverse_kl_optimum(P, mu), "reverse_kl_optimum(P, mu)")
    m = expect_tensor(out[0], "m", shape=(4,), dtype=F64)
    log_s = expect_tensor(out[1], "log_s", shape=(4,), dtype=F64)
    # the reference by another route: minimise the closed-form KL numerically (Newton in log s, m = mu)
    ref_m, ref_l = mu.clone(), torch.zeros(4, dtype=F64)
    for _ in range(30):
        ref_l = ref_l.detach().requires_grad_(True)
        # KL(q || p) up to terms free of log s: (tr(P S) - log det S) / 2 with S = diag(s^2)
        kl = 0.5 * (torch.trace(P @ torch.diag(torch.exp(2 * ref_l))) - 2 * ref_l.sum())
        (grad,) = torch.autograd.grad(kl, ref_l, create_graph=True)
        hess = torch.stack([torch.autograd.grad(grad[i], ref_l, retain_graph=True)[0] for i in range(4)])
        ref_l = ref_l - torch.linalg.solve(hess, grad)
    ref_l = ref_l.detach()
    best = _gauss_kl(m, torch.exp(2 * log_s), mu, P)
    g = torch.Generator().manual_seed(813)
    nearby = [(m + 1e-3 * torch.randn(4, generator=g, dtype=F64), log_s + 1e-3 * torch.randn(4, generator=g, dtype=F64))
              for _ in range(20)]
    worse = all(float(_gauss_kl(m1, torch.exp(2 * l1), mu, P)) > float(best) for m1, l1 in nearby)
    expect_close(m, ref_m, "the optimal m is wrong", rtol=1e-8, atol=1e-8)
    expect_close(log_s, ref_l, "the optimal log_s is wrong (is it the forward-KL answer, the marginal variances?)",
                 rtol=1e-8, atol=1e-8)
    expect(worse, "a nearby (m, log_s) has a smaller KL(q || p): your answer is not the minimiser")


# ---------------------------------------------------------------- Q9 the exact NPE optimum
def _simulator(seed, k, p):
    A = _randn(p, k, seed=seed)
    return A, _randn(k, seed=seed + 1), _spd(seed + 2, k, 0.5), 0.3 * _spd(seed + 3, p, 0.2)


def _posterior(A, mu0, S0, Sn, x):
    """Posterior mean (one row per x) and covariance, in the precision form (not the gain form)."""
    Pn = torch.linalg.inv(Sn)
    C = torch.linalg.inv(torch.linalg.inv(S0) + A.T @ Pn @ A)
    mean = (C @ (A.T @ Pn @ x.T + torch.linalg.solve(S0, mu0)[:, None])).T
    return mean, C


def _triple(out):
    expect(isinstance(out, (tuple, list)) and len(out) == 3, "npe_optimum should return a tuple (W, c, C)")
    return out


@checks.cell("q9_mean_test")
def q9_mean(student):
    """npe_optimum: the posterior mean W x + c for a 3-parameter, 5-observation simulator, at fresh x"""
    A, mu0, S0, Sn = _simulator(901, 3, 5)
    W, c, _ = _triple(student.npe_optimum(A, mu0, S0, Sn))
    W = expect_tensor(W, "W", shape=(3, 5), dtype=F64)
    c = expect_tensor(c, "c", shape=(3,), dtype=F64)
    x = _randn(8, 5, seed=905, scale=2.0)
    mean, _ = _posterior(A, mu0, S0, Sn, x)
    expect_close(x @ W.T + c, mean, "W x + c is not the posterior mean E[theta | x]", rtol=1e-8, atol=1e-9)


@checks.cell("q9_cov_test")
def q9_cov(student):
    """npe_optimum: the covariance C, and the exact NPE loss at your answer equals its minimum"""
    A, mu0, S0, Sn = _simulator(911, 2, 4)
    W, c, C = _triple(student.npe_optimum(A, mu0, S0, Sn))
    W = expect_tensor(W, "W", shape=(2, 4), dtype=F64)
    c = expect_tensor(c, "c", shape=(2,), dtype=F64)
    C = expect_tensor(C, "C", shape=(2, 2), dtype=F64)
    _, C_post = _posterior(A, mu0, S0, Sn, _randn(1, 4, seed=915))
    expect_close(C, C_post, "C is not the posterior covariance", rtol=1e-8, atol=1e-9)
    # exact loss E[-log N(theta; W x + c, C)] from the joint moments of r = theta - W x - c
    M = torch.eye(2, dtype=F64) - W @ A                    # r = M theta - W eta - c
    r_mean = M @ mu0 - c
    r_cov = M @ S0 @ M.T + W @ Sn @ W.T
    loss = 0.5 * (torch.linalg.slogdet(2 * math.pi * C).logabsdet
                  + torch.trace(torch.linalg.solve(C, r_cov + torch.outer(r_mean, r_mean))))
    best = 0.5 * torch.linalg.slogdet(2 * math.pi * math.e * C_post).logabsdet   # the posterior's entropy
    expect_close(loss, best, "the exact NPE loss at your (W, c, C) is above its minimum", rtol=1e-8, atol=1e-9)
