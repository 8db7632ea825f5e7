"""A term's cycle through nbgrader's exchange, exactly as instructors.md describes it.

The instructor runs only ``python -m course_tools ...`` (a fresh ``$COURSE_DIR`` and ``$NBGRADER_EXCHANGE``,
no ``generate``); two students, each with their own home folder, ``JUPYTERHUB_USER`` and the student
``nbgrader_config.py`` copied from instructors.md (section "Students: configuration and identity"), run
nbgrader's own ``fetch_assignment``, ``submit`` and ``fetch_feedback``. alice submits the solution, bob the
untouched student version.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grading_helpers as H  # noqa: E402

sys.path.insert(0, H.REPO)
from course_tools.leaks import find_leaks, leak_patterns  # noqa: E402

pytestmark = [pytest.mark.grading, pytest.mark.slow]

A = "ch01_probability"
NB = f"{A}.ipynb"
NBGRADER = os.path.join(os.path.dirname(sys.executable), "nbgrader")
STUDENTS = ("alice", "bob")


def student_config_from_instructors_md() -> str:
    text = open(os.path.join(H.REPO, "instructors.md"), encoding="utf-8").read()
    section = text.split("## Students: configuration and identity", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "instructors.md should show exactly one student nbgrader_config.py"
    return blocks[0]


def make_student(root: str, name: str, exchange: str) -> dict:
    """A student's home folder with the documented config in ~/.jupyter, and the environment of their server."""
    home = os.path.join(root, "home", name)
    os.makedirs(os.path.join(home, ".jupyter"))
    with open(os.path.join(home, ".jupyter", "nbgrader_config.py"), "w", encoding="utf-8") as fh:
        fh.write(student_config_from_instructors_md())
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTER", "NBGRADER", "COURSE_")) and k not in ("PYTHONPATH", "HOME")
    }
    env.update(HOME=home, JUPYTERHUB_USER=name, NBGRADER_EXCHANGE=exchange)
    return env


