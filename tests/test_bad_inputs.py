"""Bad inputs get a clear ``ValueError``/``TypeError`` naming what was expected, never a silent number.

Every transform exported by ``flowlib`` and ``flowlib.transforms`` is found automatically
(``test_every_exported_transform_has_a_factory`` fails when a new one has no entry in ``FACTORIES``) and
fed the library-wide bad inputs: an empty batch, the other float dtype, a wrong width (alone and inside a
``Compose``, in both directions), a missing batch axis, NaN, an integer tensor, a non-tensor. The
remaining tests cover the layer-specific rules of issue 16 (ActNorm's initialisation, Logit's range,
GlowStep's shape, IResBlock's Lipschitz guarantee after hand edits, empty metrics).
"""

import inspect

import pytest
import torch

import flowlib
import flowlib.transforms as T
from flowlib import Compose, Flow, InverseTransform, Logit, StandardNormal, Transform, bits_per_dim, nll_nats
from flowlib.testing import check_dtype_mismatch, check_empty_batch
from flowlib.transforms import (
    CNF,
    IAF,
    MAF,
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ElementwiseAffine,
    GlowStep,
    Invertible1x1Conv,
    IResBlock,
    LinearDiagonal,
    LinearFull,
    LinearHouseholder,
    LinearLU,
    LinearTriangular,
    MultiScale,
    NICEScaling,
    Permutation,
    Planar,
    Radial,
    Reverse,
    SplineCoupling,
    SplineIAF,
    SplineMAF,
    Squeeze,
    Sylvester,
    channel_mask,
    checkerboard_mask,
    half_mask,
)

VEC, IMG = (4,), (4, 4, 4)

# id -> (factory, event shape of the input, knows its width)
FACTORIES = {
    "ActNorm": (lambda: ActNorm(4), VEC, True),
    "ActNorm[image]": (lambda: ActNorm(4), IMG, True),
    "AdditiveCoupling": (lambda: AdditiveCoupling(half_mask(4), 8), VEC, True),
    "AffineCoupling": (lambda: AffineCoupling(half_mask(4), 8), VEC, True),
    "AffineCoupling[channel]": (lambda: AffineCoupling(channel_mask(4), 8), IMG, True),
    "AffineCoupling[checkerboard]": (lambda: AffineCoupling(checkerboard_mask(4, 4, 0, 4), 8), IMG, True),
    "CNF": (lambda: CNF(4, (8,), solver="rk4", step_size=0.25), VEC, True),
    "Compose": (lambda: Compose(ElementwiseAffine(4), Reverse(4)), VEC, True),
    "ElementwiseAffine": (lambda: ElementwiseAffine(4), VEC, True),
    "ElementwiseSpline": (lambda: T.ElementwiseSpline(4, 3), VEC, True),
    "GlowStep": (lambda: GlowStep(4, 8), IMG, True),
    "IAF": (lambda: IAF(4, (8,)), VEC, True),
    "IResBlock": (lambda: IResBlock(4, (8,)), VEC, True),
    "InverseTransform": (lambda: InverseTransform(MAF(4, (8,))), VEC, True),
    "Invertible1x1Conv": (lambda: Invertible1x1Conv(4), IMG, True),
    "Invertible1x1Conv[lu]": (lambda: Invertible1x1Conv(4, lu=True), IMG, True),
    "LinearDiagonal": (lambda: LinearDiagonal(4), VEC, True),
    "LinearFull": (lambda: LinearFull(4), VEC, True),
    "LinearHouseholder": (lambda: LinearHouseholder(4), VEC, True),
    "LinearLU": (lambda: LinearLU(4), VEC, True),
    "LinearTriangular": (lambda: LinearTriangular(4), VEC, True),
    "Logit": (lambda: Logit(0.05), VEC, False),
    "MAF": (lambda: MAF(4, (8,)), VEC, True),
    "MultiScale": (lambda: MultiScale(IMG, [GlowStep(16, 8)]), IMG, True),
    "NICEScaling": (lambda: NICEScaling(4), VEC, True),
    "Permutation": (lambda: Permutation(4, seed=0), VEC, True),
    "Planar": (lambda: Planar(4), VEC, True),
    "Radial": (lambda: Radial(4), VEC, True),
    "Reverse": (lambda: Reverse(4), VEC, True),
    "SplineCoupling": (lambda: SplineCoupling(half_mask(4), 8, num_bins=3), VEC, True),
    "SplineCoupling[channel]": (lambda: SplineCoupling(channel_mask(4), 8, num_bins=3), IMG, True),
    "SplineIAF": (lambda: SplineIAF(4, (8,), num_bins=3), VEC, True),
    "SplineMAF": (lambda: SplineMAF(4, (8,), num_bins=3), VEC, True),
    "Squeeze": (lambda: Squeeze(2), IMG, False),
    "Sylvester": (lambda: Sylvester(4, 2), VEC, True),
}
IDS = sorted(FACTORIES)


