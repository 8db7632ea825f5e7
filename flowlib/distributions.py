"""Probability distributions used as flow bases, as baselines and in the probability chapters.

Every distribution is an ``nn.Module``. By default it is a fixed object: its numbers are buffers, so what
it returns requires grad only if its input does (results can be plotted directly). With ``trainable=True``
they are parameters, to be fitted by gradient descent (e.g. with ``flowlib.train.fit``). Either way
``.to(device)`` and ``.double()`` move it like any model. Closed-form fits (``fit_mle``, ``fit_em``) also
return fixed distributions unless given ``trainable=True`` (e.g. to start gradient descent from them).
All of them have

* ``log_prob(x)``: one log-density (or log-mass) per sample, shape ``(batch,)``, in nats, summed over the
  event dimensions;
* ``sample(n, generator=None)``: ``n`` samples, shape ``(n, *event_shape)``; pass a ``torch.Generator``
  for reproducible draws (the library never seeds the global generator).

The module-level functions ``entropy``, ``cross_entropy`` and ``kl_divergence`` use closed forms where
they exist and a Monte Carlo estimate when asked for one (``n_samples=...``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flowlib._validate import check_int, check_positive, check_tensor
from flowlib._workspace import row_sum

__all__ = [
    "Distribution",
    "StandardNormal",
    "DiagGaussian",
    "FullGaussian",
    "GaussianMixture",
    "Bernoulli",
    "Categorical",
    "entropy",
    "cross_entropy",
    "kl_divergence",
]

LOG_2PI = math.log(2 * math.pi)


def _store(module: nn.Module, name: str, value: torch.Tensor, trainable: bool) -> None:
    """Register ``value`` as a parameter (trainable) or a buffer (fixed)."""
    value = value.detach().clone()
    if trainable:
        setattr(module, name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)


def _as_float_tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value, dtype=torch.get_default_dtype())
    check_tensor(value, name=name, ndim=value.dim(), allow_empty=True)
    return value


def _make_generator(seed, device) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def _check_lower_cholesky(L: torch.Tensor, name: str) -> None:
    diag = torch.diagonal(L, dim1=-2, dim2=-1)
    if not (diag > 0).all():
        raise ValueError(f"{name} must be lower triangular with a positive diagonal (a Cholesky factor)")
    if not torch.equal(L, torch.tril(L)):
        raise ValueError(f"{name} must be lower triangular (entries above the diagonal are not zero)")


def _cholesky_of_cov(cov: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.allclose(cov, cov.transpose(-1, -2), atol=1e-6, rtol=1e-5):
        raise ValueError(f"{name} must be symmetric")
    L, info = torch.linalg.cholesky_ex(cov)
    if (info != 0).any():
        raise ValueError(f"{name} must be positive definite (its Cholesky factorisation failed)")
    return L


class Distribution(nn.Module):
    """Base class: ``log_prob(x) -> (batch,)``, ``sample(n, generator=None)``, ``event_shape``.

    ``forward(x)`` is ``log_prob(x)``. ``entropy()`` returns the closed-form entropy where it exists.
    """

    event_shape: tuple[int, ...] = ()

    def forward(self, x):
        return self.log_prob(x)

    def log_prob(self, x):  # pragma: no cover - interface
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None):  # pragma: no cover - interface
        raise NotImplementedError

    def entropy(self) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form entropy; "
            "use flowlib.distributions.entropy(p, n_samples=...)"
        )

    def _ref(self) -> torch.Tensor:
        """A tensor of this distribution's dtype and device."""
        for t in self.parameters():
            return t
        for t in self.buffers():
            return t
        return torch.zeros(())


# --------------------------------------------------------------------------------------------------
# Gaussians
# --------------------------------------------------------------------------------------------------


