"""Neural posterior estimation on the two simulators of lecture 7.4 (chapter 7, simulation-based inference).

    .venv/bin/python scripts/train_ch07_sbi.py

For each simulator of ``flowlib.sbi`` (the Gaussian linear model, the two-mode model) trains the conditional flow
``npe_flow`` by minimising the NPE loss on fresh simulations (``train_npe``: STEPS Adam steps, batch 512, seed 0),
then measures KL(true posterior || learnt) by quadrature on a 200 x 200 grid at the lecture's observations and on
a 100 x 100 grid averaged over AVG_OBS observations drawn from the simulator's marginal. Writes the checkpoints
``chapters/07_residual_continuous/results/sbi_<name>.pt`` (about 100 kB each) that the lecture loads and
``sbi.json`` (the numbers; ``tests/test_sbi.py`` recomputes them from the checkpoints). About 4 minutes on one
thread of the course's shared 2-core machine (load average 7 to 11). Seeded: a rerun on the same machine
gives the same numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from flowlib import save_checkpoint
from flowlib.sbi import OBSERVATIONS, SIMULATORS, npe_flow, posterior_kls, simulated_observations, train_npe

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chapters" / "07_residual_continuous" / "results"
STEPS, BATCH, LR, SEED = 2000, 512, 3e-3, 0
AVG_OBS, AVG_GRID = 100, 100


def main() -> None:
    torch.set_num_threads(1)
    results = {"protocol": {"steps": STEPS, "batch_size": BATCH, "lr": LR, "seed": SEED, "grid": 200,
                            "avg_obs": AVG_OBS, "avg_grid": AVG_GRID}}
    for name, cls in SIMULATORS.items():
        sim = cls()
        flow = npe_flow(sim.x_dim, seed=SEED)
        t0 = time.time()
        losses = train_npe(flow, sim, STEPS, batch_size=BATCH, lr=LR, seed=SEED)
        train_s = time.time() - t0
        flow.eval()
        kls = posterior_kls(flow, sim, OBSERVATIONS[name])
        avg = posterior_kls(flow, sim, simulated_observations(sim, AVG_OBS), n=AVG_GRID)
        save_checkpoint(flow, OUT / f"sbi_{name}.pt", steps=STEPS, seed=SEED)
        results[name] = {"kl": kls, "kl_marginal_mean": sum(avg) / len(avg), "kl_marginal_max": max(avg),
                         "final_loss": sum(losses[-100:]) / 100, "train_seconds": round(train_s, 1),
                         "num_params": sum(p.numel() for p in flow.parameters())}
        print(name, {k: v for k, v in results[name].items()}, flush=True)
    (OUT / "sbi.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