def exported_transforms():
    """Every concrete ``Transform`` subclass in the public namespaces."""
    found = {}
    for mod in (flowlib, T, flowlib.preprocess):
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name, None)
            if inspect.isclass(obj) and issubclass(obj, Transform) and obj is not Transform:
                found[name] = obj
    return found


def test_every_exported_transform_has_a_factory():
    covered = {type(FACTORIES[i][0]()).__name__ for i in IDS}
    missing = set(exported_transforms()) - covered
    assert not missing, f"add these transforms to FACTORIES in tests/test_bad_inputs.py: {sorted(missing)}"


def make(i):
    make_fn, shape, knows_width = FACTORIES[i]
    torch.manual_seed(0)
    return make_fn(), shape, knows_width


def data(shape, batch=3, dtype=torch.float32):
    return (0.1 + 0.8 * torch.rand(batch, *shape)).to(dtype)


def has_inverse(t):
    return not isinstance(t, Sylvester)


def wrong_width(shape):
    """One feature/channel more than expected (for Squeeze: an odd height)."""
    return (shape[0] + 2, *shape[1:])


@pytest.mark.parametrize("i", IDS)
def test_empty_batch_is_refused_in_both_directions(i):
    t, shape, _ = make(i)
    x = data(shape)
    with torch.no_grad():
        z, _ = t(x) if has_inverse(t) else (x, None)
    check_empty_batch(t, x, z if has_inverse(t) else None)
    if t.shape_preserving:
        with pytest.raises(ValueError, match="at least one sample"):
            Flow(t, StandardNormal(shape)).log_prob(x[:0])


@pytest.mark.parametrize("i", IDS)
def test_empty_batch_does_not_initialise_or_corrupt(i):
    t, shape, _ = make(i)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    with pytest.raises(ValueError):
        t(data(shape)[:0])
    for k, v in t.state_dict().items():
        assert torch.equal(v, before[k]) or (v.isnan().all() and before[k].isnan().all()), k


@pytest.mark.parametrize("i", IDS)
@pytest.mark.parametrize("module_dtype", [torch.float32, torch.float64])
def test_dtype_mismatch_is_one_rule(i, module_dtype):
    t, shape, _ = make(i)
    t = t.to(module_dtype)
    x = data(shape, dtype=module_dtype)
    check_dtype_mismatch(t, x)  # TypeError, or outputs in the input's dtype for parameterless layers
    if flowlib._validate.module_dtype(t) is not None:
        other = torch.float64 if module_dtype == torch.float32 else torch.float32
        with pytest.raises(TypeError, match=str(module_dtype)):
            t(x.to(other))
        if has_inverse(t):
            with pytest.raises(TypeError, match="dtype"):
                t.inverse(x.to(other))
        if t.shape_preserving:
            with pytest.raises(TypeError, match="dtype"):
                Flow(t, StandardNormal(shape).to(module_dtype)).log_prob(x.to(other))


@pytest.mark.parametrize("i", IDS)
def test_wrong_width_is_refused_alone_and_inside_compose_both_directions(i):
    t, shape, knows_width = make(i)
    if isinstance(t, Squeeze):  # knows no width, but needs even height and width and 4 axes
        with pytest.raises(ValueError, match="divisible"):
            t(torch.rand(2, 4, 3, 4))
        with pytest.raises(ValueError, match="divisible by factor"):
            t.inverse(torch.rand(2, 3, 2, 2))
        return
    if not knows_width:
        pytest.skip("works on any event shape (documented)")
    bad = data(wrong_width(shape))
    with pytest.raises(ValueError, match=r"must have"):
        t(bad)
    with pytest.raises(ValueError, match=r"must have"):
        Compose(Logit(), t)(bad)  # the first layer knows no width: the walk must still catch it
    if has_inverse(t):
        with pytest.raises(ValueError, match=r"must have"):
            t.inverse(bad)
        with pytest.raises(ValueError, match=r"must have"):
            Compose(t, Logit()).inverse(bad)  # inverse: the last layer is checked first


