"""Give every figure of the lecture notebooks an alt text (``metadata.mystnb.image.alt``), for screen readers.

    python scripts/figure_alt.py            # fill in the missing ones (from the cell's titles or the section)
    python scripts/figure_alt.py --check    # list figures without alt text; exit 1 if there are any

An author who writes a better description sets it in the cell metadata and this script leaves it alone. The
derived text names what the figure shows from the titles the cell gives its axes (``set_title``,
``suptitle``), or else from the heading of the section the figure is in.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def _plain(tex: str) -> str:
    """A readable version of a matplotlib title: drop $...$ markup, TeX commands and braces."""
    s = re.sub(r"\\(mathbf|boldsymbol|mathcal|mathrm|text|operatorname)\{([^}]*)\}", r"\2", tex)
    s = re.sub(r"\\([a-zA-Z]+)", r"\1", s)
    s = s.replace("$", "").replace("{", "").replace("}", "").replace("^", "").replace("_", " ")
    return re.sub(r"\s+", " ", s).strip()


def titles(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            args = list(node.args) if name in {"set_title", "suptitle", "title"} else []
            args += [k.value for k in node.keywords if k.arg in {"title", "label"} and name != "plot"]
            for a in args:
                if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.strip():
                    out.append(_plain(a.value))
                elif isinstance(a, ast.JoinedStr):
                    parts = [v.value for v in a.values if isinstance(v, ast.Constant)]
                    if "".join(parts).strip():
                        out.append(_plain("...".join(parts)))
    seen, uniq = set(), []
    for t in out:
        if t and t not in seen:
            seen.add(t)
            uniq.append(t)
    return uniq


def has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {}) for o in cell.get("outputs", []))


def process(path: Path, check: bool) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    heading, missing, changed = "", [], False
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    heading = _plain(line.lstrip("#").strip())
            continue
        if cell.cell_type != "code" or not has_image(cell):
            continue
        alt = cell.metadata.get("mystnb", {}).get("image", {}).get("alt")
        if alt:
            continue
        if check:
            missing.append(f"{path.relative_to(ROOT)} cell {i}")
            continue
        t = titles(cell.source)
        text = ("Figure: " + "; ".join(t[:4])) if t else f"Figure for the section \u201c{heading}\u201d"
        cell.metadata.setdefault("mystnb", {}).setdefault("image", {})["alt"] = text[:300]
        changed = True
    if changed:
        nbformat.write(nb, path)
    return missing


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [Path(a) for a in argv if not a.startswith("--")] or sorted((ROOT / "chapters").rglob("*.ipynb"))
    missing = []
    for p in paths:
        missing += process(p.resolve(), check)
    for m in missing:
        print(f"no alt text: {m}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
