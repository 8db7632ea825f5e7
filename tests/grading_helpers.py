"""Helpers for the grading tests and benchmarks: bot submissions (correct, blank, partial, hostile, broken),
running the instructor CLI in an isolated course working directory, reading the gradebook, hashing files.

Everything is derived from ``solutions/<assignment>/`` and the committed student version in
``assignments/<assignment>/``, so a new chapter's assignment is covered without touching this file, provided
it follows the authoring rules in solutions/README.md (answer cells define functions; the test cells after an
answer cell, up to the next answer cell, test that answer).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def assignments() -> list[str]:
    src = os.path.join(REPO, "solutions")
    return sorted(
        d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)) and not d.startswith((".", "_"))
    )


def notebooks(assignment: str) -> list[str]:
    d = os.path.join(REPO, "solutions", assignment)
    return sorted(f for f in os.listdir(d) if f.endswith(".ipynb"))


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def nbg(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def is_answer(cell: dict) -> bool:
    return bool(nbg(cell).get("solution"))


def is_test(cell: dict) -> bool:
    m = nbg(cell)
    return bool(m.get("grade")) and not m.get("solution") and cell["cell_type"] == "code"


def strip_markers(source: str) -> str:
    return "\n".join(
        line for line in source.splitlines() if "BEGIN SOLUTION" not in line and "END SOLUTION" not in line
    )


# --------------------------------------------------------------------------------------------- structure
@dataclass
class Layout:
    """Which test cells test which answer cell, and their points."""

    answers: list[str] = field(default_factory=list)  # code answer cells' grade_ids, in order
    tests_of: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # answer -> [(test id, pts)]
    solution_src: dict[str, str] = field(default_factory=dict)  # answer grade_id -> solution code

    @property
    def total(self) -> float:
        return sum(p for tests in self.tests_of.values() for _, p in tests)

    def points(self, answer: str) -> float:
        return sum(p for _, p in self.tests_of.get(answer, []))


def layout(assignment: str, nb_name: str) -> Layout:
    lay = Layout()
    current = None
    for cell in load(os.path.join(REPO, "solutions", assignment, nb_name))["cells"]:
        if is_answer(cell) and cell["cell_type"] == "code":
            current = nbg(cell)["grade_id"]
            lay.answers.append(current)
            lay.tests_of[current] = []
            lay.solution_src[current] = strip_markers(src(cell))
        elif is_test(cell):
            assert current is not None, f"test cell {nbg(cell)['grade_id']} comes before any answer cell"
            lay.tests_of[current].append((nbg(cell)["grade_id"], float(nbg(cell).get("points", 0))))
    return lay


def function_name(solution_code: str) -> str | None:
    m = re.search(r"^def (\w+)\(", solution_code, re.M)
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------- submissions
def student_version(assignment: str, nb_name: str) -> dict:
    return load(os.path.join(REPO, "assignments", assignment, nb_name))


def with_answers(assignment: str, nb_name: str, answers: dict[str, str]) -> dict:
    """The student version with the given answer cells' sources replaced."""
    nb = copy.deepcopy(student_version(assignment, nb_name))
    for cell in nb["cells"]:
        gid = nbg(cell).get("grade_id")
        if gid in answers:
            cell["source"] = answers[gid]
    return nb


def solved(assignment: str, nb_name: str, override: dict[str, str] | None = None) -> dict:
    lay = layout(assignment, nb_name)
    answers = dict(lay.solution_src)
    answers.update(override or {})
    return with_answers(assignment, nb_name, answers)


def wrong_answer(solution_code: str) -> str:
    """The solution, wrapped so that every floating-point result is off by 0.5 (a plausible wrong answer)."""
    name = function_name(solution_code)
    assert name, "answer cells must define a function"
    return (
        solution_code
        + f"""

_right_{name} = {name}
def {name}(*args, **kwargs):
    import torch as torch_w
    def _shift(o):
        if isinstance(o, torch_w.Tensor) and o.is_floating_point():
            return o + 0.5
        if isinstance(o, tuple):
            return tuple(_shift(e) for e in o)
        return o
    return _shift(_right_{name}(*args, **kwargs))
"""
    )


