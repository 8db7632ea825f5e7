"""What the grader records about each graded notebook, for the instructor's report (never for students).

One JSON file per graded notebook, ``$COURSE_DIR/records/<assignment>/<student>/<notebook>.json``, written by
:class:`WriteGradingRecord` (the last autograde preprocessor, after the grades are saved) and, when grading
fails for a reason that is not the student's fault, by the executor itself.  It holds the id of the grading run
(``COURSE_GRADING_RUN``, set by ``python -m course_tools autograde``), so the report can tell a submission
graded now from one that still carries an old grade, plus the limits hit, cell timeouts, kernel deaths,
interrupts the student raised, and the hidden checks' verdicts.

The records live in the course working directory, next to the gradebook: not in ``autograded/`` (which
nbgrader's feedback step reads) and not in the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from nbgrader.preprocessors import NbGraderPreprocessor

from course_tools.sandbox import course_work_dir


def run_id() -> str:
    return os.environ.get("COURSE_GRADING_RUN", "manual")


def _safe(part: str) -> str:
    return part.replace(os.sep, "_") or "_"


def record_path(assignment: str, student: str, notebook: str) -> str:
    return os.path.join(course_work_dir(), "records", _safe(assignment), _safe(student), _safe(notebook) + ".json")


def submission_hash(assignment: str, student: str, notebook: str) -> str | None:
    """sha256 of the submitted notebook: a record is current only while the submission is the same."""
    path = os.path.join(course_work_dir(), "submitted", student, assignment, notebook + ".ipynb")
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def write_record(resources: dict, status: str) -> None:
    info = resources.get("nbgrader", {})
    if not info.get("assignment") or not info.get("student"):
        return
    rec = dict(resources.get("course_grading", {}))
    rec.update(status=status, run=run_id(), time=time.time())
    rec["submission"] = submission_hash(info["assignment"], info["student"], info.get("notebook", ""))
    path = record_path(info["assignment"], info["student"], info.get("notebook", "notebook"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(rec, fh, indent=1, default=str)
    os.replace(tmp, path)


def read_record(assignment: str, student: str, notebook: str) -> dict | None:
    try:
        with open(record_path(assignment, student, notebook), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def clear_record(assignment: str, student: str, notebook: str) -> None:
    try:
        os.remove(record_path(assignment, student, notebook))
    except OSError:
        pass


class WriteGradingRecord(NbGraderPreprocessor):
    """Last autograde preprocessor: the notebook was executed, judged and its grades saved."""

    def preprocess(self, nb, resources):
        write_record(resources, "graded")
        return nb, resources
