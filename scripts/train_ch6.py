"""Train chapter 6's three image flows (NICE, RealNVP, Glow) on the 8x8 digits and write the comparison table.

    nice -n 10 .venv/bin/python scripts/train_ch6.py     # all three (or: make train-ch06)
    # 36 min measured on a heavily shared 2-core CPU (load average 10-18); much less on an idle machine
    .venv/bin/python scripts/train_ch6.py --models NICE --steps 200 --out /tmp/ch6   # a quick try

Protocol (the same as ``benchmarks/flows.py``, so the numbers compare with benchmarks/RESULTS.md):
``flowlib.data.digits(seed=0)`` train/val/test split (1258/270/269), 17 levels dequantised
``y = (x + u) / 17``, ``Logit(alpha=0.05)`` as the models' first layer, bits/dim with the ``log 17`` offset.
Validation: 4 fixed noise draws per image; test: 8. ``flowlib.fit`` (Adam, cosine learning-rate decay) with
early stopping (patience 10 evaluations, one every 50 steps), best parameters restored.
CPU, one thread, everything seeded.

Writes to ``--out`` (default ``chapters/06_image_flows/checkpoints/``): ``<model>.pt`` (``flowlib.save_checkpoint``:
``state_dict`` plus the figures as metadata) and ``results.json`` (the table of lecture 3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowlib.image_flows import (  # noqa: E402
    DIGITS_MODELS,
    digits_bits_per_dim,
    digits_splits,
    num_params,
    sample_images,
    train_digits_model,
)
from flowlib.io import save_checkpoint  # noqa: E402

DEFAULT_OUT = ROOT / "chapters" / "06_image_flows" / "checkpoints"
STEPS = {"NICE": 2000, "RealNVP": 800, "Glow": 1000}


def sampling_time(model, n=1000, repeats=3) -> float:
    """Median seconds to draw ``n`` samples (``torch.no_grad``)."""
    times = []
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        start = time.perf_counter()
        sample_images(model, n, generator=g)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DIGITS_MODELS), choices=list(DIGITS_MODELS))
    parser.add_argument("--steps", type=int, default=None, help="override the step budget of every model")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=json.loads, default={},
                        help='JSON overrides, e.g. \'{"Glow": {"lr": 2e-3, "kwargs": {"hidden_channels": 64}}}\'')
    args = parser.parse_args(argv)
    for name, over in args.config.items():
        DIGITS_MODELS[name].update({k: v for k, v in over.items() if k != "kwargs"})
        DIGITS_MODELS[name]["kwargs"].update(over.get("kwargs", {}))

    torch.set_num_threads(1)  # deterministic, and faster than two threads on a shared 2-core machine
    data = digits_splits()
    _, _, test = data
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in args.models:
        steps = args.steps or STEPS[name]
        print(f"{name}: training for at most {steps} steps ...", flush=True)
        model, hist = train_digits_model(name, steps, seed=args.seed, data=data)
        test_bpd = digits_bits_per_dim(model, test)
        val_bpd = hist["best_val_loss"] / (64 * torch.log(torch.tensor(2.0)).item()) + torch.log2(
            torch.tensor(17.0)
        ).item()
        row = {
            "test_bpd": round(test_bpd, 4),
            "val_bpd": round(val_bpd, 4),
            "params": num_params(model),
            "train_time_s": round(hist["wall_time"], 1),
            "steps_run": hist["steps"],
            "best_step": hist["best_step"],
            "stopped_early": hist["stopped_early"],
            "sample_time_1000_s": round(sampling_time(model), 4),
            "config": {k: (v if k != "builder" else v.__name__) for k, v in DIGITS_MODELS[name].items()},
            "seed": args.seed,
        }
        kwargs = row["config"]["kwargs"]
        row["config"]["kwargs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        save_checkpoint(model, args.out / f"{name.lower()}.pt", test_bpd=row["test_bpd"], best_step=hist["best_step"])
        results[name] = row
        print(f"{name}: test {test_bpd:.4f} bits/dim (val {val_bpd:.4f}), {row['params']} parameters, "
              f"{row['train_time_s']} s for {hist['steps']} steps (best at {hist['best_step']}), "
              f"sampling 1000 in {row['sample_time_1000_s']} s", flush=True)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