IGNORE_SIGINT_LOOP = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n\n"

REBIND = """
import builtins, math, numpy, numpy.testing, torch, torch.testing
import flowlib, course_tools, course_tools.check
_yes = lambda *a, **k: True
_none = lambda *a, **k: None
torch.allclose = _yes
torch.equal = _yes
torch.isclose = lambda a, b, *x, **k: torch.ones_like(torch.as_tensor(a), dtype=torch.bool)
torch.testing.assert_close = _none
numpy.allclose = _yes
numpy.testing.assert_allclose = _none
numpy.testing.assert_array_almost_equal = _none
numpy.testing.assert_almost_equal = _none
math.isclose = _yes
check = _none
course_tools.check = _none
course_tools.check.check = _none
course_tools.check.expect = _none
flowlib.Flow.log_prob = lambda self, x: torch.zeros(x.shape[0])
flowlib.Flow.sample = lambda self, n: torch.zeros(n, 1)
"""


def exfiltration_code(
    assignment: str, nb_name: str, me: str, victim: str, work: str, gradebook_port: int | None = None
) -> str:
    """Code that tries to read/write everything it must not, and prints a JSON report (one line)."""
    sol = os.path.join(REPO, "solutions", assignment, nb_name)
    rel_sol = os.path.relpath(sol, os.path.join(work, "autograded", me, assignment))
    other_sub = os.path.join(work, "submitted", victim, assignment, nb_name)
    other_ag = os.path.join(work, "autograded", victim, assignment, nb_name)
    own_sub = os.path.join(work, "submitted", me, assignment, nb_name)
    gradebook = os.path.join(work, "gradebook.db")
    port = gradebook_port or 5432
    secret_words = ("TOKEN", "DB_URL", "PASS", "PG")
    return f"""
import json as _json, os as _os, socket as _socket
_report = {{}}
def _try(name, fn):
    try:
        r = fn()
        _report[name] = "ALLOWED " + repr(r)[:40]
    except BaseException as e:
        _report[name] = "denied " + type(e).__name__
_try("read_solution", lambda: open({sol!r}).read()[:40])
_try("read_solution_relative", lambda: open({rel_sol!r}).read()[:40])
_try("list_solutions", lambda: _os.listdir({os.path.join(REPO, "solutions")!r}))
_try("read_git", lambda: _os.listdir({os.path.join(REPO, ".git")!r}))
_try("read_config", lambda: open({os.path.join(REPO, "nbgrader_config.py")!r}).read()[:40])
_try("read_gradebook", lambda: open({os.path.join(work, "gradebook.db")!r}, "rb").read(16))
_try("write_gradebook", lambda: open({os.path.join(work, "gradebook.db")!r}, "ab").write(b"x"))
_try("list_submitted", lambda: _os.listdir({os.path.join(work, "submitted")!r}))
_try("write_other_submission", lambda: open({other_sub!r}, "w").write("{{}}"))
_try("write_other_autograded", lambda: open({other_ag!r}, "w").write("{{}}"))
_try("write_own_submission", lambda: open({own_sub!r}, "a").write(" "))
_try("write_solutions", lambda: open({sol!r}, "a").write(" "))
# the interpreter may live under a home directory (pyenv): it is the only thing exposed there
_try("home_dir", lambda: [n for n in _os.listdir("/root") if n != ".pyenv"] or 1 / 0)
_try("network_loopback", lambda: _socket.create_connection(("127.0.0.1", 22), timeout=1))
_try("network_gradebook", lambda: _socket.create_connection(("127.0.0.1", {port}), timeout=1))
_try("env_secrets", lambda: [k for k in _os.environ if any(s in k for s in {secret_words!r})] or 1 / 0)
_try("plant_symlink_to_gradebook", lambda: _os.symlink({gradebook!r}, {nb_name!r} + ".tmp"))
_try("overwrite_own_notebook", lambda: open({nb_name!r}, "w").write("garbage"))
print("SANDBOX-REPORT " + _json.dumps(_report))
"""


