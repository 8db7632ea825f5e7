"""The student repository: complete enough to learn from, and without anything that grades (issue: hub)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from course_tools.publish import publish_student, secret_patterns

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def student_repo(tmp_path_factory):
    dest = tmp_path_factory.mktemp("student") / "repo"
    files = publish_student(dest)
    return dest, files


def _text_files(root: Path):
    for p in root.rglob("*"):
        if p.is_file() and ".git" not in p.parts:
            yield p, p.read_text(encoding="utf-8", errors="replace")


def test_student_repo_has_what_students_need(student_repo):
    dest, _ = student_repo
    for rel in ["_config.yml", "_toc.yml", "intro.md", "students.md", "flowlib/__init__.py", "course_tools/check.py",
                "requirements/lock.txt", "environment.yml", "scripts/setup_env.sh", "README.md"]:
        assert (dest / rel).is_file(), f"the student repository lacks {rel}"
    solutions = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())
    for a in solutions:
        assert (dest / "assignments" / a / f"{a}.ipynb").is_file(), f"student version of {a} missing"
    lectures = subprocess.run(["git", "ls-files", "chapters"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert lectures and all((dest / p).is_file() for p in lectures), "a lecture file is missing"
    log = subprocess.run(["git", "log", "--oneline"], cwd=dest, capture_output=True, text=True, check=True).stdout
    assert len(log.strip().splitlines()) == 1, "the student repository should be one fresh commit (no course history)"


def test_student_repo_has_nothing_that_grades(student_repo):
    dest, files = student_repo
    assert not (dest / "solutions").exists() and not (dest / "tests").exists()
    assert not list(dest.rglob("hidden_checks.py")), "a hidden_checks.py was published"
    assert not any("solutions/" in f for f in files)
    # Independently of course_tools.leaks: every distinctive line of every hidden-check module and every line of
    # every solution region (those not also in flowlib, which students read anyway) must be absent.
    public = list((ROOT / "flowlib").rglob("*.py")) + list((ROOT / "course_tools" / "checks").rglob("*.py"))
    library = "\n".join(p.read_text() for p in public)
    secrets = set()
    for mod in (ROOT / "solutions").glob("*/hidden_checks.py"):
        for line in mod.read_text().splitlines():
            s = line.strip()
            if len(s) >= 24 and not s.startswith(("#", "import ", "from ", '"""')) and s not in library \
                    and not re.match(r"^(for|while) [^=]*:$", s):  # a bare loop header reveals nothing
                secrets.add(s)
    for nb in (ROOT / "solutions").glob("*/*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            src = "".join(cell["source"])
            for region in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", src, re.S):
                lines = {ln.strip() for ln in region.splitlines()}
                secrets |= {ln for ln in lines if len(ln) >= 24 and ln not in library
                            and not re.match(r"^(for|while) [^=]*:$", ln)}
    assert len(secrets) > 20, "found too few secret lines to make this test meaningful"
    hits = [(p.relative_to(dest), s[:60]) for p, text in _text_files(dest) for s in secrets if s in text]
    assert not hits, f"solution or hidden-check lines in the student repository: {hits[:10]}"


def test_a_planted_leak_stops_the_publication(tmp_path):
    fake = tmp_path / "course"
    (fake / "flowlib").mkdir(parents=True)
    (fake / "flowlib" / "__init__.py").write_text("")
    (fake / "chapters").mkdir()
    secret = next(p for p in secret_patterns() if len(p) > 30)
    (fake / "chapters" / "leaky.md").write_text(f"# A lecture\n\n    {secret}\n")
    subprocess.run(["git", "init", "-q"], cwd=fake, check=True)
    subprocess.run(["git", "add", "-A"], cwd=fake, check=True)
    with pytest.raises(RuntimeError, match="nothing was written"):
        publish_student(tmp_path / "out", repo=fake)
    assert not (tmp_path / "out").exists()


def test_publication_refuses_a_folder_inside_the_course_or_a_non_empty_one(tmp_path):
    with pytest.raises(ValueError):
        publish_student(ROOT / "student-copy")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        publish_student(tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
