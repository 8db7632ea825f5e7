"""Checks of a transform against autograd, used by the test suite and by the book.

``check_transform`` verifies, on a given input batch, the three facts every flow layer must satisfy:

1. round trip: ``inverse(forward(x)) == x``;
2. the forward and inverse log-dets cancel: ``ld_f(x) + ld_inv(f(x)) == 0``;
3. the log-det equals ``log|det J|`` of the Jacobian computed by autograd
   (``torch.autograd.functional.jacobian`` followed by ``torch.linalg.slogdet``), sample by sample;

and, with ``check_bad_inputs=True`` (the default), flowlib's two library-wide rules for bad input:

4. an empty batch (0 rows) raises ``ValueError`` in both directions;
5. an input of the other floating dtype (float32 vs float64) raises ``TypeError`` if the transform has
   floating-point parameters or buffers; a transform without any returns ``z`` and ``logdet`` in the
   input's dtype.
"""

from __future__ import annotations

import torch

from flowlib._validate import module_dtype

__all__ = [
    "jacobian_logdet",
    "per_sample_jacobian",
    "check_transform",
    "check_empty_batch",
    "check_dtype_mismatch",
    "perturb_parameters",
]


def per_sample_jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    """Jacobians ``d fn(x_b) / d x_b`` for each sample, flattened: shape ``(batch, D, D)``.

    ``fn`` maps a batch to a batch. Each sample is pushed through on its own (batch of one), so the
    result is correct also for layers whose output mixes samples (which would be a bug in a flow).
    """
    jacs = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1]

        def f_flat(v, shape=xb.shape):
            return fn(v.reshape(shape)).reshape(-1)

        J = torch.autograd.functional.jacobian(f_flat, xb.reshape(-1))
        jacs.append(J)
    return torch.stack(jacs)


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """``log|det J_fn(x_b)|`` per sample via autograd and ``slogdet``."""
    J = per_sample_jacobian(fn, x)
    sign, logabsdet = torch.linalg.slogdet(J)
    if (sign == 0).any():
        raise AssertionError("the autograd Jacobian is singular at some input")
    return logabsdet


def check_transform(
    transform,
    x: torch.Tensor,
    *,
    atol: float | None = None,
    rtol: float = 0.0,
    check_jacobian: bool = True,
    logdet_atol: float | None = None,
    check_bad_inputs: bool = True,
) -> dict:
    """Assert the round trip, log-det cancellation and log-det == slogdet(autograd Jacobian).

    Tolerances default to 1e-10 in float64 and 1e-5 in float32 (the course's standard). Returns the
    measured maximum errors so that callers can report them. Raises ``AssertionError`` with the
    measured error on failure.
    """
    if atol is None:
        atol = 1e-10 if x.dtype == torch.float64 else 1e-5
    if logdet_atol is None:
        logdet_atol = 1e-8 if x.dtype == torch.float64 else 1e-4
    with torch.no_grad():
        z, ld = transform(x)
        x_rec, ld_inv = transform.inverse(z)
    if ld.shape != (x.shape[0],):
        raise AssertionError(f"forward log-det has shape {tuple(ld.shape)}, expected ({x.shape[0]},)")
    if ld_inv.shape != (x.shape[0],):
        raise AssertionError(f"inverse log-det has shape {tuple(ld_inv.shape)}, expected ({x.shape[0]},)")
    out = {
        "roundtrip": float((x_rec - x).abs().max()),
        "cancel": float((ld + ld_inv).abs().max()),
    }
    scale = 1.0 + float(x.abs().max())
    if out["roundtrip"] > atol * scale + rtol:
        raise AssertionError(f"inverse(forward(x)) differs from x by {out['roundtrip']:.3e} (tolerance {atol:.1e})")
    if out["cancel"] > logdet_atol * (1.0 + float(ld.abs().max())):
        raise AssertionError(f"forward and inverse log-dets do not cancel: max |sum| = {out['cancel']:.3e}")
    if check_jacobian:
        ref = jacobian_logdet(lambda v: transform(v)[0], x)
        out["jacobian"] = float((ref - ld).abs().max())
        if out["jacobian"] > logdet_atol * (1.0 + float(ref.abs().max())):
            raise AssertionError(
                f"log-det differs from slogdet of the autograd Jacobian by {out['jacobian']:.3e}"
            )
    if check_bad_inputs:
        check_empty_batch(transform, x, z)
        check_dtype_mismatch(transform, x)
    return out


def check_empty_batch(transform, x: torch.Tensor, z: torch.Tensor | None = None) -> None:
    """Assert that ``forward`` (and ``inverse``, on ``z``'s shape) refuse a batch of 0 rows with ``ValueError``."""
    pairs = [("forward", transform.forward, x)]
    if z is not None:
        pairs.append(("inverse", transform.inverse, z))
    for direction, fn, v in pairs:
        try:
            fn(v[:0])
        except ValueError as e:
            if "at least one sample" not in str(e):
                raise AssertionError(f"{direction} of an empty batch raised an unclear ValueError: {e}") from None
        else:
            raise AssertionError(f"{direction} accepted an empty batch; expected ValueError")


def check_dtype_mismatch(transform, x: torch.Tensor) -> None:
    """Assert flowlib's dtype rule on ``x`` converted to the other dtype (float32 <-> float64): ``TypeError``
    naming the dtype for a transform with floating-point parameters or buffers, else outputs in ``x``'s dtype."""
    other = torch.float32 if x.dtype == torch.float64 else torch.float64
    xo = x.to(other)
    if module_dtype(transform) is not None:
        try:
            with torch.no_grad():
                transform(xo)
        except TypeError as e:
            if "dtype" not in str(e):
                raise AssertionError(f"a dtype mismatch raised an unclear TypeError: {e}") from None
        else:
            raise AssertionError(f"forward accepted a {other} input into a {module_dtype(transform)} module")
        return
    with torch.no_grad():
        z, ld = transform(xo)
    if z.dtype != other or ld.dtype != other:
        raise AssertionError(f"a {other} input gave z in {z.dtype} and logdet in {ld.dtype}")


def perturb_parameters(module, scale: float = 0.3, seed: int = 0):
    """Add ``scale * N(0, 1)`` noise (seeded) to every parameter of ``module``, in place; returns it.

    Many layers start as the identity (zero last layer), where a wrong log-det can still come out right;
    checks are only meaningful on *random* parameters, so tests perturb them first.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
    return module
