"""Chapter 6: the committed checkpoints reproduce the bits/dim the book states, and the image-flow builders of
``flowlib.image_flows`` are correct flows.

Tolerance: the test bits/dim recomputed from a checkpoint must agree with ``results.json`` and with the checkpoint's
own metadata to within ``TOL = 2e-3`` bits/dim (the figures are stated to 3 decimals; a different CPU or BLAS
changes the float32 sums by far less).
"""

import json
import math
from pathlib import Path

import pytest
import torch

from flowlib.image_flows import (
    DIGITS_MODELS,
    build_digits_model,
    digits_bits_per_dim,
    digits_splits,
    glow_image,
    heldout,
    nice_image,
    realnvp_image,
)
from flowlib.io import load_checkpoint
from flowlib.testing import check_transform, perturb_parameters

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "chapters" / "06_image_flows" / "checkpoints"
TOL = 2e-3


@pytest.fixture(scope="module")
def test_images():
    return digits_splits()[2]


@pytest.fixture(scope="module")
def results():
    return json.loads((CKPT / "results.json").read_text())


@pytest.mark.parametrize("name", list(DIGITS_MODELS))
def test_checkpoint_reproduces_stated_bits_per_dim(name, test_images, results):
    path = CKPT / f"{name.lower()}.pt"
    assert path.stat().st_size < 1_000_000, f"{path.name} should stay under 1 MB"
    model = build_digits_model(name)
    meta = load_checkpoint(model, path)
    bpd = digits_bits_per_dim(model, test_images)
    assert abs(bpd - results[name]["test_bpd"]) < TOL, (name, bpd, results[name]["test_bpd"])
    assert abs(bpd - meta["test_bpd"]) < TOL, (name, bpd, meta["test_bpd"])


def test_best_model_beats_every_peer_in_the_benchmark_report(results):
    peers, in_digits = [], False
    for line in (ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines():
        if line.startswith("## "):
            in_digits = line.startswith("## 8x8 digits")
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if in_digits and len(cells) > 4 and cells[1] not in ("library", "---") and not cells[1].startswith("flowlib"):
            peers.append(float(cells[3].split()[0]))  # the final model's median over seeds
    assert len(peers) >= 4
    assert min(r["test_bpd"] for r in results.values()) < min(peers)


def test_heldout_is_deterministic_and_in_the_unit_cube():
    x = torch.randint(0, 17, (3, 1, 8, 8)).float()
    a, b = heldout(x, draws=2, seed=5), heldout(x, draws=2, seed=5)
    assert torch.equal(a, b) and a.shape == (6, 1, 8, 8)
    assert torch.equal(torch.floor(a * 17), x.repeat(2, 1, 1, 1))


@pytest.mark.parametrize(
    "builder",
    [
        lambda: nice_image((1, 4, 4), num_layers=2, hidden=(8, 8)),
        lambda: realnvp_image((1, 4, 4), num_levels=2, couplings_per_level=2, hidden_channels=4),
        lambda: glow_image((1, 4, 4), num_levels=2, steps_per_level=2, hidden_channels=4),
    ],
    ids=["nice", "realnvp", "glow"],
)
def test_image_flows_are_flows(builder):
    torch.set_default_dtype(torch.float64)
    flow = perturb_parameters(builder(), scale=0.2, seed=1)
    shape = flow.event_shape
    y = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    check_transform(flow.transform, y)
    z = flow.base.sample(3, generator=torch.Generator().manual_seed(1))
    x, _ = flow.transform.inverse(z)
    # the logit's inverse maps R onto (-alpha, 1 + alpha) / (1 - 2 alpha), a little wider than [0, 1]
    assert x.shape == (3, *shape) and bool(((x > -0.06) & (x < 1.06)).all())
    with torch.no_grad():
        assert math.isfinite(float(flow.log_prob(y).sum()))