class StandardNormal(Distribution):
    """The standard normal ``N(0, I)`` on ``event_shape``; the usual flow base.

    log N(z; 0, I) = -1/2 sum_i (z_i^2 + log 2 pi)      (sum over all D event entries)

    Sampling: ``z = eps``, ``eps ~ N(0, I)``. Entropy: ``D/2 (1 + log 2 pi)``.
    It has no parameters; a zero buffer carries its dtype and device. ``log_prob`` checks the shape of
    ``z`` but not its finiteness (it runs in every training step).
    """

    def __init__(self, event_shape):
        super().__init__()
        if isinstance(event_shape, int):
            event_shape = (event_shape,)
        self.event_shape = tuple(check_int(int(s), "event_shape entries") for s in event_shape)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    @property
    def num_dims(self) -> int:
        return math.prod(self.event_shape)

    def log_prob(self, z):
        # Shape check only: this runs in every training step, and scanning for NaN would force a host
        # sync; a NaN in z gives a NaN log-density, which flowlib.train.fit reports with its step.
        check_tensor(z, name="z", event_shape=self.event_shape, finite=False)
        return -0.5 * (row_sum(z.pow(2).reshape(z.shape[0], -1)) + self.num_dims * LOG_2PI)

    def sample(self, n, generator=None):
        check_int(n, "n")
        z = self._zero
        return torch.randn((n, *self.event_shape), generator=generator, dtype=z.dtype, device=z.device)

    def entropy(self):
        return self._zero.new_tensor(0.5 * self.num_dims * (1 + LOG_2PI))

    def extra_repr(self):
        return f"event_shape={self.event_shape}"


class DiagGaussian(Distribution):
    """Gaussian with diagonal covariance ``N(mu, diag(sigma^2))``.

    log p(x) = -1/2 sum_i [log 2 pi + 2 log sigma_i + ((x_i - mu_i) / sigma_i)^2]

    Sampling: ``x = mu + sigma * eps``. Entropy: ``sum_i [1/2 (1 + log 2 pi) + log sigma_i]``.
    Give the standard deviations as exactly one of ``log_scale = log sigma`` or ``scale = sigma`` (positive);
    ``log_scale`` is what is stored, and ``.scale`` returns ``sigma = exp(log_scale)``. ``loc`` and the scale
    have the event shape (any shape, e.g. ``(d,)`` or ``(c, h, w)``); with ``trainable=True`` ``loc`` and
    ``log_scale`` are parameters (a learnable flow base).
    """

    def __init__(self, loc, log_scale=None, *, scale=None, trainable: bool = False):
        super().__init__()
        loc = _as_float_tensor(loc, "loc")
        if (log_scale is None) == (scale is None):
            raise ValueError("give exactly one of log_scale or scale")
        name = "log_scale" if scale is None else "scale"
        value = _as_float_tensor(log_scale if scale is None else scale, name)
        if scale is not None and not (value > 0).all():
            raise ValueError("scale must be positive (it is the standard deviation sigma)")
        if loc.dim() == 0 or loc.shape != value.shape:
            raise ValueError(
                f"loc and {name} must have the same non-scalar shape, got {tuple(loc.shape)} "
                f"and {tuple(value.shape)}"
            )
        log_scale = value if scale is None else value.log()
        self.event_shape = tuple(loc.shape)
        _store(self, "loc", loc, trainable)
        _store(self, "log_scale", log_scale.to(loc.dtype), trainable)

    @property
    def scale(self):
        return self.log_scale.exp()

    @classmethod
    def fit_mle(cls, x, trainable: bool = False) -> DiagGaussian:
        """Closed-form maximum likelihood: ``mu = mean(x)``, ``sigma^2 = mean((x - mu)^2)`` (divide by N).

        Returns a fixed distribution; ``trainable=True`` makes its numbers parameters."""
        check_tensor(x, name="x")
        if x.dim() < 2 or x.shape[0] < 2:
            raise ValueError(f"x must have shape (batch >= 2, *event_shape), got {tuple(x.shape)}")
        loc = x.mean(0)
        var = (x - loc).pow(2).mean(0)
        if not (var > 0).all():
            raise ValueError("x has a constant coordinate: the MLE variance is 0")
        return cls(loc, 0.5 * var.log(), trainable=trainable)

    def log_prob(self, x):
        check_tensor(x, name="x", event_shape=self.event_shape)
        u = (x - self.loc) / self.scale
        per_entry = LOG_2PI + 2 * self.log_scale + u.pow(2)
        return -0.5 * per_entry.reshape(x.shape[0], -1).sum(1)

    def sample(self, n, generator=None):
        check_int(n, "n")
        eps = torch.randn(
            (n, *self.event_shape), generator=generator, dtype=self.loc.dtype, device=self.loc.device
        )
        return self.loc + self.scale * eps

    def entropy(self):
        return (0.5 * (1 + LOG_2PI) + self.log_scale).sum()


