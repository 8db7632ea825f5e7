#!/usr/bin/env python
"""Benchmark flowlib against normflows, nflows and zuko on the same architectures, data and budget.

Runs in ``.venv-bench`` (``bash benchmarks/setup_bench_env.sh``), never in the course env:

    .venv-bench/bin/python benchmarks/flows.py                 # full run, writes benchmarks/RESULTS.md
    .venv-bench/bin/python benchmarks/flows.py --quick --out /tmp/r.md   # smoke run (~1 min)

What is compared, per dataset x architecture x library:

* architectures: RealNVP = 8 affine coupling layers (half/half split, alternating halves), conditioner MLP
  64-64 (ReLU); MAF = 5 affine MADE layers 64-64 (ReLU), natural order, order reversed between layers.
  Base N(0, I) everywhere. Each library keeps its own scale parametrisation and initialisation (reported).
* data: two moons (10k train, 5k validation, 5k test) in nats; scikit-learn's 8x8 digits (values 0..16),
  uniformly dequantised ``y = (x + u) / 17`` and logit-transformed (``alpha = 0.05``) *outside* the models,
  identically for every library, reported in bits/dim (logit and scaling log-dets and the ``log 17``
  offset included, ``flowlib.metrics.bits_per_dim``).
* training: same seed, same batches and dequantisation noise, Adam(lr=1e-3), batch 512, 500 steps. The
  libraries are interleaved in chunks (``--chunk`` steps of one library, then the next, order rotated
  every chunk) so that machine noise hits all of them alike; ``torch.set_num_threads`` is fixed.
  Every step is timed (zero_grad + log_prob + backward + Adam step); the first ``--warmup`` steps of each
  run are excluded from the timing. Validation NLL every ``--val-every`` steps; the best checkpoint is
  the one tested.
* after training: test NLL (nats or bits/dim), then wall time of ``log_prob`` and of ``sample`` on
  10,000 points (``torch.no_grad``, median of repeats, also interleaved).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import traceback

import numpy as np
import torch

LIBS = ("flowlib", "normflows", "nflows", "zuko")
ARCHS = ("realnvp", "maf")
DATASETS = ("moons", "digits")
HIDDEN = (64, 64)
N_LAYERS = {"realnvp": 8, "maf": 5}
LOGIT_ALPHA = 0.05
ANALYSIS_MARKER = "<!-- analysis: hand-written, kept when the tables above are regenerated -->"
DIGIT_LEVELS = 17


# ------------------------------------------------------------------------------------------------------
# Models. Each builder returns a ``Model``: the nn.Module to optimise, ``log_prob(x) -> (B,)`` and
# ``sample(n) -> (n, d)``, both through the library's public API.
# ------------------------------------------------------------------------------------------------------


class Model:
    def __init__(self, module, log_prob, sample, note=""):
        self.module, self.log_prob, self.sample, self.note = module, log_prob, sample, note

    def num_params(self):
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


def _half_masks(dim, k):
    """Layer ``k`` of a coupling stack: True = conditioning (unchanged) half. Even layers condition on the
    first half and transform the second, odd layers the other way round."""
    first = torch.arange(dim) < dim // 2
    return first if k % 2 == 0 else ~first


FLOWLIB_VARIANTS = {  # "flowlib:<name>": coupling-conditioner initialisation ablation (realnvp only)
    "zeros": dict(last_init="zeros"),
    "default": dict(last_init="default"),
    "normal1e-2": dict(last_init=1e-2),
    "normal1e-1": dict(last_init=1e-1),
    "actnorm": dict(last_init="zeros", actnorm=True),
    "actnorm-default": dict(last_init="default", actnorm=True),
}


MAF_VARIANTS = {  # "flowlib:<name>" on the maf rows: log-scale bound and initialisation of the last MADE layer
    "pytorch": dict(last_scale="sqrt(d)"),  # undoes flowlib's 1/sqrt(d): PyTorch's init as it is (the old default)
    "idinit": dict(identity_init=True),  # exact identity start (zero last layer)
    "small1e-2": dict(last_std=1e-2),
    "small3e-2": dict(last_std=3e-2),
    "bound2": dict(scale_bound=2.0),
    "nobound": dict(scale_bound=None),
}


def build_flowlib_variant(variant, arch, dim):
    if arch == "maf":
        if variant not in MAF_VARIANTS:
            raise ValueError(f"the flowlib:{variant} ablation is defined for realnvp only")
        from flowlib.distributions import StandardNormal
        from flowlib.flow import Flow
        from flowlib.transforms.autoregressive import MAF
        from flowlib.transforms.base import Compose
        from flowlib.transforms.permutation import Reverse

        kw = dict(MAF_VARIANTS[variant])
        last_std = kw.pop("last_std", None)
        last_scale = kw.pop("last_scale", None)
        layers = []
        for k in range(N_LAYERS[arch]):  # as flowlib's maf(): MAF layers with a Reverse between them
            layers.append(MAF(dim, HIDDEN, **kw))
            if last_std is not None:  # a small random last MADE layer: near the identity, not exactly at it
                last = layers[-1].made.net[-1]
                torch.nn.init.normal_(last.weight, std=last_std)
                torch.nn.init.zeros_(last.bias)
            if last_scale is not None:  # flowlib scaled PyTorch's init of the last MADE layer by 1/sqrt(d)
                with torch.no_grad():
                    layers[-1].made.net[-1].weight.mul_(dim ** 0.5)
                    layers[-1].made.net[-1].bias.mul_(dim ** 0.5)
            if k < N_LAYERS[arch] - 1:
                layers.append(Reverse(dim))
        flow = Flow(Compose(*layers), StandardNormal((dim,)))
        return Model(flow, flow.log_prob, flow.sample)
    if variant not in FLOWLIB_VARIANTS:
        raise ValueError(f"the flowlib:{variant} ablation is defined for maf only")
    from flowlib.models import realnvp

    flow = realnvp(dim, num_layers=N_LAYERS[arch], hidden=HIDDEN, **FLOWLIB_VARIANTS[variant])
    return Model(flow, flow.log_prob, flow.sample)


def build(lib, arch, dim):
    if lib.startswith("flowlib:"):
        return build_flowlib_variant(lib.split(":", 1)[1], arch, dim)
    return BUILDERS[lib](arch, dim)


def lib_choice(name):
    variants = {**FLOWLIB_VARIANTS, **MAF_VARIANTS}
    if name in LIBS or (name.startswith("flowlib:") and name.split(":", 1)[1] in variants):
        return name
    raise argparse.ArgumentTypeError(
        f"unknown library {name!r}: one of {LIBS} or flowlib:<{'|'.join(variants)}>")


def build_flowlib(arch, dim):
    if arch == "realnvp":
        from flowlib.models import realnvp

        flow = realnvp(dim, num_layers=N_LAYERS[arch], hidden=HIDDEN)
    else:
        from flowlib.transforms.autoregressive import maf

        flow = maf(dim, num_layers=N_LAYERS[arch], hidden=HIDDEN)
    return Model(flow, flow.log_prob, flow.sample)


def build_normflows(arch, dim):
    import normflows as nf

    flows = []
    if arch == "realnvp":
        # the library's RealNVP recipe: AffineCouplingBlock (channel split: first half conditions the
        # second) with an MLP whose last layer starts at zero, and a half swap between blocks.
        h = dim // 2
        for k in range(N_LAYERS[arch]):
            net = nf.nets.MLP([h, *HIDDEN, 2 * (dim - h)], init_zeros=True)
            flows.append(nf.flows.AffineCouplingBlock(net, scale=True, scale_map="exp", split_mode="channel"))
            if k < N_LAYERS[arch] - 1:
                flows.append(nf.flows.Permute(dim, mode="swap"))
    else:

        class DensityFirst(nf.flows.Flow):
            """normflows evaluates densities with each layer's ``inverse``, and ``MaskedAffineAutoregressive``
            has the one-pass direction as ``forward``: used as is, every training step would cost ``d``
            sequential MADE passes per layer (an IAF). Swapping the two directions gives the MAF of the
            paper (density in one pass, sampling in ``d`` passes), the model the other libraries build."""

            def __init__(self, layer):
                super().__init__()
                self.layer = layer

            def forward(self, z, context=None):
                return self.layer.inverse(z)

            def inverse(self, x, context=None):
                return self.layer.forward(x)

        for k in range(N_LAYERS[arch]):
            made = nf.flows.MaskedAffineAutoregressive(
                dim, HIDDEN[0], num_blocks=len(HIDDEN) - 1, use_residual_blocks=False
            )
            flows.append(DensityFirst(made))
            if k < N_LAYERS[arch] - 1:
                rev = nf.flows.Permute(dim, mode="shuffle")
                rev.perm.copy_(torch.arange(dim - 1, -1, -1))
                rev.inv_perm.copy_(torch.arange(dim - 1, -1, -1))
                flows.append(rev)
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)
    return Model(model, model.log_prob, lambda n: model.sample(n)[0])


class _ContextFree(torch.nn.Module):
    """nflows' coupling layers call ``net(x, context)``; its ``MLP`` takes ``x`` only."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, context=None):
        return self.net(x)


