"""Likelihood metrics: negative log-likelihood in nats and bits per dimension.

Both take per-sample log-densities ``log_prob`` (shape ``(batch,)``, in nats, as returned by
``Flow.log_prob``) and return the average over the batch as a 0-d tensor.
"""

from __future__ import annotations

import math

import torch

from flowlib._validate import check_int, check_tensor

__all__ = ["nll_nats", "bits_per_dim"]


def nll_nats(log_prob: torch.Tensor) -> torch.Tensor:
    """Average negative log-likelihood in nats: ``-(1/B) sum_b log p(x_b)``."""
    check_tensor(log_prob, name="log_prob", ndim=1)
    return -log_prob.mean()


def bits_per_dim(
    log_prob: torch.Tensor,
    num_dims: int,
    num_bits: int | None = 8,
    num_levels: int | None = None,
) -> torch.Tensor:
    """Average negative log-likelihood in bits per dimension.

    Which density ``log_prob`` must be:

    * ``num_bits=None`` and ``num_levels=None``: any log-density or log-mass; the result is
      ``-log p / (D log 2)`` with no offset.
    * otherwise (the default, ``num_bits=8``): the data were ``L``-level integers
      (``L = 2**num_bits``, or ``num_levels``), dequantised and rescaled to ``y = (x + u) / L`` in
      ``[0, 1]^D``, and ``log_prob`` is the continuous log-density of ``y``, *including* the log-det of any
      preprocessing such as ``flowlib.preprocess.Logit``. Then the density on the integer scale is
      ``p_Y(y) / L^D`` and

          bpd = (-log p_Y(y) + D log L) / (D log 2),

      the negative (lower bound on the) discrete log-likelihood of ``x``, in bits, per dimension.

    Known answer: the uniform density on ``[0, 1]^D`` (``log p_Y = 0``) gives exactly ``log2 L`` bits per
    dimension, 8 for 8-bit data.
    """
    check_tensor(log_prob, name="log_prob", ndim=1)
    D = check_int(num_dims, "num_dims")
    if num_levels is not None:
        offset = D * math.log(check_int(num_levels, "num_levels", minimum=2))
    elif num_bits is not None:
        offset = D * check_int(num_bits, "num_bits") * math.log(2)
    else:
        offset = 0.0
    return (-log_prob.mean() + offset) / (D * math.log(2))
