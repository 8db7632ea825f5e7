"""Helpers shared by the visible-check modules: type, shape and dtype checks and tolerant comparisons.

Importing this module registers no visible test (``course_tools.check`` skips modules whose name starts with
an underscore anyway). Each chapter module binds its own defaults, e.g.
``_tensor = functools.partial(tensor, dtype=F64, why="keep the input dtype")``.
"""

from __future__ import annotations

import math

import torch

from course_tools.check import expect

F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)
_COUNT = {2: "two", 3: "three"}


def tensor(x, what: str, shape=None, dtype=None, why: str = "") -> torch.Tensor:
    """``x`` if it is a tensor of the given shape and dtype; otherwise fail saying what was expected."""
    expect(isinstance(x, torch.Tensor), f"{what} should be a torch.Tensor, got {type(x).__name__}")
    if shape is not None:
        expect(tuple(x.shape) == tuple(shape), f"{what} should have shape {tuple(shape)}, got {tuple(x.shape)}")
    if dtype is not None:
        note = f" ({why})" if why else ""
        expect(x.dtype == dtype, f"{what} should have dtype {dtype}{note}, got {x.dtype}")
    return x


def tensors(out, what: str, n: int = 2) -> tuple:
    """``out`` if it is a tuple of ``n`` values (each checked later, with its own name)."""
    expect(
        isinstance(out, tuple) and len(out) == n,
        f"{what} should return a tuple of {_COUNT.get(n, n)} tensors, got {type(out).__name__}",
    )
    return out


def close(a, b, tol: float = 1e-8) -> bool:
    """``a`` finite and within ``tol * (1 + |b|)`` of ``b``, elementwise; numbers, lists or tensors."""
    a = a.detach() if isinstance(a, torch.Tensor) else a
    b = b.detach() if isinstance(b, torch.Tensor) else b
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    try:
        ok = (a - b).abs() <= tol * (1 + b.abs())
    except RuntimeError:  # shapes that do not broadcast
        return False
    return bool(torch.isfinite(a).all()) and bool(ok.all())


def fmt(values, digits: int = 4) -> list:
    """The values of a number, list or tensor, flattened and rounded, for a message."""
    if isinstance(values, torch.Tensor):
        values = values.detach().reshape(-1).tolist()
    elif not isinstance(values, (list, tuple)):
        values = [values]
    return [round(float(v), digits) for v in values]
