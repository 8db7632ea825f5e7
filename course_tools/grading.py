"""The hidden checks (``course_tools.hidden``) wired into nbgrader's autograde, as two preprocessors.

``nbgrader_config.py`` puts them around the (sandboxed) Execute preprocessor::

    c.Autograde.autograde_preprocessors = [
        InstrumentHiddenChecks,   # grader: load solutions/<a>/hidden_checks.py, rewrite test cells into probes
        SandboxedExecute,         # the student's kernel, in the sandbox: runs answers and probes
        JudgeHiddenChecks,        # grader: decide every test cell from the probes' plain-data results
        ...,
        SaveAutoGrades,           # nbgrader scores each test cell from the verdict alone
        ...,
        WriteGradingRecord,       # what happened, for the instructor's report
    ]

Both run in the nbgrader process, which never executes student code (the kernel is a separate, sandboxed
process that cannot reach it).  The checks are imported from ``solutions/`` of the repository the grader runs
from; ``hidden_checks.py`` is never released (``CourseDirectory.ignore``) nor copied next to a submission.

After judging, each test cell gets back its original source (the visible ``check(...)`` line), so the autograded
notebook, formgrader and the feedback show what the student saw, and its outputs are only the verdict.
"""

from __future__ import annotations

import copy
import os

from nbgrader.preprocessors import NbGraderPreprocessor

# course_tools.hidden (and with it torch, ~1.5 s of CPU) is imported by the two preprocessors when they run, not
# here: nbgrader_config.py imports this module in every nbgrader process (generate, release, collect, feedback,
# export), and only autograde needs the checks.

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "course_hidden"


def source_dir(assignment: str) -> str:
    return os.path.join(REPO_ROOT, "solutions", assignment)


class InstrumentHiddenChecks(NbGraderPreprocessor):
    """Before execution: every graded code cell with registered checks becomes a probe (plain data only)."""

    def preprocess(self, nb, resources):
        from course_tools import hidden

        resources["course_original_notebook"] = copy.deepcopy(nb)  # the kernel's private copy is this one
        assignment = resources.get("nbgrader", {}).get("assignment", "")
        checks = hidden.load_checks(source_dir(assignment))
        rec = resources.setdefault("course_grading", {})
        if checks is None:
            rec["hidden_checks"] = "none (legacy in-kernel tests)"
            self.log.warning("%s has no hidden_checks.py: test cells run in the student's kernel", assignment)
            return nb, resources
        nonce = hidden.new_nonce()
        originals = {
            gid: (cell.source, copy.deepcopy(cell.get("metadata", {})))
            for _, cell, gid in hidden.graded_code_cells(nb)
        }
        recorded = hidden.instrument(nb, checks, nonce)
        resources[KEY] = {"checks": checks, "nonce": nonce, "recorded": recorded, "originals": originals}
        rec["hidden_checks"] = "outside the kernel"
        return nb, resources


class JudgeHiddenChecks(NbGraderPreprocessor):
    """After execution: verdicts from the probes' results, which replace every output of each test cell."""

    def preprocess(self, nb, resources):
        state = resources.pop(KEY, None)
        if state is None:
            return nb, resources
        from course_tools import hidden

        verdicts = hidden.judge(nb, state["checks"], state["nonce"], state["recorded"])
        hidden.apply_verdicts(nb, verdicts)
        for _, cell, gid in hidden.graded_code_cells(nb):
            if gid in state["originals"]:
                cell.source = state["originals"][gid][0]
        rec = resources.setdefault("course_grading", {})
        rec["verdicts"] = {gid: {"passed": v.passed, "author_error": v.author_error} for gid, v in verdicts.items()}
        malformed = {gid: v.malformed for gid, v in verdicts.items() if v.malformed}
        if malformed:
            rec["malformed"] = malformed
        bad = [gid for gid, v in verdicts.items() if v.author_error]
        if bad:
            rec["author_errors"] = bad
        return nb, resources
