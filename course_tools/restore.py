"""Put back test and read-only cells that a student deleted, before nbgrader restores their contents.

nbgrader's OverwriteCells restores the source of test/locked cells that are still in the submission, but a
deleted test cell simply scores 0.  :class:`RestoreDeletedCells` runs in the sanitize step, just before
OverwriteCells: every locked or test cell of the released notebook (``assignments/<assignment>/``) that is
missing from the submission is re-inserted after the nearest earlier nbgrader cell that is still there.
OverwriteCells then fills in the instructor's version (hidden tests included) from the gradebook, so the
deleted cell is graded exactly like the original.
"""

from __future__ import annotations

import copy
import os

import nbformat
from nbgrader import utils
from nbgrader.preprocessors import NbGraderPreprocessor

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RestoreDeletedCells(NbGraderPreprocessor):
    def preprocess(self, nb, resources):
        info = resources.get("nbgrader", {})
        path = os.path.join(
            REPO_ROOT, "assignments", info.get("assignment", ""), info.get("notebook", "") + ".ipynb"
        )
        if not os.path.exists(path):
            self.log.warning(
                "RestoreDeletedCells: no released notebook at %s; deleted cells are not restored", path
            )
            return nb, resources
        released = nbformat.read(path, as_version=4)
        present = {
            c.metadata.get("nbgrader", {}).get("grade_id")
            for c in nb.cells
            if utils.is_grade(c) or utils.is_solution(c) or utils.is_locked(c)
        }
        ids = {c.get("id") for c in nb.cells}
        previous = None  # grade_id of the last released nbgrader cell seen
        for cell in released.cells:
            meta = cell.metadata.get("nbgrader", {})
            gid = meta.get("grade_id")
            if not gid:
                continue
            wanted = (utils.is_grade(cell) or utils.is_locked(cell)) and not utils.is_solution(cell)
            if wanted and gid not in present:
                new = copy.deepcopy(cell)
                if new.get("id") in ids:
                    new["id"] = f"restored-{gid}"
                pos = 0
                if previous is not None:
                    for i, c in enumerate(nb.cells):
                        if c.metadata.get("nbgrader", {}).get("grade_id") == previous:
                            pos = i + 1
                nb.cells.insert(pos, new)
                present.add(gid)
                self.log.warning("Restored deleted cell '%s' of %s", gid, info.get("notebook"))
            previous = gid
        return nb, resources
