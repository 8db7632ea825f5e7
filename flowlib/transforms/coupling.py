"""Coupling layers (NICE, RealNVP) and the masks and conditioner networks they use.

A coupling layer splits its input with a binary **mask** into a conditioning part ``x_a`` (mask = 1),
which it copies unchanged, and a transformed part ``x_b`` (mask = 0), which it maps elementwise with
parameters computed from ``x_a`` by an arbitrary network (the *conditioner*)::

    z_a = x_a,        z_b = g(x_b; theta(x_a)).

The Jacobian is block triangular, ``[[I, 0], [dz_b/dx_a, diag(dg/dx_b)]]``, so its log-det is the sum of
the logs of the diagonal of the lower-right block: O(d), however complicated ``theta`` is. The inverse is
just as cheap, since ``x_a = z_a`` is available to recompute ``theta``.

Two ways to split, picked from the mask's shape:

* **split** (vectors ``(B, d)`` with a ``(d,)`` mask, images with a channel mask ``(c, 1, 1)``): ``x_a`` and
  ``x_b`` are the selected features/channels, the conditioner maps ``n_a`` inputs to ``n_b`` (or ``2 n_b``)
  outputs. Half masks take a fast path (slices, no gather);
* **masked** (images with a spatial mask ``(c, h, w)``, e.g. a checkerboard): the conditioner sees
  ``mask * x`` and its outputs are multiplied by ``1 - mask`` so that they only touch ``x_b``.
"""

from __future__ import annotations

import torch
from torch import nn

from flowlib._validate import check_int, check_positive
from flowlib._workspace import mlp_body, row_sum
from flowlib.transforms.base import Transform, _context_dim, _sum_except_batch

__all__ = [
    "half_mask",
    "alternating_mask",
    "checkerboard_mask",
    "channel_mask",
    "MLP",
    "ConvNet",
    "AdditiveCoupling",
    "AffineCoupling",
    "SplineCoupling",
]


# ----------------------------------------------------------------------------------------------- masks
# Every mask is a bool tensor: True (1) = conditioning part, copied unchanged; False (0) = transformed.


def _check_parity(parity):
    if parity not in (0, 1) or isinstance(parity, bool):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    return parity


def half_mask(d: int, first: bool = True) -> torch.Tensor:
    """``(d,)`` mask conditioning on the first ``d // 2`` entries (``first=True``) or on the others."""
    check_int(d, "d", minimum=2)
    mask = torch.arange(d) < d // 2
    return mask if first else ~mask


def alternating_mask(d: int, parity: int = 0) -> torch.Tensor:
    """``(d,)`` mask conditioning on the entries with ``i % 2 == parity``."""
    check_int(d, "d", minimum=2)
    return torch.arange(d) % 2 == _check_parity(parity)


def checkerboard_mask(h: int, w: int, parity: int = 0, num_channels: int = 1) -> torch.Tensor:
    """``(num_channels, h, w)`` mask conditioning on the pixels with ``(i + j) % 2 == parity`` (RealNVP)."""
    check_int(h, "h")
    check_int(w, "w")
    check_int(num_channels, "num_channels")
    if h * w < 2:
        raise ValueError(f"a checkerboard needs at least 2 pixels, got h={h}, w={w}")
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((i + j) % 2 == _check_parity(parity)).expand(num_channels, h, w).clone()


def channel_mask(c: int, parity: int = 0) -> torch.Tensor:
    """``(c, 1, 1)`` mask conditioning on the first half of the channels (``parity=0``) or the second half.

    A half split of the channels needs an even ``c``.
    """
    check_int(c, "c", minimum=2)
    if c % 2:
        raise ValueError(f"channel_mask splits the channels in two halves and needs an even c, got c={c}")
    mask = torch.arange(c) < c // 2
    return (mask if _check_parity(parity) == 0 else ~mask).view(c, 1, 1)


# -------------------------------------------------------------------------------------- conditioners


