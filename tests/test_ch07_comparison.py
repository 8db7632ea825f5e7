"""Lecture 7.2's comparison (coupling vs i-ResNet vs CNF, three seeds each): the committed numbers are those of the
committed checkpoints.

``scripts/train_ch7.py`` writes one checkpoint per (model, seed), the per-point test NLLs
(``comparison_points.pt``) and ``comparison.json``. Here

* every coupling checkpoint is re-evaluated on all 10 000 test points, every i-ResNet and CNF checkpoint on the
  first ``n_check`` = 1000 (for the CNF one solver batch, exactly as the script evaluates it, at the evaluation
  tolerance 1e-5): the per-point NLLs must match the committed ones to ``TOL_POINT`` nats and their means the json
  to ``TOL`` nats (float32 sums on another CPU differ by far less; the lecture prints 3 decimals);
* every figure of the table (per-run NLL, gap, se, median and min-max over seeds, paired differences and verdicts) is
  recomputed from the committed per-point NLLs with the script's own ``summarise`` and must equal the json.

The i-ResNet and CNF points beyond the first 1000 are checked only through the summary (re-evaluating all of them
for three seeds costs about 20 s more under load). Cost: about 10 s beside a training run (load 9 on 2 cores).
"""

import json
import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "chapters" / "07_residual_continuous" / "results"
TOL = 1e-4
TOL_POINT = 1e-3
CH7 = runpy.run_path(str(ROOT / "scripts" / "train_ch7.py"), run_name="ch7")


@pytest.fixture(scope="module")
def result():
    return json.loads((RESULTS / "comparison.json").read_text())


@pytest.fixture(scope="module")
def points():
    return torch.load(RESULTS / "comparison_points.pt", weights_only=True)


@pytest.fixture(scope="module")
def test_data():
    torch.set_num_threads(1)
    return CH7["datasets"]()[2]


@pytest.fixture(scope="module")
def exact(test_data):
    return CH7["exact_nll"](test_data)


def test_protocol_and_files(result, points):
    settings = result["settings"]
    assert {k: v for k, v in settings.items() if k not in ("steps", "seeds")} == \
        {k: v for k, v in CH7["SETTINGS"].items() if k not in ("steps", "seeds")}
    assert settings["steps"] == CH7["SETTINGS"]["steps"] and settings["seeds"] == CH7["SETTINGS"]["seeds"]
    assert len(settings["seeds"]) >= 3, "the protocol asks for at least three seeds per model"
    params = [result["models"][name]["params"] for name in CH7["NAMES"]]
    assert max(params) / min(params) < 1.05, f"parameter counts differ by more than 5 %: {params}"
    for name in CH7["NAMES"]:
        assert points[name].shape == (len(settings["seeds"]), settings["n_test"])
        for seed in settings["seeds"]:
            path = CH7["checkpoint_path"](RESULTS, name, seed)
            assert path.stat().st_size < 100_000, f"{path.name} should stay small"


@pytest.mark.parametrize("name", ["coupling", "iresnet", "cnf"])
def test_checkpoints_reproduce_the_committed_nll(name, result, points, test_data):
    n_check = result["settings"]["n_check"]
    for k, run in enumerate(result["runs"][name]):
        model = CH7["load_trained"](name, run["seed"], out=RESULTS)
        x = test_data if name == "coupling" else test_data[:n_check]
        got = CH7["per_point_nll"](model, x)
        assert (got - points[name][k, : len(x)]).abs().max() < TOL_POINT, (name, run["seed"])
        assert float(got[:n_check].double().mean()) == pytest.approx(run["test_nll_first_check"], abs=TOL)
        if name == "coupling":
            assert float(got.double().mean()) == pytest.approx(run["test_nll"], abs=TOL)


def test_table_is_recomputed_from_the_committed_points(result, points, exact):
    assert float(exact.mean()) == pytest.approx(result["exact_test_nll"], abs=1e-9)
    again = CH7["summarise"](points, exact, result["settings"]["seeds"])
    for name in CH7["NAMES"]:
        for mine, theirs in zip(again["runs"][name], result["runs"][name]):
            for key, value in mine.items():
                assert theirs[key] == pytest.approx(value, abs=1e-9), (name, key)
        for key in ("test_nll", "gap", "gap_se"):
            assert result["models"][name][key] == pytest.approx(again["models"][name][key], abs=1e-9), (name, key)
    assert [p["verdict"] for p in result["pairs"]] == [p["verdict"] for p in again["pairs"]]
    for mine, theirs in zip(again["pairs"], result["pairs"]):
        assert theirs["diff"] == pytest.approx(mine["diff"], abs=1e-9)
        assert theirs["se_max"] == pytest.approx(mine["se_max"], abs=1e-9)


def test_cnf_evaluation_tolerance_is_tight_enough(result):
    """The script compared the evaluation tolerance (1e-5) with 1e-7 on the first 1000 test points."""
    for run in result["runs"]["cnf"]:
        assert run["tolerance_check_abs_diff"] < 1e-3, run


def test_summarise_catches_an_altered_number(result, points, exact):
    """The check above is not vacuous: one changed per-point value changes the table beyond its tolerance."""
    altered = {k: v.clone() for k, v in points.items()}
    altered["iresnet"][0, 0] += 20.0  # one point of one run, 20 nats: moves that run's mean by 0.002
    again = CH7["summarise"](altered, exact, result["settings"]["seeds"])
    assert abs(again["runs"]["iresnet"][0]["test_nll"] - result["runs"]["iresnet"][0]["test_nll"]) > 1e-3
