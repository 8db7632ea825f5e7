"""Input checks shared by every module.

Every public entry point of flowlib calls one of these before computing anything, so bad input
raises a ``ValueError`` that names what was expected instead of returning a silently wrong number.
"""

from __future__ import annotations

import torch

__all__ = [
    "check_tensor",
    "check_dtype",
    "module_dtype",
    "check_positive",
    "check_int",
    "check_probability",
    "check_context",
]


def check_tensor(
    x,
    *,
    name: str = "x",
    event_shape: tuple[int, ...] | None = None,
    ndim: int | None = None,
    finite: bool = True,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Check a batched input and return it unchanged.

    Parameters
    ----------
    x : the value to check; must be a floating-point ``torch.Tensor``.
    name : how the error message calls it.
    event_shape : if given, ``x`` must have shape ``(batch, *event_shape)``.
    ndim : if given (and ``event_shape`` is not), ``x.dim()`` must equal it.
    finite : if true, NaN or infinite entries are an error.
    allow_empty : if false (the default), an empty batch (first axis of size 0) is an error. flowlib's one
        rule for empty batches: every public entry point refuses them with a ``ValueError``, so a model never
        initialises from, or averages over, zero samples (which would give NaN silently).
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must have a floating-point dtype (float32 or float64), got {x.dtype}")
    if not allow_empty and x.dim() >= 1 and x.shape[0] == 0:
        raise ValueError(
            f"{name} must hold at least one sample (shape (batch >= 1, ...)), got shape {tuple(x.shape)}"
        )
    if event_shape is not None:
        event_shape = tuple(int(s) for s in event_shape)
        if x.dim() != len(event_shape) + 1 or tuple(x.shape[1:]) != event_shape:
            raise ValueError(
                f"{name} must have shape (batch, {', '.join(map(str, event_shape))}), got {tuple(x.shape)}"
            )
    elif ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    # finite check in one pass: a sum is finite when every entry is (NaN and +-inf propagate); only when it is
    # not (a bad entry, or finite entries whose sum overflows) does the exact elementwise test decide. One
    # reduction instead of isfinite's three passes and two temporaries (abs, compare, all).
    if finite and not torch.isfinite(x.detach().sum()) and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); expected finite numbers")
    return x


def module_dtype(module) -> torch.dtype | None:
    """The floating-point dtype of ``module``'s first floating parameter or buffer (``None`` if it has none)."""
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    for t in module.buffers():
        if t.is_floating_point():
            return t.dtype
    return None


def check_dtype(x: torch.Tensor, module, name: str = "x") -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` has the dtype of ``module``'s floating-point parameters and buffers.

    flowlib's one rule for dtype mismatches: a module with floating-point parameters or buffers accepts only
    inputs of that dtype (no silent promotion, no error from deep inside torch); a module without any
    (``Reverse``, ``Squeeze``, ``Logit``) works in the dtype of its input.
    """
    dtype = module_dtype(module)
    if dtype is not None and x.dtype != dtype:
        kind = "double" if dtype == torch.float64 else "float" if dtype == torch.float32 else None
        fix = f"x.to({dtype})" + (f" or convert the module with .{kind}()" if kind else "")
        raise TypeError(
            f"{name} must have dtype {dtype} like the parameters of {type(module).__name__}, got {x.dtype}; "
            f"convert the input ({fix.replace('x.', name + '.', 1)})"
        )
    return x


def check_positive(value, name: str, *, strict: bool = True) -> float:
    """Return ``float(value)`` if it is positive (or non-negative with ``strict=False``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (v > 0 if strict else v >= 0) or v != v:
        raise ValueError(f"{name} must be {'positive' if strict else 'non-negative'}, got {value!r}")
    return v


def check_int(value, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_probability(value, name: str) -> float:
    """Return ``float(value)`` if it lies in [0, 1]."""
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return v


def check_context(module, context, batch: int):
    """Check the ``context`` passed to a (possibly) conditional ``module`` for a batch of ``batch`` rows.

    A module whose ``context_dim`` is ``None`` takes no context: ``None`` is returned unchanged and anything
    else is an error. A conditional module (``context_dim = c``) needs a tensor of shape ``(batch, c)`` of its
    dtype, finite. Raises ``ValueError`` naming what was expected (``TypeError`` for a dtype mismatch).
    """
    c = getattr(module, "context_dim", None)
    kind = type(module).__name__
    if c is None:
        if context is None:
            return None
        raise ValueError(
            f"{kind} is not conditional and takes no context; build its layers with context_dim=... "
            f"to condition on one (got a context of type {type(context).__name__})"
        )
    if context is None:
        raise ValueError(f"{kind} is conditional (context_dim={c}): pass context, a tensor of shape ({batch}, {c})")
    check_tensor(context, name="context")
    if context.dim() != 2 or context.shape[1] != c:
        raise ValueError(f"context must have shape (batch, {c}), got {tuple(context.shape)}")
    if context.shape[0] != batch:
        raise ValueError(
            f"context must have one row per sample: shape ({batch}, {c}) for a batch of {batch}, "
            f"got {tuple(context.shape)}"
        )
    check_dtype(context, module, "context")
    return context
