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
* speed (``speed``): per (dataset, architecture) and thread count (1 and 2), interleaved rounds; every round
  times each library's training step (median of ``--speed-steps``), ``log_prob`` and ``sample`` of 10,000
  points (best of ``--eval-repeats`` back-to-back calls, one above 0.25 s); reported as flowlib / fastest peer,
  the median of the per-round ratios.
* likelihood (``bench_one``): same seed, same batches and dequantisation noise, Adam(lr=1e-3), batch 512,
  ``--steps`` steps, libraries interleaved in chunks; the final model and the early-stopped one (patience on
  the validation split) are tested; seeds 0-9, and the report gives paired differences flowlib - library
  with their standard error, a tie whenever they are within two standard errors.
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

# the flowlib of this checkout, also when another checkout's flowlib is installed in the environment (editable)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LIBS = ("flowlib", "normflows", "nflows", "zuko")
ARCHS = ("realnvp", "maf", "nsf-coupling", "nsf-maf")
SPLINE_ARCHS = ("nsf-coupling", "nsf-maf")  # neural spline flows (Durkan et al. 2019): flowlib, nflows, zuko
SPLINE_BINS, SPLINE_BOUND = 8, 3.0  # every library: K = 8 bins on [-3, 3], linear (identity) tails
DATASETS = ("moons", "digits", "digits-std")
SPEED_DATASETS = ("moons", "digits")
HIDDEN = (64, 64)
N_LAYERS = {"realnvp": 8, "maf": 5, "nsf-coupling": 8, "nsf-maf": 5}
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
        for k in range(N_LAYERS[arch]):  # maf()'s layers before the fold: the same map (FoldedStack)
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


def arch_libs(arch, libs):
    """The libraries compared on ``arch``: normflows is left out of the spline rows (the issue names zuko's and
    nflows' neural spline flows as the peers)."""
    return [lib for lib in libs if not (arch in SPLINE_ARCHS and lib == "normflows")]


