"""Image flows for chapter 6: NICE, RealNVP and Glow on small images, with the book's digits pipeline.

Every model is a ``flowlib.Flow`` on images ``(B, C, H, W)`` with values in ``[0, 1]`` (dequantised and
rescaled, see ``flowlib.preprocess``) whose first layer is ``Logit``, so ``log_prob`` is the density of the
dequantised image itself and ``flowlib.metrics.bits_per_dim(log_prob, D, num_levels=L)`` is its bits/dim.

* ``nice_image``: flatten, additive couplings on alternating halves (``MLP`` conditioners), ``NICEScaling``
  (Dinh et al., 2014);
* ``realnvp_image``: checkerboard affine couplings at full resolution, then a multi-scale stack whose
  levels alternate channel and checkerboard couplings (Dinh et al., 2017);
* ``glow_image``: a multi-scale stack of ``GlowStep`` s (ActNorm, LU 1x1 convolution, affine coupling)
  (Kingma & Dhariwal, 2018).

The digits helpers (``digits_loss``, ``heldout``, ``digits_bits_per_dim``) implement the protocol of the
book and of ``benchmarks/flows.py``: 17 levels, ``Logit(alpha=0.05)``, fixed noise draws for held-out images.
Builders draw their initialisation from torch's global generator: seed it before calling them.
"""

from __future__ import annotations

import math

import torch

from flowlib._validate import check_int, check_tensor
from flowlib.distributions import StandardNormal
from flowlib.flow import Flow
from flowlib.metrics import bits_per_dim
from flowlib.preprocess import Logit, UniformDequantization
from flowlib.transforms.base import Compose
from flowlib.transforms.coupling import AdditiveCoupling, AffineCoupling, channel_mask, checkerboard_mask, half_mask
from flowlib.transforms.elementwise import NICEScaling, as_event_shape
from flowlib.transforms.glow import GlowStep
from flowlib.transforms.multiscale import MultiScale

__all__ = [
    "nice_image",
    "realnvp_image",
    "glow_image",
    "DIGIT_LEVELS",
    "LOGIT_ALPHA",
    "digits_loss",
    "heldout",
    "digits_bits_per_dim",
    "sample_images",
    "num_params",
    "MNIST_MODEL",
    "build_mnist_model",
    "mnist_test_bits",
]

DIGIT_LEVELS = 17  # scikit-learn's digits hold the integers 0..16
LOGIT_ALPHA = 0.05


def _flow(layers, image_shape):
    return Flow(Compose(Logit(LOGIT_ALPHA), *layers), StandardNormal(image_shape))


def nice_image(image_shape=(1, 8, 8), num_layers: int = 4, hidden=(256, 256)) -> Flow:
    """Logit, ``num_layers`` additive couplings alternating the two halves, ``NICEScaling``, on the flat
    vector of ``D = C H W`` numbers: the model works on ``(B, D)`` (``x.reshape(B, -1)``; the digits helpers and
    ``sample_images`` reshape for it). The base is ``N(0, I)`` (the paper uses a logistic base)."""
    image_shape = as_event_shape(image_shape, "image_shape")
    check_int(num_layers, "num_layers")
    d = int(torch.Size(image_shape).numel())
    couplings = [AdditiveCoupling(half_mask(d, first=k % 2 == 0), hidden) for k in range(num_layers)]
    flow = Flow(Compose(Logit(LOGIT_ALPHA), *couplings, NICEScaling(d)), StandardNormal((d,)))
    flow.image_shape = image_shape
    return flow


