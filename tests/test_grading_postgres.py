"""The grading pipeline against a real PostgreSQL gradebook, as a course with several graders would run it.

The server is started on 127.0.0.1 in a temp dir (scripts/ensure_postgres.sh finds or installs the binaries)
and stopped afterwards.  Submissions are graded by two nbgrader processes at once (`autograde --jobs 2`),
which is safe on PostgreSQL (and refused on SQLite).
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grading_helpers as H  # noqa: E402

pytestmark = [pytest.mark.grading, pytest.mark.slow]
ASSIGNMENT = H.assignments()[0]


@pytest.fixture(scope="module")
def postgres():
    try:
        server = H.PostgresServer().start()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"could not start PostgreSQL: {exc}")
    yield server
    server.stop()


def test_pipeline_on_postgresql_with_two_parallel_graders(postgres, tmp_path):
    work = str(tmp_path / "course")
    url = postgres.url
    H.cli(work, "generate", ASSIGNMENT, "--release-dir", str(tmp_path / "release"), db_url=url, check=True)
    assert not os.path.exists(os.path.join(work, "gradebook.db")), "SQLite used instead of PostgreSQL"

    benign = H.benign_cases(ASSIGNMENT)
    hostile = {c.student: c for c in H.hostile_cases(ASSIGNMENT, work, gradebook_port=postgres.port)}
    cases = benign + [hostile["exfil"], hostile["exits"], hostile["corrupt"]]
    for c in cases:
        H.write_submission(work, ASSIGNMENT, c)
    before = H.hash_tree(os.path.join(work, "submitted"))

    res = H.cli(work, "autograde", ASSIGNMENT, "--jobs", "2", db_url=url)
    out = res.stdout
    assert out.count(f"== {ASSIGNMENT}:") == 2, out + res.stderr[-3000:]  # two shards, two processes
    scores = H.code_scores(url, ASSIGNMENT)
    for c in cases:
        assert scores.get(c.student) == pytest.approx(c.expected), f"{c.student} ({c.description}):\n{out}"
    assert H.hash_tree(os.path.join(work, "submitted")) == before

    report = H.sandbox_report(work, "exfil", ASSIGNMENT)
    for key in H.MUST_BE_DENIED:
        assert report[key].startswith("denied"), f"{key}: {report[key]}"

    # several graders: a second instructor re-grades one student while the rest stay untouched
    rows = H.grade_rows(url, ASSIGNMENT, [c.student for c in benign if c.student != "partial"])
    again = H.cli(work, "autograde", ASSIGNMENT, "--student", "partial", db_url=url)
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert H.grade_rows(url, ASSIGNMENT, [c.student for c in benign if c.student != "partial"]) == rows

    res = H.cli(work, "export", "--to", str(tmp_path / "grades.csv"), db_url=url)
    assert res.returncode == 0 and (tmp_path / "grades.csv").read_text().count(ASSIGNMENT) == len(cases)


def test_parallel_grading_is_refused_on_sqlite(tmp_path):
    res = H.cli(str(tmp_path / "course"), "autograde", ASSIGNMENT, "--jobs", "2")
    assert res.returncode != 0 and "database is locked" in (res.stdout + res.stderr)