def _hidden(hidden, name="hidden") -> tuple[int, ...]:
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = (hidden, hidden)
    if not isinstance(hidden, (tuple, list)):
        raise ValueError(f"{name} must be an int or a tuple of ints, got {hidden!r}")
    return tuple(check_int(h, f"every entry of {name}") for h in hidden)


def _init_last(last: nn.Module, last_init) -> None:
    """Initialise a conditioner's last layer: ``"zeros"`` (identity coupling at start), ``"default"``
    (PyTorch's own init, kept), or a positive float ``std`` (weights ``N(0, std^2)``, bias 0)."""
    if isinstance(last_init, str) and last_init == "zeros":
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    elif isinstance(last_init, str) and last_init == "default":
        pass
    elif isinstance(last_init, (int, float)) and not isinstance(last_init, bool) and last_init > 0:
        nn.init.normal_(last.weight, std=float(last_init))
        nn.init.zeros_(last.bias)
    else:
        raise ValueError(f"last_init must be 'zeros', 'default' or a positive float std, got {last_init!r}")


class MLP(nn.Sequential):
    """Fully connected conditioner ``in_features -> hidden... -> out_features``.

    ``last_init`` initialises the last layer: ``"zeros"`` (the default) makes a coupling layer that uses it
    start as the identity map (a standard trick that makes deep flows trainable from the first step);
    ``"default"`` keeps PyTorch's initialisation; a float ``std`` draws the weights from ``N(0, std^2)``.
    ``benchmarks/RESULTS.md`` measures the choices at a fixed budget.
    """

    def __init__(self, in_features: int, out_features: int, hidden=(64, 64), activation=nn.ReLU,
                 last_init="zeros"):
        layers, n = [], check_int(in_features, "in_features")
        for h in _hidden(hidden):
            layers += [nn.Linear(n, h), activation()]
            n = h
        last = nn.Linear(n, check_int(out_features, "out_features"))
        _init_last(last, last_init)
        super().__init__(*layers, last)