MUST_BE_DENIED = [
    "read_solution",
    "read_solution_relative",
    "list_solutions",
    "read_git",
    "read_config",
    "read_gradebook",
    "write_gradebook",
    "list_submitted",
    "write_other_submission",
    "write_other_autograded",
    "write_own_submission",
    "write_solutions",
    "home_dir",
    "network_loopback",
    "network_gradebook",
    "env_secrets",
]


@dataclass
class Case:
    student: str
    description: str
    files: dict[str, object]  # relative path -> notebook dict | str | bytes | ("symlink", target)
    expected: float | None  # code points in the gradebook; None = not graded at all (refused)
    message: str = ""  # a substring the instructor must see in the CLI output for this student


def write_submission(work: str, assignment: str, case: Case) -> None:
    folder = os.path.join(work, "submitted", case.student, assignment)
    os.makedirs(folder, exist_ok=True)
    for rel, content in case.files.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(content, tuple) and content[0] == "symlink":
            os.symlink(content[1], path)
        elif isinstance(content, dict):
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(content, fh, indent=1)
        elif isinstance(content, bytes):
            with open(path, "wb") as fh:
                fh.write(content)
        else:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(content)


def benign_cases(assignment: str) -> list[Case]:
    (nb_name,) = notebooks(assignment)[:1]
    lay = layout(assignment, nb_name)
    every_other = {a: lay.solution_src[a] for a in lay.answers[::2]}
    partial = with_answers(assignment, nb_name, every_other)
    cases = [
        Case("good", "the solution", {nb_name: solved(assignment, nb_name)}, lay.total),
        Case("blank", "the untouched student version", {nb_name: student_version(assignment, nb_name)}, 0.0),
        Case(
            "partial",
            "answers 1, 3, ... right, the others left blank",
            {nb_name: partial},
            sum(lay.points(a) for a in lay.answers[::2]),
        ),
    ]
    designed = DESIGNED_PARTIALS.get(assignment)
    if designed:
        override, points = designed
        cases.append(
            Case(
                "designed",
                "the partial answer designed by the author",
                {nb_name: solved(assignment, nb_name, override)},
                points,
            )
        )
    return cases


