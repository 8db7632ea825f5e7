"""Check a submission before grading, and repair what can be repaired without touching the submitted file.

``inspect_submission(assignment, folder)`` (used by ``python -m course_tools autograde`` before nbgrader runs)
finds what would crash or fool nbgrader's batch: a directory, link or huge file where the notebook should be,
text that is not UTF-8 JSON, nesting too deep for a parser, not nbformat 4, cells that are not cells, and in
nbgrader's metadata: duplicate ``grade_id``s (a copy-pasted test cell), ``grade_id``s the assignment does not
have, a cell whose type changed, other ``schema_version``s, metadata that is not a dict.  Fatal problems keep
the notebook out of nbgrader (graded 0, the instructor is told why); the others are repaired during grading by
:class:`RepairSubmission`, the first sanitize preprocessor, on nbgrader's in-memory copy: every nbgrader cell
gets the released notebook's metadata back or loses it, so each ``grade_id`` of the assignment is graded once,
from its original cell.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_NOTEBOOK_BYTES = 20 * 2**20
MAX_DEPTH = 64
MAX_CELLS = 2000
CELL_TYPES = {"code", "markdown", "raw"}


@dataclass
class Inspection:
    fatal: str | None = None  # the notebook cannot be graded (graded 0)
    notes: list[str] = field(default_factory=list)  # repaired while grading


def released(assignment: str, notebook: str) -> dict | None:
    path = os.path.join(REPO_ROOT, "assignments", assignment, notebook + ".ipynb")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _released_meta(rel: dict | None) -> dict[str, tuple[str, dict]]:
    out = {}
    for cell in (rel or {}).get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader")
        if isinstance(meta, dict) and meta.get("grade_id"):
            out[meta["grade_id"]] = (cell.get("cell_type"), meta)
    return out


def _depth(obj: object) -> int:
    """Nesting depth, without recursion."""
    best, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        best = max(best, d)
        if d > MAX_DEPTH:
            return d
        if isinstance(o, dict):
            stack += [(v, d + 1) for v in o.values()]
        elif isinstance(o, list):
            stack += [(v, d + 1) for v in o]
    return best


def _load(path: str) -> tuple[object | None, str | None]:
    if os.path.islink(path):
        return None, "is a symbolic link"
    if os.path.isdir(path):
        return None, "is a directory, not a notebook"
    if not os.path.isfile(path):
        return None, "is not a regular file"
    size = os.path.getsize(path)
    if size > MAX_NOTEBOOK_BYTES:
        return None, f"is {size / 2**20:.0f} MiB (more than {MAX_NOTEBOOK_BYTES // 2**20} MiB)"
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        text = raw.decode("utf-8")
        # a cheap bound before the parser: JSON cannot nest deeper than its brackets
        if text.count("[") + text.count("{") > MAX_DEPTH and _bracket_depth(text) > MAX_DEPTH:
            return None, f"is nested more than {MAX_DEPTH} levels deep"
        return json.loads(text), None
    except UnicodeDecodeError as exc:
        return None, f"is not UTF-8 text ({exc.reason} at byte {exc.start})"
    except (ValueError, RecursionError) as exc:
        return None, f"is not valid JSON ({str(exc)[:80]})"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"


def _bracket_depth(text: str) -> int:
    """The deepest bracket nesting of a JSON text, outside strings: the grader's own measure (hidden._nesting)."""
    from . import hidden

    return hidden._nesting(text)


def inspect_notebook(path: str, assignment: str, notebook: str) -> Inspection:
    res = Inspection()
    data, why = _load(path)
    if why:
        res.fatal = f"{notebook}.ipynb {why}"
        return res
    if _depth(data) > MAX_DEPTH:
        res.fatal = f"{notebook}.ipynb is nested more than {MAX_DEPTH} levels deep"
        return res
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        res.fatal = f"{notebook}.ipynb is not a valid notebook (no 'cells' list)"
        return res
    if data.get("nbformat") != 4:
        res.fatal = f"{notebook}.ipynb is not an nbformat 4 notebook (nbformat {data.get('nbformat')!r})"
        return res
    if len(data["cells"]) > MAX_CELLS:
        res.fatal = f"{notebook}.ipynb has {len(data['cells'])} cells (more than {MAX_CELLS})"
        return res
    res.notes = _problems(data, _released_meta(released(assignment, notebook)))
    return res


