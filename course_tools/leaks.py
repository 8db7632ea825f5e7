"""Patterns that must never appear in anything students see (student notebooks, the built book).

``leak_patterns()`` reads every notebook under ``solutions/`` and returns the nbgrader markers plus every
distinctive line of solution regions and hidden-test regions (lines also present in the student version are
dropped, e.g. a ``def`` line).  ``find_leaks(paths)`` searches notebooks, HTML or text files for them; HTML is
reduced to its text first (tags removed, entities decoded) so syntax-highlighted code is matched too.

    from course_tools.leaks import find_leaks
    assert find_leaks(pathlib.Path("_build/html").rglob("*.html")) == []
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKERS = [
    "BEGIN SOLUTION",
    "END SOLUTION",
    "BEGIN HIDDEN TESTS",
    "END HIDDEN TESTS",
    "BEGIN MARK SCHEME",
    "hidden test:",
]
MIN_LEN = 16
# A bare loop header (``for k in range(1, n + 1):``) reveals nothing about an answer and is common in lectures.
# So does a bare gradient-mode header (``with torch.no_grad():``), printed by nearly every lecture, and a generator
# seeded from a variable (``g = torch.Generator().manual_seed(seed)``): only a literal seed says which inputs a
# hidden check draws, and a line with one stays a pattern.
_LOOP = re.compile(
    r"^((for [\w, ()]+ in [\w.]+(\([^()]*\))?|while [\w ]+|with torch\.(no_grad|enable_grad|inference_mode)\(\)):"
    r"|\w+ = torch\.Generator\(\)\.manual_seed\([A-Za-z_]\w*\))$"
)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _regions(source: str, begin: str, end: str) -> list[str]:
    out, inside = [], False
    for line in source.splitlines():
        if begin in line:
            inside = True
        elif end in line:
            inside = False
        elif inside:
            out.append(line)
    return out


def _cells(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh).get("cells", [])


def leak_patterns(
    solutions_dir: str | None = None,
    release_dir: str | None = None,
    solutions: bool = True,
    hidden_tests: bool = True,
) -> list[str]:
    """Markers + distinctive lines of solutions and/or hidden tests (whitespace-normalised)."""
    solutions_dir = solutions_dir or os.path.join(REPO, "solutions")
    release_dir = release_dir or os.path.join(REPO, "assignments")
    patterns: set[str] = set()
    for root, _dirs, files in os.walk(solutions_dir):
        for f in files:
            if not f.endswith(".ipynb") or ".ipynb_checkpoints" in root:
                continue
            path = os.path.join(root, f)
            student = os.path.join(release_dir, os.path.relpath(path, solutions_dir))
            allowed = set()
            if os.path.exists(student):
                for c in _cells(student):
                    allowed |= {_norm(l) for l in "".join(c.get("source", "")).splitlines()}
            for c in _cells(path):
                src = "".join(c.get("source", ""))
                meta = c.get("metadata", {}).get("nbgrader", {})
                if c.get("cell_type") == "markdown" and meta.get("solution"):
                    src = "BEGIN SOLUTION\n" + src + "\nEND SOLUTION"  # the whole cell is the model answer
                lines = (_regions(src, "BEGIN SOLUTION", "END SOLUTION") if solutions else []) + (
                    _regions(src, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS") if hidden_tests else []
                )
                for line in lines:
                    n = _norm(line)
                    if len(n) >= MIN_LEN and n not in allowed and not n.startswith("#") and not _LOOP.match(n):
                        patterns.add(n)
    if hidden_tests:
        patterns |= set(hidden_check_patterns(solutions_dir))
    markers = MARKERS if solutions else [m for m in MARKERS if "SOLUTION" not in m]
    return markers + sorted(patterns)


def hidden_check_patterns(solutions_dir: str | None = None) -> list[str]:
    """Distinctive code lines of every ``solutions/<assignment>/hidden_checks.py`` (the grader's side of the
    hidden checks: inputs, references, comparisons).  Imports, comments, docstrings and message-only lines are
    left out (a check's docstring is its label and its messages are shown to students on purpose)."""
    solutions_dir = solutions_dir or os.path.join(REPO, "solutions")
    out: set[str] = set()
    quotes = ('"' * 3, "'" * 3)
    for root, _dirs, files in os.walk(solutions_dir):
        if "hidden_checks.py" not in files:
            continue
        with open(os.path.join(root, "hidden_checks.py"), encoding="utf-8") as fh:
            in_doc = False
            for line in fh:
                n = _norm(line)
                starts_doc = n.startswith(quotes)
                if starts_doc or in_doc:
                    closed = (n.count(quotes[0]) + n.count(quotes[1])) >= (2 if starts_doc and not in_doc else 1)
                    in_doc = not closed if (starts_doc and not in_doc) else not closed
                    continue
                if len(n) < MIN_LEN or n.startswith(("#", "import ", "from ", '"', "'")) or _LOOP.match(n):
                    continue
                out.add(n)
    # lines that students may legitimately have (the same code in a solution or a student version)
    visible = set()
    for root, _dirs, files in os.walk(solutions_dir):
        for f in files:
            if f.endswith(".ipynb"):
                for c in _cells(os.path.join(root, f)):
                    visible |= {_norm(x) for x in "".join(c.get("source", "")).splitlines()}
    # the visible checks ship with every student version (course_tools/checks/): their lines are public
    checks_dir = os.path.join(REPO, "course_tools", "checks")
    for f in os.listdir(checks_dir) if os.path.isdir(checks_dir) else []:
        if f.endswith(".py"):
            with open(os.path.join(checks_dir, f), encoding="utf-8") as fh:
                visible |= {_norm(x) for x in fh}
    return sorted(out - visible)


def _text_of(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        raw = fh.read()
    if path.endswith(".ipynb"):
        try:
            nb = json.loads(raw)
            parts = []
            for c in nb.get("cells", []):
                parts.append("".join(c.get("source", "")))
                for o in c.get("outputs", []):
                    parts.append("".join(o.get("text", "")) + json.dumps(o.get("data", {})))
            raw = "\n".join(parts)
        except ValueError:
            pass
    elif path.endswith((".html", ".htm")):
        raw = html.unescape(re.sub(r"<[^>]+>", "", raw))
    return _norm(raw)


def find_leaks(paths: Iterable, patterns: list[str] | None = None) -> list[tuple[str, str]]:
    """[(file, pattern)] for every pattern found in a file; [] when nothing leaks."""
    patterns = patterns if patterns is not None else leak_patterns()
    hits = []
    for p in paths:
        text = _text_of(str(p))
        hits += [(str(p), pat) for pat in patterns if pat in text]
    return hits
