"""Chapter 4: choose the number of components of a Gaussian mixture for the 8x8 digits by held-out likelihood.

    .venv/bin/python scripts/ch04_digits_mixture.py      # about 2-4 minutes on 2 CPU cores

For every ``K`` it runs ``flowlib.GaussianMixture.fit_em`` (full covariances, ``reg=1e-4``) from ``RESTARTS``
k-means++ initialisations (seeds ``0 .. RESTARTS - 1``) *to convergence*: EM stops when an iteration improves the
mean training log-likelihood by less than ``RTOL`` times its size; the iteration cap ``N_ITER`` is far above what
any run needs, and the script fails if a run hits it. For each restart it records the iterations, train and
validation bits/dim and the smallest component's expected image count ``N pi_k``. Of a ``K``'s restarts the one
with the highest *training* likelihood is that ``K``'s model (restarts are part of the optimiser, so validation
data must not pick among them); ``K`` is then chosen by that model's validation bits/dim, and the spread of the
validation figure over restarts says how firm the choice is. The table goes to
``chapters/04_classical_models/results/digits_mixture_selection.json`` and the chosen mixture to
``chapters/04_classical_models/results/digits_mixture.pt`` (a float32 ``state_dict``), which ``02_mixtures.ipynb``
loads. The data preparation is the notebook's, line for line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from flowlib import GaussianMixture, UniformDequantization, bits_per_dim, data

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chapters" / "04_classical_models" / "results"
KS = (1, 2, 3, 4, 6, 8, 12)
RESTARTS = 5
REG = 1e-4
RTOL = 1e-6
N_ITER = 3000


def digits_dequantised():
    """Train, validation and test digits as ``(N, 64)`` float64 tensors in ``[0, 1)``: ``y = (x + u) / 17``."""
    deq = UniformDequantization(num_levels=17)
    gen = torch.Generator().manual_seed(0)
    return [deq(data.digits(s).double(), generator=gen).reshape(-1, 64) for s in ("train", "val", "test")]


def fit(x_train, k, seed):
    model, history = GaussianMixture.fit_em(x_train, k, n_iter=N_ITER, tol=0.0, rtol=RTOL, reg=REG, seed=seed)
    if len(history) == N_ITER + 1:
        raise RuntimeError(f"K={k}, seed={seed}: EM hit the {N_ITER}-iteration cap before converging")
    return model, history


def main():
    torch.set_num_threads(2)
    x_train, x_val, x_test = digits_dequantised()
    n = len(x_train)
    rows, models = [], {}
    start_all = time.perf_counter()
    for k in KS:
        runs = []
        for seed in range(RESTARTS):
            start = time.perf_counter()
            model, history = fit(x_train, k, seed)
            with torch.no_grad():
                bpd = {
                    name: round(float(bits_per_dim(model.log_prob(x), 64, num_levels=17)), 4)
                    for name, x in (("train", x_train), ("val", x_val), ("test", x_test))
                }
            runs.append({"seed": seed, "em_iterations": len(history) - 1,
                         **{f"{n_}_bpd": v for n_, v in bpd.items()},
                         "min_count": round(float(model.weights.min()) * n, 1),
                         "seconds": round(time.perf_counter() - start, 1)})
            models[(k, seed)] = model
            print(k, runs[-1], flush=True)
        best = min(runs, key=lambda r: r["train_bpd"])
        vals = sorted(r["val_bpd"] for r in runs)
        rows.append({"K": k, "seed": best["seed"], "em_iterations": best["em_iterations"],
                     "train_bpd": best["train_bpd"],
                     "val_bpd": best["val_bpd"], "test_bpd": best["test_bpd"], "min_count": best["min_count"],
                     "val_bpd_median": vals[len(vals) // 2], "val_bpd_min": vals[0], "val_bpd_max": vals[-1],
                     "restarts": runs})
    chosen = min(rows, key=lambda r: r["val_bpd"])
    model = models[(chosen["K"], chosen["seed"])]
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"reg": REG, "rtol": RTOL, "n_iter_cap": N_ITER, "restarts": RESTARTS, "best_K": chosen["K"],
            "seed": chosen["seed"], "seconds": round(time.perf_counter() - start_all, 1), "rows": rows}
    (OUT / "digits_mixture_selection.json").write_text(json.dumps(meta, indent=1) + "\n")
    state = {k: v.float() for k, v in model.state_dict().items()}
    torch.save({"K": chosen["K"], "state_dict": state}, OUT / "digits_mixture.pt")
    print("best K:", chosen["K"], "seed", chosen["seed"], f"total {meta['seconds']} s")


if __name__ == "__main__":
    main()