class FullGaussian(Distribution):
    """Gaussian with full covariance ``N(mu, Sigma)`` on vectors of length ``d``.

    Give either ``cov`` (symmetric positive definite) or ``scale_tril = L`` (lower triangular, positive
    diagonal, ``Sigma = L L^T``). Internally ``L`` is stored as its strictly-lower part plus the log of its
    diagonal, so gradient steps keep ``Sigma`` positive definite.

    log N(x; mu, Sigma) = -1/2 [d log 2 pi + log det Sigma + (x - mu)^T Sigma^{-1} (x - mu)]
    with ``log det Sigma = 2 sum_i log L_ii`` and ``Sigma^{-1}`` applied by a triangular solve (O(d^2)).

    Sampling, two equivalent ways (``method=``):

    * ``'cholesky'``: ``x = mu + L eps``;
    * ``'eigen'``: ``Sigma = Q Lambda Q^T``, ``x = mu + Q Lambda^{1/2} eps``.

    Both give ``Cov[x] = Sigma``; they map the same ``eps`` to different points. With ``trainable=True``
    ``loc`` and the two parts of ``L`` are parameters.
    """

    def __init__(self, loc, cov=None, scale_tril=None, trainable: bool = False):
        super().__init__()
        loc = _as_float_tensor(loc, "loc")
        if loc.dim() != 1:
            raise ValueError(f"loc must have shape (d,), got {tuple(loc.shape)}")
        d = loc.shape[0]
        if (cov is None) == (scale_tril is None):
            raise ValueError("give exactly one of cov or scale_tril")
        if cov is not None:
            cov = _as_float_tensor(cov, "cov").to(loc.dtype)
            if cov.shape != (d, d):
                raise ValueError(f"cov must have shape ({d}, {d}), got {tuple(cov.shape)}")
            L = _cholesky_of_cov(cov, "cov")
        else:
            L = _as_float_tensor(scale_tril, "scale_tril").to(loc.dtype)
            if L.shape != (d, d):
                raise ValueError(f"scale_tril must have shape ({d}, {d}), got {tuple(L.shape)}")
            _check_lower_cholesky(L, "scale_tril")
        self.event_shape = (d,)
        _store(self, "loc", loc, trainable)
        _store(self, "tril_offdiag", torch.tril(L, -1), trainable)
        _store(self, "log_diag", torch.diagonal(L).log(), trainable)

    @property
    def scale_tril(self):
        return torch.tril(self.tril_offdiag, -1) + torch.diag_embed(self.log_diag.exp())

    @property
    def covariance(self):
        L = self.scale_tril
        return L @ L.T

    @classmethod
    def fit_mle(cls, x, trainable: bool = False) -> FullGaussian:
        """Closed-form maximum likelihood:
        ``mu = mean(x)``, ``Sigma = (1/N) sum_n (x_n - mu)(x_n - mu)^T`` (divide by N, not N - 1).

        Returns a fixed distribution; ``trainable=True`` makes its numbers parameters."""
        check_tensor(x, name="x", ndim=2)
        if x.shape[0] <= x.shape[1]:
            raise ValueError(f"need more samples than dimensions for a full covariance, got {tuple(x.shape)}")
        loc = x.mean(0)
        xc = x - loc
        return cls(loc, cov=xc.T @ xc / x.shape[0], trainable=trainable)

    def log_prob(self, x):
        check_tensor(x, name="x", event_shape=self.event_shape)
        L = self.scale_tril
        v = torch.linalg.solve_triangular(L, (x - self.loc).T, upper=False)  # L^{-1}(x - mu), shape (d, B)
        d = self.event_shape[0]
        return -0.5 * (d * LOG_2PI + 2 * self.log_diag.sum() + v.pow(2).sum(0))

    def sample(self, n, generator=None, method: str = "cholesky"):
        check_int(n, "n")
        eps = torch.randn(
            (n, *self.event_shape), generator=generator, dtype=self.loc.dtype, device=self.loc.device
        )
        if method == "cholesky":
            A = self.scale_tril
        elif method == "eigen":
            evals, Q = torch.linalg.eigh(self.covariance)
            A = Q * evals.clamp_min(0).sqrt()  # Q Lambda^{1/2}
        else:
            raise ValueError(f"method must be 'cholesky' or 'eigen', got {method!r}")
        return self.loc + eps @ A.T

    def entropy(self):
        d = self.event_shape[0]
        return 0.5 * d * (1 + LOG_2PI) + self.log_diag.sum()


