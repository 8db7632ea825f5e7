"""Train chapter 6's three image flows (NICE, RealNVP, Glow) on the 8x8 digits under one protocol, 3 seeds each,
and write the comparison table.

    nice -n 10 .venv/bin/python scripts/train_ch6.py --jobs 2   # all 9 runs, then the table (make train-ch06)
    # 1235 s (21 min) wall measured on the shared 2-core course machine, load average 7-12
    .venv/bin/python scripts/train_ch6.py --table-only          # the table again from the committed checkpoints
    .venv/bin/python scripts/train_ch6.py --runs NICE:0 --steps 100 --out /tmp/ch6   # a quick try

The protocol (issue 22; the same for the three models):

* data: ``flowlib.data.digits`` train/val/test split (1258/270/269, fixed: it does not depend on the seed),
  17 levels dequantised ``y = (x + u) / 17``, ``Logit(alpha=0.05)`` as every model's first layer, bits/dim with
  the ``log 17`` offset. Validation: 4 fixed noise draws per image; test: 8 fixed draws (the same for every run).
* budget: ``STEPS`` steps of ``BATCH`` images for every model (the same number of examples seen), Adam with
  ``LR`` and a cosine decay to 0 over the run, gradient norm clipped at 100, no early stopping.
* validation every ``EVAL_EVERY`` steps; the parameters of the best validation loss are restored at the end
  (``best_step`` says which evaluation that was).
* seeds ``SEEDS``: the seed sets the initialisation, the order of the minibatches and the training
  dequantisation noise.
* CPU, one thread per process.

Per run it writes ``<model>_s<seed>.pt`` (``flowlib.save_checkpoint``) and ``<model>_s<seed>.json`` (what only
training knows: validation bits/dim, best step, train time, load average). ``results.json`` (the table of lecture
6.3) is then computed from those files: test bits/dim of each checkpoint, its standard error over the 269 test
images (per-image bits/dim averaged over the 8 noise draws; ``se = std / sqrt(269)``), median and min-max over
seeds, sampling time, and the paired differences per seed (the per-image differences of two models on the same
test images and noise draws).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowlib.image_flows import (  # noqa: E402
    DIGIT_LEVELS,
    DIGITS_MODELS,
    _shape_for,
    build_digits_model,
    digits_splits,
    num_params,
    sample_images,
    train_digits_model,
)
from flowlib.io import load_checkpoint, save_checkpoint  # noqa: E402

DEFAULT_OUT = ROOT / "chapters" / "06_image_flows" / "checkpoints"
MODELS = ("NICE", "RealNVP", "Glow")
SEEDS = (0, 1, 2)
STEPS = 800
BATCH = 128
LR = 2e-3
EVAL_EVERY = 50
TEST_DRAWS = 8
PAIRS = (("RealNVP", "NICE"), ("Glow", "NICE"), ("Glow", "RealNVP"))
COST = {"NICE": 0.1, "RealNVP": 1.3, "Glow": 1.0}  # relative seconds per step, measured; to balance --jobs


def run_name(name: str, seed: int) -> str:
    return f"{name.lower()}_s{seed}"


def sampling_time(model, n=1000, repeats=3) -> float:
    """Median seconds to draw ``n`` samples (``torch.no_grad``)."""
    times = []
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        start = time.perf_counter()
        sample_images(model, n, generator=g)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def per_image_bpd(model, y: torch.Tensor, draws: int = TEST_DRAWS) -> torch.Tensor:
    """Bits/dim of each test image (float64), averaged over its ``draws`` noise draws. ``y`` comes from
    ``heldout``: draw ``k`` of image ``i`` is row ``k * n + i``."""
    was = model.training
    model.eval()
    lp = torch.cat([model.log_prob(_shape_for(model, c)) for c in y.split(2048)]).double()
    model.train(was)
    d = y[0].numel()
    bpd = (-lp + d * math.log(DIGIT_LEVELS)) / (d * math.log(2))
    return bpd.reshape(draws, -1).mean(0)


def train_one(name: str, seed: int, steps: int, out: Path, data) -> None:
    """Train one run and write its checkpoint and its training record."""
    DIGITS_MODELS[name].update(batch_size=BATCH, lr=LR)
    load0 = os.getloadavg()[0]
    print(f"{name} seed {seed}: training {steps} steps of {BATCH} images ...", flush=True)
    model, hist = train_digits_model(name, steps, seed=seed, patience=None, eval_every=EVAL_EVERY, data=data)
    val_bpd = hist["best_val_loss"] / (64 * math.log(2)) + math.log2(DIGIT_LEVELS)
    spec = DIGITS_MODELS[name]
    record = {
        "model": name,
        "seed": seed,
        "steps_run": hist["steps"],
        "batch_size": BATCH,
        "lr": LR,
        "lr_schedule": "cosine",
        "eval_every": EVAL_EVERY,
        "patience": None,
        "best_step": hist["best_step"],
        "val_bpd": round(val_bpd, 4),
        "train_time_s": round(hist["wall_time"], 1),
        "load_average_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
        "machine": platform.machine(),
        "config": {"builder": spec["builder"].__name__,
                   "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in spec["kwargs"].items()}},
    }
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out / f"{run_name(name, seed)}.pt", flow=name, seed=seed, best_step=hist["best_step"])
    (out / f"{run_name(name, seed)}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name} seed {seed}: val {val_bpd:.4f} bits/dim, best step {hist['best_step']}, "
          f"{record['train_time_s']} s", flush=True)


def _summary(values):
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def verdict(a: str, b: str, diffs: list[dict], rows: dict) -> str:
    """What the seeds and the paired standard errors allow one to say about ``a`` vs ``b`` (lower is better).

    ``a`` is called better only if every seed's paired difference is below ``-2 se`` *and* the min-max ranges
    of the two models' test bits/dim over seeds do not overlap; worse likewise; anything else is a tie."""
    ra, rb = rows[a]["test_bpd"], rows[b]["test_bpd"]
    if all(d["diff"] < -2 * d["se"] for d in diffs) and ra["max"] < rb["min"]:
        return f"{a} better than {b}"
    if all(d["diff"] > 2 * d["se"] for d in diffs) and ra["min"] > rb["max"]:
        return f"{b} better than {a}"
    return f"{a} and {b}: a tie at this budget"