class ConvNet(nn.Sequential):
    """Small convolutional conditioner for images: 3x3 conv, 1x1 conv, 3x3 conv (zero-initialised).

    ``(B, in_channels, H, W) -> (B, out_channels, H, W)``; ``hidden`` gives the widths of the two hidden
    layers (an int means both). ``last_init`` as in :class:`MLP` (``"zeros"`` by default).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden=(64, 64), activation=nn.ReLU,
                 last_init="zeros"):
        widths = _hidden(hidden)
        if len(widths) != 2:
            raise ValueError(f"ConvNet hidden must be an int or a pair of ints (two layers), got {hidden!r}")
        h1, h2 = widths
        last = nn.Conv2d(h2, check_int(out_channels, "out_channels"), 3, padding=1)
        _init_last(last, last_init)
        super().__init__(
            nn.Conv2d(check_int(in_channels, "in_channels"), h1, 3, padding=1),
            activation(),
            nn.Conv2d(h1, h2, 1),
            activation(),
            last,
        )


# ---------------------------------------------------------------------------------------- couplings


def _check_mask(mask) -> torch.Tensor:
    try:
        mask = torch.as_tensor(mask)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"mask must be a tensor of 0/1 values, got {type(mask).__name__}") from None
    if mask.dim() not in (1, 3):
        raise ValueError(
            f"mask must have shape (d,) for vectors or (c, h, w) for images, got {tuple(mask.shape)}"
        )
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask must contain only 0 (transformed) and 1 (conditioning) values")
    mask = mask.bool()
    if not mask.any():
        raise ValueError("mask must have at least one conditioning entry (1); it is all 0")
    if mask.all():
        raise ValueError("mask must have at least one transformed entry (0); it is all 1")
    return mask


class _Coupling(Transform):
    """Shared machinery: split/merge by the mask, build the default conditioner, validate input.

    Subclasses set ``num_params`` (conditioner outputs per transformed entry) and implement
    ``_params(out)``, ``_map(x_b, params)`` and ``_unmap(z_b, params)``.
    """

    num_params = 1

    def __init__(self, mask, conditioner=(64, 64), *, context_dim: int | None = None, num_params: int | None = None):
        super().__init__()
        if num_params is not None:  # set per instance (a spline's 3K - 1) instead of by the class
            self.num_params = num_params
        self.context_dim = _context_dim(context_dim)
        mask = _check_mask(mask)
        self.register_buffer("mask", mask)
        self.image = mask.dim() == 3
        self.split = not self.image or mask.shape[1:] == (1, 1)
        flat = mask.reshape(-1)
        n_a, n_b = int(flat.sum()), int((~flat).sum())
        if self.split:
            self.n_features, self.n_a = flat.numel(), n_a
            self.event_shape = None if self.image else (flat.numel(),)
            idx_a, idx_b = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
            self.register_buffer("idx_a", idx_a)
            self.register_buffer("idx_b", idx_b)
            self.register_buffer("merge_index", torch.argsort(torch.cat([idx_a, idx_b])))
            # fast paths for half masks: [1..1 0..0] or [0..0 1..1]
            self.layout = "ab" if flat[:n_a].all() else "ba" if flat[n_b:].all() else "gather"
            n_in, n_out = n_a, n_b * self.num_params
        else:
            self.event_shape = tuple(mask.shape)
            self.register_buffer("inv_mask", ~mask)
            n_in, n_out = mask.shape[0], mask.shape[0] * self.num_params
        if self.context_dim is not None:
            if self.image:
                raise ValueError("context_dim is supported for vector couplings (a (d,) mask), not for images")
            n_in += self.context_dim  # the conditioner sees [x_a, context]
        if isinstance(conditioner, nn.Module):
            self.conditioner = conditioner
        elif self.image:
            self.conditioner = ConvNet(n_in, n_out, conditioner)
        else:
            self.conditioner = MLP(n_in, n_out, conditioner)

    def _check_shape(self, shape, name, inverse=False):
        if not (self.image and self.split):
            return super()._check_shape(shape, name, inverse)
        if len(shape) != 4 or shape[1] != self.n_features:
            raise ValueError(f"{name} must have shape (batch, {self.n_features}, H, W), got {tuple(shape)}")
        return tuple(shape)

    def _split(self, x):
        """``(x_a, x_b)``; in masked mode ``(mask * x, x)``."""
        if not self.split:
            return x * self.mask, x
        if self.layout == "ab":
            return x[:, : self.n_a], x[:, self.n_a :]
        if self.layout == "ba":
            n_b = self.n_features - self.n_a
            return x[:, n_b:], x[:, :n_b]
        return x[:, self.idx_a], x[:, self.idx_b]

    def _merge(self, x_a, z_b):
        if not self.split:
            return z_b  # the conditioning entries of z_b were left unchanged
        if self.layout == "ab":
            return torch.cat([x_a, z_b], dim=1)
        if self.layout == "ba":
            return torch.cat([z_b, x_a], dim=1)
        return torch.cat([x_a, z_b], dim=1)[:, self.merge_index]

    def _conditioner_params(self, x_a, context=None):
        inputs = x_a if context is None else torch.cat([x_a, context], dim=1)
        params = self._params(self.conditioner(inputs).chunk(self.num_params, dim=1))
        if not self.split:  # only act on the transformed entries
            params = tuple(p * self.inv_mask for p in params)
        return params

    def _forward(self, x, context=None):
        x_a, x_b = self._split(x)
        z_b, logdet = self._map(x_b, self._conditioner_params(x_a, context))
        return self._merge(x_a, z_b), logdet

    def _inverse(self, z, context=None):
        z_a, z_b = self._split(z)
        x_b, logdet = self._unmap(z_b, self._conditioner_params(z_a, context))
        return self._merge(z_a, x_b), logdet


class AdditiveCoupling(_Coupling):
    """NICE's additive coupling (Dinh et al., 2014).

    * map: ``z_a = x_a``, ``z_b = x_b + t(x_a)``;
    * inverse: ``x_a = z_a``, ``x_b = z_b - t(z_a)``;
    * log-det: ``0``: the Jacobian is triangular with ones on the diagonal (volume preserving);
    * cost: one conditioner evaluation for the map and one for the inverse; log-det O(1).

    Parameters
    ----------
    mask : 1 = conditioning (copied), 0 = transformed; see ``half_mask``, ``alternating_mask``,
        ``checkerboard_mask``, ``channel_mask``. Needs at least one entry of each kind.
    conditioner : an ``nn.Module`` computing ``t`` (split mode: ``(B, n_a, ...) -> (B, n_b, ...)``;
        masked mode: ``(B, C, H, W) -> (B, C, H, W)``), or the hidden widths (int or tuple) of the
        default ``MLP`` (vectors) or ``ConvNet`` (images), whose last layer starts at zero (identity).
    context_dim : for a **conditional** coupling (vector masks only), the width ``c`` of a context vector: the
        conditioner then sees ``[x_a, context]`` (``n_a + c`` inputs), ``t = t(x_a, context)``, and
        ``forward``/``inverse`` take ``context`` of shape ``(batch, c)``. The map of ``x`` for a fixed context
        is exactly the unconditional one, so its inverse and log-det are unchanged. ``None``: unconditional.
    """

    volume_preserving = True

    num_params = 1

    def _params(self, chunks):
        return chunks

    def _map(self, x_b, params):
        (t,) = params
        return x_b + t, x_b.new_zeros(x_b.shape[0])

    def _unmap(self, z_b, params):
        (t,) = params
        return z_b - t, z_b.new_zeros(z_b.shape[0])


class AffineCoupling(_Coupling):
    """RealNVP's affine coupling (Dinh et al., 2017).

    * map: ``z_a = x_a``, ``z_b = x_b * exp(s(x_a)) + t(x_a)``;
    * inverse: ``x_a = z_a``, ``x_b = (z_b - t(z_a)) * exp(-s(z_a))``;
    * log-det: ``sum_i s_i(x_a)`` over the transformed entries (the diagonal of the triangular
      Jacobian is ``exp(s)``, and ``log|exp(s)| = s``); cost O(d) plus one conditioner evaluation,
      in both directions. Without autograd (``torch.no_grad()``) and with flowlib's ``MLP`` on vectors, the
      same arithmetic runs in fewer kernels: ``ReLU`` in place, ``1/B`` folded into the last layer's
      log-scale rows, shift and scale applied in one ``addcmul``; and a ``Compose`` of such couplings with half
      splits (``realnvp``) runs on one copy of its input, each layer overwriting its transformed half.

    **Scale function.** The conditioner outputs a raw value ``r`` and ``s = B * tanh(r / B)`` with
    ``B = scale_bound`` (2.0 by default). Near ``r = 0`` this is ``s ~ r``, but ``|s| < B`` always, so
    a single layer scales by at most ``e^B``. Without the bound, one large ``r`` early in training
    (e.g. from an outlier) gives ``exp(s)`` = inf/NaN or an ill-conditioned inverse; the bound keeps
    every layer well conditioned while deep stacks can still produce large scales.

    Parameters
    ----------
    mask, conditioner : as in :class:`AdditiveCoupling`; the conditioner outputs ``2 * n_b`` values
        (``r`` then ``t`` along dim 1), or ``2 C`` channels in masked mode.
    scale_bound : positive bound ``B`` of ``|s|``.
    context_dim : as in :class:`AdditiveCoupling` (``s`` and ``t`` then depend on ``[x_a, context]``).
    """

    num_params = 2

    def __init__(self, mask, conditioner=(64, 64), scale_bound: float = 2.0, context_dim: int | None = None):
        super().__init__(mask, conditioner, context_dim=context_dim)
        self.scale_bound = check_positive(scale_bound, "scale_bound")

    def _params(self, chunks):
        raw, t = chunks
        return self.scale_bound * torch.tanh(raw / self.scale_bound), t

    def _forward(self, x, context=None):
        if torch.is_grad_enabled() or not self._fast:
            return super()._forward(x, context)
        x_a, x_b = self._split(x)
        s, t = self._fast_scale_shift(x_a if context is None else torch.cat([x_a, context], dim=1))
        logdet = row_sum(s)
        return self._merge(x_a, torch.addcmul(t, x_b, s.exp_())), logdet

    def _inverse(self, z, context=None):
        if torch.is_grad_enabled() or not self._fast:
            return super()._inverse(z, context)
        z_a, z_b = self._split(z)
        s, t = self._fast_scale_shift(z_a if context is None else torch.cat([z_a, context], dim=1))
        logdet = row_sum(s).neg_()
        return self._merge(z_a, (z_b - t).mul_(s.neg_().exp_())), logdet

    @property
    def _in_place(self) -> bool:
        """Whether ``_run_in_place`` applies: the fast path with a half split (``[a | b]`` or ``[b | a]``)."""
        return self._fast and self.layout in ("ab", "ba")

    def _run_in_place(self, h, inverse, context=None):
        """No autograd: overwrite the transformed half of ``h`` with ``x_b exp(s) + t`` (or, inverting,
        ``(z_b - t) exp(-s)``); the conditioning half is left as it is. Returns the log-det."""
        h_a, h_b = self._split(h)  # views of h
        s, t = self._fast_scale_shift(h_a if context is None else torch.cat([h_a, context], dim=1))
        if inverse:
            logdet = row_sum(s).neg_()
            h_b.sub_(t).mul_(s.neg_().exp_())
        else:
            logdet = row_sum(s)
            h_b.mul_(s.exp_()).add_(t)
        return logdet

    @property
    def _fast(self) -> bool:
        """Whether the no-grad fast path applies: vectors (split mode) with flowlib's own ``MLP`` conditioner."""
        return self.split and not self.image and type(self.conditioner) is MLP

    def _fast_scale_shift(self, x_a):
        """``(s, t)`` without autograd, the same function in fewer, cheaper, in-place kernels: ``ReLU`` in place,
        and the last layer split into its log-scale rows, multiplied by ``2 / B`` (so they output ``2r / B``),
        and its shift rows; ``s = 2B sigmoid(2r / B) - B``, which is exactly ``B tanh(r / B)``
        (``tanh(v) = 2 sigmoid(2v) - 1``) at a third of the cost (PyTorch's CPU ``tanh`` is not vectorised
        like its ``sigmoid``)."""
        *body, last = self.conditioner
        h = mlp_body(body, x_a)
        n = last.out_features // 2
        w, b, bound = last.weight, last.bias, self.scale_bound
        c = 2.0 / bound
        s = torch.nn.functional.linear(h, w[:n] * c, b[:n] * c).sigmoid_().mul_(2.0 * bound).sub_(bound)
        return s, torch.nn.functional.linear(h, w[n:], b[n:])

    def _map(self, x_b, params):
        s, t = params
        return x_b * torch.exp(s) + t, _sum_except_batch(s)

    def _unmap(self, z_b, params):
        s, t = params
        return (z_b - t) * torch.exp(-s), -_sum_except_batch(s)