def build(lib, arch, dim):
    if arch in SPLINE_ARCHS and lib.startswith("flowlib:"):
        raise ValueError(f"the {lib} ablations are defined for realnvp and maf only")
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
    if arch == "nsf-coupling":
        from flowlib.distributions import StandardNormal
        from flowlib.flow import Flow
        from flowlib.transforms.base import Compose
        from flowlib.transforms.coupling import SplineCoupling

        layers = [SplineCoupling(_half_masks(dim, k), HIDDEN, num_bins=SPLINE_BINS, bound=SPLINE_BOUND)
                  for k in range(N_LAYERS[arch])]
        flow = Flow(Compose(*layers), StandardNormal((dim,)))
        return Model(flow, flow.log_prob, flow.sample)
    if arch == "nsf-maf":
        from flowlib.transforms.autoregressive import spline_maf

        flow = spline_maf(dim, num_layers=N_LAYERS[arch], hidden=HIDDEN, num_bins=SPLINE_BINS, bound=SPLINE_BOUND)
        return Model(flow, flow.log_prob, flow.sample)
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
    if arch == "nsf-coupling":
        from nflows.transforms import PiecewiseRationalQuadraticCouplingTransform

        for k in range(N_LAYERS[arch]):
            def net(n_in, n_out):
                return _ContextFree(MLP((n_in,), (n_out,), hidden_sizes=list(HIDDEN)))

            layers.append(PiecewiseRationalQuadraticCouplingTransform(
                (~_half_masks(dim, k)).int(), net, num_bins=SPLINE_BINS, tails="linear", tail_bound=SPLINE_BOUND))
    elif arch == "nsf-maf":
        from nflows.transforms import MaskedPiecewiseRationalQuadraticAutoregressiveTransform

        for k in range(N_LAYERS[arch]):
            layers.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                dim, HIDDEN[0], num_bins=SPLINE_BINS, tails="linear", tail_bound=SPLINE_BOUND,
                num_blocks=len(HIDDEN) - 1, use_residual_blocks=False))
            if k < N_LAYERS[arch] - 1:
                layers.append(ReversePermutation(dim))
    elif arch == "realnvp":
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

    if arch in SPLINE_ARCHS:
        from functools import partial

        from zuko.flows import Flow, GeneralCouplingTransform, UnconditionalDistribution
        from zuko.transforms import MonotonicRQSTransform

        spline = dict(univariate=partial(MonotonicRQSTransform, bound=SPLINE_BOUND),
                      shapes=[(SPLINE_BINS,), (SPLINE_BINS,), (SPLINE_BINS - 1,)], hidden_features=HIDDEN)
        if arch == "nsf-coupling":
            layers = [GeneralCouplingTransform(dim, mask=_half_masks(dim, k), **spline)
                      for k in range(N_LAYERS[arch])]
            base = UnconditionalDistribution(
                zuko.distributions.DiagNormal, torch.zeros(dim), torch.ones(dim), buffer=True)
            flow = Flow(layers, base)
        else:  # zuko.flows.NSF is this MAF with the spline (its default bound is 5; 3 here, as for the others)
            flow = zuko.flows.MAF(dim, transforms=N_LAYERS[arch], **spline)
        return Model(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))
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
    ("flowlib", "nsf-coupling"): "`SplineCoupling(num_bins=8, bound=3)`: rational-quadratic spline on [-3, 3], "
    "identity tails, min bin width/height and derivative from `spline_defaults()`; last conditioner layer zero "
    "(identity at start)",
    ("flowlib", "nsf-maf"): "`spline_maf(num_bins=8, bound=3)`: `SplineMAF` layers, reversed between layers "
    "(folded into the MADE masks); last MADE layer scaled by 1/sqrt(d)",
    ("nflows", "nsf-coupling"): "`PiecewiseRationalQuadraticCouplingTransform(num_bins=8, tails='linear', "
    "tail_bound=3)`; its `MLP` with PyTorch's default init",
    ("nflows", "nsf-maf"): "`MaskedPiecewiseRationalQuadraticAutoregressiveTransform(num_bins=8, tails='linear', "
    "tail_bound=3)`, plain (non-residual) MADE 64-64, reversed between layers",
    ("zuko", "nsf-coupling"): "`GeneralCouplingTransform` with `MonotonicRQSTransform(bound=3)` (8 bins, "
    "`slope=1e-3`)",
    ("zuko", "nsf-maf"): "`zuko.flows.MAF` with `MonotonicRQSTransform(bound=3)` (what `zuko.flows.NSF` builds, "
    "with bound 3 instead of 5)",
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
    if dataset == "digits-std":
        # per-dimension standardisation of the logit-space values, with the mean and sd of the training split
        # (one fixed dequantisation draw); its log-det -sum(log sd) is added like the logit's, so bits/dim stay
        # those of the 0..16 images and compare with the unstandardised rows
        v_fit, _ = prep(train, torch.Generator().manual_seed(30_000))
        mu, sd = v_fit.mean(0), v_fit.std(0)
        batches, val_v, test_v, timing_x = ((v - mu) / sd for v in (batches, val_v, test_v, timing_x))
        val_ld, test_ld = val_ld - sd.log().sum(), test_ld - sd.log().sum()
        source += (" (+ per-dimension standardisation in logit space, training-split sd "
                   f"{float(sd.min()):.2f}-{float(sd.max()):.2f})")
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
    def __init__(self, lib, arch, task, seed, lr, patience=3):
        torch.manual_seed(seed)  # same initialisation seed for every library
        self.lib, self.arch, self.task = lib, arch, task
        self.model = build(lib, arch, task["dim"])
        self.opt = torch.optim.Adam(self.model.module.parameters(), lr=lr)
        self.step = 0
        self.times = []
        self.best = (math.inf, 0, None)  # (val metric, step, state_dict)
        self.stopped = None  # early stopping: ``best`` as it was when the patience ran out
        self.since_best = 0
        self.patience = patience
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
            self.since_best = 0
        else:
            self.since_best += 1
            if self.stopped is None and self.since_best >= self.patience:
                self.stopped = self.best  # early stopping would have ended training here, with this checkpoint

    @torch.no_grad()
    def test_early_stopped(self):
        """Test metric of early stopping on the validation split: training ends after ``patience``
        validations without improvement and the best checkpoint so far is restored (the best checkpoint of
        the whole budget when the patience never ran out)."""
        best = self.stopped or self.best
        if best[2] is None:
            return math.nan, 0
        self.model.module.load_state_dict(best[2])
        self.model.module.eval()
        try:
            return self.task["metric"](self.model, self.task["test"]), best[1]
        except Exception:
            return math.nan, best[1]

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


SLOW_SAMPLE_ROWS = (("digits", "maf"), ("digits", "nsf-maf"))  # 64 sequential passes per layer to sample


