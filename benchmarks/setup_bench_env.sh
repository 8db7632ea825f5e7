#!/usr/bin/env bash
# Create .venv-bench: the course's pinned torch/numpy (requirements/lock.txt as constraints) plus the peer
# flow libraries (benchmarks/requirements-bench.txt), installed with --no-deps so they cannot move torch.
# The course env (.venv) and the test command never see the peers.
#
#   bash benchmarks/setup_bench_env.sh          # creates/updates .venv-bench at the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV=.venv-bench
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check -q)
# 1. flowlib's runtime stack at the exact versions of the lock (torch CPU wheel, numpy, scipy, scikit-learn).
"${PIP[@]}" -c requirements/lock.txt torch==2.13.0 numpy scipy scikit-learn tqdm setuptools wheel
# flowlib declares torchdiffeq; nflows imports matplotlib at module import time (nflows/nn/nde/made.py).
# Both are pinned by the lock; their own deps are all in the lock too, so -c keeps everything at lock versions.
"${PIP[@]}" -c requirements/lock.txt matplotlib torchdiffeq
# 2. the peers, pinned, with --no-deps (their declared deps would otherwise pull other torch/numpy versions).
"${PIP[@]}" --no-deps -r benchmarks/requirements-bench.txt
# 3. flowlib itself, editable, without touching the dependencies installed above.
"${PIP[@]}" -e . --no-deps --no-build-isolation
# 4. check that every peer imports with what is installed and that torch is still the locked one.
"$VENV/bin/python" - <<'PY'
import torch, normflows, nflows, zuko, flowlib  # noqa: F401
import nflows.flows, nflows.transforms, nflows.nn.nets, zuko.flows  # noqa: F401  (nflows needs matplotlib)
import flowlib.models, flowlib.preprocess, flowlib.metrics  # noqa: F401
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
print("bench env ok: torch", torch.__version__, "| normflows", normflows.__version__,
      "| nflows", getattr(nflows, "__version__", "?"), "| zuko", zuko.__version__)
PY
