"""Lecture 6.4: the committed MNIST Glow checkpoints reproduce the test bits/dim that results.json (and the book)
state, and they stay small.

Tolerance: recomputed test bits/dim within ``TOL = 2e-3`` of the stated figure (stated to 4 decimals; the
evaluation uses fixed noise draws, so only float32 summation order differs between CPUs, far below 1e-3).
Cost: three seeds x 500 test images x 4 noise draws through a 30k-parameter Glow, about 4 s per seed on one
loaded core of the course machine.
"""

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from flowlib.data import mnist_digits
from flowlib.image_flows import build_mnist_model, mnist_test_bits
from flowlib.io import load_checkpoint

CKPT = Path(__file__).resolve().parents[1] / "chapters" / "06_image_flows" / "checkpoints" / "mnist"
TOL = 2e-3
RESULTS = json.loads((CKPT / "results.json").read_text())


@pytest.mark.parametrize("run", RESULTS["runs"], ids=lambda r: f"seed{r['seed']}")
def test_checkpoint_reproduces_stated_test_bits_per_dim(run):
    path = CKPT / f"glow_seed{run['seed']}.pt"
    assert path.stat().st_size < 1_000_000, f"{path.name} should stay under 1 MB"
    model = build_mnist_model(run["seed"])
    meta = load_checkpoint(model, path)
    torch.set_num_threads(1)
    bits = mnist_test_bits(model, mnist_digits("test"), draws=meta["test_draws"], seed=meta["test_seed"])
    bpd, se = float(bits.mean()), float(bits.std() / math.sqrt(len(bits)))
    assert abs(bpd - run["test_bpd"]) < TOL, (bpd, run["test_bpd"])
    assert abs(bpd - meta["test_bpd"]) < TOL, (bpd, meta["test_bpd"])
    assert abs(se - run["test_se"]) < TOL, (se, run["test_se"])
    assert 0.5 < bpd < 8.0  # better than the uniform density's 8 bits, and not an impossible figure


def test_results_summary_matches_the_runs():
    tests = [r["test_bpd"] for r in RESULTS["runs"]]
    assert len(tests) >= 3, "the protocol asks for at least 3 seeds"
    assert RESULTS["median_test_bpd"] == pytest.approx(statistics.median(tests), abs=1e-4)
    assert (RESULTS["min_test_bpd"], RESULTS["max_test_bpd"]) == (min(tests), max(tests))
    assert all(r["steps_run"] <= RESULTS["steps"] for r in RESULTS["runs"])  # the same budget for every seed
