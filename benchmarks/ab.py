"""Interleaved A/B timing of flowlib against an earlier revision of itself, in one process.

``git archive REV flowlib`` is unpacked into a temporary folder as the package ``flowlib_old`` (imports
rewritten), both versions build the same model (the old one's weights, perturbed away from the
initialisation, are loaded into the new one, so both compute the same function), and the calls alternate
old, new, new, old, ... under ``torch.no_grad()``. Reported: the median and the 10th-90th percentiles of the
per-pair ratios new / old, and the medians of both; ``--profile`` adds torch.profiler's top operators of both.

    .venv/bin/python benchmarks/ab.py --rev HEAD~1 --case digits-maf --what log_prob sample --threads 1 2
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

CASES = {  # name: (dim, builder(lib) -> Flow); the benchmark's architectures (benchmarks/flows.py)
    "moons-maf": (2, lambda lib: lib.transforms.autoregressive.maf(2, num_layers=5, hidden=(64, 64))),
    "digits-maf": (64, lambda lib: lib.transforms.autoregressive.maf(64, num_layers=5, hidden=(64, 64))),
    "moons-realnvp": (2, lambda lib: lib.models.realnvp(2, num_layers=8, hidden=(64, 64))),
    "digits-realnvp": (64, lambda lib: lib.models.realnvp(64, num_layers=8, hidden=(64, 64))),
    "moons-nsf-coupling": (2, lambda lib: _spline_coupling(lib, 2)),
    "digits-nsf-coupling": (64, lambda lib: _spline_coupling(lib, 64)),
    "moons-nsf-maf": (2, lambda lib: lib.transforms.autoregressive.spline_maf(2, 5, (64, 64), num_bins=8, bound=3.0)),
}


def _spline_coupling(lib, dim):
    t = lib.transforms
    layers = [t.coupling.SplineCoupling(t.coupling.half_mask(dim, first=k % 2 == 0), (64, 64), num_bins=8, bound=3.0)
              for k in range(8)]
    return lib.flow.Flow(t.base.Compose(*layers), lib.distributions.StandardNormal((dim,)))


def old_flowlib(rev: str):
    """``flowlib`` at ``rev`` as the package ``flowlib_old``."""
    tmp = Path(tempfile.mkdtemp(prefix="flowlib_old_"))
    data = subprocess.run(["git", "archive", rev, "flowlib"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp, filter="data")
    (tmp / "flowlib").rename(tmp / "flowlib_old")
    for f in (tmp / "flowlib_old").rglob("*.py"):
        text = f.read_text().replace("from flowlib", "from flowlib_old")
        f.write_text(text.replace("import flowlib", "import flowlib_old"))
    sys.path.insert(0, str(tmp))
    return importlib.import_module("flowlib_old")


def load_libs(rev):
    sys.path.insert(0, str(ROOT))
    new = importlib.import_module("flowlib")
    old = old_flowlib(rev)
    for lib in (new, old):
        for m in ("models", "flow", "distributions", "transforms.autoregressive", "transforms.coupling",
                  "transforms.base", "testing"):
            importlib.import_module(f"{lib.__name__}.{m}")
    return old, new


def models(case, old, new):
    dim, build = CASES[case]
    torch.manual_seed(0)
    m_old = build(old)
    old.testing.perturb_parameters(m_old, 0.1)
    m_new = build(new)
    m_new.load_state_dict(m_old.state_dict())
    x = torch.randn(10_000, dim, generator=torch.Generator().manual_seed(1)) * (1.5 if dim > 2 else 1.0)
    with torch.no_grad():
        gap = (m_old.log_prob(x[:500]) - m_new.log_prob(x[:500])).abs().max().item()
    return m_old, m_new, x, gap


def call(model, what, x, n_sample):
    if what == "log_prob":
        return model.log_prob(x)
    return model.sample(n_sample)


def ab(m_old, m_new, what, x, n_sample, pairs):
    ratios, t_old, t_new = [], [], []
    with torch.no_grad():
        for m in (m_old, m_new, m_old, m_new):  # warm-up
            call(m, what, x, n_sample)
        for k in range(pairs):
            order = (m_old, m_new) if k % 2 == 0 else (m_new, m_old)
            times = {}
            for m in order:
                t0 = time.perf_counter()
                call(m, what, x, n_sample)
                times[id(m)] = time.perf_counter() - t0
            t_old.append(times[id(m_old)])
            t_new.append(times[id(m_new)])
            ratios.append(times[id(m_new)] / times[id(m_old)])
    q = statistics.quantiles(ratios, n=10)
    return statistics.median(ratios), q[0], q[-1], statistics.median(t_old) * 1e3, statistics.median(t_new) * 1e3


def profile(model, what, x, n_sample, calls=5, top=8):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    with torch.no_grad():
        call(model, what, x, n_sample)
        with prof(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(calls):
                call(model, what, x, n_sample)
    events = sorted(p.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    n_ops = sum(e.count for e in events if e.key.startswith("aten::")) // calls
    rows = [f"{e.key} {100 * e.self_cpu_time_total / total:.1f}% ({e.count // calls}/call)" for e in events[:top]]
    return f"{total / calls / 1e3:.1f} ms/call, {n_ops} aten ops/call: " + ", ".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", default="HEAD")
    p.add_argument("--case", nargs="+", default=["digits-maf"], choices=sorted(CASES))
    p.add_argument("--what", nargs="+", default=["log_prob", "sample"], choices=("log_prob", "sample"))
    p.add_argument("--threads", nargs="+", type=int, default=[1])
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--sample-n", type=int, default=10_000, help="points per sample call (1,000 for digits MAFs)")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    old, new = load_libs(args.rev)
    print(f"# A/B new (working tree) / old ({args.rev}); load {os.getloadavg()[0]:.1f} at start")
    for case in args.case:
        m_old, m_new, x, gap = models(case, old, new)
        n_sample = 1000 if case in ("digits-maf",) and args.sample_n == 10_000 else args.sample_n
        for what in args.what:
            for th in args.threads:
                torch.set_num_threads(th)
                med, p10, p90, to, tn = ab(m_old, m_new, what, x, n_sample, args.pairs)
                print(f"{case} {what} threads={th}: new/old median {med:.3f} [p10 {p10:.3f}, p90 {p90:.3f}], "
                      f"old {to:.1f} ms, new {tn:.1f} ms (max |log p| gap {gap:.1e}); load {os.getloadavg()[0]:.1f}",
                      flush=True)
            if args.profile:
                torch.set_num_threads(1)
                print(f"  profile old: {profile(m_old, what, x, n_sample)}")
                print(f"  profile new: {profile(m_new, what, x, n_sample)}", flush=True)


if __name__ == "__main__":
    main()