def _stub_matplotlib_if_missing():
    """nflows imports matplotlib at import time (for plotting helpers the benchmark never calls). On a machine
    without matplotlib, register an empty stub so that the import succeeds; reported in the run's log."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        import types

        mpl = types.ModuleType("matplotlib")
        mpl.pyplot = types.ModuleType("matplotlib.pyplot")
        sys.modules["matplotlib"], sys.modules["matplotlib.pyplot"] = mpl, mpl.pyplot
        print("note: matplotlib missing, stubbed for nflows' import", flush=True)


def build_nflows(arch, dim):
    _stub_matplotlib_if_missing()
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms import (
        AffineCouplingTransform,
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        ReversePermutation,
    )

    layers = []
    if arch == "realnvp":
        for k in range(N_LAYERS[arch]):
            mask = (~_half_masks(dim, k)).int()  # nflows: 1 = transformed, 0 = identity

            def net(n_in, n_out):
                return _ContextFree(MLP((n_in,), (n_out,), hidden_sizes=list(HIDDEN)))

            layers.append(AffineCouplingTransform(mask, net))
    else:
        for k in range(N_LAYERS[arch]):
            layers.append(
                MaskedAffineAutoregressiveTransform(
                    dim, HIDDEN[0], num_blocks=len(HIDDEN) - 1, use_residual_blocks=False
                )
            )
            if k < N_LAYERS[arch] - 1:
                layers.append(ReversePermutation(dim))
    flow = Flow(CompositeTransform(layers), StandardNormal([dim]))
    return Model(flow, flow.log_prob, flow.sample)


def build_zuko(arch, dim):
    import zuko

    if arch == "realnvp":
        from zuko.flows import Flow, GeneralCouplingTransform, UnconditionalDistribution

        layers = [
            GeneralCouplingTransform(dim, mask=_half_masks(dim, k), hidden_features=HIDDEN)
            for k in range(N_LAYERS[arch])
        ]
        base = UnconditionalDistribution(
            zuko.distributions.DiagNormal, torch.zeros(dim), torch.ones(dim), buffer=True
        )
        flow = Flow(layers, base)
    else:
        # natural order, reversed in every other layer: the same as a reversal between layers
        flow = zuko.flows.MAF(dim, transforms=N_LAYERS[arch], hidden_features=HIDDEN)
    return Model(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))


BUILDERS = {
    "flowlib": build_flowlib, "normflows": build_normflows, "nflows": build_nflows, "zuko": build_zuko,
}

SCALE_NOTES = {
    ("flowlib", "realnvp"): "`AffineCoupling`: `s = 2 tanh(r/2)`, `z_b = x_b exp(s) + t`: log-scale "
    "soft-clamped to (-2, 2) both ways; last conditioner layer zero-initialised (identity at start)",
    ("flowlib", "maf"): "`s = 3 tanh(r/3)`, `z = x exp(s) + t`: log-scale soft-clamped to "
    "(-3, 3) both ways; PyTorch's default init of every MADE layer, the last one scaled by 1/sqrt(d) "
    "(`identity_init=True` zeroes it)",
    ("normflows", "realnvp"): "`AffineCoupling(scale_map='exp')` (library default): `exp(s)`, **unbounded** "
    "both ways; `MLP(init_zeros=True)` starts at the identity",
    ("normflows", "maf"): "`MaskedAffineAutoregressive` (nflows code): `scale = sigmoid(s + 2) + 1e-3` in "
    "(0.001, 1.001) on the one-pass side; with the density-first wrapper the normalising map can only "
    "**contract** (log-det <= d log 1.001 per layer)",
    ("nflows", "realnvp"): "`AffineCouplingTransform`: `z_b = x_b * scale + t`, "
    "`scale = sigmoid(s + 2) + 1e-3` in (0.001, 1.001): the normalising map can only **contract** "
    "(log-det <= d/2 log 1.001 per layer)",
    ("nflows", "maf"): "`MaskedAffineAutoregressiveTransform` (0.14): `scale = softplus(s) + 1e-3` in "
    "(0.001, inf), 0.69 at `s = 0`: bounded below only (unlike its own coupling layer)",
    ("zuko", "realnvp"): "`MonotonicAffineTransform`: `log_scale = a / (1 + abs(a) / 6.91)`, soft-clamped to "
    "(-6.91, 6.91) (`slope=1e-3`), symmetric",
    ("zuko", "maf"): "same `MonotonicAffineTransform` soft clamp (-6.91, 6.91); sampling inverts with `d` "
    "passes",
}


# ------------------------------------------------------------------------------------------------------
# Data (identical tensors for every library)
# ------------------------------------------------------------------------------------------------------


def _flowlib_data():
    try:
        return importlib.import_module("flowlib.data")
    except ImportError:
        return None


def load_moons(n_train, n_val, n_test, seed, noise=0.1):
    """Two moons from ``flowlib.data.two_moons`` (scikit-learn's ``make_moons``), three disjoint seeds."""
    mod = _flowlib_data()
    out = []
    for i, n in enumerate((n_train, n_val, n_test)):
        if mod is not None and hasattr(mod, "two_moons"):
            x, source = mod.two_moons(n, noise=noise, seed=seed + 1000 * i), "flowlib.data.two_moons"
        else:
            from sklearn.datasets import make_moons

            x, source = make_moons(n, noise=noise, random_state=seed + 1000 * i)[0], "sklearn make_moons"
        out.append(torch.as_tensor(np.asarray(x), dtype=torch.float32))
    return out, f"{source}(noise={noise})"


def moons_true_nll(x, noise=0.1):
    """NLL of the test points under the true two-moons density (the floor no model can beat on average)."""
    mod = _flowlib_data()
    if mod is None or not hasattr(mod, "two_moons_log_prob"):
        return math.nan
    return float(-mod.two_moons_log_prob(x.double(), noise=noise).mean())


def load_digits_split(seed=0):
    """8x8 digits as ``(N, 64)`` integers 0..16: ``flowlib.data.digits`` splits (70/15/15, fixed seed)."""
    mod = _flowlib_data()
    if mod is not None and hasattr(mod, "digits"):
        xs = [mod.digits(split, seed=seed).reshape(-1, 64) for split in ("train", "val", "test")]
        source = f"flowlib.data.digits(seed={seed}) train/val/test"
    else:
        from sklearn.datasets import load_digits

        x = torch.as_tensor(load_digits().data, dtype=torch.float32)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        n_tr, n_va = round(0.7 * len(x)), round(0.15 * len(x))
        xs = [x[perm[:n_tr]], x[perm[n_tr : n_tr + n_va]], x[perm[n_tr + n_va :]]]
        source = "sklearn load_digits 70/15/15"
    for x in xs:
        assert x.shape[1] == 64 and float(x.min()) >= 0 and float(x.max()) <= 16
    return [x.float() for x in xs], source


class DigitsPrep:
    """Dequantise + logit with flowlib.preprocess; returns ``(v, logdet)``: ``v`` is what the flows model,
    ``logdet`` the log-det of ``y -> v`` (so ``log p(y) = log p_model(v) + logdet``)."""

    def __init__(self):
        from flowlib.preprocess import Logit, UniformDequantization

        self.deq = UniformDequantization(num_levels=DIGIT_LEVELS)
        self.logit = Logit(alpha=LOGIT_ALPHA)

    def __call__(self, x, generator):
        y = self.deq(x, generator=generator)
        v, ld = self.logit(y)
        return v, ld


def reference_bpd(log_p_v, logit_logdet, dim):
    """Independent check of bits/dim: -(log p(v) + log-det(logit) - D log 17) / (D log 2)."""
    return float((-(log_p_v + logit_logdet).mean() + dim * math.log(DIGIT_LEVELS)) / (dim * math.log(2)))


def make_task(dataset, args, seed):
    """Everything that is shared by the libraries for one (dataset, seed): batches for every step,
    validation/test sets, a 10k set for timing and the metric."""
    g = torch.Generator().manual_seed(seed)
    steps, B = args.steps, args.batch
    if dataset == "moons":
        (train, val, test), source = load_moons(args.n_train, args.n_val, args.n_test, seed=seed)
        idx = torch.cat([torch.randperm(len(train), generator=g) for _ in range(steps * B // len(train) + 1)])
        batches = train[idx[: steps * B]].reshape(steps, B, -1)
        timing_x = torch.cat([train, val, test])[:10_000]

        def metric(model, x):
            return float(-model.log_prob(x).mean())

        return dict(batches=batches, val=val, test=test, timing_x=timing_x, metric=metric, unit="nats",
                    dim=2, source=source, sizes=(len(train), len(val), len(test)),
                    reference=moons_true_nll(test))

    from flowlib.metrics import bits_per_dim

    (train, val, test), source = load_digits_split(seed=0)  # the split is fixed; the seed moves the rest
    prep = DigitsPrep()
    idx = torch.cat([torch.randperm(len(train), generator=g) for _ in range(steps * B // len(train) + 1)])
    batches, _ = prep(train[idx[: steps * B]], g)
    batches = batches.reshape(steps, B, -1)
    K = args.eval_draws  # dequantisation draws per held-out image, averaged in log space
    val_v, val_ld = prep(val.repeat(K, 1), torch.Generator().manual_seed(10_000 + seed))
    test_v, test_ld = prep(test.repeat(K, 1), torch.Generator().manual_seed(20_000 + seed))
    timing_x, _ = prep(train[torch.randint(len(train), (10_000,), generator=g)], g)
    lds = {id(val_v): val_ld, id(test_v): test_ld}

    def metric(model, v):
        lp = model.log_prob(v)
        ld = lds[id(v)]
        bpd = float(bits_per_dim(lp + ld, 64, num_levels=DIGIT_LEVELS))
        ref = reference_bpd(lp, ld, 64)
        if math.isfinite(bpd) and abs(bpd - ref) > 1e-4:
            raise AssertionError(f"flowlib.metrics.bits_per_dim {bpd} disagrees with the reference {ref}")
        return bpd

    return dict(batches=batches, val=val_v, test=test_v, timing_x=timing_x, metric=metric, unit="bits/dim",
                dim=64, source=source, sizes=(len(train), len(val), len(test)), reference=math.nan)


# ------------------------------------------------------------------------------------------------------
# Training, interleaved
# ------------------------------------------------------------------------------------------------------


class Run:
    def __init__(self, lib, arch, task, seed, lr):
        torch.manual_seed(seed)  # same initialisation seed for every library
        self.lib, self.arch, self.task = lib, arch, task
        self.model = build(lib, arch, task["dim"])
        self.opt = torch.optim.Adam(self.model.module.parameters(), lr=lr)
        self.step = 0
        self.times = []
        self.best = (math.inf, 0, None)  # (val metric, step, state_dict)
        self.error = None
        self.val_curve = []

    def train_chunk(self, n, val_every):
        module, opt, batches = self.model.module, self.opt, self.task["batches"]
        module.train()
        for _ in range(n):
            if self.error or self.step >= len(batches):
                return
            x = batches[self.step]
            t0 = time.perf_counter()
            try:
                opt.zero_grad(set_to_none=True)
                loss = -self.model.log_prob(x).mean()
                loss.backward()
                opt.step()
            except Exception as e:  # a library raising on NaN is a divergence, recorded as such
                self.error = f"step {self.step}: {type(e).__name__}: {str(e)[:120]}"
                return
            self.times.append(time.perf_counter() - t0)
            self.step += 1
            if not math.isfinite(loss.item()):
                self.error = f"step {self.step}: non-finite loss"
                return
            if self.step % val_every == 0 or self.step == len(batches):
                self.validate()

    @torch.no_grad()
    def validate(self):
        module = self.model.module
        module.eval()
        try:
            v = self.task["metric"](self.model, self.task["val"])
        except Exception as e:
            v = math.nan
            self.error = self.error or f"validation at step {self.step}: {type(e).__name__}: {str(e)[:120]}"
        module.train()
        self.val_curve.append((self.step, v))
        if math.isfinite(v) and v < self.best[0]:
            self.best = (v, self.step, copy.deepcopy(module.state_dict()))

    @torch.no_grad()
    def test_final(self):
        """Test metric of the model as training left it (what a user gets without checkpointing)."""
        if self.error:
            return math.nan
        self.model.module.eval()
        try:
            return self.task["metric"](self.model, self.task["test"])
        except Exception:
            return math.nan
        finally:
            self.model.module.train()

    @torch.no_grad()
    def test(self):
        if self.best[2] is None:
            return math.nan
        self.model.module.load_state_dict(self.best[2])
        self.model.module.eval()
        try:
            return self.task["metric"](self.model, self.task["test"])
        except Exception:
            return math.nan


def time_inference(runs, repeats_lp, repeats_sample):
    """Median seconds of log_prob and sample on 10k points, interleaving the libraries per repeat."""
    out = {r.lib: {"log_prob": [], "sample": [], "sample_finite": True} for r in runs}
    for rep in range(max(repeats_lp, repeats_sample)):
        order = runs[rep % len(runs):] + runs[: rep % len(runs)]
        for r in order:
            if r.best[2] is None:
                continue
            x = r.task["timing_x"]
            with torch.no_grad():
                if rep < repeats_lp:
                    t0 = time.perf_counter()
                    r.model.log_prob(x)
                    out[r.lib]["log_prob"].append(time.perf_counter() - t0)
                if rep < repeats_sample and not (out[r.lib]["sample"] and out[r.lib]["sample"][0] > 15.0):
                    # a slow sampler (d sequential passes) is timed once: one repeat already says enough
                    t0 = time.perf_counter()
                    s = r.model.sample(10_000)
                    out[r.lib]["sample"].append(time.perf_counter() - t0)
                    out[r.lib]["sample_finite"] &= bool(torch.isfinite(s).all())
    return {k: {"log_prob": _med(v["log_prob"]), "sample": _med(v["sample"]),
                "sample_finite": v["sample_finite"]} for k, v in out.items()}


def _med(xs):
    return statistics.median(xs) if xs else math.nan


def bench_one(dataset, arch, task, libs, seed, args, log):
    runs = []
    for lib in libs:
        try:
            runs.append(Run(lib, arch, task, seed, args.lr))
        except Exception as e:
            log(f"  [{dataset}/{arch}] {lib}: cannot build ({type(e).__name__}: {e})")
            if args.verbose:
                traceback.print_exc()
    n_chunks = math.ceil(args.steps / args.chunk)
    for c in range(n_chunks):
        order = runs[c % len(runs):] + runs[: c % len(runs)]  # rotate who goes first
        for r in order:
            r.train_chunk(args.chunk, args.val_every)
    timings = time_inference(runs, args.repeats, args.sample_repeats)
    res = {}
    for r in runs:
        t = r.times[args.warmup:] if len(r.times) > args.warmup else r.times
        final = r.test_final()  # before test() loads the best checkpoint
        res[r.lib] = dict(
            test_final=final,
            ms_step=1e3 * _med(t),
            ms_step_q=(1e3 * float(np.percentile(t, 25)), 1e3 * float(np.percentile(t, 75))) if t else None,
            steps=r.step, test=r.test(), best_val=r.best[0], best_step=r.best[1], error=r.error,
            val_curve=r.val_curve, params=r.model.num_params(), times_ms=[1e3 * s for s in t],
            **timings[r.lib],
        )
        log(f"  [{dataset}/{arch} seed {seed}] {r.lib:9s} {res[r.lib]['ms_step']:7.2f} ms/step  "
            f"final {res[r.lib]['test_final']:.4f} best-ckpt {res[r.lib]['test']:.4f} {task['unit']} "
            f"(best val @ {r.best[1]})  "
            f"log_prob {timings[r.lib]['log_prob']:.3f}s  sample {timings[r.lib]['sample']:.3f}s"
            + (f"  ERROR {r.error}" if r.error else ""))
    return res


# ------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------


def machine_info():
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for m in ("normflows", "nflows", "zuko", "flowlib"):
        try:
            from importlib.metadata import version

            versions[m] = version(m)
        except Exception:
            versions[m] = "?"
    try:
        import subprocess

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "flowlib"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        versions["flowlib"] += f" (commit {rev}{', flowlib/ with uncommitted changes' if dirty else ''})"
    except Exception:
        pass
    return cpu, os.cpu_count(), versions


def _fmt(x, nd=2):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _med_range(m, r, nd=3):
    return f"{_fmt(m, nd)} [{_fmt(r[0], nd)}, {_fmt(r[1], nd)}]" if r else "n/a"


def _best_peer(peers, field):
    return min(peers, key=lambda k: peers[k][field] if math.isfinite(peers[k][field]) else math.inf)


def aggregate(per_seed, libs):
    """Combine seeds: median ms/step over all timed steps of all seeds; metric mean and sd over seeds."""
    agg = {}
    for lib in libs:
        rs = [s[lib] for s in per_seed if lib in s]
        if not rs:
            continue
        times = [t for r in rs for t in r["times_ms"]]
        tests = [r["test"] for r in rs]
        finite = [t for t in tests if math.isfinite(t)]
        finals = [r.get("test_final", math.nan) for r in rs]
        ffin = [t for t in finals if math.isfinite(t)]
        agg[lib] = dict(
            final_median=statistics.median(ffin) if ffin else math.nan,
            final_sd=statistics.stdev(ffin) if len(ffin) > 1 else 0.0,
            final_range=(min(ffin), max(ffin)) if ffin else None,
            finals=finals, n_final_ok=len(ffin),
            best_median=statistics.median(finite) if finite else math.nan,
            best_range=(min(finite), max(finite)) if finite else None,
            ms_step=_med(times),
            q=(float(np.percentile(times, 25)), float(np.percentile(times, 75))) if times else None,
            test_mean=statistics.fmean(finite) if finite else math.nan,
            test_sd=statistics.stdev(finite) if len(finite) > 1 else 0.0,
            tests=tests, n_ok=len(finite),
            best_steps=[r["best_step"] for r in rs],
            log_prob=_med([r["log_prob"] for r in rs]), sample=_med([r["sample"] for r in rs]),
            sample_finite=all(r["sample_finite"] for r in rs),
            errors=[r["error"] for r in rs if r["error"]], params=rs[0]["params"],
        )
    return agg


def write_report(path, results, args, meta):
    cpu, ncpu, versions = meta["machine"]
    L = []
    w = L.append
    w("# flowlib vs normflows, nflows, zuko: training speed and likelihood\n")
    w(f"Generated by `benchmarks/flows.py` on {meta['date']} in {meta['wall']:.0f} s.\n")
    w("Reproduce (from the repository root):\n")
    w("```bash\nbash benchmarks/setup_bench_env.sh\n" + meta["command"] + "\n```\n")
    w(f"- Machine: {cpu}, {ncpu} logical CPUs, `torch.set_num_threads({args.threads})`, no GPU; "
      f"1-min load average at start / end of the run: {meta['load'][0]:.1f} / {meta['load'][1]:.1f} "
      "(the machine is shared: interleaving spreads the noise over all libraries alike)")
    w("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    w(f"- Budget: {args.steps} Adam steps (lr {args.lr}), batch {args.batch}, seeds {args.seeds}; libraries "
      f"interleaved in chunks of {args.chunk} steps (order rotated every chunk); first {args.warmup} steps "
      f"of every run not timed; validation every {args.val_every} steps; final model and best checkpoint "
      f"tested" + (f"; {args.jobs} cells (dataset, architecture, seed) run in parallel processes of "
                   f"{args.threads} threads each" if args.jobs > 1 else ""))
    w(f"- Data: {meta['sources']}")
    w("- ms/step: median over all timed steps of all seeds (interquartile range in brackets). "
      "Test NLL, two numbers per run: the **final** model after the last step (what a user gets from "
      "`fit` without checkpointing) and the **best-validation checkpoint**; each given as median "
      "[min, max] over seeds, and mean +- sd. log_prob / sample: median "
      f"seconds for 10,000 points, `torch.no_grad()`, {args.repeats} / {args.sample_repeats} interleaved "
      "repeats per seed.\n")
    targets = []
    for dataset in args.datasets:
        unit = "nats" if dataset == "moons" else "bits/dim"
        title = ("Two moons (test NLL in nats, lower is better)" if dataset == "moons"
                 else "8x8 digits (test bits/dim, dequantised + logit, lower is better)")
        w(f"## {title}\n")
        w(f"| architecture | library | ms/step (IQR) | final test {unit}: median [min, max] | final mean +- sd | "
          f"best-ckpt test {unit}: median [min, max] | best-ckpt mean +- sd | best val step | log_prob 10k (s) | "
          "sample 10k (s) | params | notes |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        ref = meta.get("reference", {}).get(dataset, math.nan)
        if math.isfinite(ref):
            w(f"| - | true density | | {ref:.3f} | | {ref:.3f} | | | | | | `flowlib.data.two_moons_log_prob` of "
              "the test points: the floor |")
        for arch in args.archs:
            agg = results.get((dataset, arch), {})
            for lib in args.libs:
                if lib not in agg:
                    w(f"| {arch} | {lib} | not run | | | | | | | | | model not available |")
                    continue
                a = agg[lib]
                notes = []
                if a["errors"]:
                    notes.append("diverged/raised: " + "; ".join(a["errors"])[:160])
                if not a["sample_finite"]:
                    notes.append("non-finite samples")
                q = f" ({_fmt(a['q'][0])}-{_fmt(a['q'][1])})" if a["q"] else ""
                nd = 3
                ffin = [t for t in a["finals"] if math.isfinite(t)]
                fmean = f"{statistics.fmean(ffin):.3f} +- {a['final_sd']:.3f}" if ffin else "n/a"
                w(f"| {arch} | {lib} | {_fmt(a['ms_step'])}{q} | {_med_range(a['final_median'], a['final_range'])} | "
                  f"{fmean} | {_med_range(a['best_median'], a['best_range'])} | "
                  f"{_fmt(a['test_mean'], nd)} +- {a['test_sd']:.3f} | "
                  f"{','.join(map(str, a['best_steps']))} | {_fmt(a['log_prob'], 3)} | "
                  f"{_fmt(a['sample'], 3)} | {a['params']} | {' '.join(notes)} |")
            if "flowlib" in agg:
                peers = {k: v for k, v in agg.items() if not k.startswith("flowlib")}
                if peers:
                    fastest = min(peers, key=lambda k: peers[k]["ms_step"])
                    best_final = _best_peer(peers, "final_median")
                    best_ckpt = _best_peer(peers, "best_median")
                    f = agg["flowlib"]
                    targets.append((dataset, arch, f["ms_step"], fastest, peers[fastest]["ms_step"],
                                    f["final_median"], best_final, peers[best_final]["final_median"],
                                    f["best_median"], best_ckpt, peers[best_ckpt]["best_median"], unit))
        w("")
    if targets:
        w("## Targets\n")
        w("Speed: flowlib's median step no slower than the fastest peer's. Likelihood: flowlib's (defaults) "
          "median test NLL over seeds at least as good as the best peer's median, strictly (no tie margin), "
          "for the final model and for the best-validation checkpoint separately.\n")
        w("| dataset | architecture | flowlib ms/step | fastest peer | speed target | flowlib final NLL | "
          "best peer (final) | final target | flowlib best-ckpt NLL | best peer (best-ckpt) | best-ckpt target |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")

        def verdict(a, b, unit):
            return "met" if a <= b else f"**missed** (+{a - b:.3f} {unit})"

        for dataset, arch, fms, fast, pms, ffin, pf, pfin, fbest, pb, pbest, unit in targets:
            speed = "met" if fms <= pms else f"**missed** ({fms / pms:.2f}x)"
            w(f"| {dataset} | {arch} | {_fmt(fms)} | {fast} {_fmt(pms)} | {speed} | {_fmt(ffin, 3)} | "
              f"{pf} {_fmt(pfin, 3)} | {verdict(ffin, pfin, unit)} | {_fmt(fbest, 3)} | {pb} {_fmt(pbest, 3)} | "
              f"{verdict(fbest, pbest, unit)} |")
        w("")
    w("## Scale parametrisations (they bound the likelihood differently)\n")
    w("| library | architecture | scale of the affine map |")
    w("|---|---|---|")
    for lib in args.libs:
        for arch in args.archs:
            note = meta.get("scale_notes", {}).get((lib, arch), SCALE_NOTES.get((lib, arch)))
            if note is None:
                variant = lib.split(":", 1)[1] if lib.startswith("flowlib:") else None
                if arch == "realnvp" and variant in FLOWLIB_VARIANTS:
                    note = f"as flowlib, with `realnvp(..., **{FLOWLIB_VARIANTS[variant]})`"
                elif arch == "maf" and variant in MAF_VARIANTS:
                    note = f"as flowlib, with every layer `MAF(..., **{MAF_VARIANTS[variant]})`"
                else:
                    continue
            w(f"| {lib} | {arch} | {note} |")
    w("")
    w(meta.get("extra_notes", ""))
    kept = ""
    if os.path.exists(path):  # a hand-written analysis below the marker survives a re-run
        with open(path) as f:
            old = f.read()
        if ANALYSIS_MARKER in old:
            kept = "\n" + old[old.index(ANALYSIS_MARKER):]
    with open(path, "w") as f:
        f.write("\n".join(L).rstrip() + "\n" + kept)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 60 steps, 1 seed, small data")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    p.add_argument("--json", default=None, help="also dump raw per-seed results here")
    p.add_argument("--libs", nargs="+", default=list(LIBS), type=lib_choice,
                   help=f"libraries: {', '.join(LIBS)}, or flowlib:<variant> for the coupling-init ablation "
                        f"({', '.join(FLOWLIB_VARIANTS)})")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=1,
                   help="run the (dataset, arch, seed) cells in this many processes (each --threads threads); "
                        "libraries stay interleaved inside a cell")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--chunk", type=int, default=10, help="steps of one library before switching")
    p.add_argument("--warmup", type=int, default=20, help="leading steps of each run left out of the timing")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-val", type=int, default=5_000)
    p.add_argument("--n-test", type=int, default=5_000)
    p.add_argument("--eval-draws", type=int, default=4, help="dequantisation draws per held-out digit")
    p.add_argument("--repeats", type=int, default=5, help="log_prob timing repeats")
    p.add_argument("--sample-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--profile", action="store_true", help="profile one training step per library instead")
    p.add_argument("--profile-steps", type=int, default=200)
    p.add_argument("--profile-out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.val_every, args.chunk, args.warmup = 60, args.seeds[:1], 20, 20, 5
        args.repeats, args.sample_repeats = 2, 1
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t_start:6.0f}s] {msg}", flush=True)

    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, libs {args.libs}")
    if args.profile:
        return profile(args, log)
    results, raw, sources, reference = {}, {}, {}, {}
    load0 = os.getloadavg()[0]
    cells = [(d, a, s) for d in args.datasets for a in args.archs for s in args.seeds]
    if args.jobs > 1:
        import concurrent.futures
        import multiprocessing

        done = {}
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
            futures = {ex.submit(_cell, *c, args): c for c in cells}
            for fut in concurrent.futures.as_completed(futures):
                done[futures[fut]] = fut.result()
                if args.json:  # every finished cell at once, so that an interrupted run keeps what it did
                    with open(args.json + ".cells.jsonl", "a") as f:
                        res = {k: {kk: vv for kk, vv in v.items() if kk != "times_ms"}
                               for k, v in done[futures[fut]][0].items()}
                        f.write(json.dumps({"cell": futures[fut], "res": res}, default=str) + "\n")
    else:
        done = {c: _cell(*c, args, log) for c in cells}
    for dataset in args.datasets:
        for arch in args.archs:
            per_seed = []
            for seed in args.seeds:
                res, source, ref = done[(dataset, arch, seed)]
                sources[dataset] = source
                if seed == args.seeds[0]:
                    reference[dataset] = ref
                per_seed.append(res)
            results[(dataset, arch)] = aggregate(per_seed, args.libs)
            raw[f"{dataset}/{arch}"] = [{k: {kk: vv for kk, vv in v.items() if kk != "times_ms"}
                                          for k, v in s.items()} for s in per_seed]
    meta = dict(
        machine=machine_info(),
        date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        wall=time.time() - t_start,
        command=" ".join([".venv-bench/bin/python", "benchmarks/flows.py", *map(shlex.quote, sys.argv[1:])]),
        jobs=args.jobs,
        sources="; ".join(sources.values()) + (f"; digits dequantised `y = (x + u) / {DIGIT_LEVELS}` and "
                                                f"`Logit(alpha={LOGIT_ALPHA})` (flowlib.preprocess), "
                                                f"{args.eval_draws} noise draws per held-out image"),
        extra_notes=EXTRA_NOTES,
        load=(load0, os.getloadavg()[0]),
        reference=reference,
    )
    write_report(args.out, results, args, meta)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1, default=str)
    log(f"wrote {args.out}")
    return results


def _cell(dataset, arch, seed, args, log=None):
    """One (dataset, arch, seed) cell: every library trained interleaved on the same task. Runs in a worker
    process with ``--jobs``."""
    torch.set_num_threads(args.threads)
    if log is None:
        t0 = time.time()

        def log(msg):
            print(f"[{dataset}/{arch}/seed {seed} {time.time() - t0:5.0f}s] {msg}", flush=True)

    task = make_task(dataset, args, seed)
    res = bench_one(dataset, arch, task, args.libs, seed, args, log)
    source = f"{dataset}: {task['source']}, train/val/test {task['sizes']}"
    return res, source, task["reference"]


EXTRA_NOTES = """## How the models are made equal, and where they are not

* Same layer counts, hidden widths (64-64, ReLU), half/half coupling split alternating between layers, MADE
  in natural order reversed between layers, base N(0, I), parameter counts equal (column `params`).
* Scale maps and initialisation are each library's own (table above). Consequences for the NLL:
  - **nflows' coupling and normflows' MAF** use `scale = sigmoid(s + 2) + 1e-3 < 1.001` on the
    normalising side, so the map from data to base can only contract: `log p(x) <= log N(0; 0, I) +
    K d log 1.001`. On two moons (d = 2) that caps the test NLL at `log(2 pi) - 0.01 = 1.83` nats whatever
    the training, while the true density's NLL is about 1.03: those two-moons rows measure that cap.
    nflows' own MAF (0.14) uses `softplus(s) + 1e-3` instead, bounded below only, and is not capped.
    On digits the logit-space data are spread wider than N(0, I), so contraction is what is mostly needed
    and the cap costs less.
  - **normflows' coupling** uses an unbounded `exp(s)` (zero-initialised), flowlib soft-clamps the
    coupling log-scale to (-2, 2) and the MAF log-scale to (-3, 3) (`B tanh(s / B)`), zuko to about
    (-6.9, 6.9) (`a / (1 + abs(a) / 6.9)`). Per layer these bounds are wide enough for these data; the
    zero-initialised last layers (flowlib, normflows coupling) start every layer at the identity, zuko and
    nflows start from PyTorch's default random initialisation.
* normflows computes densities through every layer's `inverse`; its `MaskedAffineAutoregressive` has the
  one-pass direction as `forward`, so used as shipped its training step costs `d` sequential MADE passes
  per layer (an IAF). `flows.py` wraps it (`DensityFirst`) so that it is a MAF like the others.
* nflows' `MLP` does not accept the `context` argument its coupling layer passes; `flows.py` wraps it.
* Digits: every library sees the same dequantised, logit-transformed tensors; the logit log-det and the
  `log 17` offset are added outside the models (`flowlib.metrics.bits_per_dim(..., num_levels=17)`, checked
  against an independent formula on every evaluation), so bits/dim are comparable across libraries.
"""


# ------------------------------------------------------------------------------------------------------
# Profiling (``--profile``): why is one library's step slower than another's?
# ------------------------------------------------------------------------------------------------------


def profile(args, log):
    """Per (dataset, arch): step time interleaved *per step* (min / p10 / median, robust to a busy
    machine), aten ops and autograd nodes per step, the top ops by self CPU time, and cProfile of the
    Python side for flowlib and the fastest peer."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    out = []
    for dataset in args.datasets:
        for arch in args.archs:
            task = make_task(dataset, args, args.seeds[0])
            runs = [Run(lib, arch, task, args.seeds[0], args.lr) for lib in args.libs]
            x = task["batches"][0]

            def step(r, x=x):
                r.opt.zero_grad(set_to_none=True)
                loss = -r.model.log_prob(x).mean()
                loss.backward()
                r.opt.step()
                return loss

            for r in runs:  # warm-up
                for _ in range(20):
                    step(r)
            times = {r.lib: [] for r in runs}
            for i in range(args.profile_steps):
                for r in runs[i % len(runs):] + runs[: i % len(runs)]:
                    t0 = time.perf_counter()
                    step(r)
                    times[r.lib].append(1e3 * (time.perf_counter() - t0))
            out.append(f"\n## {dataset} / {arch}: {args.profile_steps} steps per library, "
                       "interleaved per step\n")
            out.append("| library | min ms | p10 ms | median ms | aten ops / step | autograd nodes | "
                       "self CPU ms / step (profiler) |")
            out.append("|---|---|---|---|---|---|---|")
            tables = {}
            for r in runs:
                loss = -r.model.log_prob(x).mean()
                nodes, seen, stack = 0, set(), [loss.grad_fn]
                while stack:
                    fn = stack.pop()
                    if fn is None or fn in seen:
                        continue
                    seen.add(fn)
                    nodes += 1
                    stack.extend(f for f, _ in fn.next_functions)
                with tprofile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(5):
                        step(r)
                ka = prof.key_averages()
                n_ops = sum(e.count for e in ka if e.key.startswith("aten::")) / 5
                top = [e for e in ka if e.key.startswith("aten::")]
                self_ms = sum(e.self_cpu_time_total for e in ka) / 5e3
                tables[r.lib] = ka.table(sort_by="self_cpu_time_total", row_limit=18)
                t = times[r.lib]
                out.append(f"| {r.lib} | {min(t):.2f} | {np.percentile(t, 10):.2f} | "
                           f"{statistics.median(t):.2f} | {n_ops:.0f} | {nodes} | {self_ms:.2f} |")
                del top
            fastest_peer = min((r for r in runs if r.lib != "flowlib"),
                               key=lambda r: np.percentile(times[r.lib], 10), default=None)
            for r in runs:
                if r.lib not in ("flowlib",) and r is not fastest_peer:
                    continue
                out.append(f"\n### torch.profiler, {r.lib} ({dataset}/{arch}), 5 steps\n\n"
                           f"```\n{tables[r.lib]}\n```")
                pr = cProfile.Profile()
                pr.enable()
                for _ in range(50):
                    step(r)
                pr.disable()
                buf = io.StringIO()
                pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(18)
                txt = "\n".join(line for line in buf.getvalue().splitlines() if line.strip())
                out.append(f"\n### cProfile, {r.lib} ({dataset}/{arch}), 50 steps, by own time\n\n"
                           f"```\n{txt}\n```")
            log(f"profiled {dataset}/{arch}")
    text = "\n".join(out) + "\n"
    if args.profile_out:
        with open(args.profile_out, "w") as f:
            f.write(text)
        log(f"wrote {args.profile_out}")
    else:
        print(text)

if __name__ == "__main__":
    main()
