"""Reused buffers for the hidden activations of no-grad passes (``log_prob`` and ``sample`` without autograd).

A density evaluation of 10,000 points through a MAF allocates two ``(10000, 64)`` hidden activations per layer,
2.5 MB each: large enough that the C allocator hands every one of them back to the operating system when it is
freed, so each new one costs page faults before the matrix product can write to it. Inside ``workspace()`` (which
``Flow.log_prob``, ``Flow.sample`` and ``Compose`` open without autograd) the hidden layers of every conditioner
write into a few buffers that live for that one call: slot ``k`` holds the output of hidden layer ``k`` of
whichever network runs now, so consecutive layers of a flow reuse the same memory. Measured stand-alone on a
5-layer MADE-shaped stack of 10,000 points (best of 3 calls, median of 40 interleaved rounds): 13.8 -> 9.5 ms for
two dimensions at one thread, 29 -> 21 ms for 64 at two; the benchmark's rows are in ``benchmarks/RESULTS.md``.
The numbers are the same (the same ``addmm`` writes into other memory).

The buffers belong to the call and to its thread (``threading.local``): two threads evaluating one model at the
same time use separate buffers, and nothing is kept between calls. With autograd on nothing changes: a hidden
activation is saved for the backward pass and must not be overwritten.
"""

from __future__ import annotations

import contextlib
import threading

import torch

_local = threading.local()


@contextlib.contextmanager
def workspace():
    """Open a workspace for the current no-grad call (a nested one uses the outer one's buffers)."""
    if getattr(_local, "buffers", None) is not None:
        yield
        return
    _local.buffers = {}
    try:
        yield
    finally:
        _local.buffers = None


def linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, slot: int) -> torch.Tensor:
    """``relu(x W^T + b)`` without autograd, written into the workspace's buffer ``slot`` when a workspace is open
    (a new tensor otherwise). The result is only valid until the next call with the same ``slot``: callers pass
    hidden layer ``k`` of a network as ``slot = k``, so a layer's input (slot ``k - 1``) is never its output."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None or torch.is_grad_enabled():
        return torch.nn.functional.linear(x, weight, bias).relu_()
    key = (slot, x.shape[0], weight.shape[0], x.dtype, x.device)
    out = buffers.get(key)
    if out is None:
        out = buffers[key] = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
    if bias is None:
        return torch.mm(x, weight.t(), out=out).relu_()
    return torch.addmm(bias, x, weight.t(), out=out).relu_()


def mlp_body(body, h: torch.Tensor) -> torch.Tensor:
    """The hidden part of a ``Linear, activation, Linear, activation, ...`` network without autograd: each
    ``Linear`` followed by a ``ReLU`` through ``linear_relu`` (slot = its position), any other activation in place
    of its module call."""
    inputs, k, layers = h, 0, list(body)
    while k < len(layers):
        m = layers[k]
        nxt = layers[k + 1] if k + 1 < len(layers) else None
        if type(m) is torch.nn.Linear and type(nxt) is torch.nn.ReLU:
            h = linear_relu(h, m.weight, m.bias, k)
            k += 2
            continue
        h = h.relu_() if type(m) is torch.nn.ReLU and h is not inputs else m(h)
        k += 1
    return h


def row_sum(t: torch.Tensor) -> torch.Tensor:
    """``t.sum(dim=1)`` of a ``(batch, w)`` tensor. Without autograd and for ``w <= 2`` (two-moons log-dets and base
    densities, the one-entry halves of its couplings) as the product ``t @ 1``: PyTorch's CPU reduction over a
    dimension of one or two entries costs about 66 us for 10,000 rows, the matrix-vector product about 11 us. The
    same numbers: ``a * 1`` and ``a * 1 + b * 1`` are exactly ``a`` and ``a + b``."""
    if t.dim() == 2 and t.shape[1] <= 2 and not torch.is_grad_enabled():
        return torch.mv(t, t.new_ones(t.shape[1]))
    return t.sum(dim=1)