def speed(args, log):
    """Speed rows: for every (dataset, architecture) and thread count, ``--speed-rounds`` interleaved rounds;
    in each round every library (order rotated) runs ``--speed-steps`` training steps (zero_grad + log_prob +
    backward + Adam step, batch ``--batch``; the round's value is their median), then ``log_prob`` and
    ``sample`` of 10,000 points under ``torch.no_grad()``, each the best of ``--eval-repeats`` back-to-back calls
    (one where the first takes more than 0.25 s; a call of 10-60 ms on a shared virtual machine is often
    stretched by a stall of the host; the best of a few calls measures the library, the median over rounds
    then the typical state of the machine). One untimed warm-up round first. Returns
    ``{(dataset, arch, threads): {lib: {"train": [...], "log_prob": [...], "sample": [...]}}}`` (seconds per
    round)."""
    out = {}
    sargs = argparse.Namespace(**{**vars(args), "steps": args.speed_steps * (args.speed_rounds + 1)})
    rows = [(d, a, t) for d in args.datasets if d in SPEED_DATASETS for a in args.archs for t in args.speed_threads]
    rows.sort(key=lambda r: (r[:2] in SLOW_SAMPLE_ROWS, r[2]))  # the slow sequential sampler last
    for dataset, arch, threads in rows:
            torch.set_num_threads(threads)
            task = make_task(dataset, sargs, 0)
            x_eval = task["timing_x"]
            n_sample = args.slow_sample_n if (dataset, arch) in SLOW_SAMPLE_ROWS else len(x_eval)
            if True:
                runs = [Run(lib, arch, task, 0, args.lr) for lib in arch_libs(arch, args.libs)]
                times = {r.lib: {"train": [], "log_prob": [], "sample": []} for r in runs}
                for rnd in range(args.speed_rounds + 1):
                    for r in runs[rnd % len(runs):] + runs[: rnd % len(runs)]:
                        m, steps = r.model, []
                        for j in range(args.speed_steps):
                            x = task["batches"][rnd * args.speed_steps + j]
                            t0 = time.perf_counter()
                            r.opt.zero_grad(set_to_none=True)
                            (-m.log_prob(x).mean()).backward()
                            r.opt.step()
                            steps.append(time.perf_counter() - t0)
                        with torch.no_grad():
                            t_lp = _best_of(m.log_prob, x_eval, args.eval_repeats)
                            t_s = _best_of(m.sample, n_sample, args.eval_repeats)
                        if rnd:  # round 0 warms up
                            times[r.lib]["train"].append(statistics.median(steps))
                            times[r.lib]["log_prob"].append(t_lp)
                            times[r.lib]["sample"].append(t_s)
                out[(dataset, arch, threads)] = times
                if args.json:  # every finished row at once: an interrupted run keeps what it measured
                    with open(args.json + ".speed.json", "w") as fh:
                        json.dump({"speed": {f"{d}/{a}/{t}": v for (d, a, t), v in out.items()},
                                   "args": {k: getattr(args, k) for k in ("batch", "libs", "archs", "speed_rounds",
                                                                          "speed_steps", "speed_threads",
                                                                          "slow_sample_n", "eval_repeats")}}, fh)
                log(f"speed {dataset}/{arch}, {threads} thread(s): " + ", ".join(
                    f"{lib} {1e3 * _med(t['train']):.2f} ms/step, log_prob {1e3 * _med(t['log_prob']):.1f} ms, "
                    f"sample {1e3 * _med(t['sample']):.1f} ms" for lib, t in times.items()))
    torch.set_num_threads(args.threads)
    return out


