"""Autograde N generated submissions of one assignment and report where the time goes.

    .venv/bin/python benchmarks/autograde.py [--n 50] [--assignment ch01_probability] [--parallel]

Sequential run (SQLite gradebook, one nbgrader process, one submission at a time, as nbgrader does it):
nbgrader's DEBUG log is time-stamped line by line as it arrives and split per submission into
  sanitize      reading the submission, restoring test cells (before the kernel starts)
  kernel start  launching the sandboxed kernel until the first cell is sent
  setup cell    the notebook's first code cell (imports torch)
  tests         every other cell (answers + visible and hidden tests)
  shutdown+save kernel shutdown, writing the autograded notebook, saving grades
With --parallel it also starts a throwaway PostgreSQL server and grades the same submissions with
`python -m course_tools autograde --jobs 2` (two nbgrader processes on disjoint students).
Prints a Markdown table to paste into benchmarks/RESULTS_grading.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)
import grading_helpers as H  # noqa: E402


def make_submissions(work: str, assignment: str, n: int) -> None:
    kinds = H.benign_cases(assignment)
    for i in range(n):
        case = kinds[i % len(kinds)]
        H.write_submission(work, assignment, H.Case(f"s{i:03d}", case.description, case.files, case.expected))


def env_for(work: str, db_url: str | None = None) -> dict:
    env = dict(os.environ, COURSE_DIR=work, PYTHONPATH=REPO)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    if db_url:
        env["NBGRADER_DB_URL"] = db_url
    return env


def sequential(work: str, assignment: str) -> tuple[float, list[dict]]:
    cmd = [sys.executable, "-m", "nbgrader", "autograde", assignment, "--force", "--log-level=DEBUG"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env_for(work),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    events = []
    for line in proc.stdout:
        events.append((time.perf_counter() - t0, line.rstrip("\n")))
    proc.wait()
    wall = time.perf_counter() - t0
    per, cur = [], None
    for t, line in events:
        if "Creating/updating student with ID" in line:
            cur = {"start": t, "sanitize_start": None, "exec": [], "student": line.split("'")[1]}
            per.append(cur)
        elif cur is None:
            continue
        elif "Sanitizing" in line:
            cur["sanitize_start"] = t
        elif "] Autograding " in line:
            cur["autograde_start"] = t
        elif "Executing cell:" in line:
            cur["exec"].append(t)
        elif "Setting destination file permissions" in line:
            cur["end"] = t
        elif "'execution_state': 'idle'" in line:
            cur["last_idle"] = t
    first_start = per[0]["start"] if per else wall
    rows = []
    for p in per:
        if "end" not in p or not p["exec"]:
            continue
        rows.append(
            {
                "sanitize": p["autograde_start"] - p["start"],
                "kernel start": p["exec"][0] - p["autograde_start"],
                "setup cell": (p["exec"][1] if len(p["exec"]) > 1 else p["last_idle"]) - p["exec"][0],
                "tests": p["last_idle"] - (p["exec"][1] if len(p["exec"]) > 1 else p["exec"][0]),
                "shutdown+save": p["end"] - p["last_idle"],
                "total": p["end"] - p["start"],
            }
        )
    return wall, rows, first_start


def register(work: str, assignment: str, env: dict) -> None:
    """Generate the assignment into a scratch folder: this registers it in the work dir's gradebook."""
    release = os.path.join(work, "release_check")
    subprocess.run(
        [sys.executable, "-m", "course_tools", "generate", assignment, "--release-dir", release],
        cwd=REPO, env=env, check=True, capture_output=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--assignment", default=H.assignments()[0])
    ap.add_argument("--parallel", action="store_true")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench-grading-")
    register(work, args.assignment, env_for(work))
    make_submissions(work, args.assignment, args.n)

    wall, rows, startup = sequential(work, args.assignment)
    print(f"## Autograde {args.n} submissions of {args.assignment} ({os.cpu_count()} cores)\n")
    print(
        f"Sequential (one nbgrader process, SQLite): **{wall:.1f} s wall, "
        f"{wall / args.n:.2f} s per submission** "
        f"({startup:.1f} s of it is nbgrader's own start-up, once per batch).\n"
    )
    print("| phase (per submission) | mean s | median s | share |")
    print("|---|---|---|---|")
    keys = ["sanitize", "kernel start", "setup cell", "tests", "shutdown+save", "total"]
    tot = statistics.mean(r["total"] for r in rows)
    for k in keys:
        vals = [r[k] for r in rows]
        print(
            f"| {k} | {statistics.mean(vals):.2f} | {statistics.median(vals):.2f} | "
            f"{100 * statistics.mean(vals) / tot:.0f}% |"
        )
    print(f"\n({len(rows)} submissions parsed from the log.)\n")

    if args.parallel:
        pg = H.PostgresServer().start()
        try:
            pwork = tempfile.mkdtemp(prefix="bench-grading-pg-")
            register(pwork, args.assignment, env_for(pwork, pg.url))
            make_submissions(pwork, args.assignment, args.n)
            for jobs in (1, 2):
                t0 = time.perf_counter()
                res = subprocess.run(
                    [sys.executable, "-m", "course_tools", "autograde", args.assignment, "--jobs", str(jobs)],
                    cwd=REPO,
                    env=env_for(pwork, pg.url),
                    capture_output=True,
                    text=True,
                )
                dt = time.perf_counter() - t0
                ok = len(re.findall(r"^\s+OK ", res.stdout, re.M))
                print(
                    f"PostgreSQL, `autograde --jobs {jobs}`: **{dt:.1f} s wall, {dt / args.n:.2f} s per "
                    f"submission**, {ok}/{args.n} reported OK."
                )
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