def hostile_cases(
    assignment: str, work: str, victim: str = "good", gradebook_port: int | None = None
) -> list[Case]:
    (nb_name,) = notebooks(assignment)[:1]
    lay = layout(assignment, nb_name)
    first, last = lay.answers[0], lay.answers[-1]
    sol = lay.solution_src
    total = lay.total

    loop = solved(assignment, nb_name, {first: "while True:\n    pass\n\n" + sol[first]})

    edited = solved(assignment, nb_name, {last: wrong_answer(sol[last])})
    tests = [c for c in edited["cells"] if is_test(c)]
    edited["cells"].remove(tests[0])
    for c in tests[1:]:
        c["source"] = "pass  # the tests were edited away"

    rebind = solved(assignment, nb_name, {a: wrong_answer(sol[a]) for a in lay.answers})
    for c in rebind["cells"]:
        if nbg(c).get("grade_id") == first:
            c["source"] = REBIND + "\n" + src(c)

    exfil = solved(
        assignment,
        nb_name,
        {
            first: sol[first]
            + "\n"
            + exfiltration_code(assignment, nb_name, "exfil", victim, work, gradebook_port)
        },
    )
    flood = solved(
        assignment, nb_name, {first: sol[first] + "\nfor _i in range(200_000):\n    print('flood', _i)\n"}
    )
    exits = solved(assignment, nb_name, {last: "import os\nos._exit(1)\n" + sol[last]})
    # asks for 64 GiB: the kernel's address-space limit turns it into a MemoryError in this cell only
    bomb = solved(assignment, nb_name, {first: "_hog = bytearray(64 * 2**30)\n" + sol[first]})
    good_text = json.dumps(solved(assignment, nb_name), indent=1)
    return [
        Case(
            "loop",
            "infinite loop in the first answer",
            {nb_name: loop},
            total - lay.points(first),
            "timed out",
        ),
        Case(
            "edited",
            "a test cell deleted, the others edited to `pass`, last answer wrong",
            {nb_name: edited},
            total - lay.points(last),
        ),
        Case(
            "rebind",
            "all answers wrong; torch.allclose, numpy.testing, math.isclose, check, flowlib rebound",
            {nb_name: rebind},
            0.0,
        ),
        Case(
            "exfil", "reads solutions/gradebook/.git, writes other students' files", {nb_name: exfil}, total
        ),
        Case("flood", "prints 200 000 lines", {nb_name: flood}, total, "output flood truncated"),
        Case(
            "exits",
            "os._exit(1) in the last answer",
            {nb_name: exits},
            total - lay.points(last),
            "kernel died",
        ),
        Case(
            "memory",
            "allocates 64 GiB in the first answer",
            {nb_name: bomb},
            total - lay.points(first),
        ),
        Case(
            "sigint",
            "infinite loop that ignores the interrupt, in the last answer",
            {nb_name: solved(assignment, nb_name, {last: IGNORE_SIGINT_LOOP + sol[last]})},
            total - lay.points(last),
            "kernel died",
        ),
        Case(
            "corrupt",
            "notebook JSON cut in half",
            {nb_name: good_text[: len(good_text) // 2]},
            0.0,
            "not a valid notebook",
        ),
        Case(
            "missing",
            "no notebook, only a stray file",
            {"notes.txt": "I forgot to upload it"},
            0.0,
            "missing",
        ),
        Case(
            "extra",
            "the solution plus extra files",
            {
                nb_name: solved(assignment, nb_name),
                "data.csv": "a,b\n1,2\n",
                "lib/helper.py": "X = 1\n",
                "blob.bin": os.urandom(4096),
            },
            total,
            "extra files",
        ),
        Case(
            "symlink",
            "a file that is a symbolic link to the solutions",
            {
                nb_name: solved(assignment, nb_name),
                "peek.ipynb": ("symlink", os.path.join(REPO, "solutions", assignment, nb_name)),
            },
            None,
            "REFUSED",
        ),
    ]


# Partial answers designed by the assignment's author: {assignment: ({answer grade_id: code}, code points)}.
DESIGNED_PARTIALS = {
    "ch01_probability": (
        {
            # forgets 0 log 0 = 0: passes q1_basic (1), fails q1_zeros
            "q1_answer": "def entropy(p):\n    return -(p * torch.log(p)).sum(dim=-1)\n",
            # textbook formula without support handling: passes q2_basic (1), nan on zeros in p
            "q2_answer": "def kl_divergence(p, q):\n    return (p * torch.log(p / q)).sum(dim=-1)\n",
            # q3 right (3); q4 forgets the square root: fails q4 (0); q5 right (2)
            "q4_answer": "def mc_estimate(f, d, n, generator):\n"
            "    v = f(torch.randn(n, d, generator=generator, dtype=torch.float64))\n"
            "    return v.mean(), v.std() / n\n",
        },
        7.0,
    ),
    "ch04_classical_models": (
        {
            # sorts the eigenvalues in decreasing order: q1_cov passes (1), q1_values fails
            "q1_answer": "def sample_gaussian_eigen(mean, cov, z):\n"
            "    evals, E = torch.linalg.eigh(cov)\n"
            "    evals, E = evals.flip(0), E.flip(1)\n"
            "    return mean + z @ (E * evals.sqrt()).T\n",
            # log of a sum of exps: q2_basic passes (1), far-away points give -inf
            "q2_answer": "def mixture_log_likelihood(x, weights, means, stds):\n"
            "    u = (x[:, None] - means) / stds\n"
            "    dens = torch.exp(-0.5 * u**2) / (stds * math.sqrt(2 * math.pi))\n"
            "    return torch.log((weights * dens).sum(1))\n",
            # q3..q6 right (3 + 2 + 2 + 1); q7 forgets the mask: q7_basic passes (1), q7_masked fails
            "q7_answer": "def ar_log_likelihood(x, W, b):\n"
            "    a = b + x @ W.T\n"
            "    F = torch.nn.functional\n"
            "    return (x * F.logsigmoid(a) + (1 - x) * F.logsigmoid(-a)).sum(dim=1)\n",
        },
        11.0,
    ),
}


# --------------------------------------------------------------------------------------------- running
def cli(work: str, *args: str, db_url: str | None = None, timeout_s: int = 5, check: bool = False):
    env = dict(os.environ)
    env["COURSE_DIR"] = work
    env["COURSE_CELL_TIMEOUT"] = str(timeout_s)
    env["PYTHONPATH"] = REPO
    if db_url:
        env["NBGRADER_DB_URL"] = db_url
    else:
        env.pop("NBGRADER_DB_URL", None)
    res = subprocess.run([PY, "-m", "course_tools", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"course_tools {' '.join(args)} failed:\n{res.stdout}\n{res.stderr[-3000:]}")
    return res


def db_url_for(work: str) -> str:
    return "sqlite:///" + os.path.join(work, "gradebook.db")


def code_scores(db_url: str, assignment: str) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(db_url, "dgm-flows") as gb:
        return {s.student_id: s.code_score for s in gb.assignment_submissions(assignment)}


def grade_rows(db_url: str, assignment: str, students: list[str]) -> dict:
    """Every grade and comment of these students, to compare before/after."""
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(db_url, "dgm-flows") as gb:
        for s in students:
            sub = gb.find_submission(assignment, s)
            out[s] = sorted(
                (nb.name, g.name, g.auto_score, g.manual_score, g.needs_manual_grade)
                for nb in sub.notebooks
                for g in nb.grades
            )
    return out


def hash_tree(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = "link:" + os.readlink(p)
            else:
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def sandbox_report(work: str, student: str, assignment: str) -> dict:
    for nb_name in notebooks(assignment):
        path = os.path.join(work, "autograded", student, assignment, nb_name)
        for cell in load(path)["cells"]:
            for o in cell.get("outputs", []):
                text = "".join(o.get("text", ""))
                if "SANDBOX-REPORT " in text:
                    return json.loads(text.split("SANDBOX-REPORT ", 1)[1].splitlines()[0])
    raise AssertionError("no sandbox report in the autograded notebook")


# --------------------------------------------------------------------------------------------- PostgreSQL
class PostgresServer:
    """A throwaway PostgreSQL server on 127.0.0.1, data in a temp dir, run as an unprivileged user."""

    def __init__(self, user: str = "postgres"):
        import pwd
        import socket
        import tempfile

        self.bin = (
            subprocess.run(
                [os.path.join(REPO, "scripts", "ensure_postgres.sh")],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        self.user = user if os.geteuid() == 0 else None
        self.dir = tempfile.mkdtemp(prefix="pg-grading-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.url = f"postgresql+psycopg2://grader@127.0.0.1:{self.port}/gradebook"

    def _run(self, *cmd: str) -> None:
        subprocess.run(list(cmd), check=True, capture_output=True, user=self.user, cwd=self.dir)

    def start(self) -> PostgresServer:
        self._run(
            os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "grader", "--auth=trust", "-E", "UTF8"
        )
        self._run(
            os.path.join(self.bin, "pg_ctl"),
            "-D",
            self.data,
            "-l",
            os.path.join(self.dir, "log"),
            "-w",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off",
            "start",
        )
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="grader", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE gradebook")
        conn.close()
        return self

    def stop(self) -> None:
        import shutil

        try:
            self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
