"""Chapter 4: choose the number of components of a Gaussian mixture for the 8x8 digits by held-out likelihood.

    .venv/bin/python scripts/ch04_digits_mixture.py      # a few minutes on 2 CPU cores

Fits ``flowlib.GaussianMixture.fit_em`` (full covariances, ``reg=1e-4``) for several ``K`` to the dequantised
training digits, records train and validation bits per dimension in
``chapters/04_classical_models/results/digits_mixture_selection.json``, and saves the mixture with the best
validation likelihood to ``chapters/04_classical_models/results/digits_mixture.pt`` (a float32 ``state_dict``),
which ``02_mixtures.ipynb`` loads. The data preparation is the notebook's, line for line.
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
REG = 1e-4
SEED = 0


def digits_dequantised():
    """Train, validation and test digits as ``(N, 64)`` float64 tensors in ``[0, 1)``: ``y = (x + u) / 17``."""
    deq = UniformDequantization(num_levels=17)
    gen = torch.Generator().manual_seed(0)
    return [deq(data.digits(s).double(), generator=gen).reshape(-1, 64) for s in ("train", "val", "test")]


def fit(x_train, k):
    return GaussianMixture.fit_em(x_train, k, n_iter=50, reg=REG, seed=SEED)


def main():
    torch.set_num_threads(2)
    x_train, x_val, x_test = digits_dequantised()
    rows, best = [], None
    for k in KS:
        start = time.perf_counter()
        model, history = fit(x_train, k)
        with torch.no_grad():
            bpd = {
                name: round(float(bits_per_dim(model.log_prob(x), 64, num_levels=17)), 4)
                for name, x in (("train", x_train), ("val", x_val), ("test", x_test))
            }
        rows.append({"K": k, "em_iterations": len(history) - 1, **{f"{n}_bpd": v for n, v in bpd.items()}})
        print(rows[-1], f"{time.perf_counter() - start:.1f} s", flush=True)
        if best is None or bpd["val"] < best[0]:
            best = (bpd["val"], k, model)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"reg": REG, "seed": SEED, "best_K": best[1], "rows": rows}
    (OUT / "digits_mixture_selection.json").write_text(json.dumps(meta, indent=1) + "\n")
    state = {k: v.float() for k, v in best[2].state_dict().items()}
    torch.save({"K": best[1], "state_dict": state}, OUT / "digits_mixture.pt")
    print("best K:", best[1])


if __name__ == "__main__":
    main()
