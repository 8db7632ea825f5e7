"""Invertible transforms. Convention: ``forward: x -> (z, logdet)`` normalizes, ``inverse`` generates."""

from flowlib.transforms.base import Compose, InverseTransform, NoAnalyticInverse, Transform

__all__ = ["Transform", "Compose", "InverseTransform", "NoAnalyticInverse"]
