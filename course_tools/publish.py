"""The student repository: everything students need, nothing that grades them.

    python -m course_tools publish-student DIR [--force]

writes a fresh git repository in ``DIR`` (one commit) from the files tracked in this (the course) repository:
the book's sources, the lecture notebooks in ``chapters/``, the student versions in ``assignments/``,
``flowlib/``, the students' part of ``course_tools/`` (``check`` and the visible tests) and the environment files.
It is built from an allow-list, so a new top-level folder stays private until it is added here. Never included:
``solutions/`` (model answers and ``hidden_checks.py``), ``tests/`` (the grading suite and its attack
submissions), the grader's side of ``course_tools/``, benchmarks, CI, any gradebook or exchange.

Before committing, every file is searched for every distinctive line of the solutions and of the hidden checks
(``course_tools.leaks``); one hit aborts the publication and names the file. Push the result to the student
repository that ``_config.yml`` names (``repository.url``), which the book's repository and launch buttons use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from course_tools.leaks import find_leaks, leak_patterns

REPO = Path(__file__).resolve().parents[1]

#: Top-level paths of the course repository that students get (files or whole folders).
INCLUDE = [
    "_config.yml",
    "_toc.yml",
    "_static",
    "_ext",
    "intro.md",
    "students.md",
    "instructors.md",
    "bibliography.md",
    "references.bib",
    "chapters",
    "assignments",
    "flowlib",
    "course_tools/__init__.py",
    "course_tools/check.py",
    "course_tools/checks",
    "pyproject.toml",
    "environment.yml",
    "requirements",
    "package.json",
    "package-lock.json",
    "scripts/setup_env.sh",
    "scripts/build_book.sh",
    ".gitignore",
]
#: Never published, even if an entry above would include it.
EXCLUDE_PARTS = {"solutions", "tests", "grading", ".ci", "benchmarks"}
EXCLUDE_NAMES = {"hidden_checks.py", "gradebook.db"}

STUDENT_README = """# Deep Generative Models, from probability to normalizing flows: student repository

The book (lecture notebooks in `chapters/`), the assignments as you receive them (`assignments/`), and the
`flowlib` library the notebooks import. This repository is generated from the course repository and holds no
solutions and no hidden tests.

```bash
scripts/setup_env.sh            # .venv with the course's pinned packages (CPU-only torch) and MathJax
scripts/build_book.sh           # the HTML book in _build/html
.venv/bin/jupyter lab           # open the notebooks
```

Graded work is fetched and submitted on the course JupyterHub (see the book's page "For students"); the copies
in `assignments/` are for reading and practice. In an assignment, `check("chNN.qK")` runs the visible tests of
a question.
"""


def tracked_files(repo: Path = REPO) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def selected(paths: list[str]) -> list[str]:
    keep = []
    for p in paths:
        parts = Path(p).parts
        if set(parts) & EXCLUDE_PARTS or Path(p).name in EXCLUDE_NAMES:
            continue
        if any(p == inc or p.startswith(inc.rstrip("/") + "/") for inc in INCLUDE):
            keep.append(p)
    return sorted(keep)


def secret_patterns(repo: Path = REPO) -> list[str]:
    """Distinctive lines of the solutions and hidden checks, minus those that are also library code.

    A model answer may legitimately share a line with ``flowlib`` (``L = torch.linalg.cholesky(cov)``), which
    students are meant to read, or with the visible checks that students run; such a line is public already.
    """
    patterns = leak_patterns()
    # flowlib and the visible checks (course_tools/checks) reach every student anyway: on the hub they are the
    # installed course package. A line they share with a model answer is public already; publishing cannot
    # make it more so (the visible checks should not contain answers: that is their authors' rule).
    library = [str(p) for p in (repo / "flowlib").rglob("*.py")] + [
        str(p) for p in (repo / "course_tools" / "checks").rglob("*.py")
    ]
    public = {pattern for _, pattern in find_leaks(library, patterns)}
    return [p for p in patterns if p not in public]


def publish_student(dest: str | os.PathLike, force: bool = False, repo: Path = REPO) -> list[str]:
    """Write the student repository into ``dest``; returns the published paths. Raises on any leak."""
    dest = Path(dest).resolve()
    if dest == repo or repo in dest.parents:
        raise ValueError(f"{dest} is inside the course repository; choose a folder outside it")
    if dest.exists() and any(dest.iterdir()):
        if not force:
            raise FileExistsError(f"{dest} is not empty (use --force to replace its contents)")
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = selected(tracked_files(repo))
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)
    (dest / "README.md").write_text(STUDENT_README, encoding="utf-8")
    leaks = find_leaks([str(p) for p in dest.rglob("*") if p.is_file()], secret_patterns(repo))
    if leaks:
        shutil.rmtree(dest)
        where = "\n".join(f"  {Path(f).relative_to(dest) if str(f).startswith(str(dest)) else f}: {p[:80]}"
                          for f, p in leaks[:20])
        raise RuntimeError(f"solution or hidden-check material would be published; nothing was written:\n{where}")
    env = {**os.environ, "GIT_AUTHOR_NAME": "course", "GIT_AUTHOR_EMAIL": "course@localhost",
           "GIT_COMMITTER_NAME": "course", "GIT_COMMITTER_EMAIL": "course@localhost"}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", f"Student release of the course at {head.stdout.strip() or 'HEAD'}"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env)
    return files + ["README.md"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m course_tools publish-student", description=__doc__.split("\n")[0])
    ap.add_argument("dest", help="folder for the student repository (outside the course repository)")
    ap.add_argument("--force", action="store_true", help="replace the folder's contents")
    ns = ap.parse_args(argv)
    files = publish_student(ns.dest, force=ns.force)
    print(f"student repository written to {Path(ns.dest).resolve()}: {len(files)} files, one commit; "
          "no solution or hidden-check line found in it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
