"""Flows fitted by reverse KL to the four energies of Rezende & Mohamed (2015) (lecture 7.3).

    .venv/bin/python scripts/train_ch07_vi.py            # all 16 fits, one after the other
    .venv/bin/python scripts/train_ch07_vi.py U1 U3      # some targets only (results merged into the json)

For each target ``U1``-``U4`` (confined to ``[-4, 4]^2`` by ``flowlib.targets.confined`` so that ``Z`` is finite)
and each model (planar flows of depth K = 2, 8, 32 after a diagonal affine map of the base, in the paper's
generative direction; an IAF of 4 layers), minimises ``E_q[log q(x) - beta_t log p~(x)]`` with reparameterised
samples, the inverse temperature ``beta_t`` rising linearly from 0.01 to 1 over the first half of training (the
paper's annealing), then measures ``KL(q || p)`` with ``log Z`` from quadrature and a Monte-Carlo standard error.
Writes ``chapters/07_residual_continuous/results/vi.json`` (what the notebook prints) and the weights
``vi_<model>_<target>.pt`` (1-40 kB each) that the notebook loads for its figure. One seed per fit.
Seeded: a rerun on the same machine gives the same numbers; another CPU vector path moves the last digits.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from flowlib import Compose, Flow, InverseTransform, StandardNormal, save_checkpoint
from flowlib.targets import POTENTIALS, confined, kl_estimate, log_normaliser, log_target
from flowlib.transforms import ElementwiseAffine, Planar, iaf

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chapters" / "07_residual_continuous" / "results"
MODELS = ("planar2", "planar8", "planar32", "iaf")
# the protocol the notebook and tests/test_ch07_vi.py rebuild (keep in sync)
PROTOCOL = {"half_width": 4.0, "wall": 0.25, "steps": 2000, "batch": 256, "lr": 5e-3, "beta0": 0.01,
            "iaf_layers": 4, "iaf_hidden": [32, 32], "eval_n": 20_000, "eval_seed": 123,
            "quad_bounds": [[-6.0, 6.0], [-6.0, 6.0]], "quad_grid": 1200}


def build(model: str, seed: int = 0) -> Flow:
    """The flow ``model`` (``planarK`` or ``iaf``), seeded."""
    torch.manual_seed(seed)
    if model.startswith("planar"):
        k = int(model[len("planar"):])
        # Compose maps data -> base in list order, so sampling runs the list backwards: the affine map acts on
        # the base sample first, then the K planar layers (each used in its generative direction).
        layers = [InverseTransform(Planar(2)) for _ in range(k)] + [InverseTransform(ElementwiseAffine(2))]
        return Flow(Compose(*layers), StandardNormal((2,)))
    if model == "iaf":
        return iaf(2, num_layers=PROTOCOL["iaf_layers"], hidden=tuple(PROTOCOL["iaf_hidden"]))
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def target(name: str):
    """The confined unnormalised log-density of ``name`` that every fit uses."""
    return confined(log_target(name), PROTOCOL["half_width"], PROTOCOL["wall"])


def log_z(name: str, grid: int | None = None) -> float:
    bounds = tuple(tuple(b) for b in PROTOCOL["quad_bounds"])
    return log_normaliser(target(name), bounds, grid or PROTOCOL["quad_grid"])


def train(flow: Flow, log_p, seed: int) -> list[float]:
    p = PROTOCOL
    torch.manual_seed(seed)
    opt = torch.optim.Adam(flow.parameters(), lr=p["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / p["steps"])))
    losses = []
    for t in range(p["steps"]):
        beta = min(1.0, p["beta0"] + (1 - p["beta0"]) * t / (p["steps"] / 2))
        x, log_q = flow.sample_with_log_prob(p["batch"])
        loss = (log_q - beta * log_p(x)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def run(name: str, model: str, seed: int = 0) -> dict:
    flow = build(model, seed)
    log_p = target(name)
    start = time.perf_counter()
    train(flow, log_p, seed)
    seconds = time.perf_counter() - start
    lz = log_z(name)
    kl, se = kl_estimate(flow.eval(), log_p, lz, n=PROTOCOL["eval_n"], generator_seed=PROTOCOL["eval_seed"])
    save_checkpoint(flow, OUT / f"vi_{model}_{name}.pt", target=name, flow=model, seed=seed)
    params = sum(p.numel() for p in flow.parameters())
    print(f"{name} {model:8s}: KL {kl:.3f} ± {se:.3f} nats ({params} parameters, {seconds:.0f} s)", flush=True)
    return {"target": name, "model": model, "seed": seed, "kl": kl, "se": se, "log_z": lz, "params": params,
            "seconds": seconds}


def main(argv):
    torch.set_num_threads(1)
    names = argv or sorted(POTENTIALS)
    for n in names:
        if n not in POTENTIALS:
            raise SystemExit(f"unknown target {n!r}; choose from {sorted(POTENTIALS)}")
    path = OUT / "vi.json"
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    rows = [r for r in old["rows"] if r["target"] not in names]
    quad = {}
    for name in names:
        coarse, fine = log_z(name, PROTOCOL["quad_grid"] // 2), log_z(name)
        quad[name] = {"log_z": fine, "log_z_half_grid": coarse}
        print(f"{name}: log Z = {fine:.5f} (half the grid: {coarse:.5f})", flush=True)
        for model in MODELS:
            rows.append(run(name, model))
    quad = {**old.get("quadrature", {}), **quad}
    rows.sort(key=lambda r: (r["target"], MODELS.index(r["model"])))
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"protocol": PROTOCOL, "quadrature": quad, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
