"""Train the small RealNVP flows that chapter 5 (lecture 3) shows on the 2-D toy densities.

    .venv/bin/python scripts/train_ch05_toy_flows.py            # all four densities
    .venv/bin/python scripts/train_ch05_toy_flows.py two_moons  # one of them

Writes ``chapters/05_normalizing_flows/checkpoints/toy_<name>.pt`` (a ``flowlib.save_checkpoint`` file, float32,
about 125 kB each) that the lecture notebook loads; without a checkpoint the notebook trains the same model
briefly instead. Everything is seeded, so a rerun on the same machine gives the same weights.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from flowlib import save_checkpoint
from flowlib.data import TOY_SAMPLERS
from flowlib.models import realnvp
from flowlib.train import evaluate, fit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chapters" / "05_normalizing_flows" / "checkpoints"
NAMES = ("two_moons", "eight_gaussians", "checkerboard", "rings")
# the architecture the notebook rebuilds before loading (keep the two in sync)
NUM_LAYERS, HIDDEN = 6, (64, 64)
N_TRAIN, STEPS, BATCH, LR = 20_000, 3000, 512, 2e-3


def build(seed: int = 0):
    torch.manual_seed(seed)
    return realnvp(2, num_layers=NUM_LAYERS, hidden=HIDDEN)


def train(name: str) -> Path:
    model = build()
    data = TOY_SAMPLERS[name](N_TRAIN, seed=1)
    val = TOY_SAMPLERS[name](5000, seed=2)
    start = time.perf_counter()
    hist = fit(model, data, steps=STEPS, batch_size=BATCH, lr=LR, lr_schedule="cosine", clip_grad_norm=10.0,
               seed=0, progress=False)
    val_nll = evaluate(model, val)
    path = save_checkpoint(model, OUT / f"toy_{name}.pt", dataset=name, steps=STEPS, batch_size=BATCH, lr=LR,
                           num_layers=NUM_LAYERS, hidden=list(HIDDEN), n_train=N_TRAIN,
                           final_train_nll=float(sum(hist["train_loss"][-100:]) / 100), val_nll=val_nll)
    print(f"{name:16s} val NLL {val_nll:.3f} nats  ({time.perf_counter() - start:.0f} s)  -> {path.relative_to(ROOT)}")
    return path


def main(argv):
    names = argv or NAMES
    for n in names:
        if n not in NAMES:
            raise SystemExit(f"unknown density {n!r}; choose from {NAMES}")
    torch.set_num_threads(1)
    for n in names:
        train(n)


if __name__ == "__main__":
    main(sys.argv[1:])