@pytest.mark.parametrize("i", IDS)
def test_missing_batch_axis_is_refused(i):
    t, shape, knows_width = make(i)
    if not knows_width and not isinstance(t, Squeeze):
        pytest.skip("works on any event shape (documented)")
    with pytest.raises(ValueError, match="must have"):
        t(data(shape)[0])


@pytest.mark.parametrize("i", IDS)
def test_nan_integer_and_non_tensor_inputs_are_refused(i):
    t, shape, _ = make(i)
    x = data(shape)
    x[0].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        t(x)
    with pytest.raises(ValueError, match="floating-point"):
        t(torch.ones(2, *shape, dtype=torch.long))
    with pytest.raises(ValueError, match="torch.Tensor"):
        t(data(shape).tolist())
    if has_inverse(t):
        with pytest.raises(ValueError, match="NaN or infinite"):
            t.inverse(x)


# ------------------------------------------------------------------------------ composition of shapes


def test_compose_checks_every_layer_in_both_directions():
    # the example: the first layer knows its width only through its own check
    with pytest.raises(ValueError, match="layer 0 \\(Reverse\\).*size 3"):
        Compose(Reverse(3), ElementwiseAffine(3))(torch.randn(2, 4))
    with pytest.raises(ValueError, match="layer 1 \\(ElementwiseAffine\\).*\\(batch, 3\\)"):
        Compose(Reverse(3), ElementwiseAffine(3)).inverse(torch.randn(2, 4))  # last layer first
    with pytest.raises(ValueError, match="layer 1 \\(ElementwiseAffine\\)"):
        Compose(Logit(), ElementwiseAffine(3), Logit()).inverse(torch.randn(2, 4))


def test_compose_refuses_layers_that_disagree_at_construction():
    with pytest.raises(ValueError, match="disagree"):
        Compose(Reverse(3), ElementwiseAffine(4))
    with pytest.raises(ValueError, match="disagree"):
        Compose(ActNorm(3), MAF(4, (8,)))
    assert Compose(Logit(), Reverse(3), ElementwiseAffine(3)).event_shape == (3,)


def test_compose_follows_the_shape_through_a_squeeze():
    t = Compose(ActNorm(2), Squeeze(2), Invertible1x1Conv(8))
    z, _ = t(torch.randn(3, 2, 4, 4))
    assert z.shape == (3, 8, 2, 2)
    x, _ = t.inverse(z)
    assert x.shape == (3, 2, 4, 4)
    with pytest.raises(ValueError, match="layer 0 \\(ActNorm\\)"):
        t(torch.randn(3, 3, 4, 4))
    expected = "layer 1 \\(Invertible1x1Conv\\).*\\(batch, 8, H, W\\), got \\(3, 12, 2, 2\\)"
    with pytest.raises(ValueError, match=expected):
        Compose(Squeeze(2), Invertible1x1Conv(8))(torch.randn(3, 3, 4, 4))  # known only after the squeeze
    with pytest.raises(ValueError, match="layer 2 \\(Invertible1x1Conv\\)"):
        t.inverse(torch.randn(3, 4, 2, 2))


def test_glowstep_has_a_clear_shape_error():
    g = GlowStep(4, 8)
    for bad in (torch.randn(2, 4), torch.randn(4, 4, 4), torch.randn(2, 6, 4, 4)):
        with pytest.raises(ValueError, match=r"\(batch, 4, H, W\) for GlowStep\(4\)"):
            g(bad)
        with pytest.raises(ValueError, match="GlowStep"):
            g.inverse(bad)


def test_multiscale_checks_width_only_levels_at_construction():
    with pytest.raises(ValueError, match="level 0"):
        MultiScale((4, 4, 4), [GlowStep(8, 8)])  # level 0 works on 16 channels


# ------------------------------------------------------------------------------ layer-specific rules


def test_actnorm_refuses_a_degenerate_initialising_batch():
    a = ActNorm(3)
    with pytest.raises(ValueError, match="several samples"):
        a(torch.randn(1, 3))
    x = torch.randn(8, 3)
    x[:, 1] = 2.0
    with pytest.raises(ValueError, match=r"channel\(s\) \[1\].*constant"):
        a(x)
    assert not a.initialized  # nothing was set by the refused batches
    z, _ = a(torch.randn(8, 3))
    assert a.initialized and torch.isfinite(z).all() and a.log_scale.abs().max() < 3
    # an image batch of one sample has many values per channel: fine
    b = ActNorm(2)
    b(torch.randn(1, 2, 4, 4))
    assert b.initialized
    # eval mode, or a layer marked initialised, never initialises: one sample is fine there
    c = ActNorm(3).eval()
    c(torch.randn(1, 3))
    d = ActNorm(3)
    d.initialized.fill_(True)
    d(torch.randn(1, 3))


