"""What closes the NLL gap of lecture 5.3's toy flows: an ablation study over 3 seeds (issue 22).

    make train-ch05-toys                                   # the whole study (see the Makefile for its time)
    .venv/bin/python scripts/train_ch05_toy_flows.py       # the same
    .venv/bin/python scripts/train_ch05_toy_flows.py --steps 50 --out /tmp/toy   # a quick smoke run

For each of the four toy densities of ``flowlib.data`` (two moons, eight Gaussians, checkerboard, rings), each
setting and each of three seeds, trains a flow and measures the NLL gap to the exact density,
``mean(log p - log q)`` over 5000 fresh test points (``TOY_SAMPLERS[name](5000, seed=3)``), which estimates
``KL(p || q)``, with its standard error over the test points. The settings change one thing each against the
baseline (a RealNVP of 6 affine couplings with conditioners 64x64, ``STEPS`` Adam steps at batch 512):

    baseline   6 affine couplings, hidden 64x64, STEPS steps
    spline     6 rational-quadratic spline couplings (8 bins on [-4, 4], flowlib.transforms.SplineCoupling)
    deeper     12 affine couplings                            (twice the layers)
    wider      hidden 128x128                                 (twice the width)
    longer     2 x STEPS steps, same cosine schedule stretched  (only the two densities with the largest
                                                                  median baseline gap, to fit the CPU budget)

Everything else is shared: 20 000 training points (``seed=1``; the same for every run), Adam with learning rate
2e-3 and a cosine decay to 0, gradient clipping at 10, one CPU thread. The seed sets the initialisation and the
minibatch order. Writes ``chapters/05_normalizing_flows/checkpoints/toy_study.json`` (one row per run, with the
paired difference to the baseline of the same seed on the same test points), the seed-0 baseline weights
``toy_<density>.pt`` that lecture 5.3 loads, and the seed-0 weights of the best setting per density
``toy_<density>_<setting>.pt`` (``tests/test_ch05_toy_study.py`` re-evaluates them). Runs already in the JSON file
are skipped, so an interrupted study resumes where it stopped (delete the file to start afresh). Seeded: a rerun
on the same machine gives the same numbers; another CPU vector path moves the third decimal.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from flowlib import Compose, Flow, StandardNormal, save_checkpoint
from flowlib.data import TOY_LOG_PROBS, TOY_SAMPLERS
from flowlib.models import realnvp
from flowlib.train import fit
from flowlib.transforms import SplineCoupling, half_mask

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chapters" / "05_normalizing_flows" / "checkpoints"
SCRATCH = ROOT / "_build" / "ch05_toy_study"          # seed-0 weights of every run and per-point log q (ignored)
NAMES = ("two_moons", "eight_gaussians", "checkerboard", "rings")
SEEDS = (0, 1, 2)
STEPS, BATCH, LR, CLIP, N_TRAIN, N_TEST = 500, 512, 2e-3, 10.0, 20_000, 5000
NUM_BINS, BOUND = 8, 4.0
BASELINE = {"coupling": "affine", "num_layers": 6, "hidden": [64, 64], "steps_factor": 1}
SETTINGS = {                                          # what each setting changes against the baseline
    "baseline": {},
    "spline": {"coupling": "spline"},
    "deeper": {"num_layers": 12},
    "wider": {"hidden": [128, 128]},
    "longer": {"steps_factor": 2},
}
LONGER_FOR = 2                                        # "longer" only for this many densities (largest gaps)


def config(setting: str, steps: int = STEPS) -> dict:
    cfg = {**BASELINE, **SETTINGS[setting]}
    cfg["steps"] = steps * cfg.pop("steps_factor")
    return cfg


def build(cfg: dict, seed: int) -> Flow:
    """The flow of one setting (``cfg`` from ``config``), initialised from ``seed``; the notebook and the test
    rebuild the models with this function."""
    torch.manual_seed(seed)
    hidden = tuple(cfg["hidden"])
    if cfg["coupling"] == "affine":
        return realnvp(2, num_layers=cfg["num_layers"], hidden=hidden)
    if cfg["coupling"] == "spline":
        layers = [SplineCoupling(half_mask(2, first=k % 2 == 0), hidden, num_bins=NUM_BINS, bound=BOUND)
                  for k in range(cfg["num_layers"])]
        return Flow(Compose(*layers), StandardNormal((2,)))
    raise ValueError(f"coupling must be 'affine' or 'spline', got {cfg['coupling']!r}")


def test_points(name: str) -> torch.Tensor:
    return TOY_SAMPLERS[name](N_TEST, seed=3)


def gap_terms(model, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per test point: ``log p(x) - log q(x)`` (float64) and ``log p(x)``."""
    x = test_points(name)
    with torch.no_grad():
        lq = model.log_prob(x).double()
    lp = TOY_LOG_PROBS[name](x).double()
    return (lp - lq).numpy(), lp.numpy()


