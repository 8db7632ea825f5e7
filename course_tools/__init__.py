"""Course tooling: the student-side `check`, the instructor CLI (`python -m course_tools`),
the grading sandbox."""

from course_tools.check import check

__all__ = ["check"]
