"""Re-execute lecture notebooks in place so their committed outputs are current.

    .venv/bin/python scripts/refresh_notebooks.py                 # every chapters/**/*.ipynb
    .venv/bin/python scripts/refresh_notebooks.py chapters/x.ipynb  # one notebook

Each notebook runs in its own folder with a fresh kernel, a 120 s per-cell limit, and must finish in
under 2 minutes on a 2-core CPU (the course's budget); the time of each is printed. A cell that raises
stops the refresh with the error and leaves the file unchanged.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 120


def refresh(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=BUDGET_S, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((ROOT / "chapters").rglob("*.ipynb"))
    paths = [p for p in paths if ".ipynb_checkpoints" not in p.parts]
    if not paths:
        print("no notebooks to refresh")
        return 0
    slow = []
    for p in paths:
        if not p.exists():
            print(f"missing notebook: {p}", file=sys.stderr)
            return 2
        try:
            t = refresh(p)
        except CellExecutionError as e:
            print(f"FAILED {p}: a cell raised; the file was left unchanged\n{e}", file=sys.stderr)
            return 1
        print(f"{t:7.1f} s  {p.relative_to(ROOT) if p.is_absolute() else p}")
        if t > BUDGET_S:
            slow.append(p)
    if slow:
        print(f"over the {BUDGET_S} s budget: {[str(s) for s in slow]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