def mean_se(d: np.ndarray) -> tuple[float, float]:
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def run(name: str, setting: str, seed: int, steps: int, scratch: Path) -> dict:
    cfg = config(setting, steps)
    model = build(cfg, seed)
    data = TOY_SAMPLERS[name](N_TRAIN, seed=1)
    start = time.perf_counter()
    hist = fit(model, data, steps=cfg["steps"], batch_size=BATCH, lr=LR, lr_schedule="cosine",
               clip_grad_norm=CLIP, seed=seed, progress=False)
    seconds = time.perf_counter() - start
    d, lp = gap_terms(model.eval(), name)
    gap, se = mean_se(d)
    np.save(scratch / f"{name}_{setting}_{seed}.npy", d)
    if seed == 0:
        save_checkpoint(model, scratch / f"toy_{name}_{setting}.pt", dataset=name, setting=setting, seed=seed,
                        batch_size=BATCH, lr=LR, n_train=N_TRAIN, **cfg)
    row = {"density": name, "setting": setting, "seed": seed, "steps": cfg["steps"],
           "examples_seen": cfg["steps"] * BATCH, "num_params": sum(p.numel() for p in model.parameters()),
           "gap": gap, "se": se, "exact_nll": float(-lp.mean()), "test_nll": float(-lp.mean()) + gap,
           "final_train_nll": float(np.mean(hist["train_loss"][-50:])), "seconds": seconds}
    base = scratch / f"{name}_baseline_{seed}.npy"
    if setting != "baseline" and base.exists():        # paired with the baseline of the same seed
        row["diff_vs_baseline"], row["diff_se"] = mean_se(d - np.load(base))
    print(f"{name:16s} {setting:8s} seed {seed}: gap {gap:.3f} ± {se:.3f} nats "
          f"({cfg['steps']} steps, {seconds:.0f} s)", flush=True)
    return row


def median_gaps(runs: list, setting: str) -> dict:
    out = {}
    for n in NAMES:
        g = [r["gap"] for r in runs if r["density"] == n and r["setting"] == setting]
        if g:
            out[n] = float(np.median(g))
    return out


def write(path: Path, runs: list, steps: int, longer_for: list) -> None:
    result = {
        "protocol": {"steps": steps, "batch_size": BATCH, "lr": LR, "lr_schedule": "cosine",
                     "clip_grad_norm": CLIP, "n_train": N_TRAIN, "train_seed": 1, "n_test": N_TEST,
                     "test_seed": 3, "seeds": list(SEEDS), "num_bins": NUM_BINS, "bound": BOUND,
                     "baseline": BASELINE, "settings": SETTINGS, "longer_for": longer_for,
                     "torch_threads": torch.get_num_threads()},
        "runs": runs,
    }
    path.write_text(json.dumps(result, indent=1) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS, help="baseline steps (the 'longer' setting runs twice)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for toy_study.json and the checkpoints")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = SCRATCH if args.out == OUT else args.out / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    path = args.out / "toy_study.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    if runs and json.loads(path.read_text())["protocol"]["steps"] != args.steps:
        raise SystemExit(f"{path} was made with another --steps; delete it to start afresh")
    done = {(r["density"], r["setting"], r["seed"]) for r in runs}
    longer_for = []
    start = time.perf_counter()
    for setting in args.settings:                     # whole settings first, so a cut leaves whole rows
        if setting == "longer":
            base = median_gaps(runs, "baseline")
            longer_for = sorted(base, key=base.get, reverse=True)[:LONGER_FOR]
        names = longer_for if setting == "longer" else NAMES
        for seed in SEEDS:
            for name in names:
                if (name, setting, seed) in done:
                    continue
                runs.append(run(name, setting, seed, args.steps, scratch))
                write(path, runs, args.steps, longer_for)
    print(f"study: {time.perf_counter() - start:.0f} s of training", flush=True)
    write(path, runs, args.steps, longer_for)
    # the checkpoints the notebook and the test load: seed-0 baseline, and seed 0 of the best setting per density
    for name in NAMES:
        shutil.copy(scratch / f"toy_{name}_baseline.pt", args.out / f"toy_{name}.pt")
        med = {s: float(np.median([r["gap"] for r in runs if r["density"] == name and r["setting"] == s]))
               for s in SETTINGS if any(r["density"] == name and r["setting"] == s for r in runs)}
        best = min(med, key=med.get)
        for old in args.out.glob(f"toy_{name}_*.pt"):
            old.unlink()
        if best != "baseline":
            shutil.copy(scratch / f"toy_{name}_{best}.pt", args.out / f"toy_{name}_{best}.pt")
        print(f"{name:16s} best setting: {best} (median gap {med[best]:.3f})")
    print("wrote", path)


if __name__ == "__main__":
    main()
