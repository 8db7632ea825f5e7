"""The transform interface and composition.

Direction convention, used everywhere in flowlib and in the book:

* ``forward(x) -> (z, logdet)`` **normalizes**: it maps data ``x`` to the base space ``z = f(x)`` and
  returns ``log|det df/dx|`` per sample, shape ``(batch,)``.
* ``inverse(z) -> (x, logdet)`` **generates**: ``x = f^{-1}(z)`` and ``log|det df^{-1}/dz|`` per sample.

So ``forward`` and ``inverse`` log-dets of the same point cancel, and a flow's density is

    log p_X(x) = log p_Z(f(x)) + log|det df/dx|.

``event_shape`` is the shape of one sample (``(d,)`` for vectors, ``(c, h, w)`` for images) and the
first axis is always the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from flowlib._validate import check_context, check_dtype, check_int, check_tensor
from flowlib._workspace import workspace

__all__ = ["Transform", "Compose", "InverseTransform", "NoAnalyticInverse"]


class NoAnalyticInverse(NotImplementedError):
    """Raised by transforms whose inverse has no closed form and is not solved numerically."""


_CHECK_TAKES_DIRECTION: dict[type, bool] = {}


def _check_takes_direction(cls) -> bool:
    """Whether ``cls._check`` accepts ``inverse=`` (older subclasses override ``_check(x, name)``)."""
    if cls not in _CHECK_TAKES_DIRECTION:
        import inspect

        params = inspect.signature(cls._check).parameters
        _CHECK_TAKES_DIRECTION[cls] = "inverse" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    return _CHECK_TAKES_DIRECTION[cls]


class Transform(nn.Module):
    """Base class of every invertible map.

    Subclasses implement ``_forward(x)`` and ``_inverse(z)``; the public ``forward``/``inverse``
    validate the input first (shape, dtype, finiteness) and then call them. Subclasses that know their
    input shape set ``self.event_shape`` (a tuple) so that wrong shapes get a clear ``ValueError``.
    """

    event_shape: tuple[int, ...] | None = None
    #: True for layers whose log-det is identically 0 (permutations, squeezes, additive couplings);
    #: ``Compose`` then skips their log-det bookkeeping.
    volume_preserving: bool = False
    #: False for layers whose output shape differs from their input shape (``Squeeze``).
    shape_preserving: bool = True
    #: Width ``c`` of the context vector of a conditional layer (``None``: the layer takes no context). A
    #: conditional layer's ``_forward(x, context)``/``_inverse(z, context)`` take a ``(batch, c)`` context.
    context_dim: int | None = None

    def _check(self, x: torch.Tensor, name: str, inverse: bool = False) -> torch.Tensor:
        """Validate an input at a public entry point: a non-empty floating-point tensor of finite numbers
        (``check_tensor``), of this module's dtype (``check_dtype``), of a shape this layer accepts
        (``_check_shape``). Raises ``ValueError`` (``TypeError`` for a dtype mismatch) naming what was expected."""
        check_tensor(x, name=name)
        check_dtype(x, self, name)
        self._check_shape(tuple(x.shape), name, inverse)
        return x

    def _check_shape(self, shape: tuple[int, ...], name: str, inverse: bool = False) -> tuple[int, ...]:
        """Check the shape of an input of ``forward`` (``inverse=False``) or ``inverse`` and return the shape
        of the output. Shapes only, no tensor work: ``Compose`` calls it for every layer, once per call.

        The default checks ``(batch, *event_shape)`` when ``event_shape`` is set and preserves the shape.
        Layers that only know their width (``ActNorm``, ``Permutation``, ...) or change the shape
        (``Squeeze``) override it."""
        if self.event_shape is not None:
            es = tuple(self.event_shape)
            if len(shape) != len(es) + 1 or tuple(shape[1:]) != es:
                raise ValueError(f"{name} must have shape (batch, {', '.join(map(str, es))}), got {tuple(shape)}")
        return tuple(shape)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalize: ``x -> (z, log|det dz/dx|)``; a conditional layer also takes ``context``, ``(batch, c)``."""
        x = self._check(x, "x")
        if context is None and self.context_dim is None:
            return self._forward(x)
        return self._forward(x, check_context(self, context, x.shape[0]))

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate: ``z -> (x, log|det dx/dz|)``; a conditional layer also takes ``context``, ``(batch, c)``."""
        if _check_takes_direction(type(self)):
            z = self._check(z, "z", inverse=True)
        else:
            z = self._check(z, "z")  # a subclass's own ``_check(x, name)``
        if context is None and self.context_dim is None:
            return self._inverse(z)
        return self._inverse(z, check_context(self, context, z.shape[0]))

    def _forward(self, x):  # pragma: no cover - interface
        raise NotImplementedError

    def _inverse(self, z):  # pragma: no cover - interface
        raise NoAnalyticInverse(f"{type(self).__name__} has no inverse")

    #: Whether the layer can overwrite its input with its output (``_run_in_place``); ``Compose`` uses it
    #: without autograd when every layer can (see ``Compose._run``).
    @property
    def _in_place(self) -> bool:
        return False

    def _run_in_place(self, h: torch.Tensor, inverse: bool, context=None) -> torch.Tensor:  # pragma: no cover
        """No autograd only: overwrite ``h`` (a tensor the caller owns) with ``_forward(h)[0]`` (``inverse=False``)
        or ``_inverse(h)[0]`` and return the log-det. Only layers whose ``_in_place`` is true implement it."""
        raise NotImplementedError


def _context_dim(value) -> int | None:
    """``None`` or an integer ``>= 1``: the ``context_dim`` argument of the conditional layers."""
    return None if value is None else check_int(value, "context_dim")


def _sum_except_batch(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


class Compose(Transform):
    """Composition ``f = f_K o ... o f_1`` of transforms applied in list order.

    * map: ``z = f_K(...f_1(x))``; inverse: apply the inverses in reverse order;
    * log-det: ``log|det df/dx| = sum_k log|det df_k/dh_{k-1}|`` (chain rule, determinants multiply);
    * cost: the sum of the parts' costs.

    ``forward(x, return_intermediates=True)`` also returns the list ``[x, h_1, ..., h_K]`` that the
    book uses to draw what each layer does.

    Shape checks. ``forward`` and ``inverse`` validate their input once, then walk its shape through every
    layer (``_check_shape``, no tensor work), so a wrong width is reported with the layer that expected it,
    in both directions, also when only a later layer knows the width. Adjacent layers whose widths
    disagree are refused at construction. ``event_shape`` is the first one known before the first layer that
    changes the shape.
    """

    def __init__(self, *transforms: Transform):
        super().__init__()
        if len(transforms) == 1 and isinstance(transforms[0], (list, tuple)):
            transforms = tuple(transforms[0])
        for t in transforms:
            if not isinstance(t, Transform):
                raise ValueError(f"Compose takes Transform instances, got {type(t).__name__}")
        self.transforms = nn.ModuleList(transforms)
        self.event_shape = None
        for t in transforms:
            if t.event_shape is not None:
                self.event_shape = tuple(t.event_shape)
                break
            if not t.shape_preserving:
                break
        dims = {t.context_dim for t in transforms if t.context_dim is not None}
        if len(dims) > 1:
            raise ValueError(f"the conditional layers of this Compose disagree on context_dim: {sorted(dims)}")
        self.context_dim = dims.pop() if dims else None
        if self.event_shape is not None:  # layers that disagree with each other fail here, not at the first call
            try:
                self._check_shape((1, *self.event_shape), "x")
            except ValueError as e:
                raise ValueError(f"the layers of this Compose disagree on the shape of their input: {e}") from None

    @property
    def shape_preserving(self):
        return all(t.shape_preserving for t in self.transforms)

    def __len__(self):
        return len(self.transforms)

    def __getitem__(self, i):
        return self.transforms[i]

    def forward(self, x, return_intermediates: bool = False, context=None):
        """Normalize through every layer; input is validated once here, not at every layer. ``context`` goes to
        the conditional layers (those with a ``context_dim``)."""
        self._check(x, "x")
        context = check_context(self, context, x.shape[0])
        return self._run(x, self.transforms, "_forward", return_intermediates, context)

    def inverse(self, z, return_intermediates: bool = False, context=None):
        """Generate through every layer, last layer first."""
        self._check(z, "z", inverse=True)
        context = check_context(self, context, z.shape[0])
        return self._run(z, list(reversed(self.transforms)), "_inverse", return_intermediates, context)

    def _check_shape(self, shape, name, inverse=False):
        layers = list(enumerate(self.transforms))
        for k, t in reversed(layers) if inverse else layers:
            try:
                shape = t._check_shape(shape, name, inverse)
            except ValueError as e:
                raise ValueError(f"layer {k} ({type(t).__name__}) of the Compose: {e}") from None
        return shape

    def _forward(self, x, context=None):
        return self._run(x, self.transforms, "_forward", False, context)

    def _inverse(self, z, context=None):
        return self._run(z, list(reversed(self.transforms)), "_inverse", False, context)

    @staticmethod
    def _run(h, layers, method, return_intermediates, context=None):
        if torch.is_grad_enabled():
            return Compose._run_layers(h, layers, method, return_intermediates, context)
        with workspace():  # no autograd: the conditioners' hidden layers reuse one call's buffers
            if not return_intermediates and Compose._all_in_place(layers):
                return Compose._run_in_place_all(h, layers, method == "_inverse", context)
            return Compose._run_layers(h, layers, method, return_intermediates, context)

    @staticmethod
    def _run_layers(h, layers, method, return_intermediates, context=None):
        logdet = None
        hs = [h]
        for t in layers:
            if context is None or t.context_dim is None:
                h, ld = getattr(t, method)(h)
            else:
                h, ld = getattr(t, method)(h, context)
            if not t.volume_preserving:
                logdet = ld if logdet is None else logdet + ld
            if return_intermediates:
                hs.append(h)
        if logdet is None:
            logdet = h.new_zeros(h.shape[0])
        return (h, logdet, hs) if return_intermediates else (h, logdet)

    @staticmethod
    def _all_in_place(layers) -> bool:
        """Whether every layer of ``layers`` can overwrite its input (``_run_in_place_all`` applies)."""
        return all(t._in_place for t in layers)

    @staticmethod
    def _run_in_place_all(h, layers, inverse, context=None):
        """Without autograd, a stack of layers that can all work in place (vector affine couplings with a half
        split: ``realnvp``) runs on one copy of the input: each layer overwrites its transformed half, so no
        layer allocates and concatenates a new batch (``torch.cat`` of the two halves was the largest copy of
        RealNVP's ``log_prob``: ``benchmarks/RESULTS.md``). The same arithmetic as ``_forward``/``_inverse``."""
        h = h.clone()
        logdet = None
        for t in layers:
            ld = t._run_in_place(h, inverse, None if t.context_dim is None else context)
            if not t.volume_preserving:
                logdet = ld if logdet is None else logdet.add_(ld)
        if logdet is None:
            logdet = h.new_zeros(h.shape[0])
        return h, logdet


class InverseTransform(Transform):
    """Swap the roles of ``forward`` and ``inverse`` of a transform (used to build IAF from MAF code)."""

    def __init__(self, transform: Transform):
        super().__init__()
        self.base_transform = transform
        self.event_shape = transform.event_shape
        self.context_dim = transform.context_dim

    @property
    def shape_preserving(self):
        return self.base_transform.shape_preserving

    def _check_shape(self, shape, name, inverse=False):
        return self.base_transform._check_shape(shape, name, not inverse)

    def _forward(self, x, context=None):
        if context is None:
            return self.base_transform.inverse(x)
        return self.base_transform._inverse(x, context)

    def _inverse(self, z, context=None):
        if context is None:
            return self.base_transform.forward(z)
        return self.base_transform._forward(z, context)
