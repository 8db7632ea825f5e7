"""flowlib: a small, verified normalizing-flows library for the course
"Deep Generative Models, from probability to normalizing flows".

Direction convention: ``Transform.forward(x) -> (z, logdet)`` normalizes (data to base space),
``Transform.inverse(z) -> (x, logdet)`` generates. Log-dets are per sample, shape ``(batch,)``.
"""

from flowlib import data, dequantization, distributions, io, metrics, preprocess, targets, train
from flowlib.dequantization import VariationalDequantization, log_mass_estimate
from flowlib.distributions import (
    Bernoulli,
    Categorical,
    DiagGaussian,
    FullGaussian,
    GaussianMixture,
    StandardNormal,
    cross_entropy,
    entropy,
    kl_divergence,
)
from flowlib.flow import Flow
from flowlib.io import load_checkpoint, save_checkpoint
from flowlib.metrics import bits_per_dim, nll_nats
from flowlib.preprocess import Logit, UniformDequantization
from flowlib.train import fit
from flowlib.transforms.base import Compose, InverseTransform, NoAnalyticInverse, Transform

__version__ = "0.1.0"
__all__ = ["Flow", "Transform", "Compose", "InverseTransform", "NoAnalyticInverse", "__version__"]
__all__ += ["data", "dequantization", "distributions", "io", "metrics", "preprocess", "targets", "train", "plot"]
__all__ += ["StandardNormal", "DiagGaussian", "FullGaussian", "GaussianMixture", "Bernoulli", "Categorical"]
__all__ += ["entropy", "cross_entropy", "kl_divergence", "UniformDequantization", "Logit"]
__all__ += ["VariationalDequantization", "log_mass_estimate"]
__all__ += ["nll_nats", "bits_per_dim", "fit", "save_checkpoint", "load_checkpoint"]


def __getattr__(name):
    # flowlib.plot imports matplotlib, so it is loaded on first use rather than with the package.
    if name == "plot":
        import importlib

        return importlib.import_module("flowlib.plot")
    raise AttributeError(f"module 'flowlib' has no attribute {name!r}")