# --------------------------------------------------------------------------------------------------
# Gaussian mixture
# --------------------------------------------------------------------------------------------------


class GaussianMixture(Distribution):
    """Mixture of ``K`` Gaussians on ``R^d``: ``p(x) = sum_k pi_k N(x; mu_k, Sigma_k)``,
    ``pi = softmax(weights_logits)``.

    Covariances are full (``scale_trils``, shape ``(K, d, d)``, ``Sigma_k = L_k L_k^T``) or diagonal
    (``scales``, shape ``(K, d)``, standard deviations). Whichever was given, ``.scale_trils``,
    ``.covariances`` (``(K, d, d)``) and ``.scales`` (``(K, d)``, ``sqrt(diag Sigma_k)``) return them.
    The log-density is computed stably:

        log p(x) = logsumexp_k [log pi_k + log N(x; mu_k, Sigma_k)]

    Sampling: ``k ~ Categorical(pi)``, then ``x ~ N(mu_k, Sigma_k)``. Fit with EM (``fit_em``) or by
    gradient descent on the negative log-likelihood (``trainable=True`` makes the weight logits, means and
    scales parameters; it is an ``nn.Module``: ``flowlib.train.fit``).
    """

    def __init__(self, weights_logits, locs, scale_trils=None, scales=None, trainable: bool = False):
        super().__init__()
        logits = _as_float_tensor(weights_logits, "weights_logits")
        locs = _as_float_tensor(locs, "locs").to(logits.dtype)
        if logits.dim() != 1 or locs.dim() != 2 or locs.shape[0] != logits.shape[0]:
            raise ValueError(
                f"weights_logits must have shape (K,) and locs (K, d), got {tuple(logits.shape)} "
                f"and {tuple(locs.shape)}"
            )
        K, d = locs.shape
        if (scale_trils is None) == (scales is None):
            raise ValueError("give exactly one of scale_trils (full covariances) or scales (diagonal)")
        self.event_shape = (d,)
        self.num_components = K
        _store(self, "logits", logits, trainable)
        _store(self, "locs", locs, trainable)
        if scale_trils is not None:
            L = _as_float_tensor(scale_trils, "scale_trils").to(logits.dtype)
            if L.shape != (K, d, d):
                raise ValueError(f"scale_trils must have shape ({K}, {d}, {d}), got {tuple(L.shape)}")
            _check_lower_cholesky(L, "scale_trils")
            self.covariance_type = "full"
            _store(self, "tril_offdiag", torch.tril(L, -1), trainable)
            _store(self, "log_diag", torch.diagonal(L, dim1=-2, dim2=-1).log(), trainable)
        else:
            s = _as_float_tensor(scales, "scales").to(logits.dtype)
            if s.shape != (K, d):
                raise ValueError(f"scales must have shape ({K}, {d}), got {tuple(s.shape)}")
            if not (s > 0).all():
                raise ValueError("scales must be positive (they are standard deviations)")
            self.covariance_type = "diag"
            _store(self, "log_scales", s.log(), trainable)

    @property
    def weights(self):
        return self.logits.softmax(0)

    @property
    def scale_trils(self):
        if self.covariance_type == "diag":
            return torch.diag_embed(self.scales)
        return torch.tril(self.tril_offdiag, -1) + torch.diag_embed(self.log_diag.exp())

    @property
    def covariances(self):
        """``Sigma_k = L_k L_k^T``, shape ``(K, d, d)``."""
        L = self.scale_trils
        return L @ L.mT

    @property
    def scales(self):
        """Per-coordinate standard deviations ``sqrt(diag Sigma_k)``, shape ``(K, d)``, like
        ``DiagGaussian.scale`` (for a diagonal mixture: the ``scales`` it was built with)."""
        if self.covariance_type == "diag":
            return self.log_scales.exp()
        return self.scale_trils.pow(2).sum(-1).sqrt()

    def component_log_prob(self, x):
        """``log N(x_n; mu_k, Sigma_k)`` for every sample and component, shape ``(batch, K)``."""
        check_tensor(x, name="x", event_shape=self.event_shape)
        diff = x[:, None, :] - self.locs  # (B, K, d)
        d = self.event_shape[0]
        if self.covariance_type == "diag":
            maha = (diff / self.scales).pow(2).sum(-1)
            logdet = 2 * self.log_scales.sum(-1)
        else:
            # one solve per component with the batch as right-hand sides, (K, d, d) \ (K, d, B): broadcasting
            # diff as (B, K, d, 1) would copy every Cholesky factor B times (26x slower for B = 1258, K = 12)
            v = torch.linalg.solve_triangular(self.scale_trils, diff.permute(1, 2, 0), upper=False)
            maha = v.pow(2).sum(1).T
            logdet = 2 * self.log_diag.sum(-1)
        return -0.5 * (d * LOG_2PI + logdet + maha)

    def log_prob(self, x):
        return torch.logsumexp(self.logits.log_softmax(0) + self.component_log_prob(x), dim=1)

    def responsibilities(self, x):
        """Posterior ``p(k | x_n) = pi_k N(x_n; mu_k, Sigma_k) / p(x_n)``, shape ``(batch, K)``."""
        return (self.logits.log_softmax(0) + self.component_log_prob(x)).softmax(1)

    def sample(self, n, generator=None):
        check_int(n, "n")
        k = torch.multinomial(self.weights.detach(), n, replacement=True, generator=generator)
        eps = torch.randn(
            (n, *self.event_shape), generator=generator, dtype=self.locs.dtype, device=self.locs.device
        )
        if self.covariance_type == "diag":
            return self.locs[k] + self.scales[k] * eps
        return self.locs[k] + (self.scale_trils[k] @ eps.unsqueeze(-1)).squeeze(-1)

    @classmethod
    @torch.no_grad()
    def fit_em(
        cls,
        x,
        k: int,
        *,
        n_iter: int = 100,
        tol: float = 1e-6,
        rtol: float = 0.0,
        seed: int = 0,
        covariance_type: str = "full",
        reg: float = 1e-6,
        trainable: bool = False,
    ) -> tuple[GaussianMixture, list[float]]:
        """Fit by expectation-maximisation; returns ``(model, history)``.

        Initialisation: ``k`` data points chosen by k-means++ seeding (with ``seed``) as means, the data
        covariance for every component, equal weights. Each iteration:

        * E step: responsibilities ``r_nk = p(k | x_n)`` under the current parameters;
        * M step: ``N_k = sum_n r_nk``, ``pi_k = N_k / N``, ``mu_k = sum_n r_nk x_n / N_k``,
          ``Sigma_k = sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / N_k + reg I``.

        ``history[i]`` is the mean log-likelihood ``(1/N) sum_n log p(x_n)`` after ``i`` M steps; EM never
        decreases it (up to the tiny ``reg`` that keeps covariances invertible). Stops when an iteration
        improves it by less than ``tol + rtol * |history[-2]|`` (``rtol`` a relative tolerance), or after
        ``n_iter`` iterations: ``len(history) == n_iter + 1`` means the cap, not the tolerance, stopped it.
        The model is fixed unless ``trainable=True`` (e.g. to continue
        by gradient descent).
        """
        check_tensor(x, name="x", ndim=2)
        k = check_int(k, "k")
        n_iter = check_int(n_iter, "n_iter")
        check_positive(tol, "tol", strict=False)
        check_positive(rtol, "rtol", strict=False)
        check_positive(reg, "reg", strict=False)
        if covariance_type not in ("full", "diag"):
            raise ValueError(f"covariance_type must be 'full' or 'diag', got {covariance_type!r}")
        N, d = x.shape
        if N < k:
            raise ValueError(f"need at least k={k} samples, got {N}")
        x = x.detach()
        means = _kmeans_pp_init(x, k, seed)
        xc = x - x.mean(0)
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        cov = xc.T @ xc / N
        if covariance_type == "diag":
            cov = torch.diag_embed(torch.diagonal(cov))
        cov = (cov + reg * eye).expand(k, d, d).clone()
        log_w = x.new_full((k,), -math.log(k))

        def e_step():
            L = torch.linalg.cholesky(cov)
            model = cls(log_w, means, scale_trils=L, trainable=False)
            joint = log_w + model.component_log_prob(x)  # (N, K)
            return torch.logsumexp(joint, 1), joint

        history = []
        for _ in range(n_iter):  # runs under no_grad (decorator)
            ll, joint = e_step()
            history.append(float(ll.mean()))
            if len(history) > 1 and history[-1] - history[-2] < tol + rtol * abs(history[-2]):
                break
            r = (joint - ll[:, None]).exp()
            Nk = r.sum(0) + 10 * torch.finfo(x.dtype).eps
            log_w = (Nk / N).log()
            means = (r.T @ x) / Nk[:, None]
            diff = x[:, None, :] - means  # (N, K, d)
            cov = torch.einsum("nk,nki,nkj->kij", r, diff, diff) / Nk[:, None, None] + reg * eye
            if covariance_type == "diag":
                cov = torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
        else:
            history.append(float(e_step()[0].mean()))
        L = torch.linalg.cholesky(cov)
        if covariance_type == "diag":
            return cls(log_w, means, scales=torch.diagonal(L, dim1=-2, dim2=-1), trainable=trainable), history
        return cls(log_w, means, scale_trils=L, trainable=trainable), history