def student(env: dict, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [NBGRADER, *args], cwd=env["HOME"], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, f"nbgrader {' '.join(args)} as {env['JUPYTERHUB_USER']}:\n{res.stderr[-3000:]}"
    return res


def instructor(work: str, *args: str) -> subprocess.CompletedProcess:
    res = H.cli(work, *args)
    assert res.returncode == 0, f"course_tools {' '.join(args)}:\n{res.stdout}\n{res.stderr[-3000:]}"
    return res


def test_term_cycle_through_the_exchange(tmp_path, monkeypatch):
    work = str(tmp_path / "course")  # $COURSE_DIR: empty, as at the start of a term
    exchange = str(tmp_path / "exchange")
    monkeypatch.setenv("NBGRADER_EXCHANGE", exchange)  # H.cli passes the environment on
    monkeypatch.delenv("NBGRADER_DB_URL", raising=False)
    lay = H.layout(A, NB)

    # 3. release
    res = instructor(work, "release", A)
    outbound = os.path.join(exchange, "dgm-flows", "outbound", A)
    assert outbound in res.stdout, res.stdout
    assert "registered in the gradebook" in res.stdout, res.stdout  # a new term: no `generate` run here
    assert H.load(os.path.join(outbound, NB)) == H.student_version(A, NB)

    # 4. students fetch, work, submit
    envs = {s: make_student(str(tmp_path), s, exchange) for s in STUDENTS}
    for env in envs.values():
        res = student(env, "fetch_assignment", A)
        assert "Fetched as: dgm-flows " + A in res.stderr, res.stderr
    fetched = {s: os.path.join(envs[s]["HOME"], "dgm-flows", A, NB) for s in STUDENTS}
    assert H.load(fetched["bob"]) == H.student_version(A, NB)

    nb = H.load(fetched["alice"])
    filled = 0
    for cell in nb["cells"]:
        gid = H.nbg(cell).get("grade_id")
        if gid in lay.solution_src:
            cell["source"] = lay.solution_src[gid]
            filled += 1
    assert filled == len(lay.answers)
    with open(fetched["alice"], "w", encoding="utf-8") as fh:
        json.dump(nb, fh, indent=1)

    for env in envs.values():
        res = student(env, "submit", A)
        assert "Submitted as: dgm-flows " + A in res.stderr, res.stderr
    inbound = os.listdir(os.path.join(exchange, "dgm-flows", "inbound"))
    assert sorted(n.split("+")[0] for n in inbound) == sorted(STUDENTS)  # named by JUPYTERHUB_USER

    # junk that students (or accidents) can put into inbound/: collect skips it with a message
    inbound_dir = os.path.join(exchange, "dgm-flows", "inbound")
    with open(os.path.join(inbound_dir, f"junk+{A}+garbage"), "w") as fh:
        fh.write("not a submission")
    os.makedirs(os.path.join(inbound_dir, f"mallory+{A}+not-a-time+x"))
    os.makedirs(os.path.join(inbound_dir, f"eve+{A}+2020-01-01 00:00:00.000000 UTC+y"))
    eve = os.path.join(inbound_dir, f"eve+{A}+2020-01-01 00:00:00.000000 UTC+y")
    os.symlink(os.path.join(H.REPO, "solutions"), os.path.join(eve, "link"))

    # 5. collect
    res = instructor(work, "collect", A)
    assert res.stdout.count("SKIPPED:") == 3, res.stdout
    assert not os.path.exists(os.path.join(work, "submitted", "mallory")) and not os.path.exists(
        os.path.join(work, "submitted", "eve")
    )
    for s in STUDENTS:
        assert re.search(rf"^collected +{s}/{A}$", res.stdout, re.M), res.stdout
        # the tests run every "student" as the same Unix user: nbgrader's owner check says so, as on a
        # Docker hub where every server is jovyan
        assert f"NOTE: {s}'s submission belongs to the Unix user" in res.stdout, res.stdout
        assert os.path.exists(os.path.join(work, "submitted", s, A, NB))
    assert H.load(os.path.join(work, "submitted", "alice", A, NB)) == nb

    # 6. autograde (the assignment was registered in the fresh gradebook by `release`)
    res = instructor(work, "autograde", A)
    out = res.stdout
    assert "2 submission(s)" in out and "ERROR" not in out and "CHECK" not in out, out + res.stderr[-3000:]
    assert re.search(rf"OK +alice: {lay.total:g}/{lay.total:g} autograded", out), out
    assert re.search(rf"OK +bob: 0/{lay.total:g} autograded", out), out
    assert "extra files" not in out, out  # nbgrader's own timestamp.txt / submission_secret.txt
    scores = H.code_scores(H.db_url_for(work), A)
    assert scores == {"alice": pytest.approx(lay.total), "bob": 0}

    # 8. feedback: generated, released, fetched by each student
    res = instructor(work, "feedback", A)
    for s in STUDENTS:
        assert f"feedback {s}/{A}: released" in res.stdout, res.stdout
    patterns = [p for p in leak_patterns(solutions=False) if p != "hidden test:"]
    for s, expected in (("alice", lay.total), ("bob", 0.0)):
        student(envs[s], "fetch_feedback", A)
        html_files = glob.glob(os.path.join(envs[s]["HOME"], "dgm-flows", A, "feedback", "*", "*.html"))
        assert [os.path.basename(f) for f in html_files] == [f"{A}.html"], html_files
        text = open(html_files[0], encoding="utf-8").read()
        # nbgrader's header: total score out of the maximum (the written answer is still ungraded)
        total = re.search(r"Score: ([0-9.]+) / ([0-9.]+)", text)
        assert total and float(total.group(1)) == pytest.approx(expected), (s, total and total.group(0))
        assert float(total.group(2)) > lay.total
        assert find_leaks(html_files, patterns) == [], s
        # the grader's verdicts, nothing else of the grading kernel
        assert ("[FAIL]" in text) == (s == "bob") and "[ok]" in text or s == "bob", s
    # each student got their own feedback, not the other's
    assert not glob.glob(os.path.join(envs["bob"]["HOME"], "**", "*alice*"), recursive=True)

    # 9. export
    res = instructor(work, "export")
    csv_path = os.path.join(work, "grades.csv")
    assert csv_path in res.stdout
    rows = [r for r in csv.DictReader(open(csv_path, encoding="utf-8")) if r["assignment"] == A]
    assert {r["student_id"]: float(r["score"]) for r in rows} == {
        "alice": pytest.approx(lay.total),
        "bob": 0.0,
    }