class SplineCoupling(_Coupling):
    """Neural spline coupling (Durkan et al. 2019): a monotonic rational-quadratic spline per transformed entry.

    * map: ``z_a = x_a``, ``z_b,i = g(x_b,i; theta_i(x_a))``, ``g`` the spline of
      ``flowlib.transforms.splines.rational_quadratic_spline`` on ``[-bound, bound]`` with ``num_bins = K``
      bins and identity tails; the conditioner outputs ``3K - 1`` unconstrained numbers per transformed entry
      (``K`` widths, ``K`` heights, ``K - 1`` interior slopes);
    * inverse: ``x_a = z_a``, ``x_b,i = g^{-1}(z_b,i; theta_i(z_a))``, one quadratic per entry (closed form);
    * log-det: ``sum_i log g'(x_b,i; theta_i(x_a))`` over the transformed entries (the Jacobian is block
      triangular with diagonal ``g'``), 0 for entries in the tails;
    * cost: one conditioner evaluation plus O(K d) in both directions.

    With the default conditioner (last layer zero) all spline parameters start at 0, which is the identity.

    Parameters
    ----------
    mask : a vector mask ``(d,)`` or a channel mask ``(c, 1, 1)`` (split mode; spatial masks such as a
        checkerboard are refused).
    conditioner : an ``nn.Module`` with ``(3K - 1) n_b`` outputs (parameter ``j`` of every transformed entry
        in the ``j``-th block of ``n_b`` along dim 1, as ``AffineCoupling`` lays out its two), or the hidden
        widths of the default ``MLP``/``ConvNet``.
    num_bins : ``K >= 1``.
    bound : ``B > 0``; the spline bends ``[-B, B]`` and is the identity outside.
    context_dim : as in :class:`AdditiveCoupling` (the spline parameters then depend on ``[x_a, context]``).
    """

    def __init__(self, mask, conditioner=(64, 64), num_bins: int = 8, bound: float = 3.0,
                 context_dim: int | None = None):
        from flowlib.transforms.splines import _check_minima, _spline_num_params, spline_defaults

        num_params = _spline_num_params(num_bins)
        self.num_bins, self.bound = num_bins, check_positive(bound, "bound")
        _check_minima(num_bins, *spline_defaults())
        super().__init__(mask, conditioner, context_dim=context_dim, num_params=num_params)
        if not self.split:
            raise ValueError(
                "SplineCoupling needs a vector mask (d,) or a channel mask (c, 1, 1); a spatial mask such as "
                "checkerboard_mask is not supported (use AffineCoupling for it)"
            )
        n_b = self.n_features - self.n_a
        # the last layer's rows in entry-major order (row i * (3K - 1) + j is parameter j of transformed entry i),
        # for the no-grad path's view (not saved: the state dict keeps the conditioner's own layout)
        order = torch.arange(self.num_params * n_b).view(self.num_params, n_b).t().reshape(-1)
        self.register_buffer("_entry_major", order, persistent=False)

    def _params(self, chunks):
        return (torch.stack(chunks, dim=-1),)  # (..., n_b[, H, W], 3K - 1)

    @property
    def _fast(self) -> bool:
        """Whether the no-grad fast path applies: vectors with flowlib's own ``MLP`` conditioner."""
        return not self.image and type(self.conditioner) is MLP and not torch.is_grad_enabled()

    def _fast_params(self, inputs):
        """The conditioner's output as a ``(batch, n_b, 3K - 1)`` **view**, without autograd: the last layer's rows
        taken in entry-major order (``_entry_major``), so that no copy of the parameters (``torch.stack`` of
        ``3K - 1`` chunks) is needed; ``ReLU`` in place. The same numbers as ``_params`` (each output is the
        same dot product)."""
        *body, last = self.conditioner
        h = mlp_body(body, inputs)
        idx = self._entry_major
        out = torch.nn.functional.linear(h, last.weight[idx], last.bias[idx])
        return out.view(h.shape[0], -1, self.num_params)

    def _forward(self, x, context=None):
        if not self._fast:
            return super()._forward(x, context)
        x_a, x_b = self._split(x)
        z_b, logdet = self._spline(x_b, (self._fast_params(x_a if context is None else torch.cat([x_a, context], 1)),),
                                   False)
        return self._merge(x_a, z_b), logdet

    def _inverse(self, z, context=None):
        if not self._fast:
            return super()._inverse(z, context)
        z_a, z_b = self._split(z)
        x_b, logdet = self._spline(z_b, (self._fast_params(z_a if context is None else torch.cat([z_a, context], 1)),),
                                   True)
        return self._merge(z_a, x_b), logdet

    def _spline(self, v, params, inverse):
        from flowlib.transforms.splines import _rqs, _split_params

        out, ld = _rqs(v, *_split_params(params[0], self.num_bins), self.bound, inverse)
        return out, row_sum(ld) if ld.dim() == 2 else _sum_except_batch(ld)

    def _map(self, x_b, params):
        return self._spline(x_b, params, False)

    def _unmap(self, z_b, params):
        return self._spline(z_b, params, True)