def _kmeans_pp_init(x, k, seed):
    """k-means++ seeding: the first mean is a random point, each next one a point drawn with probability
    proportional to its squared distance to the nearest mean chosen so far (spreads the means out)."""
    g = torch.Generator().manual_seed(int(seed))
    xc = x.cpu()
    idx = [int(torch.randint(x.shape[0], (1,), generator=g))]
    for _ in range(k - 1):
        d2 = torch.cdist(xc, xc[idx]).pow(2).min(1).values + 1e-12
        idx.append(int(torch.multinomial(d2 / d2.sum(), 1, generator=g)))
    return x[idx].clone()


# --------------------------------------------------------------------------------------------------
# Discrete
# --------------------------------------------------------------------------------------------------


def _logits_or_probs(logits, probs):
    """The one given of ``logits`` (finite) and ``probs`` (in [0, 1]) as a float tensor, and its name."""
    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits or probs")
    if probs is None:
        return _as_float_tensor(logits, "logits"), "logits"
    probs = _as_float_tensor(probs, "probs")
    if not ((probs >= 0) & (probs <= 1)).all():
        raise ValueError(f"probs must lie in [0, 1], got values from {float(probs.min()):g} to {float(probs.max()):g}")
    return probs, "probs"


def _expect(logp, t):
    """``sum_k p_k t_k`` over the last axis, ``p = exp(logp)``, where a term with ``p_k = 0`` is 0 whatever
    ``t_k`` is (``0 log 0 = 0``), and adds no NaN to the gradient either."""
    return (logp.exp() * t.masked_fill(logp == -math.inf, 0)).sum(-1)


