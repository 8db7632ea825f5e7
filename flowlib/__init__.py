"""flowlib: a small, verified normalizing-flows library for the course
"Deep Generative Models, from probability to normalizing flows".

Direction convention: ``Transform.forward(x) -> (z, logdet)`` normalizes (data to base space),
``Transform.inverse(z) -> (x, logdet)`` generates. Log-dets are per sample, shape ``(batch,)``.
"""

from flowlib.flow import Flow
from flowlib.transforms.base import Compose, InverseTransform, NoAnalyticInverse, Transform

__version__ = "0.1.0"
__all__ = ["Flow", "Transform", "Compose", "InverseTransform", "NoAnalyticInverse", "__version__"]