def test_actnorm_initialises_on_first_training_forward_even_after_inverse():
    a = ActNorm(2)
    a.inverse(torch.randn(5, 2))  # documented: does not count as "seen"
    assert not a.initialized
    x = 3 + 2 * torch.randn(64, 2)
    z, _ = a(x)
    assert a.initialized
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-5)


def test_logit_range_is_checked_inside_flow_and_compose():
    flow = Flow(Compose(Logit(), ElementwiseAffine(2)), StandardNormal(2))
    for bad in (torch.tensor([[0.5, 1.5]]), torch.tensor([[-0.1, 0.5]])):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            flow.log_prob(bad)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            Compose(Logit(), ElementwiseAffine(2))(bad)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            Logit()(bad)
    assert torch.isfinite(flow.log_prob(torch.tensor([[0.0, 1.0]]))).all()  # alpha > 0: endpoints allowed


def test_logit_alpha_zero_refuses_the_endpoints():
    for edge in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
            Logit(0)(torch.tensor([[0.5, edge]]))
    y, ld = Logit(0)(torch.tensor([[0.25, 0.75]]))
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()


def test_logit_inverse_range_is_the_documented_wider_interval():
    a = 0.05
    x, _ = Logit(a).inverse(torch.tensor([[-40.0, 40.0]], dtype=torch.float64))
    lo, hi = -a / (1 - 2 * a), (1 - a) / (1 - 2 * a)
    assert x[0, 0] < 0 and x[0, 1] > 1
    assert torch.allclose(x, torch.tensor([[lo, hi]], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("how", ["inplace", "data", "load_state_dict"])
def test_iresblock_stays_contractive_after_hand_edits(how):
    torch.manual_seed(1)
    blk = IResBlock(3, (16, 16), lipschitz=0.9).eval()
    with torch.no_grad():
        if how == "inplace":
            for lin in blk.linears:
                lin.weight.mul_(50).add_(torch.randn_like(lin.weight))
        elif how == "data":
            for lin in blk.linears:
                lin.weight.data = 50 * torch.randn_like(lin.weight)
        else:
            other = IResBlock(3, (16, 16), lipschitz=0.9)
            sd = {k: (50 * v if k.endswith("weight") else v) for k, v in other.state_dict().items()}
            blk.load_state_dict(sd)
    for W in blk.normalized_weights():
        assert torch.linalg.matrix_norm(W, 2) <= 0.9 * (1 + 1e-5)
    x = torch.randn(5, 3)
    z, _ = blk(x)
    x_rec, _ = blk.inverse(z)
    assert torch.allclose(x_rec, x, atol=1e-4)


def test_metrics_refuse_an_empty_batch():
    with pytest.raises(ValueError, match="at least one sample"):
        nll_nats(torch.empty(0))
    with pytest.raises(ValueError, match="at least one sample"):
        bits_per_dim(torch.empty(0), num_dims=4)


def test_a_subclass_overriding_the_old_check_signature_still_works():
    calls = []

    class Old(Transform):  # written before _check took inverse=
        def _check(self, x, name):
            calls.append(name)
            return x

        def _forward(self, x):
            return 2 * x, x.new_full((x.shape[0],), 2 * torch.log(torch.tensor(2.0)).item())

        def _inverse(self, z):
            return z / 2, -z.new_full((z.shape[0],), 2 * torch.log(torch.tensor(2.0)).item())

    t = Old()
    z, _ = t(torch.ones(3, 2))
    x, _ = t.inverse(z)
    assert calls == ["x", "z"] and torch.equal(x, torch.ones(3, 2))


def test_finite_check_decides_exactly_when_the_one_pass_sum_overflows():
    """``check_tensor`` first sums ``x`` (one pass): finite entries whose float32 sum overflows to inf must still be
    accepted, and a single NaN or inf among them refused, with the count of bad entries."""
    from flowlib._validate import check_tensor

    big = torch.full((4, 3), 3e38)  # every entry finite, the sum is inf in float32
    assert not torch.isfinite(big.sum())
    assert check_tensor(big) is big
    mixed = torch.tensor([[float("inf"), -float("inf"), 1.0]])  # the sum is NaN
    with pytest.raises(ValueError, match="contains 2 NaN or infinite"):
        check_tensor(mixed)
    one = big.clone()
    one[2, 1] = float("nan")
    with pytest.raises(ValueError, match="contains 1 NaN or infinite"):
        check_tensor(one)