class Bernoulli(Distribution):
    """Independent Bernoulli variables, ``P(x_i = 1) = p_i = sigmoid(a_i)``; event shape ``a.shape``.

    Give exactly one of ``logits = a`` (finite) or ``probs = p`` (in [0, 1]). Only ``logits`` is stored,
    ``a = log p - log(1 - p)``, so ``p = 0`` and ``p = 1`` stay exact (``a = -inf`` and ``+inf``).
    All axes are event axes (independent variables): ``log_prob``, ``entropy`` and KL sum over them.

    log P(x) = sum_i [log sigmoid(a_i) if x_i = 1 else log sigmoid(-a_i)]   (``-inf`` for an impossible x)

    Entropy: ``-sum_i [p_i log p_i + (1 - p_i) log(1 - p_i)]``, with ``0 log 0 = 0``.
    """

    def __init__(self, logits=None, *, probs=None, trainable: bool = False):
        super().__init__()
        value, name = _logits_or_probs(logits, probs)
        logits = value if name == "logits" else torch.logit(value)
        if logits.dim() == 0:
            logits = logits.reshape(1)
        self.event_shape = tuple(logits.shape)
        _store(self, "logits", logits, trainable)

    @property
    def probs(self):
        return self.logits.sigmoid()

    def log_prob(self, x):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        x = x.to(self.logits.dtype)
        check_tensor(x, name="x", event_shape=self.event_shape)
        if not ((x == 0) | (x == 1)).all():
            raise ValueError("x must contain only 0s and 1s")
        lp = torch.where(x == 1, F.logsigmoid(self.logits), F.logsigmoid(-self.logits))
        return lp.reshape(x.shape[0], -1).sum(1)

    def sample(self, n, generator=None):
        check_int(n, "n")
        return torch.bernoulli(self.probs.detach().expand(n, *self.event_shape), generator=generator)

    def _log_masses(self):
        """``[log P(x_i = 0), log P(x_i = 1)]`` per variable, shape ``(*event_shape, 2)``."""
        return torch.stack([F.logsigmoid(-self.logits), F.logsigmoid(self.logits)], -1)

    def entropy(self):
        logp = self._log_masses()
        return -_expect(logp, logp).sum()


