"""Chapter 7's comparison: a coupling flow, an i-ResNet and a CNF on one 2-D density (two moons), three seeds each.

    .venv/bin/python scripts/train_ch7.py              # train 3 models x 3 seeds on the CPU, then evaluate (~10-25 min)
    .venv/bin/python scripts/train_ch7.py --evaluate   # only re-evaluate the committed checkpoints (~30 s)
    .venv/bin/python scripts/train_ch7.py --quick      # a few steps, one seed, into a scratch folder (checks it runs)

The protocol (issue 22, the same for every comparison of the book): every model gets the same budget (``steps``
Adam steps at batch ``batch_size``, learning rate ``lr`` with cosine decay, one CPU thread), is validated every
``eval_every`` steps on a separate validation set, and the parameters of its best validation evaluation are restored
at the end; three seeds per model (the seed sets the initialisation and the minibatch order; the data are the same).

Writes, under ``chapters/07_residual_continuous/results/``:

* ``{coupling,iresnet,cnf}_s{0,1,2}.pt``: ``flowlib.save_checkpoint`` files (state dicts, 20-40 kB each);
* ``train_runs.json``: per run, the training record (wall time, CPU load before and after, the subsampled training
  and validation curves, the CNF's function evaluations per step), written after every run;
* ``comparison_points.pt``: per model a ``(seeds, n_test)`` float32 tensor of per-point test NLLs (nats);
* ``comparison.json``: per run the test NLL, its gap to the exact NLL (the data's own density) with the standard
  error over test points, the sampling time, the solver check; per model the median and min-max over seeds; per
  pair of models the paired per-point difference with its standard error, and the verdict the protocol allows.

The evaluation (``--evaluate``, and the second half of a full run) reads only the checkpoints and ``train_runs.json``,
so the table in lecture 7.2 is regenerated from committed files; ``tests/test_ch07_comparison.py`` re-evaluates the
checkpoints and checks the committed numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from flowlib import Compose, Flow, StandardNormal, load_checkpoint, save_checkpoint
from flowlib.data import two_moons, two_moons_log_prob
from flowlib.models import realnvp
from flowlib.train import fit
from flowlib.transforms import CNF, ActNorm, IResBlock

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chapters" / "07_residual_continuous" / "results"
NAMES = ("coupling", "iresnet", "cnf")
LABELS = {"coupling": "RealNVP (affine coupling)", "iresnet": "i-ResNet (ActNorm between blocks)",
          "cnf": "CNF (FFJORD, exact trace)"}
PAIRS = (("coupling", "iresnet"), ("cnf", "coupling"), ("cnf", "iresnet"))

# one place for every setting, stored in the JSON with the results
SETTINGS = {
    "data": "flowlib.data.two_moons(noise=0.1)",
    "n_train": 5000,
    "n_val": 2000,
    "n_test": 10000,
    "data_seeds": {"train": 0, "val": 1, "test": 2, "sampling": 3},
    "seeds": [0, 1, 2],
    "steps": 1000,
    "batch_size": 256,
    "lr": 2e-3,
    "lr_schedule": "cosine",
    "eval_every": 100,
    "eval_batch": 1000,
    "n_samples_timed": 10000,
    "cnf_solver": "dopri5",
    "cnf_tolerance_train": 1e-3,
    "cnf_tolerance_eval": 1e-5,
    "cnf_tolerance_check": 1e-7,
    "n_check": 1000,
    "threads": 1,
}


def build_model(name: str, seed: int = 0, tol: float = SETTINGS["cnf_tolerance_train"]) -> Flow:
    """One of the three architectures, initialised from ``torch.manual_seed(seed)``.

    * coupling: RealNVP, four affine couplings with (32, 32) conditioners (4744 parameters);
    * iresnet: as Behrmann et al. (2019) build it for density estimation, an ActNorm layer (data-initialised on the
      first training batch it sees) before each of four ``IResBlock``s and one after the last, so the total scale is
      free; residual branches (31, 31) wide, spectrally normalised to 0.9 per layer, exact log-det (4616 parameters);
    * cnf: FFJORD with an exact trace, a (64, 64) tanh vector field, dopri5 at tolerance ``tol`` (4546 parameters).
    """
    if name not in NAMES:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    torch.manual_seed(seed)
    if name == "coupling":
        return realnvp(2, num_layers=4, hidden=(32, 32))
    if name == "iresnet":
        layers = []
        for _ in range(4):
            layers += [ActNorm(2), IResBlock(2, hidden=(31, 31), lipschitz=0.9, logdet="exact")]
        return Flow(Compose(*layers, ActNorm(2)), StandardNormal(2))
    return Flow(CNF(2, hidden=(64, 64), trace="exact", solver=SETTINGS["cnf_solver"], atol=tol, rtol=tol),
                StandardNormal(2))


def build_models(tol: float = SETTINGS["cnf_tolerance_train"], seed: int = 0) -> dict[str, Flow]:
    """The three architectures with the initialisation of ``seed``."""
    return {name: build_model(name, seed, tol) for name in NAMES}


def checkpoint_path(out: Path, name: str, seed: int) -> Path:
    return Path(out) / f"{name}_s{seed}.pt"


def load_trained(name: str, seed: int = 0, tol: float = SETTINGS["cnf_tolerance_eval"], out: Path = OUT) -> Flow:
    """A committed model, in eval mode (the CNF solving at tolerance ``tol``)."""
    model = build_model(name, seed, tol)
    load_checkpoint(model, checkpoint_path(out, name, seed))
    return model.eval()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def datasets():
    s = SETTINGS["data_seeds"]
    return (two_moons(SETTINGS["n_train"], seed=s["train"]), two_moons(SETTINGS["n_val"], seed=s["val"]),
            two_moons(SETTINGS["n_test"], seed=s["test"]))


def exact_nll(x: torch.Tensor) -> torch.Tensor:
    """Per-point NLL (nats) of the data's own density, float64."""
    return -two_moons_log_prob(x.double())