def _problems(data: dict, rel: dict[str, tuple[str, dict]]) -> list[str]:
    notes, seen = [], set()
    for i, cell in enumerate(data.get("cells", [])):
        if not isinstance(cell, dict):
            notes.append(f"cell {i} is not a cell: dropped")
            continue
        if cell.get("cell_type") not in CELL_TYPES:
            notes.append(f"cell {i} has the cell type {str(cell.get('cell_type'))[:20]!r}: graded as a raw cell")
        src = cell.get("source", "")
        if not isinstance(src, str) and not (isinstance(src, list) and all(isinstance(s, str) for s in src)):
            notes.append(f"cell {i} has a malformed source: emptied")
        md = cell.get("metadata", {})
        if not isinstance(md, dict):
            notes.append(f"cell {i} has malformed metadata: removed")
            continue
        if "nbgrader" not in md:
            continue
        meta = md["nbgrader"]
        gid = meta.get("grade_id") if isinstance(meta, dict) else None
        label = f"cell {i}" + (f" ({str(gid)[:40]})" if gid else "")
        if not isinstance(meta, dict) or not isinstance(gid, str):
            notes.append(f"{label}: malformed nbgrader metadata removed")
        elif gid not in rel:
            notes.append(f"{label}: grade_id not in the assignment: treated as a plain cell")
        elif gid in seen:
            notes.append(f"{label}: duplicate grade_id (a copied cell): one copy is graded, the other is a plain cell")
        elif cell.get("cell_type") != rel[gid][0]:
            notes.append(f"{label}: cell type changed to {cell.get('cell_type')}: treated as a plain cell")
        else:
            seen.add(gid)
            if meta != rel[gid][1]:
                what = "schema_version" if meta.get("schema_version") != 3 else "metadata"
                notes.append(f"{label}: nbgrader {what} edited: restored")
    return notes


def _keep(cells: list, rel: dict[str, tuple[str, dict]], order: list[str]) -> dict[str, int]:
    """For each grade_id, the index of the cell that keeps its metadata: of several copies, the first one after the
    cell that precedes it in the released notebook (a copy pasted above its answer would run too early)."""
    where: dict[str, list[int]] = {}
    for i, cell in enumerate(cells):
        meta = cell.get("metadata", {}).get("nbgrader") if isinstance(cell.get("metadata"), dict) else None
        gid = meta.get("grade_id") if isinstance(meta, dict) else None
        if isinstance(gid, str) and gid in rel and cell.get("cell_type") == rel[gid][0]:
            where.setdefault(gid, []).append(i)
    keep = {}
    for gid, idxs in where.items():
        pos = order.index(gid) if gid in order else 0
        anchor = next((where[g][0] for g in reversed(order[:pos]) if g in where and len(where[g]) == 1), -1)
        after = [i for i in idxs if i > anchor]
        keep[gid] = after[0] if after else idxs[-1]
    return keep


def repair(nb, rel: dict[str, tuple[str, dict]], order: list[str] | None = None) -> list[str]:
    """Repair an nbformat NotebookNode in place (see the module docstring); returns what was done."""
    notes = _problems(nb, rel)
    good = [c for c in nb.get("cells", []) if isinstance(c, dict)]
    keep = _keep(good, rel, order or list(rel))
    cells, seen = [], set()
    for index, cell in enumerate(good):
        if not isinstance(cell, dict):
            continue
        if cell.get("cell_type") not in CELL_TYPES:
            cell["cell_type"] = "raw"
            for k in ("outputs", "execution_count"):
                cell.pop(k, None)
        src = cell.get("source", "")
        if isinstance(src, list) and all(isinstance(s, str) for s in src):
            cell["source"] = "".join(src)
        elif not isinstance(src, str):
            cell["source"] = ""
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = nbformat.NotebookNode()
        if cell.get("cell_type") == "code":
            if not isinstance(cell.get("outputs"), list):
                cell["outputs"] = []
            cell.setdefault("execution_count", None)
        md = cell["metadata"]
        if "nbgrader" in md:
            meta = md["nbgrader"]
            gid = meta.get("grade_id") if isinstance(meta, dict) else None
            if isinstance(gid, str) and gid in rel and keep.get(gid) == index and gid not in seen:
                seen.add(gid)
                md["nbgrader"] = nbformat.from_dict(copy.deepcopy(rel[gid][1]))
            else:
                del md["nbgrader"]
        cells.append(cell)
    nb["cells"] = cells
    return notes


class RepairSubmission(NbGraderPreprocessor):
    """First sanitize preprocessor: nbgrader metadata as released (see the module docstring)."""

    def preprocess(self, nb, resources):
        info = resources.get("nbgrader", {})
        rel = _released_meta(released(info.get("assignment", ""), info.get("notebook", "")))
        for note in repair(nb, rel):
            self.log.warning("RepairSubmission %s/%s: %s", info.get("student"), info.get("notebook"), note)
        resources.setdefault("course_grading", {})
        return nb, resources


# ------------------------------------------------------------------------------------------------ names
def bad_name(name: str) -> str | None:
    """Why a student id (a folder name) cannot be graded safely, or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if not name or name.startswith(".") or len(name) > 100:
        return "is empty, hidden or too long"
    if any(ord(ch) < 32 or ord(ch) == 127 or 0x80 <= ord(ch) < 0xA0 or ch in "\u2028\u2029" for ch in name):
        return "contains control characters"
    if any(ch in name for ch in "/\\+*?[],"):
        return "contains one of / \\ + * ? [ ] ,"
    if name.startswith("-"):
        return "starts with '-' (a command would read it as an option)"
    if not all(ch.isalnum() or ch in "._@-" for ch in name):
        return "is not a plain name (letters, digits and . _ @ - only)"
    return None


def escape(text: str) -> str:
    """Printable on any terminal: control characters, line breaks and undecodable bytes as escapes."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    out = []
    for ch in text:
        o = ord(ch)
        if o < 32 or o == 127 or 0x80 <= o < 0xA0 or ch in "\u2028\u2029":
            out.append(f"\\x{o:02x}" if o < 256 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)
