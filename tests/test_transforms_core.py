"""Tests of the core invertible transforms (elementwise, ActNorm, permutations, linear maps, 1x1 conv,
couplings, squeeze, multi-scale, Glow step) and of the model builders.

Every transform is checked on random inputs *and* random parameters (perturbed away from the
initialisation, which is often the identity): round trip, log-det cancellation and log-det against the
autograd Jacobian (float64), float32 round trip, non-zero gradients, state_dict round trip.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

import flowlib.models as models
from flowlib import Compose, Flow
from flowlib.testing import check_transform, per_sample_jacobian
from flowlib.transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ConvNet,
    ElementwiseAffine,
    GlowStep,
    Invertible1x1Conv,
    LinearDiagonal,
    LinearFull,
    LinearHouseholder,
    LinearLU,
    LinearTriangular,
    MultiScale,
    NICEScaling,
    Permutation,
    Reverse,
    Squeeze,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
)

try:
    from flowlib.distributions import StandardNormal
except ImportError:  # pragma: no cover - stand-in until flowlib.distributions lands

    class StandardNormal(torch.nn.Module):
        def __init__(self, event_shape):
            super().__init__()
            self.event_shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)

        def log_prob(self, z):
            d = math.prod(self.event_shape)
            return -0.5 * (z.reshape(z.shape[0], -1).pow(2).sum(1) + d * math.log(2 * math.pi))

        def sample(self, n):
            return torch.randn(n, *self.event_shape)

    models._standard_normal = StandardNormal


def _multiscale():
    shape = (2, 4, 4)
    shapes = MultiScale.level_shapes(shape, 2)
    levels = [Compose(ActNorm(c), AffineCoupling(channel_mask(c), 8)) for c, _, _ in shapes]
    return MultiScale(shape, levels)


# name -> (factory, event shape, scale of the parameter perturbation)
CASES = {
    "elementwise_affine": (lambda: ElementwiseAffine(5), (5,), 0.3),
    "elementwise_affine_image": (lambda: ElementwiseAffine((2, 4, 4)), (2, 4, 4), 0.3),
    "nice_scaling": (lambda: NICEScaling(5), (5,), 0.3),
    "actnorm_vector": (lambda: ActNorm(5), (5,), 0.3),
    "actnorm_image": (lambda: ActNorm(2), (2, 4, 4), 0.3),
    "permutation": (lambda: Permutation(5, seed=3), (5,), 0.3),
    "permutation_channels": (lambda: Permutation(3, seed=1), (3, 2, 2), 0.3),
    "reverse": (lambda: Reverse(5), (5,), 0.3),
    "reverse_channels": (lambda: Reverse(2), (2, 4, 4), 0.3),
    "linear_full": (lambda: LinearFull(5), (5,), 0.3),
    "linear_diagonal": (lambda: LinearDiagonal(5), (5,), 0.3),
    "linear_triangular": (lambda: LinearTriangular(5), (5,), 0.3),
    "linear_triangular_free": (lambda: LinearTriangular(5, positive_diagonal=False), (5,), 0.3),
    "linear_lu": (lambda: LinearLU(5), (5,), 0.3),
    "linear_householder": (lambda: LinearHouseholder(5), (5,), 0.3),
    "linear_householder_diag": (lambda: LinearHouseholder(5, num_reflections=3, diagonal=True), (5,), 0.3),
    "conv1x1": (lambda: Invertible1x1Conv(3), (3, 4, 4), 0.3),
    "conv1x1_lu": (lambda: Invertible1x1Conv(3, lu=True), (3, 4, 4), 0.3),
    "additive_half": (lambda: AdditiveCoupling(half_mask(5), (16, 16)), (5,), 0.3),
    "additive_checkerboard": (lambda: AdditiveCoupling(checkerboard_mask(4, 4, 1, 2), 8), (2, 4, 4), 0.3),
    "affine_half_first": (lambda: AffineCoupling(half_mask(5), (16, 16)), (5,), 0.3),
    "affine_half_second": (lambda: AffineCoupling(half_mask(5, first=False), (16, 16)), (5,), 0.3),
    "affine_alternating": (lambda: AffineCoupling(alternating_mask(5, 1), (16, 16)), (5,), 0.3),
    "affine_checkerboard": (lambda: AffineCoupling(checkerboard_mask(4, 4, 0, 2), 8), (2, 4, 4), 0.3),
    "affine_channel": (lambda: AffineCoupling(channel_mask(2, 1), 8), (2, 4, 4), 0.3),
    "squeeze": (lambda: Squeeze(2), (2, 4, 4), 0.3),
    "multiscale": (_multiscale, (2, 4, 4), 0.3),
    "glow_step": (lambda: GlowStep(2, 8), (2, 4, 4), 0.3),
    "model_nice": (lambda: models.nice(5, num_layers=4, hidden=(16, 16)).transform, (5,), 0.1),
    "model_realnvp": (lambda: models.realnvp(5, num_layers=4, hidden=(16, 16)).transform, (5,), 0.1),
    "model_glow": (lambda: models.glow((2, 4, 4), 2, 2, 8).transform, (2, 4, 4), 0.1),
}
NAMES = list(CASES)
WITH_PARAMS = [n for n in NAMES if list(CASES[n][0]().parameters())]


def build(name, dtype=torch.float64, seed=0, batch=3):
    """The transform with perturbed parameters (after a first forward call, for ActNorm's data init)
    and an input batch."""
    factory, shape, scale = CASES[name]
    torch.manual_seed(seed)
    t = factory().to(dtype)
    x = torch.randn(batch, *shape, dtype=dtype)
    t(x)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype))
    return t, x


@pytest.mark.parametrize("name", NAMES)
def test_check_transform_float64(name):
    t, x = build(name)
    out = check_transform(t, x)
    assert out["roundtrip"] < 1e-10 and out["jacobian"] < 1e-8


@pytest.mark.parametrize("name", NAMES)
def test_roundtrip_float32(name):
    t, x = build(name, dtype=torch.float32, batch=16)
    z, ld = t(x)
    assert z.dtype == torch.float32 and ld.dtype == torch.float32 and ld.shape == (16,)
    check_transform(t, x, check_jacobian=False)


@pytest.mark.parametrize("name", NAMES)
def test_inverse_then_forward(name):
    t, x = build(name)
    with torch.no_grad():
        z0 = torch.randn_like(t(x)[0])  # a random point of the base space
        x_gen, ld_inv = t.inverse(z0)
        z, ld = t(x_gen)
    assert (z - z0).abs().max() < 1e-9
    assert (ld + ld_inv).abs().max() < 1e-9


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_every_parameter_gets_a_gradient(name):
    t, x = build(name, batch=8)
    z, ld = t(x)
    loss = -(StandardNormal(z.shape[1:]).to(torch.float64).log_prob(z) + ld).mean()
    loss.backward()
    for pname, p in t.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_roundtrip(name):
    t1, x = build(name)
    buf = io.BytesIO()
    torch.save(t1.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)  # a different random initialisation (permutations, rotations, ...)
    t2 = CASES[name][0]().double()
    t2.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        for a, b in zip(t1(x), t2(x)):
            assert torch.equal(a, b)
        z = t1(x)[0] + 0.1
        for a, b in zip(t1.inverse(z), t2.inverse(z)):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ couplings


COUPLINGS = {
    "additive_half": (5,),
    "affine_half_first": (5,),
    "affine_half_second": (5,),
    "affine_alternating": (5,),
    "affine_checkerboard": (2, 4, 4),
    "additive_checkerboard": (2, 4, 4),
    "affine_channel": (2, 4, 4),
}


@pytest.mark.parametrize("name", list(COUPLINGS))
def test_coupling_jacobian_block_pattern(name):
    t, x = build(name, batch=2)
    m = t.mask.expand(COUPLINGS[name]).reshape(-1)  # True = conditioning
    J = per_sample_jacobian(lambda v: t(v)[0], x)
    eye = torch.eye(m.numel(), dtype=J.dtype).bool()
    for Jb in J:
        # conditioning rows are rows of the identity: z_a = x_a
        assert torch.equal(Jb[m], eye[m].to(J.dtype))
        # transformed rows depend on x_a and on their own x_b only: diagonal block
        Jbb = Jb[~m][:, ~m]
        assert torch.equal(Jbb, torch.diag(torch.diagonal(Jbb)))
        assert (torch.diagonal(Jbb) > 0).all()
        assert Jb[~m][:, m].abs().sum() > 0  # and they do depend on x_a (perturbed conditioner)


def test_coupling_starts_as_identity():
    for mask, shape in [(half_mask(6), (6,)), (checkerboard_mask(4, 4, num_channels=2), (2, 4, 4))]:
        for cls in (AdditiveCoupling, AffineCoupling):
            x = torch.randn(4, *shape)
            z, ld = cls(mask, 8)(x)
            assert torch.equal(z, x) and torch.equal(ld, torch.zeros(4))


@pytest.mark.parametrize("bound", [0.5, 2.0])
def test_affine_scale_is_bounded(bound):
    t = AffineCoupling(half_mask(4), (8,), scale_bound=bound).double()
    with torch.no_grad():
        t.conditioner[-1].bias.fill_(1e4)  # huge raw scales and shifts
    x = torch.randn(5, 4, dtype=torch.float64)
    z, ld = t(x)
    assert torch.isfinite(z).all()
    assert (ld <= 2 * bound + 1e-12).all()  # two transformed entries, |s| <= bound each
    assert (t.inverse(z)[0] - x).abs().max() < 1e-8


def test_masks():
    assert half_mask(5).tolist() == [True, True, False, False, False]
    assert half_mask(4, first=False).tolist() == [False, False, True, True]
    assert alternating_mask(5, 0).tolist() == [True, False, True, False, True]
    assert alternating_mask(4, 1).tolist() == [False, True, False, True]
    cb = checkerboard_mask(2, 3, 0, num_channels=2)
    assert cb.shape == (2, 2, 3) and cb[1].tolist() == [[True, False, True], [False, True, False]]
    assert torch.equal(checkerboard_mask(3, 3, 1), ~checkerboard_mask(3, 3, 0))
    assert channel_mask(4, 0).reshape(-1).tolist() == [True, True, False, False]
    assert channel_mask(4, 1).shape == (4, 1, 1)
    assert channel_mask(4, 1).reshape(-1).tolist() == [False, False, True, True]


def test_custom_conditioner_and_float_mask():
    net = ConvNet(1, 2, hidden=4)
    t = AffineCoupling(channel_mask(2).float(), net)
    assert t.conditioner is net
    x = torch.randn(2, 2, 4, 4)
    assert (t.inverse(t(x)[0])[0] - x).abs().max() < 1e-6


# ------------------------------------------------------------------------------ specific layers


@pytest.mark.parametrize("shape", [(64, 3), (32, 3, 4, 5)])
def test_actnorm_data_init(shape):
    x = 3.0 + 2.5 * torch.randn(*shape, dtype=torch.float64)
    t = ActNorm(3).double()
    assert not t.initialized
    z, ld = t(x)
    dims = [0] if len(shape) == 2 else [0, 2, 3]
    assert bool(t.initialized)
    assert z.mean(dims).abs().max() < 1e-10
    assert (z.var(dims, unbiased=False) - 1).abs().max() < 1e-5
    pixels = 1 if len(shape) == 2 else shape[2] * shape[3]
    assert torch.allclose(ld, pixels * t.log_scale.sum().expand(shape[0]))
    # the second batch does not re-initialise
    loc = t.loc.detach().clone()
    t(torch.randn(*shape, dtype=torch.float64))
    assert torch.equal(t.loc, loc)
    assert "initialized" in t.state_dict()


def test_actnorm_no_init_in_eval_and_survives_load():
    t = ActNorm(2).eval()
    x = 5 + torch.randn(10, 2)
    z, _ = t(x)
    assert torch.equal(z, x) and not t.initialized
    t.train()
    t(x)
    t2 = ActNorm(2)
    t2.load_state_dict(t.state_dict())
    assert bool(t2.initialized)
    z2, _ = t2(torch.randn(10, 2))  # no re-initialisation on a new batch after loading
    assert torch.equal(t2.loc, t.loc)


def test_permutations():
    x = torch.arange(10.0).reshape(2, 5)
    assert Permutation(5, perm=[4, 0, 1, 2, 3])(x)[0][0].tolist() == [4, 0, 1, 2, 3]
    assert Reverse(5)(x)[0][0].tolist() == [4, 3, 2, 1, 0]
    assert torch.equal(Permutation(7, seed=5).perm, Permutation(7, seed=5).perm)
    img = torch.randn(2, 3, 2, 2)
    assert torch.equal(Reverse(3)(img)[0], img.flip(1))
    assert torch.equal(Permutation(2, perm=[1, 0], dim=3)(img)[0], img.flip(3))


def test_squeeze_layout():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    z, ld = Squeeze(2)(x)
    assert z.shape == (1, 4, 2, 2) and torch.equal(ld, torch.zeros(1))
    assert z[0, :, 0, 0].tolist() == [0, 1, 4, 5]  # the top-left 2x2 block becomes 4 channels
    assert z[0, 0].tolist() == [[0, 2], [8, 10]]


def test_linear_structures():
    t = LinearTriangular(4)
    with torch.no_grad():
        t.lower.normal_()
    assert torch.equal(t.weight(), torch.tril(t.weight()))
    h = LinearHouseholder(4, bias=False).double()
    eye = torch.eye(4, dtype=torch.float64)
    Q = h(eye)[0].T  # columns are Q e_i
    assert torch.allclose(Q @ Q.T, eye, atol=1e-12)
    lu = LinearLU(4, seed=0).double()
    W = lu.weight()
    assert torch.allclose(W @ W.T, eye, atol=1e-6)  # initialised as a rotation (in float32)
    assert torch.allclose(lu(eye)[0], eye @ W.T)


def test_conv1x1_init_is_rotation():
    for lu in (False, True):
        t = Invertible1x1Conv(4, lu=lu, seed=0).double()
        W = t.lu.weight() if lu else t.weight
        assert torch.allclose(W @ W.T, torch.eye(4, dtype=torch.float64), atol=1e-6)
        assert abs(torch.linalg.det(W) - 1) < 1e-6
        x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
        assert torch.allclose(t(x)[0], torch.einsum("ij,bjhw->bihw", W, x))


def test_multiscale_shapes_and_flow():
    assert MultiScale.level_shapes((3, 8, 8), 3) == [(12, 4, 4), (24, 2, 2), (48, 1, 1)]
    assert MultiScale.level_shapes((4, 8, 8), 2, squeeze=False) == [(4, 8, 8), (2, 8, 8)]
    flow = models.glow((3, 8, 8), num_levels=2, steps_per_level=1, hidden_channels=8)
    x = torch.randn(5, 3, 8, 8)
    lp = flow.log_prob(x)
    assert lp.shape == (5,) and torch.isfinite(lp).all()
    assert flow.sample(2).shape == (2, 3, 8, 8)


@pytest.mark.parametrize("builder", ["nice", "realnvp"])
def test_vector_models_start_at_base_density(builder):
    flow = getattr(models, builder)(3)
    assert isinstance(flow, Flow)
    x = torch.randn(6, 3)
    assert torch.allclose(flow.log_prob(x), StandardNormal((3,)).log_prob(x))
    x, lp = flow.sample_with_log_prob(4)
    assert x.shape == (4, 3) and lp.shape == (4,)


def test_realnvp_architecture():
    flow = models.realnvp(4, num_layers=3, hidden=(32, 32))
    layers = list(flow.transform)
    assert len(layers) == 3 and all(isinstance(t, AffineCoupling) for t in layers)
    assert [t.layout for t in layers] == ["ab", "ba", "ab"]
    assert [m.out_features for m in layers[0].conditioner if isinstance(m, torch.nn.Linear)] == [32, 32, 4]


# --------------------------------------------------------------------------------------- errors


def _image_coupling():
    return AffineCoupling(channel_mask(4), 8)


BAD = [
    (lambda: ElementwiseAffine(5)(torch.randn(3, 4)), r"shape \(batch, 5\)"),
    (lambda: ElementwiseAffine(5)(torch.full((2, 5), float("nan"))), "NaN"),
    (lambda: ElementwiseAffine(5).inverse(torch.full((2, 5), float("inf"))), "z contains"),
    (lambda: ElementwiseAffine(5)(torch.ones(2, 5, dtype=torch.long)), "floating-point"),
    (lambda: ElementwiseAffine(5)([[1.0] * 5]), "torch.Tensor"),
    (lambda: ElementwiseAffine(0), "event_shape"),
    (lambda: ElementwiseAffine((2, -1)), "event_shape"),
    (lambda: NICEScaling("5"), "event_shape"),
    (lambda: ActNorm(3)(torch.randn(4, 5)), r"shape \(batch, 3\) or \(batch, 3, H, W\)"),
    (lambda: ActNorm(3)(torch.randn(4, 3, 2)), r"\(batch, 3, H, W\)"),
    (lambda: ActNorm(0), "num_features"),
    (lambda: ActNorm(3, eps=0.0), "eps must be positive"),
    (lambda: Permutation(3, perm=[0, 0, 1]), r"permutation of 0\.\.2"),
    (lambda: Permutation(3, perm=[0, 1]), "length num_features=3"),
    (lambda: Permutation(3, perm=[0.0, 1.0, 2.0]), "integer"),
    (lambda: Permutation(3)(torch.randn(2, 4)), "size 3 along dim 1"),
    (lambda: Permutation(3, dim=0), "dim"),
    (lambda: Reverse(0), "num_features"),
    (lambda: LinearFull(5)(torch.randn(2, 4)), r"shape \(batch, 5\)"),
    (lambda: LinearLU(5).inverse(torch.randn(2, 5, 1)), r"shape \(batch, 5\)"),
    (lambda: LinearTriangular(0), "dim"),
    (lambda: LinearDiagonal(2.5), "dim"),
    (lambda: LinearHouseholder(5, num_reflections=0), "num_reflections"),
    (lambda: Invertible1x1Conv(3)(torch.randn(2, 3)), r"\(batch, 3, H, W\)"),
    (lambda: Invertible1x1Conv(3, lu=True)(torch.randn(2, 4, 2, 2)), r"\(batch, 3, H, W\)"),
    (lambda: AffineCoupling(torch.ones(4)), "at least one transformed entry"),
    (lambda: AdditiveCoupling(torch.zeros(4)), "at least one conditioning entry"),
    (lambda: AffineCoupling(torch.tensor([0.5, 1.0, 0.0, 0.0])), "only 0"),
    (lambda: AffineCoupling(torch.ones(2, 2).tril()), r"shape \(d,\)"),
    (lambda: AffineCoupling(half_mask(4), scale_bound=0.0), "scale_bound must be positive"),
    (lambda: AffineCoupling(half_mask(4), scale_bound=-2.0), "scale_bound must be positive"),
    (lambda: AffineCoupling(half_mask(4), (8, 0)), "hidden"),
    (lambda: AffineCoupling(half_mask(4))(torch.randn(2, 5)), r"shape \(batch, 4\)"),
    (lambda: _image_coupling()(torch.randn(2, 3, 4, 4)), r"\(batch, 4, H, W\)"),
    (lambda: AffineCoupling(checkerboard_mask(4, 4, num_channels=2), 8)(torch.randn(2, 2, 4, 6)), "shape"),
    (lambda: ConvNet(2, 4, hidden=(8, 8, 8)), "pair"),
    (lambda: half_mask(1), "d must be"),
    (lambda: alternating_mask(4, 2), "parity"),
    (lambda: checkerboard_mask(1, 1), "at least 2 pixels"),
    (lambda: channel_mask(3), "even c"),
    (lambda: Squeeze(2)(torch.randn(1, 2, 3, 4)), "divisible by factor=2"),
    (lambda: Squeeze(2).inverse(torch.randn(1, 3, 2, 2)), "divisible by factor"),
    (lambda: Squeeze(2)(torch.randn(2, 4)), "4 dimensions"),
    (lambda: Squeeze(0), "factor"),
    (lambda: MultiScale.level_shapes((2, 4, 6), 3), r"divisible by 2\*\*num_levels=8"),
    (lambda: MultiScale.level_shapes((3, 4, 4), 2, squeeze=False), "even number"),
    (lambda: MultiScale((2, 4, 4), [ElementwiseAffine((2, 4, 4))]), "level 0 must work on shape"),
    (lambda: MultiScale((2, 4, 4), [torch.nn.Identity()]), "Transforms"),
    (lambda: GlowStep(3, 8), "even c"),
    (lambda: models.nice(1), "dim"),
    (lambda: models.realnvp(4, num_layers=0), "num_layers"),
    (lambda: models.glow((3, 6, 6), num_levels=2), "divisible"),
]


@pytest.mark.parametrize("fn, match", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_raises_value_error(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_roundtrip(name):
    t, x = build(name, dtype=torch.float32, batch=8)
    t, x = t.cuda(), x.cuda()
    z, ld = t(x)
    assert z.device == x.device and ld.device == x.device
    check_transform(t, x, check_jacobian=False)


# ---------------------------------------------------------------- conditioner initialisation (issue 16)


def test_conditioner_last_init_options():
    from flowlib.transforms import MLP, ConvNet

    assert MLP(2, 4, (8,))[-1].weight.abs().max() == 0  # "zeros": the identity coupling at start
    assert MLP(2, 4, (8,), last_init="default")[-1].weight.abs().max() > 0
    w = MLP(2, 4, (64,), last_init=1e-2)[-1].weight
    assert 0 < w.std() < 2e-2
    assert ConvNet(2, 4, 8, last_init="default")[-1].weight.abs().max() > 0
    for bad in ("ones", 0.0, -1e-2, True):
        with pytest.raises(ValueError, match="last_init"):
            MLP(2, 4, (8,), last_init=bad)


@pytest.mark.parametrize("kwargs", [dict(last_init="default"), dict(last_init=1e-2), dict(actnorm=True)])
def test_realnvp_variants_are_valid_flows(kwargs):
    flow = models.realnvp(4, num_layers=4, hidden=(16,), **kwargs)
    x = torch.randn(6, 4, dtype=torch.float64)
    flow = flow.double()
    flow.log_prob(x)  # initialises the ActNorms, if any
    check_transform(flow.transform, x)
