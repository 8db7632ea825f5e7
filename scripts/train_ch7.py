"""Chapter 7's comparison: a coupling flow, an i-ResNet and a CNF on one 2-D density (two moons).

    .venv/bin/python scripts/train_ch7.py            # full run (minutes on a 2-core CPU), rewrites the results
    .venv/bin/python scripts/train_ch7.py --quick    # a few steps, to check that everything runs

Writes, under ``chapters/07_residual_continuous/results/``:

* ``coupling.pt``, ``iresnet.pt``, ``cnf.pt``: ``flowlib.save_checkpoint`` files (state dicts, a few tens of kB);
* ``comparison.json``: one row per model (parameters, test NLL, training time, sampling time, NFE) plus the
  exact test NLL of the data's own density, the training curves (subsampled) and the settings.

The three models have about the same number of parameters (4.5k to 4.9k) and are trained with the same
optimiser, batch size and number of steps. ``build_models`` is also used by the lecture notebook (through
``runpy``) to rebuild the architectures before loading the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from flowlib import Compose, Flow, StandardNormal, load_checkpoint, save_checkpoint
from flowlib.data import two_moons, two_moons_log_prob
from flowlib.models import realnvp
from flowlib.train import evaluate, fit
from flowlib.transforms import CNF, IResBlock

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chapters" / "07_residual_continuous" / "results"
NAMES = ("coupling", "iresnet", "cnf")
LABELS = {"coupling": "RealNVP (affine coupling)", "iresnet": "i-ResNet", "cnf": "CNF (FFJORD, exact trace)"}

# one place for every setting, stored in the JSON with the results
SETTINGS = {
    "data": "flowlib.data.two_moons(noise=0.1)",
    "n_train": 5000,
    "n_val": 2000,
    "n_test": 10000,
    "seeds": {"train": 0, "val": 1, "test": 2, "init": 0, "batches": 0, "sampling": 3},
    "steps": 1000,
    "batch_size": 256,
    "lr": 2e-3,
    "lr_schedule": "cosine",
    "n_samples_timed": 10000,
    "cnf_tolerance_train": 1e-3,
    "cnf_tolerance_eval": 1e-5,
    "threads": 1,
}


def build_models(tol: float = SETTINGS["cnf_tolerance_train"]) -> dict[str, Flow]:
    """The three architectures, freshly initialised from ``torch.manual_seed(SETTINGS['seeds']['init'])``."""
    torch.manual_seed(SETTINGS["seeds"]["init"])
    coupling = realnvp(2, num_layers=4, hidden=(32, 32))
    iresnet = Flow(
        Compose(*[IResBlock(2, hidden=(32, 32), lipschitz=0.9, logdet="exact") for _ in range(4)]),
        StandardNormal(2),
    )
    cnf = Flow(CNF(2, hidden=(64, 64), trace="exact", solver="dopri5", atol=tol, rtol=tol), StandardNormal(2))
    return {"coupling": coupling, "iresnet": iresnet, "cnf": cnf}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def datasets():
    s = SETTINGS["seeds"]
    return (
        two_moons(SETTINGS["n_train"], seed=s["train"]),
        two_moons(SETTINGS["n_val"], seed=s["val"]),
        two_moons(SETTINGS["n_test"], seed=s["test"]),
    )


def _subsample(values, n: int = 200):
    step = max(1, len(values) // n)
    return [[i, float(values[i])] for i in range(0, len(values), step)]


def train_one(name: str, model: Flow, train, val, steps: int) -> dict:
    """Train with ``flowlib.fit``; for the CNF also record the number of function evaluations per step."""
    nfe = []

    def loss_fn(m, batch):
        if name == "cnf":
            m.transform.odefunc.nfe = 0
        loss = -m.log_prob(batch).mean()
        if name == "cnf" and m.training:
            nfe.append(m.transform.odefunc.nfe)
        return loss

    hist = fit(model, train, val_data=val, loss_fn=loss_fn, steps=steps, batch_size=SETTINGS["batch_size"],
               lr=SETTINGS["lr"], lr_schedule=SETTINGS["lr_schedule"], eval_every=max(1, steps // 5),
               seed=SETTINGS["seeds"]["batches"], progress=False)
    return {"history": hist, "nfe": nfe}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def sampling_time(model: Flow, n: int, device="cpu") -> float:
    model.eval()
    gen = torch.Generator().manual_seed(SETTINGS["seeds"]["sampling"])
    z = torch.randn(n, 2, generator=gen).to(device)  # the base is a standard normal
    _sync(device)
    start = time.perf_counter()
    x, _ = model.transform.inverse(z)
    _sync(device)
    elapsed = time.perf_counter() - start
    if not torch.isfinite(x).all():
        raise FloatingPointError("non-finite samples")
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only (checks that it runs)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--device", default="cpu", help="where to train and time (default cpu, one thread)")
    args = parser.parse_args(argv)
    torch.set_num_threads(SETTINGS["threads"])
    device = torch.device(args.device)
    steps = 20 if args.quick else SETTINGS["steps"]
    train, val, test = (t.to(device) for t in datasets())
    exact = -float(two_moons_log_prob(test.double().cpu()).mean())
    models = {name: m.to(device) for name, m in build_models().items()}
    rows, curves = [], {}
    for name in NAMES:
        model = models[name]
        out = train_one(name, model, train, val, steps)
        hist = out["history"]
        path = save_checkpoint(model, args.out / f"{name}.pt", steps=steps, data=SETTINGS["data"])
        # evaluate a reloaded copy, so the numbers are those of the committed files
        fresh = build_models(tol=SETTINGS["cnf_tolerance_eval"])[name].to(device)
        load_checkpoint(fresh, path)
        if name == "cnf":
            fresh.transform.odefunc.nfe = 0
        test_nll = evaluate(fresh, test, batch_size=2500)
        eval_nfe = fresh.transform.odefunc.nfe / math.ceil(len(test) / 2500) if name == "cnf" else None
        t_sample = sampling_time(fresh, SETTINGS["n_samples_timed"], device)
        rows.append({
            "name": name,
            "label": LABELS[name],
            "params": n_params(fresh),
            "test_nll": test_nll,
            "train_time_s": hist["wall_time"],
            "sample_time_s": t_sample,
            "best_val_nll": hist["best_val_loss"],
            "nfe_per_eval_batch": eval_nfe,
            "checkpoint_bytes": path.stat().st_size,
        })
        curves[name] = {"train_loss": _subsample(hist["train_loss"]),
                        "val_loss": [[s, v] for s, v in zip(hist["val_step"], hist["val_loss"])]}
        if name == "cnf":
            curves[name]["nfe"] = _subsample(out["nfe"])
        print(f"{name:9s} params {rows[-1]['params']:5d}  test NLL {test_nll:.4f}  train {hist['wall_time']:.1f} s"
              f"  sample {t_sample:.3f} s", flush=True)
    result = {
        "exact_test_nll": exact,
        "rows": rows,
        "curves": curves,
        "settings": {**SETTINGS, "steps": steps, "quick": args.quick},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.machine(), "device": str(device),
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
    }
    (args.out / "comparison.json").write_text(json.dumps(result, indent=1) + "\n")
    written = (args.out / "comparison.json").resolve()
    # relative to the repository: a log pasted into the book must not show the path of this machine's checkout
    shown = written.relative_to(ROOT) if written.is_relative_to(ROOT) else written.name
    print(f"exact test NLL {exact:.4f}; wrote {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
