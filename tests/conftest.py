"""Shared test settings: a non-interactive matplotlib backend and deterministic torch defaults.

The backend is chosen with ``matplotlib.use`` only, never through ``MPLBACKEND`` in the environment: the
notebook kernels that nbval starts inherit the environment, and with Agg forced they would lose the inline
figure outputs that the committed notebooks contain.
"""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests use small tensors: one thread is as fast as two, and much faster when the cores are shared
    (with other jobs, or with the notebook kernels and graders that the suite starts)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _torch_defaults():
    """Every test starts from the same seed and float32 default dtype, whatever the previous test did."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    yield
    torch.set_default_dtype(previous)