class Categorical(Distribution):
    """Categorical variables over ``K`` classes, ``P(x = k) = p_k = softmax(logits)_k``.

    Give exactly one of ``logits`` (finite) or ``probs = p`` (in [0, 1], summing to 1 over the last axis
    within 1e-5), of shape ``(*event_shape, K)`` (``(K,)`` for one variable). Only ``logits`` is stored,
    ``logits = log p``, so ``p_k = 0`` stays exact (``-inf``). Samples are integer class indices of shape
    ``(n, *event_shape)``. log P(x) = sum over variables of ``log_softmax(logits)[x]`` (``-inf`` for an
    impossible x); entropy ``-sum_k p_k log p_k``, with ``0 log 0 = 0`` (summed over variables).
    """

    def __init__(self, logits=None, *, probs=None, trainable: bool = False):
        super().__init__()
        logits, name = _logits_or_probs(logits, probs)
        if logits.dim() == 0 or logits.shape[-1] < 1:
            raise ValueError(f"{name} must have shape (*event_shape, K), got {tuple(logits.shape)}")
        if name == "probs":
            err = float((logits.sum(-1) - 1).abs().max())
            if err > 1e-5:
                raise ValueError(f"probs must sum to 1 over the last axis (within 1e-5), off by {err:.3g}")
            logits = logits.log()
        self.event_shape = tuple(logits.shape[:-1])
        self.num_classes = logits.shape[-1]
        _store(self, "logits", logits, trainable)

    @property
    def probs(self):
        return self.logits.softmax(-1)

    def log_prob(self, x):
        if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex():
            raise ValueError("x must be an integer torch.Tensor of class indices")
        if x.dim() != len(self.event_shape) + 1 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}"
            )
        if ((x < 0) | (x >= self.num_classes)).any():
            raise ValueError(f"x must hold class indices in 0..{self.num_classes - 1}")
        logp = self._log_masses().expand(*x.shape, self.num_classes)
        lp = torch.gather(logp, -1, x.long().unsqueeze(-1)).squeeze(-1)
        return lp.reshape(x.shape[0], -1).sum(1)

    def sample(self, n, generator=None):
        check_int(n, "n")
        p = self.probs.detach().reshape(-1, self.num_classes)
        idx = torch.multinomial(p, n, replacement=True, generator=generator)  # (variables, n)
        return idx.T.reshape(n, *self.event_shape)

    def _log_masses(self):
        """``log p_k`` per variable, shape ``(*event_shape, K)``."""
        return self.logits.log_softmax(-1)

    def entropy(self):
        logp = self._log_masses()
        return -_expect(logp, logp).sum()


# --------------------------------------------------------------------------------------------------
# Information quantities
# --------------------------------------------------------------------------------------------------


def _gaussian_params(p):
    """``(loc, scale, is_diag)``: ``scale`` is the std vector if diagonal, else the Cholesky factor."""
    if isinstance(p, StandardNormal):
        z = p._zero
        return z.new_zeros(p.event_shape), z.new_ones(p.event_shape), True
    if isinstance(p, DiagGaussian):
        return p.loc, p.scale, True
    if isinstance(p, FullGaussian):
        return p.loc, p.scale_tril, False
    return None


def _kl_gaussians(gp, gq):
    (m0, s0, diag0), (m1, s1, diag1) = gp, gq
    if m0.shape != m1.shape:
        raise ValueError(f"KL between Gaussians of different shapes {tuple(m0.shape)} and {tuple(m1.shape)}")
    if diag0 and diag1:
        # 1/2 sum_i [(s0/s1)^2 + ((m1 - m0)/s1)^2 - 1 + 2 log s1 - 2 log s0]
        r = s0 / s1
        return 0.5 * (r.pow(2) + ((m1 - m0) / s1).pow(2) - 1 - 2 * r.log()).sum()
    if m0.dim() != 1:
        raise ValueError("full-covariance KL needs vector (d,) Gaussians")
    L0 = torch.diag_embed(s0) if diag0 else s0
    L1 = torch.diag_embed(s1) if diag1 else s1
    d = m0.shape[0]
    # 1/2 [tr(S1^-1 S0) + (m1-m0)^T S1^-1 (m1-m0) - d + log det S1 - log det S0]
    M = torch.linalg.solve_triangular(L1, L0, upper=False)
    v = torch.linalg.solve_triangular(L1, (m1 - m0).unsqueeze(-1), upper=False)
    logdet1 = 2 * torch.diagonal(L1).log().sum()
    logdet0 = 2 * torch.diagonal(L0).log().sum()
    return 0.5 * (M.pow(2).sum() + v.pow(2).sum() - d + logdet1 - logdet0)


