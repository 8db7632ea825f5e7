"""Invertible transforms. Convention: ``forward: x -> (z, logdet)`` normalizes, ``inverse`` generates."""

from flowlib.transforms.base import Compose, InverseTransform, NoAnalyticInverse, Transform

__all__ = ["Transform", "Compose", "InverseTransform", "NoAnalyticInverse"]

from flowlib.transforms.actnorm import ActNorm  # noqa: E402
from flowlib.transforms.conv import Invertible1x1Conv  # noqa: E402
from flowlib.transforms.coupling import (  # noqa: E402
    MLP,
    AdditiveCoupling,
    AffineCoupling,
    ConvNet,
    SplineCoupling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
)
from flowlib.transforms.elementwise import ElementwiseAffine, NICEScaling  # noqa: E402
from flowlib.transforms.glow import GlowStep  # noqa: E402
from flowlib.transforms.linear import (  # noqa: E402
    LinearDiagonal,
    LinearFull,
    LinearHouseholder,
    LinearLU,
    LinearTriangular,
)
from flowlib.transforms.multiscale import MultiScale  # noqa: E402
from flowlib.transforms.permutation import Permutation, Reverse  # noqa: E402
from flowlib.transforms.reshape import Squeeze  # noqa: E402

__all__ += [
    "ElementwiseAffine",
    "NICEScaling",
    "ActNorm",
    "Permutation",
    "Reverse",
    "LinearFull",
    "LinearDiagonal",
    "LinearTriangular",
    "LinearLU",
    "LinearHouseholder",
    "Invertible1x1Conv",
    "half_mask",
    "alternating_mask",
    "checkerboard_mask",
    "channel_mask",
    "MLP",
    "ConvNet",
    "AdditiveCoupling",
    "AffineCoupling",
    "SplineCoupling",
    "Squeeze",
    "MultiScale",
    "GlowStep",
]

from flowlib.transforms.autoregressive import (  # noqa: E402
    IAF,
    MADE,
    MAF,
    MaskedLinear,
    SplineIAF,
    SplineMAF,
    iaf,
    maf,
    spline_maf,
)
from flowlib.transforms.cnf import CNF  # noqa: E402
from flowlib.transforms.iresnet import IResBlock, LipSwish  # noqa: E402
from flowlib.transforms.planar import Planar, Radial, Sylvester  # noqa: E402

__all__ += ["MaskedLinear", "MADE", "MAF", "IAF", "maf", "iaf", "Planar", "Radial", "Sylvester"]
__all__ += ["SplineMAF", "SplineIAF", "spline_maf"]
__all__ += ["IResBlock", "LipSwish", "CNF"]

from flowlib.transforms.splines import ElementwiseSpline, rational_quadratic_spline  # noqa: E402

__all__ += ["ElementwiseSpline", "rational_quadratic_spline"]