def _best_of(call, arg, repeats, long_call=0.25):
    """Seconds of the fastest of ``repeats`` back-to-back ``call(arg)``; one call when the first takes more than
    ``long_call`` seconds (a stall of the host matters little to such a call, and repeating it costs minutes)."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        call(arg)
        best = min(best, time.perf_counter() - t0)
        if best > long_call:
            break
    return best


def speed_ratio(times, what, peers):
    """flowlib / fastest peer for ``what``: the fastest peer is the one with the smallest median over rounds;
    the ratio is the median over rounds of the per-round ratios (paired: both measured in the same round),
    with the min and max of the per-round ratios."""
    fastest = min(peers, key=lambda p: _med(times[p][what]))
    ratios = [f / p for f, p in zip(times["flowlib"][what], times[fastest][what])]
    return fastest, _med(ratios), (min(ratios), max(ratios))


def paired(a, b):
    """Paired difference ``a - b`` over seeds (NaN pairs dropped): (mean, standard error, n, verdict), the
    verdict ``"ahead"`` (a lower, i.e. better, by more than two standard errors), ``"behind"`` or ``"tie"``."""
    d = [x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    if len(d) < 2:
        return math.nan, math.nan, len(d), "n/a"
    mean, se = statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))
    verdict = "ahead" if mean + 2 * se < 0 else "behind" if mean - 2 * se > 0 else "tie"
    return mean, se, len(d), verdict


def _med(xs):
    return statistics.median(xs) if xs else math.nan


def bench_one(dataset, arch, task, libs, seed, args, log):
    """Train every library on one (dataset, arch, seed) cell, interleaved in chunks; test the final model and
    the early-stopped one. Speed is measured separately (``speed``), not from these runs."""
    runs = []
    for lib in arch_libs(arch, libs):
        try:
            runs.append(Run(lib, arch, task, seed, args.lr, args.patience))
        except Exception as e:
            log(f"  [{dataset}/{arch}] {lib}: cannot build ({type(e).__name__}: {e})")
            if args.verbose:
                traceback.print_exc()
    n_chunks = math.ceil(args.steps / args.chunk)
    for c in range(n_chunks):
        order = runs[c % len(runs):] + runs[: c % len(runs)]  # rotate who goes first
        for r in order:
            r.train_chunk(args.chunk, args.val_every)
    res = {}
    for r in runs:
        t = r.times[args.warmup:] if len(r.times) > args.warmup else r.times
        final = r.test_final()  # before the early-stopped checkpoint is loaded
        es, es_step = r.test_early_stopped()
        res[r.lib] = dict(
            test_final=final, test_es=es, es_step=es_step, ms_step=1e3 * _med(t), steps=r.step,
            best_val=r.best[0], best_step=r.best[1], error=r.error, val_curve=r.val_curve,
            params=r.model.num_params(),
        )
        log(f"  [{dataset}/{arch} seed {seed}] {r.lib:9s} {res[r.lib]['ms_step']:7.2f} ms/step  "
            f"final {final:.4f} early-stopped {es:.4f} (step {es_step}) {task['unit']}"
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


def aggregate(per_seed, libs):
    """Combine seeds (lists in seed order, NaN for a failed run): final and early-stopped test metrics."""
    agg = {}
    for lib in libs:
        rs = [s.get(lib) for s in per_seed]
        if not any(rs):
            continue
        nan = dict(test_final=math.nan, test_es=math.nan, es_step=0, ms_step=math.nan, error=None)
        rs = [r or nan for r in rs]
        agg[lib] = dict(
            finals=[r["test_final"] for r in rs], es=[r["test_es"] for r in rs],
            es_steps=[r["es_step"] for r in rs], ms_step=_med([r["ms_step"] for r in rs]),
            errors=[r["error"] for r in rs if r["error"]], params=next(r for r in rs if "params" in r)["params"],
        )
    return agg


def _stats(xs):
    """(median, min, max, mean, sd) of the finite values, or None."""
    f = [x for x in xs if math.isfinite(x)]
    if not f:
        return None
    return statistics.median(f), min(f), max(f), statistics.fmean(f), statistics.stdev(f) if len(f) > 1 else 0.0


def _stat_cells(xs, nd=3):
    st = _stats(xs)
    if st is None:
        return "n/a", "n/a"
    med, lo, hi, mean, sd = st
    return f"{med:.{nd}f} [{lo:.{nd}f}, {hi:.{nd}f}]", f"{mean:.{nd}f} +- {sd:.{nd}f}"


def _paired_cell(a, b, nd=3):
    mean, se, n, verdict = paired(a, b)
    if verdict == "n/a":
        return "n/a", "n/a"
    return f"{mean:+.{nd}f} +- {se:.{nd}f} (n={n})", {"ahead": "flowlib ahead", "behind": "flowlib behind",
                                                       "tie": "tie"}[verdict]


TITLES = {
    "moons": "Two moons (test NLL in nats, lower is better)",
    "digits": "8x8 digits (test bits/dim, dequantised + logit, lower is better)",
    "digits-std": "Digits with standardised logit-space inputs (test bits/dim, lower is better)",
}


def write_report(path, results, speed_res, args, meta):
    cpu, ncpu, versions = meta["machine"]
    L = []
    w = L.append
    w("# flowlib vs normflows, nflows, zuko: speed and likelihood\n")
    w(f"Generated by `benchmarks/flows.py` on {meta['date']} in {meta['wall']:.0f} s.\n")
    w("Reproduce (from the repository root; `make bench` runs the same):\n")
    w("```bash\nbash benchmarks/setup_bench_env.sh\n" + meta["command"] + "\n```\n")
    w(f"- Machine: {cpu}, {ncpu} logical CPUs, no GPU, **shared with other jobs**. 1-min load average "
      + "; ".join(f"during the {k} part: {v}" for k, v in meta["load"].items())
      + ". Interleaving spreads the noise over all libraries alike; it does not remove it.")
    w("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if speed_res:
        w(f"- Speed: {args.speed_rounds} interleaved rounds (plus one untimed warm-up round) per row and thread "
          f"count (`torch.set_num_threads`: {', '.join(map(str, args.speed_threads))}); in every round each "
          f"library, in rotated order, runs {args.speed_steps} training steps (zero_grad + log_prob + backward + "
          f"Adam step, batch {args.batch}; the round's value is their median), then `log_prob` and `sample` of "
          f"10,000 points (`torch.no_grad()`; `sample` of {args.slow_sample_n:,} points on the digits MAF and "
          "spline-MAF rows, whose "
          f"samplers make 64 sequential passes per layer), each the best of {getattr(args, 'eval_repeats', 1)} "
          "back-to-back calls (one call where the first takes more than 0.25 s: the spline rows). "
          "Ratio = flowlib / fastest peer (the peer with the "
          "smallest median over rounds), the median of the per-round ratios, [min, max] over rounds.")
    if results:
        w(f"- Likelihood: {args.steps} Adam steps (lr {args.lr}), batch {args.batch}, seeds {args.seeds} (the same "
          f"seed gives every library the same batches, dequantisation noise and `torch.manual_seed` before its "
          f"initialisation); libraries interleaved in chunks of {args.chunk} steps; validation every "
          f"{args.val_every} steps. Two models per run: the **final** model after step {args.steps} (what `fit` "
          f"returns without checkpointing) and **early stopping** on the validation split (training stops after "
          f"{args.patience} validations without improvement and the best checkpoint so far is restored; the "
          "best checkpoint of the budget when that never happens). "
          + (f"{args.jobs} cells (dataset, architecture, seed) in parallel processes of {args.threads} thread(s). "
             if args.jobs > 1 else f"{args.threads} thread(s). ")
          + "**Paired differences**: flowlib minus the library, seed by seed, mean +- standard error over seeds; "
          "the verdict is a **tie** whenever the mean is within two standard errors of 0.")
        w(f"- Data: {meta['sources']}")
    w("")
    speed_targets = []
    if speed_res:
        w("## Speed: flowlib / fastest peer (below 1: flowlib faster)\n")
        w("| dataset | architecture | threads | training step: ratio [min, max] | log_prob 10k: ratio [min, max] | "
          "sample 10k: ratio [min, max] | all three <= 1 |")
        w("|---|---|---|---|---|---|---|")
        for (dataset, arch, threads), times in speed_res.items():
            peers = [lib for lib in times if lib in LIBS and lib != "flowlib" and times[lib]["train"]]
            if "flowlib" not in times or not peers:
                continue
            cells, ok = [], True
            for what in ("train", "log_prob", "sample"):
                fastest, ratio, (lo, hi) = speed_ratio(times, what, peers)
                ok &= ratio <= 1.0
                cells.append(f"{ratio:.2f} [{lo:.2f}, {hi:.2f}] vs {fastest}")
                speed_targets.append((dataset, arch, threads, what, ratio))
            w(f"| {dataset} | {arch} | {threads} | {' | '.join(cells)} | {'met' if ok else '**missed**'} |")
        w("\nMedian times over the rounds (ms per call; the machine was shared, so absolute times are inflated):\n")
        w("| dataset | architecture | threads | library | ms / training step | log_prob 10k (ms) | sample 10k (ms) |")
        w("|---|---|---|---|---|---|---|")
        for (dataset, arch, threads), times in speed_res.items():
            for lib, t in times.items():
                w(f"| {dataset} | {arch} | {threads} | {lib} | {1e3 * _med(t['train']):.2f} | "
                  f"{1e3 * _med(t['log_prob']):.1f} | {1e3 * _med(t['sample']):.1f} |")
        w("")
    claims = []
    for dataset in args.datasets if results else ():
        unit = "nats" if dataset == "moons" else "bits/dim"
        w(f"## {TITLES[dataset]}\n")
        w(f"| architecture | library | params | final test {unit}: median [min, max] | final mean +- sd | "
          "final: flowlib - library, mean +- se | final verdict | early-stopped: median [min, max] | "
          "early-stopped mean +- sd | early-stopped: flowlib - library | early-stopped verdict | stop step | notes |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        ref = meta.get("reference", {}).get(dataset, math.nan)
        if math.isfinite(ref):
            w(f"| - | true density | | {ref:.3f} | | | | {ref:.3f} | | | | | `flowlib.data.two_moons_log_prob` "
              "of the test points: the floor |")
        for arch in args.archs:
            agg = results.get((dataset, arch), {})
            if not agg:  # a row this run did not measure (e.g. the spline rows on digits-std)
                continue
            f = agg.get("flowlib")
            for lib in arch_libs(arch, args.libs):
                if lib not in agg:
                    w(f"| {arch} | {lib} | not run | | | | | | | | | | model not available |")
                    continue
                a = agg[lib]
                fin_med, fin_mean = _stat_cells(a["finals"])
                es_med, es_mean = _stat_cells(a["es"])
                if f is not None and lib != "flowlib":
                    pf, vf = _paired_cell(f["finals"], a["finals"])
                    pe, ve = _paired_cell(f["es"], a["es"])
                else:
                    pf = vf = pe = ve = "-"
                notes = "diverged/raised: " + "; ".join(a["errors"])[:160] if a["errors"] else ""
                w(f"| {arch} | {lib} | {a['params']} | {fin_med} | {fin_mean} | {pf} | {vf} | {es_med} | {es_mean} | "
                  f"{pe} | {ve} | {','.join(map(str, a['es_steps']))} | {notes} |")
            peers = {k: v for k, v in agg.items() if k in LIBS and k != "flowlib"}
            if f is not None and peers:
                for model, field in (("final", "finals"), ("early-stopped", "es")):
                    best = min(peers, key=lambda k: (_stats(peers[k][field]) or (math.inf,) * 4)[3])
                    claims.append((dataset, arch, model, best, *paired(f[field], peers[best][field]), unit))
        w("")
    if speed_targets or claims:
        w("## Targets and claims\n")
    if speed_targets:
        missed = [t for t in speed_targets if not t[4] <= 1.0]
        w(f"**Speed** (target: every ratio of the speed table at most 1.0, median over rounds): "
          f"{len(speed_targets) - len(missed)} of {len(speed_targets)} ratios met"
          + ("." if not missed else "; missed: " + ", ".join(
              f"{d}/{a}/{t} thread(s) {what} {r:.2f}" for d, a, t, what, r in missed) + ".")
          + " Each ratio is a median over rounds on a shared machine: a ratio within a few per cent of 1.0 is "
          "a tie at this noise level, not a lead (the [min, max] columns show the round-to-round spread).\n")
    if claims:
        w("**Likelihood** against the best peer of each row (the peer with the lowest mean test NLL over seeds for "
          "that model), paired over seeds. Every claim depends on its protocol: the data row (two moons; digits in "
          f"logit space; digits standardised in logit space), the budget ({args.steps} steps at lr {args.lr}, "
          f"batch {args.batch}) and the model (final, or early-stopped with patience {args.patience}).\n")
        w("| dataset | architecture | model | best peer | flowlib - best peer, mean +- se | verdict |")
        w("|---|---|---|---|---|---|")
        for dataset, arch, model, best, mean, se, n, verdict, unit in claims:
            text = {"ahead": "**flowlib ahead**", "behind": "**flowlib behind**", "tie": "tie", "n/a": "n/a"}[verdict]
            w(f"| {dataset} | {arch} | {model} | {best} | {mean:+.3f} +- {se:.3f} {unit} (n={n}) | {text} |")
        w("")
    if results:
        w("## Scale parametrisations (they bound the likelihood differently)\n")
        w("| library | architecture | scale of the affine map |")
        w("|---|---|---|")
        for lib in args.libs:
            for arch in args.archs:
                note = SCALE_NOTES.get((lib, arch))
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
        w(EXTRA_NOTES)
    kept = ""
    if os.path.exists(path):  # a hand-written analysis below the marker survives a re-run
        with open(path) as fh:
            old = fh.read()
        if ANALYSIS_MARKER in old:
            kept = "\n" + old[old.index(ANALYSIS_MARKER):]
    with open(path, "w") as fh:
        fh.write("\n".join(L).rstrip() + "\n" + kept)


def _load_json(path):
    with open(path) as fh:
        return json.load(fh)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 60 steps, 2 seeds, 2 speed rounds")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    p.add_argument("--json", default=None, help="also dump the raw results (speed rounds, per-seed metrics) here")
    p.add_argument("--libs", nargs="+", default=list(LIBS), type=lib_choice,
                   help=f"libraries: {', '.join(LIBS)}, or flowlib:<variant> for the ablations "
                        f"({', '.join({**FLOWLIB_VARIANTS, **MAF_VARIANTS})})")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    p.add_argument("--jobs", type=int, default=2,
                   help="run the likelihood cells (dataset, arch, seed) in this many processes (each --threads "
                        "threads); libraries stay interleaved inside a cell")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--chunk", type=int, default=10, help="steps of one library before switching")
    p.add_argument("--warmup", type=int, default=20, help="leading steps of each run left out of the timing")
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--patience", type=int, default=3, help="early stopping: validations without improvement")
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-val", type=int, default=5_000)
    p.add_argument("--n-test", type=int, default=5_000)
    p.add_argument("--eval-draws", type=int, default=4, help="dequantisation draws per held-out digit")
    p.add_argument("--threads", type=int, default=1, help="threads per likelihood process")
    p.add_argument("--speed-threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--speed-rounds", type=int, default=7)
    p.add_argument("--speed-steps", type=int, default=10, help="training steps per library per speed round")
    p.add_argument("--eval-repeats", type=int, default=3,
                   help="back-to-back log_prob and sample calls per library per speed round; the round keeps the best")
    p.add_argument("--slow-sample-n", type=int, default=1_000,
                   help="points per sample() call on the digits MAF and spline-MAF rows (d = 64 sequential "
                        "passes per layer)")
    p.add_argument("--skip-rows", nargs="*", default=["digits/nsf-coupling", "digits/nsf-maf",
                                                      "digits-std/nsf-coupling", "digits-std/nsf-maf"],
                   help="likelihood rows left out (default: the spline rows of the digits: a digits spline cell costs "
                        "two to three times an affine one, and the report's claims are about the affine rows; the "
                        "speed table keeps them. `--skip-rows` alone runs every row)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-likelihood", action="store_true")
    p.add_argument("--from-json", nargs="+", default=[],
                   help="write the report from raw results saved with --json (speed and/or likelihood) "
                        "instead of measuring them again")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--profile", action="store_true", help="profile training step, log_prob and sample instead")
    p.add_argument("--profile-what", default="train", choices=("train", "log_prob", "sample"))
    p.add_argument("--profile-steps", type=int, default=200)
    p.add_argument("--profile-out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.val_every, args.chunk, args.warmup = 60, args.seeds[:2], 20, 20, 5
        args.speed_rounds, args.speed_steps = 2, 3
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t_start:6.0f}s] {msg}", flush=True)

    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, libs {args.libs}")
    if args.profile:
        return profile(args, log)
    speed_res, results, sources, reference, load, raw = {}, {}, {}, {}, {}, {}
    commands = {}
    jsonl = [path for path in args.from_json if path.endswith(".jsonl")]
    if jsonl:  # the cells of likelihood runs (also unfinished ones, also several runs with other seeds)
        cells = {}
        for path in jsonl:
            with open(path) as fh:
                for line in fh:
                    c = json.loads(line)
                    cells.setdefault(tuple(c["cell"]), c["res"])
        loads = [x for r in cells.values() for x in r.get("_load", [])]
        if loads:
            load["likelihood"] = f"{statistics.fmean(loads):.1f} on average over the cells, {max(loads):.1f} at most"
        args.seeds = sorted({sd for (_, _, sd) in cells})
        for d in args.datasets:
            for a in args.archs:
                per_seed = [cells[(d, a, sd)] for sd in args.seeds if (d, a, sd) in cells]
                if per_seed:
                    results[(d, a)] = aggregate(per_seed, args.libs)
                    raw.setdefault("likelihood", {})[f"{d}/{a}"] = per_seed
            task = make_task(d, argparse.Namespace(**{**vars(args), "steps": 1}), args.seeds[0])
            sources[d] = f"{d}: {task['source']}, train/val/test {task['sizes']}"
            reference[d] = task["reference"]
    for path in args.from_json:
        if path in jsonl:
            continue
        saved = _load_json(path)
        if saved.get("speed") and "eval_repeats" not in saved.get("args", {}):
            args.eval_repeats = 1  # saved before --eval-repeats: one call per round
        for k, v in saved.get("args", {}).items():  # the protocol of the saved part, for the report
            setattr(args, k, v)
        commands.update(saved.get("commands", {}))
        for k, v in saved.get("speed", {}).items():
            d, a, t = k.split("/")
            speed_res[(d, a, int(t))] = v
        for k, v in saved.get("likelihood", {}).items():
            d, a = k.split("/")
            results[(d, a)] = aggregate(v, args.libs)
            raw.setdefault("likelihood", {})[k] = v
        sources.update(saved.get("sources", {}))
        reference.update(saved.get("reference", {}))
        load.update(saved.get("load", {}))
        raw.setdefault("speed", {}).update(saved.get("speed", {}))
    if not args.skip_speed and not args.from_json:
        l0 = os.getloadavg()[0]
        speed_res = speed(args, log)
        load["speed"] = f"{l0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        raw["speed"] = {f"{d}/{a}/{t}": v for (d, a, t), v in speed_res.items()}
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(raw, fh, default=str)
    if not args.skip_likelihood and not args.from_json:
        l0 = os.getloadavg()[0]
        # seed-major: an interrupted run (see ``--json``: PATH.cells.jsonl) has whole seeds for every row
        cells = [(d, a, s) for s in args.seeds for d in args.datasets for a in args.archs
                 if f"{d}/{a}" not in args.skip_rows]
        if args.jobs > 1:
            import concurrent.futures
            import multiprocessing

            done = {}
            with concurrent.futures.ProcessPoolExecutor(args.jobs,
                                                        mp_context=multiprocessing.get_context("spawn")) as ex:
                futures = {ex.submit(_cell, *c, args): c for c in cells}
                for fut in concurrent.futures.as_completed(futures):
                    done[futures[fut]] = fut.result()
                    if args.json:  # every finished cell at once, so that an interrupted run keeps what it did
                        with open(args.json + ".cells.jsonl", "a") as fh:
                            fh.write(json.dumps({"cell": futures[fut], "res": done[futures[fut]][0]},
                                                default=str) + "\n")
        else:
            done = {}
            for c in cells:
                done[c] = _cell(*c, args, log)
                if args.json:  # as with --jobs: every finished cell at once
                    with open(args.json + ".cells.jsonl", "a") as fh:
                        fh.write(json.dumps({"cell": c, "res": done[c][0]}, default=str) + "\n")
        raw["likelihood"] = {}
        for dataset in args.datasets:
            for arch in args.archs:
                per_seed = []
                for seed in args.seeds:
                    if (dataset, arch, seed) not in done:  # --skip-rows
                        continue
                    res, source, ref = done[(dataset, arch, seed)]
                    sources[dataset] = source
                    if seed == args.seeds[0]:
                        reference[dataset] = ref
                    per_seed.append(res)
                if per_seed:
                    results[(dataset, arch)] = aggregate(per_seed, args.libs)
                    raw["likelihood"][f"{dataset}/{arch}"] = per_seed
        load["likelihood"] = f"{l0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    command = " ".join([".venv-bench/bin/python", "benchmarks/flows.py", *map(shlex.quote, sys.argv[1:])])
    if not args.from_json:
        keep = ["batch", "libs", "archs"]
        if speed_res:
            keep += ["speed_rounds", "speed_steps", "speed_threads", "slow_sample_n", "eval_repeats"]
            commands["speed"] = command
        if results:
            keep += ["steps", "seeds", "lr", "chunk", "val_every", "patience", "jobs", "threads", "datasets",
                     "eval_draws"]
            commands["likelihood"] = command
        raw["args"] = {k: getattr(args, k) for k in keep}
    raw.update(sources=sources, reference=reference, load=load, commands=commands)
    meta = dict(
        machine=machine_info(),
        date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        wall=time.time() - t_start,
        command="\n".join(dict.fromkeys(commands.values())) + (f"\n{command}" if args.from_json else ""),
        sources="; ".join(sources.values()) + (f"; digits dequantised `y = (x + u) / {DIGIT_LEVELS}` and "
                                                f"`Logit(alpha={LOGIT_ALPHA})` (flowlib.preprocess), "
                                                f"{args.eval_draws} noise draws per held-out image"),
        load=load,
        reference=reference,
    )
    write_report(args.out, results, speed_res, args, meta)
    if args.json and not args.from_json:
        with open(args.json, "w") as fh:
            json.dump(raw, fh, default=str)
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
    load0 = os.getloadavg()[0]
    res = bench_one(dataset, arch, task, args.libs, seed, args, log)
    res["_load"] = [load0, os.getloadavg()[0]]  # 1-min load average at the start and end of the cell
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
* Spline rows (`nsf-coupling`, `nsf-maf`): flowlib, nflows and zuko, K = 8 bins on [-3, 3] with linear
  (identity) tails everywhere (zuko's default bound is 5, nflows' tail bound 1: both set to 3 here), equal
  parameter counts; minimum bin widths, heights and derivatives are each library's own (about 1e-3 in all
  three). flowlib's spline couplings start exactly at the identity (zero last layer), nflows and zuko from
  PyTorch's default init; normflows is not compared on these rows.
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
            runs = [Run(lib, arch, task, args.seeds[0], args.lr) for lib in arch_libs(arch, args.libs)]
            what = args.profile_what
            x = task["batches"][0] if what == "train" else task["timing_x"]

            def step(r, x=x, what=what):
                if what == "train":
                    r.opt.zero_grad(set_to_none=True)
                    loss = -r.model.log_prob(x).mean()
                    loss.backward()
                    r.opt.step()
                    return loss
                with torch.no_grad():
                    return r.model.log_prob(x) if what == "log_prob" else r.model.sample(len(x))

            for r in runs:  # warm-up
                for _ in range(20 if what == "train" else 2):
                    step(r)
            times = {r.lib: [] for r in runs}
            for i in range(args.profile_steps):
                for r in runs[i % len(runs):] + runs[: i % len(runs)]:
                    t0 = time.perf_counter()
                    step(r)
                    times[r.lib].append(1e3 * (time.perf_counter() - t0))
            out.append(f"\n## {dataset} / {arch}, {what}: {args.profile_steps} calls per library, "
                       f"interleaved per call, {torch.get_num_threads()} thread(s)\n")
            out.append("| library | min ms | p10 ms | median ms | aten ops / step | autograd nodes | "
                       "self CPU ms / call (profiler) |")
            out.append("|---|---|---|---|---|---|---|")
            tables = {}
            for r in runs:
                loss = -r.model.log_prob(task["batches"][0]).mean()
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
                out.append(f"\n### torch.profiler, {r.lib} ({dataset}/{arch}, {what}), 5 calls\n\n"
                           f"```\n{tables[r.lib]}\n```")
                pr = cProfile.Profile()
                pr.enable()
                for _ in range(50 if what == "train" else 5):
                    step(r)
                pr.disable()
                buf = io.StringIO()
                pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(18)
                txt = "\n".join(line for line in buf.getvalue().splitlines() if line.strip())
                out.append(f"\n### cProfile, {r.lib} ({dataset}/{arch}, {what}), by own time\n\n"
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
