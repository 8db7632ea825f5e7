"""Affine coupling against spline coupling at the same budget on the 2-D toys of lecture 5.3 (lecture 5.4).

    .venv/bin/python scripts/train_ch05_splines.py          # both densities, one after the other
    .venv/bin/python scripts/train_ch05_splines.py rings    # one of them (run two processes to use two cores)

For each density (rings, checkerboard), each model (a RealNVP of affine couplings, a flow of
spline couplings) and each of three seeds, trains with the same protocol (steps, batch, learning rate and schedule,
layers) and measures the NLL gap to the exact density on fresh test data, which estimates KL(p || q).
Writes ``chapters/05_normalizing_flows/checkpoints/splines_<density>.json`` (the rows the notebook prints) and
the seed-0 weights ``splines_<model>_<density>.pt`` (a few kB each) that the notebook loads for its figure.
Seeded: a rerun on the same machine gives the same numbers; another CPU vector path moves the third decimal.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from flowlib import Compose, Flow, StandardNormal, save_checkpoint
from flowlib.data import TOY_LOG_PROBS, TOY_SAMPLERS
from flowlib.models import realnvp
from flowlib.train import fit
from flowlib.transforms import SplineCoupling, half_mask

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chapters" / "05_normalizing_flows" / "checkpoints"
NAMES = ("rings", "checkerboard")
SEEDS = (0, 1, 2)
# the architectures the notebook rebuilds before loading (keep the two in sync)
NUM_LAYERS = 4
AFFINE_HIDDEN = (40, 40)            # 1802 parameters a layer
SPLINE_HIDDEN, NUM_BINS, BOUND = (32, 32), 8, 4.0   # 1879 parameters a layer
N_TRAIN, N_TEST, STEPS, BATCH, LR = 20_000, 5000, 800, 256, 3e-3


def build(model: str, seed: int) -> Flow:
    torch.manual_seed(seed)
    if model == "affine":
        return realnvp(2, num_layers=NUM_LAYERS, hidden=AFFINE_HIDDEN)
    if model == "spline":
        layers = [SplineCoupling(half_mask(2, first=k % 2 == 0), SPLINE_HIDDEN, num_bins=NUM_BINS, bound=BOUND)
                  for k in range(NUM_LAYERS)]
        return Flow(Compose(*layers), StandardNormal((2,)))
    raise ValueError(f"model must be 'affine' or 'spline', got {model!r}")


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def gap(model, name: str) -> tuple[float, float]:
    """The NLL gap E_p[log p - log q] on fresh test data and its standard error (nats)."""
    test = TOY_SAMPLERS[name](N_TEST, seed=3)
    with torch.no_grad():
        d = TOY_LOG_PROBS[name](test).double() - model.log_prob(test).double()
    return d.mean().item(), (d.std() / math.sqrt(len(d))).item()


def run(name: str, model_name: str, seed: int) -> dict:
    model = build(model_name, seed)
    data = TOY_SAMPLERS[name](N_TRAIN, seed=1)
    start = time.perf_counter()
    fit(model, data, steps=STEPS, batch_size=BATCH, lr=LR, lr_schedule="cosine", clip_grad_norm=10.0, seed=seed,
        progress=False)
    seconds = time.perf_counter() - start
    g, se = gap(model.eval(), name)
    if seed == 0:
        save_checkpoint(model, OUT / f"splines_{model_name}_{name}.pt", dataset=name, coupling=model_name, steps=STEPS,
                        batch_size=BATCH, lr=LR, num_layers=NUM_LAYERS, seed=seed)
    print(f"{name:16s} {model_name:6s} seed {seed}: gap {g:.3f} ± {se:.3f} nats ({seconds:.0f} s)", flush=True)
    return {"density": name, "model": model_name, "seed": seed, "gap": g, "se": se, "seconds": seconds}


def main(argv):
    torch.set_num_threads(1)
    names = argv or NAMES
    for n in names:
        if n not in NAMES:
            raise SystemExit(f"unknown density {n!r}; choose from {NAMES}")
    for n in names:
        write(n, [run(n, m, s) for m in ("affine", "spline") for s in SEEDS])


def write(name: str, runs: list) -> None:
    result = {
        "protocol": {"steps": STEPS, "batch_size": BATCH, "lr": LR, "lr_schedule": "cosine", "clip_grad_norm": 10.0,
                     "n_train": N_TRAIN, "n_test": N_TEST, "num_layers": NUM_LAYERS, "seeds": list(SEEDS),
                     "affine_hidden": list(AFFINE_HIDDEN), "spline_hidden": list(SPLINE_HIDDEN),
                     "num_bins": NUM_BINS, "bound": BOUND},
        "num_params": {m: num_params(build(m, 0)) for m in ("affine", "spline")},
        "runs": runs,
    }
    path = OUT / f"splines_{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", path.relative_to(ROOT))


if __name__ == "__main__":
    main(sys.argv[1:])
