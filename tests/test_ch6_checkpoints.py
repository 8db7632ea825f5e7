"""Chapter 6: the committed checkpoints reproduce the comparison table of lecture 6.3 (``results.json``), the table
follows the book's experiment protocol (issue 22), and the image-flow builders of ``flowlib.image_flows`` are
correct flows.

Tolerances: every test bits/dim, standard error and paired difference recomputed from the 9 checkpoints must agree
with ``results.json`` to within ``TOL = 2e-3`` bits/dim (the figures are stored to 4 decimals and stated to 3; a
different CPU or BLAS changes the float32 sums by far less). Cost: about 10 s at a load average of 7 (9 evaluations
of 2152 images).
"""

import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from flowlib.image_flows import (
    build_digits_model,
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

_spec = importlib.util.spec_from_file_location("train_ch6", ROOT / "scripts" / "train_ch6.py")
train_ch6 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_ch6)


@pytest.fixture(scope="module")
def results():
    return json.loads((CKPT / "results.json").read_text())


@pytest.fixture(scope="module")
def per_image(results):
    """Per-image test bits/dim of every committed checkpoint, recomputed."""
    torch.set_num_threads(1)
    test = digits_splits()[2]
    out = {}
    for key, run in results["runs"].items():
        model = build_digits_model(run["model"], run["seed"])
        load_checkpoint(model, CKPT / f"{key}.pt")
        out[key] = train_ch6.per_image_bpd(model, test)
    return out


def test_checkpoints_reproduce_every_run(results, per_image):
    for key, run in results["runs"].items():
        b = per_image[key]
        assert b.shape == (269,)
        assert abs(float(b.mean()) - run["test_bpd"]) < TOL, (key, float(b.mean()), run["test_bpd"])
        assert abs(float(b.std() / math.sqrt(269)) - run["test_se"]) < TOL, key


def test_table_rows_are_the_median_and_range_of_the_runs(results):
    for name, row in results["models"].items():
        values = [r["test_bpd"] for r in results["runs"].values() if r["model"] == name]
        assert row["test_bpd"] == {"median": round(statistics.median(values), 4), "min": min(values),
                                   "max": max(values)}, name


def test_paired_differences_and_verdicts(results, per_image):
    assert len(results["paired"]) == 3
    for pair, p in results["paired"].items():
        a, b = pair.split(" - ")
        for d in p["per_seed"]:
            diff = per_image[train_ch6.run_name(a, d["seed"])] - per_image[train_ch6.run_name(b, d["seed"])]
            assert abs(float(diff.mean()) - d["diff"]) < TOL, (pair, d)
            assert abs(float(diff.std() / math.sqrt(269)) - d["se"]) < TOL, (pair, d)
        assert p["verdict"] == train_ch6.verdict(a, b, p["per_seed"], results["models"]), pair


def test_table_follows_the_protocol(results):
    runs = list(results["runs"].values())
    proto = results["protocol"]
    assert len({(r["steps_run"], r["batch_size"], r["lr"], r["lr_schedule"], r["eval_every"]) for r in runs}) == 1
    assert all(r["patience"] is None for r in runs)  # the full budget for every run: equal examples seen
    assert proto["steps"] == runs[0]["steps_run"] and proto["examples_seen"] == proto["steps"] * proto["batch_size"]
    for name in ("NICE", "RealNVP", "Glow"):
        seeds = [r["seed"] for r in runs if r["model"] == name]
        assert len(set(seeds)) == len(seeds) >= 3, (name, seeds)
    for r in runs:
        assert 0 < r["best_step"] <= r["steps_run"]


def test_checkpoints_stay_small(results):
    sizes = [(CKPT / f"{key}.pt").stat().st_size for key in results["runs"]]
    assert max(sizes) < 1_000_000 and sum(sizes) < 5_000_000, sizes


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
