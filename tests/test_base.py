"""The base API: Compose bookkeeping, volume-preserving flags and Flow's single validation point."""

import pytest
import torch

import flowlib
from flowlib.distributions import StandardNormal
from flowlib.testing import jacobian_logdet, perturb_parameters
from flowlib.transforms import Compose
from flowlib.transforms.coupling import AdditiveCoupling, AffineCoupling, half_mask
from flowlib.transforms.permutation import Permutation, Reverse
from flowlib.transforms.reshape import Squeeze

VOLUME_PRESERVING = [
    ("permutation", lambda: Permutation(5, seed=1), (5,)),
    ("reverse", lambda: Reverse(5), (5,)),
    ("squeeze", lambda: Squeeze(2), (2, 4, 4)),
    ("additive", lambda: perturb_parameters(AdditiveCoupling(half_mask(5), (16,))), (5,)),
]


@pytest.mark.parametrize("name,make,shape", VOLUME_PRESERVING, ids=[v[0] for v in VOLUME_PRESERVING])
def test_flagged_volume_preserving_layers_really_have_unit_jacobian(name, make, shape):
    t = make().double()
    assert t.volume_preserving
    x = torch.randn(3, *shape, dtype=torch.float64)
    ref = jacobian_logdet(lambda v: t(v)[0], x)
    assert torch.allclose(ref, torch.zeros(3, dtype=torch.float64), atol=1e-10), f"{name}: log|det J| = {ref}"


def test_affine_coupling_is_not_flagged():
    assert not AffineCoupling(half_mask(4), (8,)).volume_preserving


def test_compose_skips_only_volume_preserving_logdets():
    torch.manual_seed(0)
    layers = [perturb_parameters(AffineCoupling(half_mask(4, first=k % 2 == 0), (8,))).double() for k in range(2)]
    c = Compose(layers[0], Reverse(4), layers[1])
    x = torch.randn(6, 4, dtype=torch.float64)
    z, ld = c(x)
    h, ld0 = layers[0](x)
    h, _ = Reverse(4)(h)
    z_ref, ld1 = layers[1](h)
    assert torch.allclose(z, z_ref) and torch.allclose(ld, ld0 + ld1)
    assert torch.allclose(ld, jacobian_logdet(lambda v: c(v)[0], x), atol=1e-10)
    only_vp = Compose(Reverse(4), Permutation(4, seed=0))
    _, ld_vp = only_vp(x)
    assert ld_vp.shape == (6,) and torch.equal(ld_vp, torch.zeros(6, dtype=torch.float64))


def test_flow_validates_input_once_with_a_clear_message():
    flow = flowlib.Flow([AffineCoupling(half_mask(2), (8,))], StandardNormal((2,)))
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        flow.log_prob(torch.randn(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="floating-point"):
        flow.log_prob(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer >= 1"):
        flow.sample(0)


def test_flow_log_prob_matches_change_of_variables_and_samples_agree():
    torch.manual_seed(1)
    t = Compose(*[perturb_parameters(AffineCoupling(half_mask(3, first=k % 2 == 0), (8,))) for k in range(3)]).double()
    flow = flowlib.Flow(t, StandardNormal((3,))).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    z, _ = t(x)
    expected = StandardNormal((3,)).double().log_prob(z) + jacobian_logdet(lambda v: t(v)[0], x)
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-10)
    torch.manual_seed(2)
    xs, lp = flow.sample_with_log_prob(7)
    assert xs.shape == (7, 3) and torch.allclose(lp, flow.log_prob(xs), atol=1e-9)
