"""Uniform against variational dequantisation on the digits, same model, same budget (lecture 5.3).

    .venv/bin/python scripts/train_ch05_vardeq.py

For each of three seeds, trains the same small Glow (``glow_image``, 2 levels of 2 steps, 16 hidden channels) on
the 8x8 digits (17 levels) for the same number of steps, once with uniform noise and once jointly with a
``VariationalDequantization`` (``flowlib.dequantization``). Both are evaluated on the test digits in bits/dim
(the convention of chapter 6: ``-log P(x) / (D log 2)`` on the integer scale) with the bound (K = 1, averaged
over ``BOUND_DRAWS`` draws of the noise) and the importance-weighted estimate with ``K = IW_K`` draws.
Writes ``chapters/05_normalizing_flows/checkpoints/vardeq.json`` and the seed-0 weights
``vardeq_<method>.pt`` (model and dequantiser, tens of kB) that the notebook and ``tests/test_vardeq.py`` load.
Seeded: a rerun on the same machine gives the same numbers.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from flowlib import UniformDequantization, VariationalDequantization, log_mass_estimate, save_checkpoint
from flowlib.data import digits
from flowlib.image_flows import DIGIT_LEVELS, glow_image, num_params
from flowlib.train import fit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chapters" / "05_normalizing_flows" / "checkpoints"
SEEDS = (0, 1, 2)
METHODS = ("uniform", "variational")
# the architecture the notebook and the test rebuild before loading (keep in sync)
GLOW = dict(num_levels=2, steps_per_level=2, hidden_channels=16)
DEQ = dict(num_layers=2, hidden=(32,))
STEPS, BATCH, LR = 1500, 128, 2e-3
BOUND_DRAWS, IW_K, EVAL_SEED = 8, 64, 2
D = 64


class Joint(nn.Module):
    """A density model of ``y`` and its dequantiser, trained together (``fit`` optimises both)."""

    def __init__(self, model, deq):
        super().__init__()
        self.model, self.deq = model, deq


def build(method: str, seed: int) -> Joint:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    torch.manual_seed(seed)
    model = glow_image((1, 8, 8), **GLOW)
    if method == "uniform":
        deq = UniformDequantization(num_levels=DIGIT_LEVELS)
    else:
        deq = VariationalDequantization((1, 8, 8), num_levels=DIGIT_LEVELS, **DEQ)
    return Joint(model, deq)


@torch.no_grad()
def evaluate(joint: Joint, x: torch.Tensor) -> dict:
    """Test bits/dim: the bound (mean over ``BOUND_DRAWS`` draws) and the importance-weighted estimate (K = IW_K);
    fixed noise (``EVAL_SEED``), so the numbers are reproducible from a checkpoint."""
    joint.eval()
    g = torch.Generator().manual_seed(EVAL_SEED)
    bound = torch.stack([log_mass_estimate(joint.model.log_prob, x, joint.deq, 1, g) for _ in range(BOUND_DRAWS)])
    iw = log_mass_estimate(joint.model.log_prob, x, joint.deq, IW_K, g)
    to_bpd = -1.0 / (D * math.log(2))
    return {"bound_bpd": float(bound.double().mean()) * to_bpd, "iw_bpd": float(iw.double().mean()) * to_bpd}


def run(method: str, seed: int, train: torch.Tensor, test: torch.Tensor) -> dict:
    joint = build(method, seed)
    noise = torch.Generator().manual_seed(1000 + seed)

    def loss(j, batch):
        return -log_mass_estimate(j.model.log_prob, batch, j.deq, 1, noise).mean()

    start = time.perf_counter()
    fit(joint, train, loss_fn=loss, steps=STEPS, batch_size=BATCH, lr=LR, lr_schedule="cosine", clip_grad_norm=100.0,
        seed=seed, progress=False)
    seconds = time.perf_counter() - start
    res = evaluate(joint, test)
    if seed == 0:
        save_checkpoint(joint, OUT / f"vardeq_{method}.pt", method=method, seed=seed, steps=STEPS)
    print(f"{method:11s} seed {seed}: bound {res['bound_bpd']:.4f}, IW(K={IW_K}) {res['iw_bpd']:.4f} bits/dim "
          f"({seconds:.0f} s)", flush=True)
    return {"method": method, "seed": seed, **res, "seconds": round(seconds, 1)}


def main():
    torch.set_num_threads(1)
    train, test = digits("train"), digits("test")
    start = time.perf_counter()
    runs = [run(m, s, train, test) for s in SEEDS for m in METHODS]
    result = {
        "protocol": {"model": "glow_image", "glow": GLOW, "dequantiser": {**DEQ, "hidden": list(DEQ["hidden"])},
                     "steps": STEPS, "batch_size": BATCH, "lr": LR, "lr_schedule": "cosine", "clip_grad_norm": 100.0,
                     "seeds": list(SEEDS), "bound_draws": BOUND_DRAWS, "iw_k": IW_K, "eval_seed": EVAL_SEED,
                     "n_train": len(train), "n_test": len(test)},
        "num_params": {m: num_params(build(m, 0).model) for m in METHODS}
        | {"dequantiser": num_params(build("variational", 0).deq)},
        "runs": runs,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    path = OUT / "vardeq.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", path.relative_to(ROOT), f"in {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
