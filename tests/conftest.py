"""Shared test settings: a non-interactive matplotlib backend and deterministic torch defaults."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_defaults():
    """Every test starts from the same seed and float32 default dtype, whatever the previous test did."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    yield
    torch.set_default_dtype(previous)
