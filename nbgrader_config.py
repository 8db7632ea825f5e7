"""nbgrader configuration of the course (read by every `nbgrader ...` run from the repository root).

Layout (see instructors.md):
  solutions/<assignment>/      instructor version (source), committed
  assignments/<assignment>/    student version (nbgrader "release"), committed, included in the book
  $COURSE_DIR (default grading/, gitignored): submitted/ autograded/ feedback/ gradebook.db exchange/
Environment variables:
  COURSE_DIR            course working directory (outside the repository on a hub, e.g. /srv/course)
  NBGRADER_DB_URL       any SQLAlchemy URL, e.g. postgresql+psycopg2://grader@db.example/dgm
                        (SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3, not installed here);
                        default: SQLite in COURSE_DIR
  NBGRADER_EXCHANGE     exchange root (default: $COURSE_DIR/exchange; on a hub e.g. /srv/nbgrader/exchange)
  COURSE_CELL_TIMEOUT   seconds per cell when autograding (default 30)
"""

import os
import sys

c = get_config()  # noqa: F821  (provided by nbgrader)

REPO = os.path.dirname(os.path.abspath(__file__))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # course_tools must be importable by nbgrader itself

WORK = os.path.abspath(os.environ.get("COURSE_DIR") or os.path.join(REPO, "grading"))

c.CourseDirectory.course_id = "dgm-flows"
c.CourseDirectory.root = REPO
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"
c.CourseDirectory.submitted_directory = os.path.join(WORK, "submitted")
c.CourseDirectory.autograded_directory = os.path.join(WORK, "autograded")
c.CourseDirectory.feedback_directory = os.path.join(WORK, "feedback")
c.CourseDirectory.solution_directory = os.path.join(WORK, "release_solution")
c.CourseDirectory.db_url = os.environ.get("NBGRADER_DB_URL") or "sqlite:///" + os.path.join(
    WORK, "gradebook.db"
)
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "README.md", ".*", "hidden_checks.py"]
c.CourseDirectory.max_file_size = 10_000  # kB; larger extra files are not copied into autograded/

c.Exchange.root = os.environ.get("NBGRADER_EXCHANGE") or os.path.join(WORK, "exchange")
c.Exchange.path_includes_course = True

# Student versions: keep cell ids stable, do not execute, no outputs.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
c.GenerateAssignment.create_assignment = True

# Execution when autograding: explicit kernel, bounded time and output, sandboxed kernel
# (course_tools.sandbox).
c.Execute.kernel_name = "python3"
c.Execute.timeout = int(os.environ.get("COURSE_CELL_TIMEOUT", "30"))
c.Execute.startup_timeout = 60
c.Execute.interrupt_on_timeout = True
c.Execute.iopub_timeout = 10
c.Execute.execute_retries = 0
c.Execute.shutdown_kernel = "immediate"  # the kernel's scratch folder is thrown away anyway; saves ~2.5 s
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 40

from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties,
    CheckCellMetadata,
    ClearOutput,
    DeduplicateIds,
    IgnorePattern,
    LimitOutput,
    OverwriteCells,
    OverwriteKernelspec,
    SaveAutoGrades,
)

from course_tools.restore import RestoreDeletedCells  # noqa: E402
from course_tools.sandbox import SandboxedExecute  # noqa: E402

c.Autograde.sanitize_preprocessors = [
    ClearOutput,
    DeduplicateIds,
    OverwriteKernelspec,
    RestoreDeletedCells,  # deleted test/locked cells come back (then OverwriteCells restores their source)
    OverwriteCells,
    CheckCellMetadata,
]

c.Autograde.autograde_preprocessors = [
    SandboxedExecute,
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]

# Feedback: hidden tests are NOT shown; see instructors.md ("What the feedback shows").
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402

from course_tools.feedback import HideHiddenTests  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