def _subsample(values, n: int = 120):
    step = max(1, len(values) // n)
    return [[i, round(float(values[i]), 5)] for i in range(0, len(values), step)]


def train_one(name: str, model: Flow, train, val, steps: int, seed: int = 0) -> dict:
    """Train with ``flowlib.fit`` under the protocol; for the CNF also record the function evaluations per step."""
    nfe = []

    def loss_fn(m, batch):
        if name == "cnf":
            m.transform.odefunc.nfe = 0
        loss = -m.log_prob(batch).mean()
        if name == "cnf" and m.training:
            nfe.append(m.transform.odefunc.nfe)
        return loss

    hist = fit(model, train, val_data=val, loss_fn=loss_fn, steps=steps, batch_size=SETTINGS["batch_size"],
               lr=SETTINGS["lr"], lr_schedule=SETTINGS["lr_schedule"],
               eval_every=min(SETTINGS["eval_every"], steps), restore_best=True, seed=seed, progress=False)
    return {"history": hist, "nfe": nfe}


@torch.no_grad()
def per_point_nll(model: Flow, x: torch.Tensor, batch: int = SETTINGS["eval_batch"]) -> torch.Tensor:
    """``-log p(x)`` per point (float32), in batches of ``batch`` (a CNF's adaptive steps are chosen per batch)."""
    model.eval()
    return torch.cat([-model.log_prob(chunk) for chunk in x.split(batch)])


@torch.no_grad()
def sampling_time(model: Flow, n: int) -> float:
    model.eval()
    gen = torch.Generator().manual_seed(SETTINGS["data_seeds"]["sampling"])
    z = torch.randn(n, 2, generator=gen)  # the base is a standard normal
    start = time.perf_counter()
    x, _ = model.transform.inverse(z)
    elapsed = time.perf_counter() - start
    if not torch.isfinite(x).all():
        raise FloatingPointError("non-finite samples")
    return elapsed


def _stats(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(points: dict, exact: torch.Tensor, seeds) -> dict:
    """Every figure of the table from the per-point NLLs (``points[name]``: ``(len(seeds), n)``) and the exact NLL."""
    exact = exact.double()
    n = exact.numel()
    runs, models = {}, {}
    for name in NAMES:
        nll = points[name].double()
        runs[name] = []
        for k, seed in enumerate(seeds):
            gap = nll[k] - exact
            runs[name].append({"seed": seed, "test_nll": float(nll[k].mean()), "gap": float(gap.mean()),
                               "gap_se": float(gap.std() / n ** 0.5)})
        models[name] = {key: _stats([r[key] for r in runs[name]]) for key in ("test_nll", "gap", "gap_se")}
    pairs = []
    for a, b in PAIRS:
        diffs = []
        for k, seed in enumerate(seeds):
            d = points[a][k].double() - points[b][k].double()
            diffs.append({"seed": seed, "diff": float(d.mean()), "se": float(d.std() / n ** 0.5)})
        ma, mb = models[a]["test_nll"], models[b]["test_nll"]
        separated = ma["max"] < mb["min"] or mb["max"] < ma["min"]
        beyond_2se = all(abs(d["diff"]) > 2 * d["se"] for d in diffs)
        same_sign = len({d["diff"] > 0 for d in diffs}) == 1
        if separated and beyond_2se and same_sign:
            verdict = f"{a if diffs[0]['diff'] < 0 else b} lower"
        else:
            verdict = "tie"
        pairs.append({"a": a, "b": b, "per_seed": diffs, "diff": _stats([d["diff"] for d in diffs]),
                      "se_max": max(d["se"] for d in diffs), "verdict": verdict})
    return {"runs": runs, "models": models, "pairs": pairs}


def _load_now() -> float:
    return round(os.getloadavg()[0], 2)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_all(out: Path, steps: int, seeds) -> None:
    train, val, _ = datasets()
    record_path = out / "train_runs.json"
    record = {"settings": {**SETTINGS, "steps": steps, "seeds": list(seeds)}, "runs": {}}
    for seed in seeds:  # seed-major: a cut run still holds every model for the seeds it finished
        for name in NAMES:
            model = build_model(name, seed)
            load_before = _load_now()
            res = train_one(name, model, train, val, steps, seed)
            hist = res["history"]
            save_checkpoint(model, checkpoint_path(out, name, seed), steps=steps, seed=seed, data=SETTINGS["data"])
            run = {"train_time_s": round(hist["wall_time"], 2), "load_before": load_before, "load_after": _load_now(),
                   "best_step": hist["best_step"], "best_val_nll": hist["best_val_loss"],
                   "train_loss": _subsample(hist["train_loss"]),
                   "val_loss": [[s, v] for s, v in zip(hist["val_step"], hist["val_loss"])]}
            if name == "cnf":
                run["nfe"] = _subsample(res["nfe"])
            record["runs"][f"{name}_s{seed}"] = run
            record_path.write_text(json.dumps(record, indent=1) + "\n")
            print(f"{name:9s} seed {seed}: {hist['wall_time']:7.1f} s  best val NLL {hist['best_val_loss']:.4f} "
                  f"at step {hist['best_step']}  load {load_before} -> {run['load_after']}", flush=True)


def evaluate_all(out: Path) -> dict:
    """Re-evaluate the checkpoints under ``out``; write ``comparison_points.pt`` and ``comparison.json``."""
    record = json.loads((out / "train_runs.json").read_text())
    seeds = record["settings"]["seeds"]
    _, _, test = datasets()
    exact = exact_nll(test)
    points, extra = {}, {}
    for name in NAMES:
        rows = []
        for seed in seeds:
            model = load_trained(name, seed, out=out)
            if name == "cnf":
                model.transform.odefunc.nfe = 0
            nll = per_point_nll(model, test)
            row = {"params": n_params(model), "checkpoint_bytes": checkpoint_path(out, name, seed).stat().st_size,
                   "sample_time_s": round(sampling_time(model, SETTINGS["n_samples_timed"]), 4),
                   "test_nll_first_check": float(nll[: SETTINGS["n_check"]].double().mean())}
            if name == "cnf":
                row["nfe_per_eval_batch"] = model.transform.odefunc.nfe / len(test.split(SETTINGS["eval_batch"]))
                tight = load_trained(name, seed, tol=SETTINGS["cnf_tolerance_check"], out=out)
                ref = per_point_nll(tight, test[: SETTINGS["n_check"]])
                row["tolerance_check_abs_diff"] = abs(float(ref.double().mean()) - row["test_nll_first_check"])
                row["tolerance_check_max_point_diff"] = float((ref - nll[: SETTINGS["n_check"]]).abs().max())
            rows.append(row)
            points.setdefault(name, []).append(nll)
            print(f"evaluated {name} seed {seed}: test NLL {float(nll.double().mean()):.4f}", flush=True)
        points[name] = torch.stack(points[name]).float()
        extra[name] = rows
    summary = summarise(points, exact, seeds)
    for name in NAMES:
        for run, row in zip(summary["runs"][name], extra[name]):
            run.update(row)
            run.update({k: record["runs"][f"{name}_s{run['seed']}"][k]
                        for k in ("train_time_s", "load_before", "load_after", "best_step", "best_val_nll")})
        runs = summary["runs"][name]
        summary["models"][name].update({
            "label": LABELS[name], "params": runs[0]["params"],
            "train_time_s": _stats([r["train_time_s"] for r in runs]),
            "sample_time_s": _stats([r["sample_time_s"] for r in runs]),
        })
    loads = [v for r in record["runs"].values() for v in (r["load_before"], r["load_after"])]
    result = {
        "exact_test_nll": float(exact.mean()),
        **summary,
        "settings": record["settings"],
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": SETTINGS["threads"],
                    "load_during_training": {"min": min(loads), "max": max(loads)},
                    "shared": "the course's shared 2-core machine, other helpers' trainings beside this one"},
    }
    torch.save(points, out / "comparison_points.pt")
    (out / "comparison.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="20 steps, one seed (checks that everything runs)")
    group.add_argument("--evaluate", action="store_true", help="only re-evaluate the checkpoints under --out")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: the chapter's; with --quick a scratch folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(SETTINGS["threads"])
    out = args.out or (Path(tempfile.mkdtemp(prefix="ch7_quick_")) if args.quick else OUT)
    out.mkdir(parents=True, exist_ok=True)
    if not args.evaluate:
        train_all(out, steps=20 if args.quick else SETTINGS["steps"],
                  seeds=SETTINGS["seeds"][:1] if args.quick else SETTINGS["seeds"])
    start = time.perf_counter()
    result = evaluate_all(out)
    for name in NAMES:
        m = result["models"][name]
        print(f"{name:9s} params {m['params']:5d}  test NLL median {m['test_nll']['median']:.4f} "
              f"[{m['test_nll']['min']:.4f}, {m['test_nll']['max']:.4f}]  gap {m['gap']['median']:.4f} "
              f"(se {m['gap_se']['median']:.4f})  train {m['train_time_s']['median']:.1f} s")
    for p in result["pairs"]:
        print(f"{p['a']} - {p['b']}: {p['diff']['median']:+.4f} [{p['diff']['min']:+.4f}, {p['diff']['max']:+.4f}]"
              f" (se <= {p['se_max']:.4f}): {p['verdict']}")
    written = (out / "comparison.json").resolve()
    # relative to the repository: a log pasted into the book must not show the path of this machine's checkout
    shown = written.relative_to(ROOT) if written.is_relative_to(ROOT) else written.name
    print(f"exact test NLL {result['exact_test_nll']:.4f}; evaluated in {time.perf_counter() - start:.0f} s; "
          f"wrote {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