def _closed_form_kl(p, q):
    gp, gq = _gaussian_params(p), _gaussian_params(q)
    if gp is not None and gq is not None:
        return _kl_gaussians(gp, gq)
    if any(isinstance(p, c) and isinstance(q, c) for c in (Bernoulli, Categorical)):
        _check_same_shape(p, q)
        lp, lq = p._log_masses(), q._log_masses()
        if lp.shape != lq.shape:
            raise ValueError(f"Categoricals with {p.num_classes} and {q.num_classes} classes")
        # sum_k p_k (log p_k - log q_k): +inf if some q_k = 0 < p_k; terms with p_k = 0 are 0
        return _expect(lp, lp - lq).sum()
    return None


def _check_same_shape(p, q):
    if p.event_shape != q.event_shape:
        raise ValueError(f"distributions have different event shapes {p.event_shape} and {q.event_shape}")


def _mc(fn, p, n_samples, seed, return_stderr):
    """Monte Carlo average of ``fn(x)`` over ``x ~ p``: unbiased, standard error ``std / sqrt(n)``."""
    n_samples = check_int(n_samples, "n_samples", minimum=2)
    ref = p._ref()
    x = p.sample(n_samples, generator=_make_generator(seed, ref.device))
    vals = fn(x)
    est = vals.mean()
    return (est, vals.std() / math.sqrt(n_samples)) if return_stderr else est


def kl_divergence(p, q, n_samples: int | None = None, seed: int | None = None, return_stderr: bool = False):
    """``KL(p || q) = E_p[log p(x) - log q(x)] >= 0``, zero only when ``p = q``.

    With ``n_samples=None``: the closed form for Gaussian/Gaussian (``StandardNormal``, ``DiagGaussian``,
    ``FullGaussian`` in any combination), Bernoulli/Bernoulli and Categorical/Categorical; other pairs raise
    ``ValueError``. A discrete KL is ``+inf`` when ``p`` puts mass on an outcome to which ``q`` gives
    probability 0, and terms with ``p_k = 0`` contribute 0. With ``n_samples=n``: the Monte Carlo estimate
    ``(1/n) sum_i [log p(x_i) - log q(x_i)]``, ``x_i ~ p`` drawn with ``seed``, which is *unbiased* (its mean
    over seeds is the exact KL) but, unlike the exact value, can come out negative; ``return_stderr=True``
    also returns its standard error. Works for any pair with ``log_prob`` and ``sample`` (e.g. mixtures, flows).
    """
    if n_samples is not None:
        return _mc(lambda x: p.log_prob(x) - q.log_prob(x), p, n_samples, seed, return_stderr)
    kl = _closed_form_kl(p, q)
    if kl is None:
        raise ValueError(
            f"no closed-form KL for {type(p).__name__} || {type(q).__name__}; "
            "pass n_samples=... for a Monte Carlo estimate"
        )
    return kl


def entropy(p, n_samples: int | None = None, seed: int | None = None, return_stderr: bool = False):
    """``H(p) = -E_p[log p(x)]``: closed form (``p.entropy()``), or the unbiased Monte Carlo estimate
    ``-(1/n) sum_i log p(x_i)``, ``x_i ~ p``, when ``n_samples`` is given."""
    if n_samples is not None:
        return _mc(lambda x: -p.log_prob(x), p, n_samples, seed, return_stderr)
    try:
        return p.entropy()
    except NotImplementedError:
        raise ValueError(
            f"no closed-form entropy for {type(p).__name__}; pass n_samples=... for a Monte Carlo estimate"
        ) from None


def cross_entropy(p, q, n_samples: int | None = None, seed: int | None = None, return_stderr: bool = False):
    """``H(p, q) = -E_p[log q(x)] = H(p) + KL(p || q)``: closed form where both terms have one, or the
    unbiased Monte Carlo estimate ``-(1/n) sum_i log q(x_i)``, ``x_i ~ p``, when ``n_samples`` is given."""
    if n_samples is not None:
        return _mc(lambda x: -q.log_prob(x), p, n_samples, seed, return_stderr)
    return entropy(p) + kl_divergence(p, q)