def realnvp_image(
    image_shape=(1, 8, 8), num_levels: int = 3, couplings_per_level: int = 4, hidden_channels: int = 64
) -> Flow:
    """RealNVP for images: 3 checkerboard affine couplings at full resolution, then ``MultiScale`` with
    ``num_levels`` levels (squeeze, then ``couplings_per_level`` affine couplings alternating channel masks
    and, where the level has at least 2 pixels, checkerboard masks; factor out half the channels)."""
    image_shape = as_event_shape(image_shape, "image_shape")
    c, h, w = image_shape
    n = check_int(couplings_per_level, "couplings_per_level")
    hid = (check_int(hidden_channels, "hidden_channels"),) * 2
    pre = [AffineCoupling(checkerboard_mask(h, w, k % 2, c), hid) for k in range(3)]
    levels = []
    for lc, lh, lw in MultiScale.level_shapes(image_shape, num_levels):
        layers = []
        for k in range(n):
            if k % 2 == 0 or lh * lw < 2:
                layers.append(AffineCoupling(channel_mask(lc, (k // 2) % 2 if lh * lw >= 2 else k % 2), hid))
            else:
                layers.append(AffineCoupling(checkerboard_mask(lh, lw, (k // 2) % 2, lc), hid))
        levels.append(Compose(*layers))
    return _flow([*pre, MultiScale(image_shape, levels)], image_shape)


def glow_image(image_shape=(1, 8, 8), num_levels: int = 3, steps_per_level: int = 4, hidden_channels: int = 64) -> Flow:
    """Glow: logit, then ``MultiScale`` with ``num_levels`` levels of ``steps_per_level`` ``GlowStep`` s
    (ActNorm with data initialisation, LU-parametrised 1x1 convolution, channel affine coupling)."""
    image_shape = as_event_shape(image_shape, "image_shape")
    check_int(steps_per_level, "steps_per_level")
    levels = [
        Compose(*[GlowStep(lc, hidden_channels, lu=True) for _ in range(steps_per_level)])
        for lc, _, _ in MultiScale.level_shapes(image_shape, num_levels)
    ]
    return _flow([MultiScale(image_shape, levels)], image_shape)


def num_params(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------- digits protocol


def digits_loss(generator: torch.Generator, num_levels: int = DIGIT_LEVELS):
    """A ``loss_fn`` for ``flowlib.fit``: in training mode the batch holds integers ``0..L-1`` and is
    dequantised afresh (noise from ``generator``); in eval mode it is already dequantised (``heldout``).
    Returns the mean negative log-likelihood in nats of the dequantised images."""
    deq = UniformDequantization(num_levels=num_levels)

    def loss(model, batch):
        if model.training:
            batch = deq(batch, generator=generator)
        return -model.log_prob(_shape_for(model, batch)).mean()

    return loss


def _shape_for(model, x):
    shape = getattr(model, "event_shape", None)
    return x if shape is None or tuple(x.shape[1:]) == tuple(shape) else x.reshape(x.shape[0], *shape)


def heldout(x: torch.Tensor, draws: int = 8, seed: int = 0, num_levels: int = DIGIT_LEVELS) -> torch.Tensor:
    """``draws`` dequantised copies of the integer images ``x`` (``y = (x + u) / L``), with fixed noise."""
    check_tensor(x, name="x")
    check_int(draws, "draws")
    g = torch.Generator().manual_seed(int(seed))
    return UniformDequantization(num_levels=num_levels)(x.repeat(draws, *([1] * (x.dim() - 1))), generator=g)


@torch.no_grad()
def digits_bits_per_dim(model, y: torch.Tensor, num_levels: int = DIGIT_LEVELS, batch_size: int = 2048) -> float:
    """Bits per dimension of dequantised images ``y`` (from ``heldout``) under ``model``, in eval mode."""
    was = model.training
    model.eval()
    lp = torch.cat([model.log_prob(_shape_for(model, c)) for c in y.split(batch_size)])
    model.train(was)
    return float(bits_per_dim(lp.double(), y[0].numel(), num_levels=num_levels))


@torch.no_grad()
def sample_images(model, n: int, temperature: float = 1.0, generator: torch.Generator | None = None, z=None):
    """``n`` images ``x = f^{-1}(T z)``, ``z ~ N(0, I)`` (or the given ``z``), reshaped to the image shape and
    clamped to ``[0, 1]``. ``T < 1`` (a lower temperature) draws from nearer the mode of the base."""
    was = model.training
    model.eval()
    if z is None:
        z = model.base.sample(check_int(n, "n"), generator=generator)
    x, _ = model.transform._inverse(temperature * z)
    model.train(was)
    shape = getattr(model, "image_shape", None)
    if shape is not None:
        x = x.reshape(x.shape[0], *shape)
    return x.clamp(0, 1)


# ------------------------------------------------------------------------------- the chapter's three models

#: The three digits models of chapter 6: builder, its arguments and the training settings of
#: ``scripts/train_ch6.py`` (the same for all three: ``flowlib.fit``, the same batch, learning rate, schedule and
#: number of steps, validation every 50 steps with the best parameters restored).
DIGITS_MODELS = {
    "NICE": dict(builder=nice_image, kwargs=dict(num_layers=4, hidden=(128, 128)), lr=2e-3, batch_size=128),
    "RealNVP": dict(
        builder=realnvp_image, kwargs=dict(num_levels=3, couplings_per_level=4, hidden_channels=32),
        lr=2e-3, batch_size=128,
    ),
    "Glow": dict(
        builder=glow_image, kwargs=dict(num_levels=3, steps_per_level=4, hidden_channels=32),
        lr=2e-3, batch_size=128,
    ),
}


def build_digits_model(name: str, seed: int = 0) -> Flow:
    """One of the chapter's models (``"NICE"``, ``"RealNVP"``, ``"Glow"``), initialised under
    ``torch.manual_seed(seed)``."""
    if name not in DIGITS_MODELS:
        raise ValueError(f"name must be one of {sorted(DIGITS_MODELS)}, got {name!r}")
    spec = DIGITS_MODELS[name]
    torch.manual_seed(seed)
    model = spec["builder"]((1, 8, 8), **spec["kwargs"])
    model.image_shape = (1, 8, 8)
    return model


def digits_splits(val_draws: int = 4, test_draws: int = 8):
    """``(train, val, test)``: integer training images ``(1258, 1, 8, 8)``, and the validation and test images
    dequantised with fixed noise (``val_draws`` / ``test_draws`` copies each; seeds 1 and 2)."""
    from flowlib.data import digits

    return digits("train"), heldout(digits("val"), val_draws, seed=1), heldout(digits("test"), test_draws, seed=2)


def train_digits_model(name: str, steps: int, seed: int = 0, patience: int | None = 10, eval_every: int = 50,
                       data=None, progress: bool = False):
    """Build and fit one of the chapter's models with ``flowlib.fit`` (Adam with a cosine learning-rate decay,
    early stopping on the validation loss, best parameters restored); returns ``(model, history)``."""
    from flowlib.train import fit

    spec = DIGITS_MODELS[name]
    train, val, _ = data if data is not None else digits_splits()
    model = build_digits_model(name, seed)
    g = torch.Generator().manual_seed(1000 + seed)
    history = fit(
        model, train, val_data=val, loss_fn=digits_loss(g), steps=steps, batch_size=spec["batch_size"],
        lr=spec["lr"], patience=patience, eval_every=eval_every, seed=seed, progress=progress,
        clip_grad_norm=100.0, lr_schedule="cosine",
    )
    return model, history


# ------------------------------------------------------------------------------------ 28x28 MNIST (lecture 6.4)

#: The model of lecture 6.4 and ``scripts/train_ch06_mnist.py``: a small two-level Glow for 28x28 images
#: (28 -> 14 -> 7 by two squeezes), about 30k parameters.
MNIST_MODEL = dict(num_levels=2, steps_per_level=4, hidden_channels=32)


def build_mnist_model(seed: int = 0) -> Flow:
    """Lecture 6.4's Glow (``MNIST_MODEL``) for ``(1, 28, 28)`` images in ``[0, 1]``, initialised under
    ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    model = glow_image((1, 28, 28), **MNIST_MODEL)
    model.image_shape = (1, 28, 28)
    return model


@torch.no_grad()
def mnist_test_bits(model, x: torch.Tensor, draws: int = 4, seed: int = 2, batch_size: int = 250):
    """Per-image bits/dim of the integer images ``x`` (``(N, 1, 28, 28)``, values ``0..255``) at 256 levels,
    each averaged over ``draws`` fixed uniform-noise draws (``heldout(..., seed=seed)``): a float64 tensor
    ``(N,)``. Its mean is the test bits/dim, its standard deviation over ``sqrt(N)`` the standard error."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a tensor of integer images, got {type(x).__name__}")
    x = check_tensor(x.float(), name="x")
    n = x.shape[0]
    y = heldout(x, draws, seed=seed, num_levels=256)
    was = model.training
    model.eval()
    lp = torch.cat([model.log_prob(_shape_for(model, c)) for c in y.split(batch_size)]).double()
    model.train(was)
    d = y[0].numel()
    bits = (-lp + d * math.log(256)) / (d * math.log(2))
    return bits.reshape(draws, n).mean(0)
