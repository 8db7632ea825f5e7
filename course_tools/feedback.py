"""Feedback policy of the course: students see their score per cell, the visible tests and the message of the
check that failed, but never the code of hidden tests.

nbgrader's default feedback shows the full autograded notebook, hidden tests included (and a failing hidden
test's traceback quotes its source).  :class:`HideHiddenTests` removes the ``### BEGIN HIDDEN TESTS`` ...
``### END HIDDEN TESTS`` region from every test cell and reduces error tracebacks in test cells to their last
line (``AssertionError: <the author's message>``), so hidden tests can be reused next term.
"""

from __future__ import annotations

from nbgrader import utils
from nbgrader.preprocessors import ClearHiddenTests, NbGraderPreprocessor


class HideHiddenTests(NbGraderPreprocessor):
    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell):
            hidden = ClearHiddenTests()._remove_hidden_test_region(cell)
            if hidden:
                cell.source = cell.source.rstrip("\n") + "\n# (hidden tests run here when grading)"
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"]
        return cell, resources