def make_table(out: Path, models=MODELS, seeds=SEEDS, timing: bool = True) -> dict:
    """Compute ``results.json`` from the checkpoints and training records in ``out``."""
    _, _, test = digits_splits(test_draws=TEST_DRAWS)
    n = test.shape[0] // TEST_DRAWS
    per_image, runs = {}, {}
    for name, seed in itertools.product(models, seeds):
        rec = json.loads((out / f"{run_name(name, seed)}.json").read_text())
        model = build_digits_model(name, seed)
        load_checkpoint(model, out / f"{run_name(name, seed)}.pt")
        b = per_image_bpd(model, test)
        per_image[name, seed] = b
        rec.update(
            test_bpd=round(float(b.mean()), 4),
            test_se=round(float(b.std() / math.sqrt(n)), 4),
            params=num_params(model),
        )
        if timing:
            rec["sample_time_1000_s"] = round(sampling_time(model), 4)
        runs[run_name(name, seed)] = rec
    table = {}
    for name in models:
        rs = [runs[run_name(name, s)] for s in seeds]
        table[name] = {
            "test_bpd": _summary([r["test_bpd"] for r in rs]),
            "test_se": _summary([r["test_se"] for r in rs]),
            "val_bpd": _summary([r["val_bpd"] for r in rs]),
            "best_step": [r["best_step"] for r in rs],
            "params": rs[0]["params"],
            "train_time_s": _summary([r["train_time_s"] for r in rs]),
        }
        if timing:
            table[name]["sample_time_1000_s"] = _summary([r["sample_time_1000_s"] for r in rs])
    paired = {}
    for a, b in PAIRS:
        if a not in models or b not in models:
            continue
        diffs = []
        for s in seeds:
            d = per_image[a, s] - per_image[b, s]
            diffs.append({"seed": s, "diff": round(float(d.mean()), 4), "se": round(float(d.std() / math.sqrt(n)), 4)})
        paired[f"{a} - {b}"] = {"per_seed": diffs, "verdict": verdict(a, b, diffs, table)}
    return {
        "protocol": {
            "data": "flowlib.data.digits, fixed split 1258/270/269, 17 levels, Logit(alpha=0.05)",
            "steps": STEPS, "batch_size": BATCH, "examples_seen": STEPS * BATCH, "lr": LR,
            "lr_schedule": "cosine to 0", "optimizer": "Adam", "clip_grad_norm": 100.0,
            "early_stopping": None, "eval_every": EVAL_EVERY, "restore_best": True,
            "val_draws": 4, "test_draws": TEST_DRAWS, "seeds": list(seeds),
            "seed_sets": "initialisation, minibatch order, training dequantisation noise",
            "se": "std of the per-image test bits/dim (mean over the noise draws) / sqrt(269)",
            "tie_rule": "better only if every seed's paired difference is beyond 2 se and the seed ranges do not "
                        "overlap; otherwise a tie",
        },
        "models": table,
        "paired": paired,
        "runs": runs,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=None, metavar="MODEL:SEED",
                        help="train only these runs (default: every model and seed), then stop (no table)")
    parser.add_argument("--jobs", type=int, default=1, help="train in this many processes (one thread each)")
    parser.add_argument("--steps", type=int, default=STEPS, help="step budget (a quick try only: the table "
                        "states STEPS)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--table-only", action="store_true",
                        help="do not train: recompute results.json from the checkpoints in --out")
    parser.add_argument("--no-timing", action="store_true", help="with --table-only: skip the sampling times")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # deterministic, and faster than two threads on a shared 2-core machine

    if args.runs is not None:
        runs = []
        for r in args.runs:
            name, _, seed = r.partition(":")
            if name not in MODELS or not seed.isdigit():
                parser.error(f"--runs takes MODEL:SEED with MODEL in {MODELS}, got {r!r}")
            runs.append((name, int(seed)))
        data = digits_splits()
        for name, seed in runs:
            train_one(name, seed, args.steps, args.out, data)
        return 0

    start = time.perf_counter()
    if not args.table_only:
        todo = sorted(itertools.product(MODELS, SEEDS), key=lambda r: -COST[r[0]])
        groups, loads = [[] for _ in range(max(1, args.jobs))], [0.0] * max(1, args.jobs)
        for r in todo:  # longest first, to the least loaded process
            k = loads.index(min(loads))
            groups[k].append(f"{r[0]}:{r[1]}")
            loads[k] += COST[r[0]]
        cmd = [sys.executable, __file__, "--steps", str(args.steps), "--out", str(args.out), "--runs"]
        procs = [subprocess.Popen(cmd + g) for g in groups if g]
        if any(p.wait() != 0 for p in procs):
            print("a training process failed", file=sys.stderr)
            return 1
    results = make_table(args.out, timing=not args.no_timing)
    if not args.table_only:
        results["training_command_wall_time_s"] = round(time.perf_counter() - start, 1)
    elif (args.out / "results.json").is_file():
        old = json.loads((args.out / "results.json").read_text())
        if "training_command_wall_time_s" in old:
            results["training_command_wall_time_s"] = old["training_command_wall_time_s"]
    results["protocol"]["steps"] = results["runs"][run_name(MODELS[0], SEEDS[0])]["steps_run"]
    results["protocol"]["examples_seen"] = results["protocol"]["steps"] * BATCH
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for name, row in results["models"].items():
        t = row["test_bpd"]
        print(f"{name:8s} test {t['median']:.4f} [{t['min']:.4f}, {t['max']:.4f}] bits/dim, "
              f"se {row['test_se']['median']:.4f}, {row['params']} params, best steps {row['best_step']}")
    for pair, p in results["paired"].items():
        print(pair, ", ".join(f"s{d['seed']}: {d['diff']:+.4f} +- {d['se']:.4f}" for d in p["per_seed"]),
              "->", p["verdict"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
