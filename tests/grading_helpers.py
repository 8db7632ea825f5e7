"""Helpers for the grading tests and benchmarks: bot submissions (correct, blank, partial, hostile, broken),
running the instructor CLI in an isolated course working directory, reading the gradebook, hashing files.

Everything is derived from ``solutions/<assignment>/`` and the committed student version in
``assignments/<assignment>/``, so a new chapter's assignment is covered without touching this file, provided
it follows the authoring rules in solutions/README.md (answer cells define functions; the test cells after an
answer cell, up to the next answer cell, test that answer).
"""

from __future__ import annotations

import contextlib
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
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def assignments() -> list[str]:
    src = os.path.join(REPO, "solutions")
    return sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)) and not d.startswith((".", "_")))


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
    assignment: str,
    nb_name: str,
    me: str,
    victim: str,
    work: str,
    gradebook_port: int | None = None,
    other_clone: str | None = None,
    exchange: str | None = None,
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
# issue 20: the kernel's own folder (its sockets) is no host disk: 2 MiB do not fit; the sandbox's command line
# (mounts, host paths, limits) is not readable from inside
def _fill_kernel_folder():
    import sys as _sys
    folder = _os.path.join(_os.path.dirname([a for a in _sys.argv if a.endswith(".json")][0]), "sock")
    path = _os.path.join(folder, "fill")
    try:
        with open(path, "wb") as fh:
            for _ in range(2 * 16):
                fh.write(b"x" * 65536)
                fh.flush()
        return _os.path.getsize(path)
    finally:
        if _os.path.exists(path):
            _os.remove(path)
_try("write_kernel_folder_big", _fill_kernel_folder)
_try("write_kernel_private_folder", lambda: open(_os.path.join(_os.path.dirname(
    [a for a in __import__("sys").argv if a.endswith(".json")][0]), "x"), "w").write("x"))
_try("sandbox_command_line", lambda: [a for a in open("/proc/1/cmdline", "rb").read().split(b"\\0")
                                      if a in (b"--ro-bind", b"--bind", b"--setenv", b"--size", b"--tmpfs")] or 1 / 0)
_try("network_gradebook", lambda: _socket.create_connection(("127.0.0.1", {port}), timeout=1))
_try("env_secrets", lambda: [k for k in _os.environ if any(s in k for s in {secret_words!r})] or 1 / 0)
_try("plant_symlink_to_gradebook", lambda: _os.symlink({gradebook!r}, {nb_name!r} + ".tmp"))
_try("overwrite_own_notebook", lambda: open({nb_name!r}, "w").write("garbage"))
_try("read_shadow", lambda: open("/etc/shadow").read()[:10])
_try("runs_as_root", lambda: 1 / (_os.getuid() == 0))
_try("other_clone_solutions", lambda: _os.listdir({os.path.join(other_clone or "/nonexistent-clone", "solutions")!r}))
_try("exchange", lambda: _os.listdir({exchange or os.path.join(work, "exchange")!r}))
def _find_checks():
    found = []
    for root, dirs, files in _os.walk("/"):
        dirs[:] = [d for d in dirs if _os.path.join(root, d) not in ("/usr", "/proc", "/dev", "/sys")
                   and "site-packages" not in d and "python3" not in d]
        found += [_os.path.join(root, f) for f in files if f == "hidden_checks.py"]
    return found or 1 / 0
_try("hidden_checks_anywhere", _find_checks)
_exposed = ("flowlib", "course_tools", "pyproject.toml", ".venv")
_try("list_repo_root", lambda: [n for n in _os.listdir({REPO!r}) if n not in _exposed] or 1 / 0)
_try("write_tmp_big", lambda: open("/tmp/big", "wb").write(b"x" * (200 * 2**20)))
print("SANDBOX-REPORT " + _json.dumps(_report))
"""


MUST_BE_DENIED = [
    "write_kernel_folder_big",
    "write_kernel_private_folder",
    "sandbox_command_line",
    "read_shadow",
    "runs_as_root",
    "other_clone_solutions",
    "exchange",
    "hidden_checks_anywhere",
    "list_repo_root",
    "write_tmp_big",
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
    expected: float | None  # code points in the gradebook; None = not graded (refused, needs regrading)
    message: str = ""  # a substring the instructor must see in the CLI output for this student
    same_as: str | None = None  # the grade must equal this student's (the same wrong answers without the trick)


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


# --------------------------------------------------------------------------------------------- attacks
# Each returns code for an answer cell: the (wrong) answer plus the trick.  A wrong answer must get 0 for that
# question whatever the trick does to its own process.
DISPLAYHOOK = """
import sys as _s
_s.displayhook("ok")
def _fake_ok(*a, **k):
    _s.displayhook("ok")
get_ipython().events.register("post_run_cell", lambda *a: _fake_ok())
"""
FRAME_GLOBALS = """
import sys as _s
def _poison_callers():
    # the grader's helpers, if they were in the caller's globals (they were, when hidden tests ran in the kernel)
    for depth in (2, 3):
        try:
            g = _s._getframe(depth).f_globals
        except ValueError:
            break
        for k, v in list(g.items()):
            if callable(v) and not isinstance(v, type) and k.startswith(("_", "expect", "close", "check")):
                g[k] = lambda *a, **kw: True
"""
SETTRACE = """
import sys as _s
def _tracer(frame, event, arg):
    if event == "return" and frame.f_code.co_name.startswith(("_", "run", "_one", "_encode")):
        frame.f_locals.clear() if hasattr(frame.f_locals, "clear") else None
    return _tracer
_s.settrace(_tracer)
"""
BUILTINS = """
zip = lambda *a, **k: iter([])
all = lambda *a, **k: True
sum = lambda *a, **k: 0.0
len = lambda *a, **k: 0
"""
TRANSFORMER = """
def _blank(lines):
    return ["pass\\n"] if any("probe" in l or "check(" in l for l in lines) else lines
get_ipython().input_transformers_post.append(_blank)
"""
FAKE_MATH = """
import sys as _s, types as _ty, math as _real
_fake = _ty.ModuleType("math")
for _k in dir(_real):
    setattr(_fake, _k, getattr(_real, _k))
_fake.isclose = lambda *a, **k: True
_fake.isfinite = lambda *a, **k: True
_s.modules["math"] = _fake
math = _fake
"""
CLONE_PATCH = """
import torch as _t
_t.Tensor.clone = lambda self, *a, **k: self
_t.Tensor.detach = lambda self, *a, **k: self
"""
LEAK_MARKER = "LEAK-MARKER-7f3a"
PRINT_EVERYTHING = """
import base64 as _b64, codecs as _co, glob as _gl, json as _js
_M = "LEAK-" + "MARKER-7f3a"  # built at run time: only the outputs contain the marker, not the source
_seen = "\\n".join(str(x) for x in In) + "\\n" + "\\n".join(str(x) for x in _ih) + repr(sorted(globals()))
_files = []
for _p in _gl.glob("/**/hidden_checks.py", recursive=False) + _gl.glob("*") + _gl.glob("/tmp/**", recursive=True):
    try:
        _files.append(open(_p, "rb").read()[:20000])
    except Exception:
        pass
for _enc in ("utf-8", "utf-16", "utf-32", "latin-1"):
    print("" + _M + "", _enc, _seen.encode(_enc, "replace")[:4000])
print("" + _M + " b64", _b64.b64encode(_seen.encode()).decode()[:4000])
print("" + _M + " rot13", _co.encode(_seen, "rot13")[:4000])
print("" + _M + " hex", _seen.encode().hex()[:4000])
print("" + _M + " files", [f[:2000] for f in _files])
from IPython.display import HTML as _H, display as _d
_d(_H("<script>document.title='PWNED-BY-OUTPUT'</script><b>" + _M + " html</b>"))
_d({"text/html": "<img src=x onerror=\\"document.title='PWNED-ONERROR'\\">"}, raw=True)
"""
MARKDOWN_SCRIPT = (
    "My notes <script>document.title='PWNED-BY-MARKDOWN'</script> "
    "<img src=x onerror=\"document.title='PWNED-IMG'\"> [click](javascript:alert(1))\n\n"
    r"The integral $\int_0^1 x\,dx = \frac{1}{2}$ renders."
)
SHADOW_LAUNCHER = """# a fake kernel launcher: prints 'ok' for every cell
import sys
print("shadowed")
raise SystemExit(0)
"""
SHADOW_TORCH = "raise ImportError('a student file named torch.py was imported')\n"
INTERRUPT_SELF = "raise KeyboardInterrupt('my own interrupt')\n"


# A memoising student (issue 20): every value its functions were given or returned is remembered across cells;
# the functions it did not write answer from memory only (an earlier output given back -> that call's input, with
# the log-det negated; an earlier input -> that call's output). It must get exactly the points of the functions it
# did write, so no hidden check may feed a later call a value an earlier call received or produced.
MEMO = """
if "_memo_seen" not in globals():
    import torch as _mt
    _memo_seen = []
    def _memo_tensors(v):
        if isinstance(v, _mt.Tensor):
            return [v.detach().clone()] if v.is_floating_point() else []
        if isinstance(v, (list, tuple)):
            return [t for e in v for t in _memo_tensors(e)]
        if isinstance(v, dict):
            return [t for e in v.values() for t in _memo_tensors(e)]
        return []
    def _memo_rows(t):
        return t.reshape(1, -1) if t.ndim <= 1 else t.reshape(t.shape[0], -1)
    def _memo_find(t, pool):
        # rows of t that equal rows of a remembered tensor: a lookup by rows (a batch can be a subset)
        for k, p in enumerate(pool):
            a, b = _memo_rows(t), _memo_rows(p)
            if a.shape[1] == b.shape[1] and a.shape[0] <= b.shape[0]:
                d = _mt.cdist(a.double(), b.double(), p=float("inf"))
                close = d <= 1e-6 * (1 + b.abs().max())
                if close.any(1).all():
                    return k, close.double().argmax(1)
        return None
    def _memo_record(fn):
        def remembered(*args, **kwargs):
            out = fn(*args, **kwargs)
            _memo_seen.append((_memo_tensors(args), _memo_tensors(out), out))
            return out
        return remembered
    def _memo_lookup(*args, **kwargs):
        for t in _memo_tensors(args):
            for ins, outs, out in reversed(_memo_seen):
                hit = _memo_find(t, outs[:1])
                if hit is not None and ins:
                    x = ins[0].reshape(ins[0].shape[0], -1)[hit[1]].reshape(t.shape[:1] + ins[0].shape[1:])
                    if isinstance(out, tuple) and len(outs) > 1 and outs[1].ndim == 1:
                        return x, -outs[1][hit[1]]
                    return x
                hit = _memo_find(t, ins[:1])
                if hit is not None:
                    return out
        raise NotImplementedError("not remembered")
"""


def function_names(solution_code: str) -> list[str]:
    return re.findall(r"^def (\w+)\(", solution_code, re.M)


def calls_per_test(assignment: str) -> dict[str, set[str]]:
    """The student functions each test cell's hidden checks call (recorded in this, the grader's, process)."""
    sys.path.insert(0, REPO)
    from course_tools import hidden

    checks = hidden.load_checks(os.path.join(REPO, "solutions", assignment))
    return {gid: {c.name for calls in checks.record(gid) for c in calls} for gid in checks.cases}


def memo_case(assignment: str, nb_name: str, parity: int) -> Case:
    """Every other function of the assignment written (and remembering), the others answered from memory."""
    lay = layout(assignment, nb_name)
    names = [n for a in lay.answers for n in function_names(lay.solution_src[a])]
    written = set(names[parity::2])
    answers = {}
    for a in lay.answers:
        code = MEMO + lay.solution_src[a]
        for n in function_names(lay.solution_src[a]):
            if n in written:
                code += f"\n{n} = _memo_record({n})\n"
            else:
                code += f"\ndef {n}(*args, **kwargs):\n    return _memo_lookup(*args, **kwargs)\n"
        answers[a] = code
    uses = calls_per_test(assignment)
    points = sum(p for tests in lay.tests_of.values() for gid, p in tests if uses.get(gid) and uses[gid] <= written)
    return Case(
        f"a_memo{parity}",
        f"functions {'2, 4' if parity else '1, 3'}, ... written and remembering every value, the others answered "
        "from memory (issue 20)",
        {nb_name: solved(assignment, nb_name, answers)},
        points,
    )


# A wrong map with the right log-det, and torch's Jacobian helpers patched to differentiate the right map
# (issue 20): a Jacobian computed in the kernel would agree with the log-det. The grader computes them itself.
WRONG_MAP = """
if "_honest" not in globals():
    import torch as _pt
    _honest = [False]
    def _forging(real):
        def forged(*a, **k):
            _honest[0] = True
            try:
                return real(*a, **k)
            finally:
                _honest[0] = False
        return forged
    _pt.autograd.functional.jacobian = _forging(_pt.autograd.functional.jacobian)
    _pt.autograd.functional.hessian = _forging(_pt.autograd.functional.hessian)
    _pt.autograd.grad = _forging(_pt.autograd.grad)
    _pt.func.jacrev = _forging(_pt.func.jacrev)
    _pt.func.jacfwd = _forging(_pt.func.jacfwd)
    _pt.func.vmap = _forging(_pt.func.vmap)
    _pt.linalg.slogdet = _forging(_pt.linalg.slogdet)
"""


def wrong_map(solution_code: str, patch: bool) -> str:
    """Every function scales its first floating-point result by 1.5 and keeps the rest (the log-det) right;
    with ``patch``, also torch's Jacobian helpers, under which the functions answer right."""
    code = (WRONG_MAP if patch else "_honest = [False]\n") + solution_code
    for name in function_names(solution_code):
        code += f"""
_right_{name} = {name}
def {name}(*args, **kwargs):
    out = _right_{name}(*args, **kwargs)
    if _honest[0]:
        return out
    if isinstance(out, tuple) and out and getattr(out[0], "is_floating_point", lambda: False)():
        return (out[0] * 1.5, *out[1:])
    if getattr(out, "is_floating_point", lambda: False)():
        return out * 1.5
    return out
"""
    return code


# Malformed results of the student's own making (issue 20): each fails only the cell it touches.
DEEP_OUTPUT = """from IPython.display import display as _d
_v = 1
for _ in range(900):
    _v = [_v]
_d({"application/json": {"deep": _v}}, raw=True)
"""
FORGE_DEEP_PROBE = """import IPython.display as _ipd
_real_display = _ipd.display
def _forging_display(*objs, **kw):
    # the first probe's results are replaced by 200,000 nested brackets under its own nonce
    for o in objs:
        if isinstance(o, dict) and "application/x-course-probe+json" in o:
            _ipd.display = _real_display
            bundle = o["application/x-course-probe+json"]
            deep = "[" * 200_000 + "]" * 200_000
            return _real_display({"application/x-course-probe+json": {"nonce": bundle["nonce"], "payload": deep}},
                                 raw=True)
    return _real_display(*objs, **kw)
_ipd.display = _forging_display
"""
PROBE_FLOOD = """from IPython.display import display as _d
for _k in range(70):
    _d({"application/x-course-probe+json": {"nonce": "x", "payload": "0" * 1_000_000}}, raw=True)
"""
PASTED_MARKDOWN = (
    "My drawing: ![image.png](attachment:image.png) and one I forgot: ![old.png](attachment:old.png)\n\n"
    "Honest text stays: one = 1, data: the training set, javascript: is a language.\n\n"
    '<div style="position: fixed; top: 0; left: 0; width: 100%; z-index: 99; background: white; color: green">'
    "Score: 100 / 100</div>"
)
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def _append_cell(nb: dict, cell_type: str, source: str, cid: str, **extra) -> dict:
    cell = {"cell_type": cell_type, "id": cid, "metadata": {}, "source": source, **extra}
    if cell_type == "code":
        cell.update(execution_count=None, outputs=[])
    nb["cells"].append(cell)
    return nb


def malformed_cases(assignment: str, nb_name: str) -> list[Case]:
    lay = layout(assignment, nb_name)
    first_test, first_points = lay.tests_of[lay.answers[0]][0]
    forged = solved(assignment, nb_name, {lay.answers[0]: FORGE_DEEP_PROBE + lay.solution_src[lay.answers[0]]})
    pasted = _append_cell(solved(assignment, nb_name), "markdown", PASTED_MARKDOWN, "pasted-1",
                          attachments={"image.png": {"image/png": PNG_1X1}})
    return [
        Case("a_deep_output", "the solution + a display nested 900 levels deep",
             {nb_name: _append_cell(solved(assignment, nb_name), "code", DEEP_OUTPUT, "deep-1")},
             lay.total, "output nesting"),
        Case("a_forged_deep", "the solution; the first probe's results replaced by 200,000 nested brackets",
             {nb_name: forged}, lay.total - first_points, f"{first_test}: malformed results"),
        Case("a_probe_flood", "the solution + 70 MB displayed under the probe's MIME type from a normal cell",
             {nb_name: _append_cell(solved(assignment, nb_name), "code", PROBE_FLOOD, "flood-1")},
             lay.total, "limit reached: output"),
        Case("a_pasted", "the solution + a pasted image, a missing attachment and a fake score drawn over the page",
             {nb_name: pasted}, lay.total),
    ]


def _wrong_all(assignment: str, nb_name: str, extra_first: str = "", extra_each: str = "") -> dict:
    lay = layout(assignment, nb_name)
    sol = lay.solution_src
    answers = {}
    for i, a in enumerate(lay.answers):
        code = wrong_answer(sol[a])
        if extra_each:
            code = extra_each + "\n" + code
        if i == 0 and extra_first:
            code = extra_first + "\n" + code
        answers[a] = code
    return solved(assignment, nb_name, answers)


def _with_poisoning_wrapper(solution_code: str, poison: str) -> str:
    """The wrong answer, whose function runs `poison` after computing its result (e.g. patching its caller's
    globals, or overwriting its inputs in place so that a check computing its reference afterwards agrees)."""
    name = function_name(solution_code)
    return (
        wrong_answer(solution_code)
        + f"""
_inner_{name} = {name}
def {name}(*args, **kwargs):
    _out = _inner_{name}(*args, **kwargs)
    {poison}
    return _out
"""
    )


def attack_cases(assignment: str, formats: bool = True) -> list[Case]:
    """The issue's attack classes, generated for this assignment: each must get exactly what it deserves.

    The attacks on the answers (wrong answers with in-kernel tricks, memoised and forged answers, an edited
    notebook) depend on the questions and run on every assignment. The attacks on the submission's form
    (``formats``: malformed output, shadowing files, duplicate or foreign metadata, a directory or nested JSON
    instead of a notebook, a notebook that prints everything) do not, and cost minutes per assignment: the
    grading suite runs them on two assignments (FORMATS_ON in tests/test_grading.py)."""
    (nb_name,) = notebooks(assignment)[:1]
    lay = layout(assignment, nb_name)
    sol = lay.solution_src
    total = lay.total
    blank = student_version(assignment, nb_name)

    frames = solved(
        assignment,
        nb_name,
        {a: FRAME_GLOBALS + _with_poisoning_wrapper(sol[a], "_poison_callers()") for a in lay.answers},
    )
    inplace = solved(
        assignment,
        nb_name,
        {
            a: CLONE_PATCH
            + _with_poisoning_wrapper(
                sol[a],
                "[x.mul_(0) for x in args if hasattr(x, 'mul_') and getattr(x, 'is_floating_point', lambda: 0)()]",
            )
            for a in lay.answers
        },
    )
    dup = solved(assignment, nb_name)
    test_cells = [c for c in dup["cells"] if is_test(c)]
    dup["cells"].insert(0, copy.deepcopy(test_cells[0]))  # a copy-pasted test cell, above everything
    dup["cells"].append(copy.deepcopy(test_cells[-1]))
    schema = solved(assignment, nb_name)
    for c in schema["cells"]:
        if is_test(c):
            c["metadata"]["nbgrader"]["schema_version"] = 4
            break
    foreign = solved(assignment, nb_name)
    foreign["cells"].append(
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "foreign-1",
            "outputs": [],
            "source": "x = 1",
            "metadata": {
                "nbgrader": {
                    "grade": True,
                    "grade_id": "not_in_this_assignment",
                    "points": 100,
                    "schema_version": 3,
                    "solution": False,
                    "locked": False,
                    "task": False,
                }
            },
        }
    )
    foreign["cells"].append({"cell_type": "weird", "metadata": {}, "source": "?"})
    nested = "[" * 100_000 + "]" * 100_000
    leaky = solved(assignment, nb_name)
    leaky["cells"].append(
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "leak-1",
            "metadata": {},
            "outputs": [],
            "source": PRINT_EVERYTHING,
        }
    )
    leaky["cells"].append({"cell_type": "markdown", "id": "leak-2", "metadata": {}, "source": MARKDOWN_SCRIPT})
    answers = [
        memo_case(assignment, nb_name, 0),
        memo_case(assignment, nb_name, 1),
        Case(
            "a_wrongmap",
            "every map scaled by 1.5, log-dets right: the baseline of a_jacobian",
            {nb_name: solved(assignment, nb_name, {a: wrong_map(sol[a], False) for a in lay.answers})},
            None,
        ),
        Case(
            "a_jacobian",
            "every map scaled by 1.5, log-dets right, torch's Jacobian helpers patched to differentiate the right map",
            {nb_name: solved(assignment, nb_name, {a: wrong_map(sol[a], True) for a in lay.answers})},
            None,
            same_as="a_wrongmap",
        ),
        Case(
            "a_wrong",
            "every answer wrong (shifted by 0.5), no trick: the baseline of the cases below",
            {nb_name: _wrong_all(assignment, nb_name)},
            None,
        ),
        Case(
            "a_displayhook",
            "wrong answers + sys.displayhook('ok') after every cell",
            {nb_name: _wrong_all(assignment, nb_name, extra_first=DISPLAYHOOK)},
            None,
            same_as="a_wrong",
        ),
        Case(
            "a_frames",
            "wrong answers that poison their caller's globals through sys._getframe",
            {nb_name: frames},
            None,
            same_as="a_wrong",
        ),
        Case(
            "a_settrace",
            "wrong answers + sys.settrace that clears callers' locals",
            {nb_name: _wrong_all(assignment, nb_name, extra_first=SETTRACE)},
            None,
            same_as="a_wrong",
        ),
        Case(
            "a_builtins",
            "wrong answers + zip/all/sum/len rebound at the notebook's top level",
            {nb_name: _wrong_all(assignment, nb_name, extra_first=BUILTINS)},
            None,
            same_as="a_wrong",
        ),
        Case(
            "a_transformer",
            "wrong answers + an IPython input transformer that blanks test cells",
            {nb_name: _wrong_all(assignment, nb_name, extra_first=TRANSFORMER)},
            None,
            same_as="a_wrong",
        ),
        Case(
            "a_math",
            "wrong answers + a replaced math module",
            {nb_name: _wrong_all(assignment, nb_name, extra_first=FAKE_MATH)},
            None,
            same_as="a_wrong",
        ),
        Case(
            "a_inplace",
            "wrong answers + Tensor.clone patched, inputs zeroed in place",
            {nb_name: inplace},
            None,
            same_as="a_wrong",
        ),
        Case(
            "a_rebind",
            "wrong answers + torch.allclose, numpy.testing, math.isclose, check, flowlib rebound",
            {nb_name: _wrong_all(assignment, nb_name, extra_first=REBIND)},
            None,
            same_as="a_wrong",
        ),
    ]
    if not formats:
        return answers
    return answers + malformed_cases(assignment, nb_name) + [
        Case(
            "a_shadow",
            "untouched notebook + ipykernel_launcher.py and torch.py in the submission",
            {nb_name: blank, "ipykernel_launcher.py": SHADOW_LAUNCHER, "torch.py": SHADOW_TORCH},
            0.0,
            "extra files ignored",
        ),
        Case(
            "a_shadow_solved",
            "the solution + a torch.py that would break the kernel if it were imported",
            {nb_name: solved(assignment, nb_name), "torch.py": SHADOW_TORCH, "course_tools.py": SHADOW_TORCH},
            total,
            "extra files ignored",
        ),
        Case(
            "a_duplicate",
            "the solution + copy-pasted test cells (duplicate grade_ids)",
            {nb_name: dup},
            total,
            "duplicate grade_id",
        ),
        Case(
            "a_schema", "the solution with a test cell's schema_version 4", {nb_name: schema}, total, "schema_version"
        ),
        Case(
            "a_foreign",
            "the solution + a cell with a foreign grade_id and a cell of an unknown type",
            {nb_name: foreign},
            total,
            "not in the assignment",
        ),
        Case(
            "a_directory", "a directory named like the notebook", {nb_name + "/inner.txt": "x"}, 0.0, "is a directory"
        ),
        Case("a_nested", "deeply nested JSON", {nb_name: nested}, 0.0, "nested"),
        Case(
            "a_leak",
            "the solution + a cell printing In, _ih, globals, files in several encodings, HTML with "
            "<script>, and a markdown cell with <script>",
            {nb_name: leaky},
            total,
        ),
    ]


def limit_cases(
    assignment: str, work: str, victim: str = "good", other_clone: str | None = None, exchange: str | None = None
) -> list[Case]:
    """Loops, crashes, floods and resource limits: on one assignment (they cost wall time, not coverage)."""
    (nb_name,) = notebooks(assignment)[:1]
    lay = layout(assignment, nb_name)
    sol = lay.solution_src
    total = lay.total
    first, last = lay.answers[0], lay.answers[-1]
    second = lay.answers[1] if len(lay.answers) > 1 else last
    sleepy = solved(
        assignment,
        nb_name,
        {
            first: "import time\ntime.sleep(LIMIT_SLEEP)\n" + sol[first],
            second: "import time\ntime.sleep(LIMIT_SLEEP)\n" + sol[second],
        },
    )
    for c in sleepy["cells"]:
        c["source"] = src(c).replace("LIMIT_SLEEP", str(SLEEP_S))
    hog_tmp = (
        "\ntry:\n    open('/tmp/fill', 'wb').write(b'x' * (200 * 2**20))\nexcept OSError as e:\n    print('disk', e)\n"
    )
    oom = "\n_x = bytearray(2600 * 2**20)\n_x[::4096] = b'\\x01' * len(range(0, len(_x), 4096))\n"
    threads = (
        "\nimport threading, time\n_ts = []\nfor _i in range(300):\n"
        "    _t = threading.Thread(target=time.sleep, args=(30,), daemon=True)\n    _t.start()\n    _ts.append(_t)\n"
    )
    return [
        Case(
            "l_loop",
            "infinite loop in the first answer",
            {nb_name: solved(assignment, nb_name, {first: "while True:\n    pass\n\n" + sol[first]})},
            total - lay.points(first),
            "timed out",
        ),
        Case(
            "l_sigint",
            "infinite loop that ignores the interrupt, in the last answer",
            {nb_name: solved(assignment, nb_name, {last: IGNORE_SIGINT_LOOP + sol[last]})},
            total - lay.points(last),
            "kernel",
        ),
        Case(
            "l_exits",
            "os._exit(1) in the last answer",
            {nb_name: solved(assignment, nb_name, {last: "import os\nos._exit(1)\n" + sol[last]})},
            total - lay.points(last),
            "kernel died",
        ),
        Case(
            "l_interrupt",
            "raises KeyboardInterrupt itself in the first answer",
            {nb_name: solved(assignment, nb_name, {first: INTERRUPT_SELF + sol[first]})},
            total - lay.points(first),
            "KeyboardInterrupt itself (not a timeout)",
        ),
        Case(
            "l_flood",
            "prints 200 000 lines",
            {
                nb_name: solved(
                    assignment, nb_name, {first: sol[first] + "\nfor _i in range(200_000):\n    print('flood', _i)\n"}
                )
            },
            total,
            "limit reached: output",
        ),
        Case(
            "l_memory",
            "asks for 64 GiB in the first answer (address-space limit)",
            {nb_name: solved(assignment, nb_name, {first: "_hog = bytearray(64 * 2**30)\n" + sol[first]})},
            total - lay.points(first),
        ),
        Case(
            "l_oom",
            "fills 2.6 GiB of memory after the last answer (memory limit)",
            {nb_name: solved(assignment, nb_name, {last: sol[last] + oom})},
            total - lay.points(last),
            "memory",
        ),
        Case(
            "l_disk",
            "writes 200 MiB to /tmp (tmpfs size)",
            {nb_name: solved(assignment, nb_name, {first: sol[first] + hog_tmp})},
            total,
        ),
        Case(
            "l_threads",
            "starts 300 threads (process limit)",
            {nb_name: solved(assignment, nb_name, {first: sol[first] + threads})},
            total,
            "processes",
        ),
        Case(
            "l_total",
            f"sleeps {SLEEP_S} s in each of the first two answers (total time limit)",
            {nb_name: sleepy},
            lay.points(first),
            "total time",
        ),
        Case(
            "l_exfil",
            "reads solutions, gradebook, /etc/shadow, another clone; writes other students' files",
            {
                nb_name: solved(
                    assignment,
                    nb_name,
                    {
                        first: sol[first]
                        + "\n"
                        + exfiltration_code(
                            assignment, nb_name, "l_exfil", victim, work, other_clone=other_clone, exchange=exchange
                        )
                    },
                )
            },
            total,
        ),
        Case(
            "l_ctrl\x1b[31m\nname",
            "a student id with control characters and a newline",
            {nb_name: solved(assignment, nb_name)},
            None,
            "REFUSED",
        ),
        Case(
            "--help",
            "a student id that looks like an option",
            {nb_name: solved(assignment, nb_name)},
            None,
            "REFUSED",
        ),
        Case(
            os.fsdecode(b"l_bad\xffname"),
            "a student id that is not UTF-8",
            {nb_name: solved(assignment, nb_name)},
            None,
            "REFUSED",
        ),
        Case(
            "l_corrupt",
            "notebook JSON cut in half",
            {nb_name: json.dumps(solved(assignment, nb_name))[:5000]},
            0.0,
            "not a valid notebook",
        ),
        Case("l_missing", "no notebook, only a stray file", {"notes.txt": "I forgot to upload it"}, 0.0, "missing"),
        Case(
            "l_symlink",
            "a file that is a symbolic link to the solutions",
            {
                nb_name: solved(assignment, nb_name),
                "peek.ipynb": ("symlink", os.path.join(REPO, "solutions", assignment, nb_name)),
            },
            None,
            "REFUSED",
        ),
        Case(
            "l_infra",
            "the machine is too busy for the setup cell on the first try (injected)",
            {nb_name: solved(assignment, nb_name)},
            total,
            "second try",
        ),
        Case(
            "l_infra_always",
            "the setup cell never finishes in time (injected)",
            {nb_name: solved(assignment, nb_name)},
            None,
            "NEEDS-REGRADING",
        ),
    ]


CELL_TIMEOUT_S = 30  # COURSE_CELL_TIMEOUT in the tests
TOTAL_TIMEOUT_S = 50  # COURSE_TOTAL_TIMEOUT in the tests
SLEEP_S = 28  # the first sleep fits in the total time; the second one hits the total limit
FAULTS = "infra-once:l_infra,infra:l_infra_always"


def edited_case(assignment: str) -> Case:
    (nb_name,) = notebooks(assignment)[:1]
    lay = layout(assignment, nb_name)
    last = lay.answers[-1]
    edited = solved(assignment, nb_name, {last: wrong_answer(lay.solution_src[last])})
    tests = [c for c in edited["cells"] if is_test(c)]
    edited["cells"].remove(tests[0])
    for c in tests[1:]:
        c["source"] = "pass  # the tests were edited away"
    return Case(
        "a_edited",
        "a test cell deleted, the others edited to `pass`, last answer wrong",
        {nb_name: edited},
        lay.total - lay.points(last),
    )


# Partial answers designed by the assignment's author: {assignment: ({answer grade_id: code}, code points)}.
DESIGNED_PARTIALS = {
    "ch01_probability": (
        {
            # forgets 0 log 0 = 0: passes q1_basic (1), fails q1_zeros
            "q1_answer": "def entropy(p):\n    return -(p * torch.log(p)).sum(dim=-1)\n",
            # hands back the given buggy KL (log of underflowed probabilities): q2_basic (1), fails q2_extreme
            "q2_answer": "def kl_from_logits(a, b):\n"
            "    p, q = torch.softmax(a, dim=-1), torch.softmax(b, dim=-1)\n"
            "    return (p * torch.log(p / q)).sum(dim=-1)\n",
            # q3 right (3); q4 drops the factor b1 / b2 in front of exp(-|m1 - m2| / b1): q4_equal (1) only;
            # q5 right (3)
            "q4_answer": "def laplace_kl(m1, b1, m2, b2):\n"
            "    gap = (m1 - m2).abs()\n"
            "    return torch.log(b2 / b1) + gap / b2 + torch.exp(-gap / b1) - 1.0\n",
        },
        9.0,
    ),
    "ch05_normalizing_flows": (
        {
            # repairs only the hidden comparison and keeps >= in the output layer: q2_hidden (1), q2_output (0)
            "q2_answer": "def made_masks(degrees):\n"
            "    hidden = [(b[:, None] >= a[None, :]).to(torch.float64) for a, b in zip(degrees[:-1], degrees[1:])]\n"
            "    return hidden + [(degrees[0][:, None] >= degrees[-1][None, :]).to(torch.float64)]\n",
            # the lecture's table, blind to tied degrees (d passes for every sequential direction): 0 + 0
            "q3_answer": "def sampling_passes(layers):\n"
            "    density = sampling = 0\n"
            "    for kind, m_in in layers:\n"
            "        d = m_in.numel()\n"
            "        if kind == 'MAF':\n"
            "            density, sampling = density + 1, sampling + d\n"
            "        else:\n"
            "            density, sampling = density + d, sampling + 1\n"
            "    return density, sampling\n",
            # one pass per coordinate in the ordering: right without ties (1), too many passes with ties (0)
            "q4_answer": "def maf_sample(n, conditioner, m_in, generator):\n"
            "    z = torch.randn(n, m_in.numel(), generator=generator, dtype=torch.float64)\n"
            "    x = torch.zeros_like(z)\n"
            "    for i in torch.argsort(m_in).tolist():\n"
            "        s, t = conditioner(x)\n"
            "        x = x.clone()\n"
            "        x[:, i] = (z[:, i] - t[:, i]) * torch.exp(-s[:, i])\n"
            "    return x\n",
            # the textbook root (-b + sqrt(b^2 - 4ac)) / (2a): right where a != 0, q8_bins (1); nan in a straight
            # bin, q8_edges (0)
            "q8_answer": "def spline_quantile(u, xk, yk, dk):\n"
            "    y = torch.special.ndtri(u)\n"
            "    m = (torch.searchsorted(yk, y, right=True) - 1).clamp(0, xk.numel() - 2)\n"
            "    w, h = (xk[1:] - xk[:-1])[m], (yk[1:] - yk[:-1])[m]\n"
            "    d0, d1 = dk[:-1][m], dk[1:][m]\n"
            "    r, s = y - yk[m], h / w\n"
            "    a = h * (s - d0) + r * (d0 + d1 - 2 * s)\n"
            "    b = h * d0 - r * (d0 + d1 - 2 * s)\n"
            "    x = xk[m] + w * (-b + torch.sqrt(b * b + 4 * a * s * r)) / (2 * a)\n"
            "    x = torch.where(y < yk[0], xk[0] + (y - yk[0]) / dk[0], x)\n"
            "    return torch.where(y > yk[-1], xk[-1] + (y - yk[-1]) / dk[-1], x)\n",
            # q1 (3), q5 (1) and q6 (2) right
        },
        9.0,
    ),
    "ch07_residual_continuous": (
        {
            # log det instead of log|det|: q1_map (1) passes, q1_logdet (2) gets nan where the determinant is < 0
            "q1_answer": "def sylvester_forward(x, A, B, b):\n"
            "    act = torch.tanh(x @ B.T + b)\n"
            "    small = torch.eye(A.shape[1], dtype=x.dtype) + (1 - act**2)[:, :, None] * (B @ A)\n"
            "    return x + act @ A.T, torch.logdet(small)\n",
            # adds the variances of the terms as if each had its own probe: the Rademacher and the Gaussian
            # cells both fail (0 of 3); q2, q4, q5, q6 right (2 + 3 + 2 + 3), q8 and q9 below (1 + 2)
            "q3_answer": "def series_probe_variance(J, n_terms, probe):\n"
            "    total = torch.zeros((), dtype=J.dtype)\n"
            "    for k in range(1, n_terms + 1):\n"
            "        S = torch.linalg.matrix_power(J, k) / k\n"
            "        S = (S + S.T) / 2\n"
            "        off = (S**2).sum() - (S.diagonal() ** 2).sum()\n"
            "        total = total + 2 * (off if probe == 'rademacher' else (S**2).sum())\n"
            "    return total\n",
            # the forward-KL answer, the target's marginal variances: q8_optimum (2) fails; q8_estimate (1) and
            # q9 (1 + 1) right
            "q8_optimum_answer": "def reverse_kl_optimum(P, mu):\n"
            "    return mu.clone(), 0.5 * torch.log(torch.diagonal(torch.linalg.inv(P)))\n",
        },
        14.0,
    ),
    "ch06_image_flows": (
        {
            # forgets that every pixel of a channel has the same factor (no h w): q3_map (1) passes, q3_logdet (2)
            # fails (the logdet is h w times too small)
            "q3_answer": "def batchnorm_flow(x, mean, var, log_gamma, beta, eps):\n"
            "    a = torch.exp(log_gamma) / torch.sqrt(var + eps)\n"
            "    z = a[None, :, None, None] * (x - mean[None, :, None, None]) + beta[None, :, None, None]\n"
            "    return z, torch.log(a).sum().expand(x.shape[0]).clone()\n\n\n"
            "def batchnorm_flow_inverse(z, mean, var, log_gamma, beta, eps):\n"
            "    a = torch.exp(log_gamma) / torch.sqrt(var + eps)\n"
            "    x = (z - beta[None, :, None, None]) / a[None, :, None, None] + mean[None, :, None, None]\n"
            "    return x, -torch.log(a).sum().expand(z.shape[0]).clone()\n",
            # applies W instead of its inverse when sampling: the mode is right (T = 0) but the covariance is
            # wrong, so both q6 cells (2 + 1) fail; q1, q2, q4, q5 right (3 + 4 + 2 + 2)
            "q6_answer": "def sample_at_temperature(loc, log_scale, W, num_samples, image_size, T, generator):\n"
            "    c = loc.shape[0]\n"
            "    z = T * torch.randn(num_samples, *image_size, c, generator=generator, dtype=loc.dtype)\n"
            "    x = loc + torch.exp(-log_scale) * (z @ W.T)\n"
            "    return x.permute(0, 3, 1, 2).contiguous()\n",
        },
        12.0,
    ),
    "ch03_monte_carlo_sgd": (
        {
            # the lecture's Rademacher/Gaussian formula with A in place of its symmetric part: both q3 cells fail (0)
            "q3_answer": "def hutchinson_variance(A, fourth_moment, m=1):\n"
            "    on = (A.diagonal() ** 2).sum()\n"
            "    return (2 * ((A**2).sum() - on) + (fourth_moment - 1) * on) / m\n",
            # the right estimate, but the standard error of h instead of the adjusted terms: q4_estimate (1) only
            "q4_answer": "def control_variate_estimate(h_values, g_values, g_mean):\n"
            "    dh, dg = h_values - h_values.mean(), g_values - g_values.mean()\n"
            "    c = (dh * dg).sum() / (dg * dg).sum()\n"
            "    est = (h_values - c * (g_values - g_mean)).mean()\n"
            "    return est, h_values.std() / math.sqrt(len(h_values))\n",
        },
        10.0,
    ),
    "ch02_maximum_likelihood": (
        {
            # averages the per-reading rates x_n / t_n: unbiased, but not the MLE with unequal exposures; fails
            # q1_basic and q1_batch (0)
            "q1_answer": "def poisson_rate_mle(x, t):\n    return (x / t).mean(dim=-1)\n",
            # q2 right (3), q3 right (3); q4 hands back the given one-pass formula: q4_basic (1), fails q4_offset;
            # q5 right (2)
            "q4_answer": "def gaussian_mle(x):\n"
            "    mean = x.mean(dim=-2)\n"
            "    second = x.transpose(-1, -2) @ x / x.shape[-2]\n"
            "    return mean, second - mean.unsqueeze(-1) * mean.unsqueeze(-2)\n",
        },
        9.0,
    ),
    "ch04_classical_models": (
        {
            # multiplies the pixel probabilities in the E step (the colleague's bug of Q2) inside a right M step:
            # q3_step on 40 pixels passes (2), q3_ascent on 2000 pixels underflows to nan (0)
            "q3_answer": "def bernoulli_em_step(x, weights, probs, alpha=1.0):\n"
            "    lik = (probs[None] ** x[:, None] * (1 - probs[None]) ** (1 - x[:, None])).prod(dim=-1)\n"
            "    r = weights * lik\n"
            "    r = r / r.sum(dim=1, keepdim=True)\n"
            "    nk = r.sum(0)\n"
            "    return nk / x.shape[0], (r.T @ x + alpha) / (nk[:, None] + 2 * alpha)\n",
            # indexes each table with the parents sorted instead of in the listed order: both q5 cells fail (0)
            "q5_answer": "def ancestral_sample(cpts, parents, n, generator):\n"
            "    x = torch.zeros(n, len(cpts), dtype=torch.long)\n"
            "    for i, (table, pa) in enumerate(zip(cpts, parents)):\n"
            "        rows = table[tuple(x[:, j] for j in sorted(pa))] if len(pa) else table.expand(n, -1)\n"
            "        x[:, i] = torch.multinomial(rows, 1, generator=generator)[:, 0]\n"
            "    return x\n",
        },
        11.0,
    ),
}


# --------------------------------------------------------------------------------------------- running
def cli(
    work: str,
    *args: str,
    db_url: str | None = None,
    timeout_s: int = CELL_TIMEOUT_S,
    check: bool = False,
    extra_env: dict | None = None,
):
    env = dict(os.environ)
    env["COURSE_DIR"] = work
    env["COURSE_CELL_TIMEOUT"] = str(timeout_s)
    env["COURSE_TOTAL_TIMEOUT"] = str(TOTAL_TIMEOUT_S)
    env["PYTHONIOENCODING"] = "utf-8:strict"  # the report must survive a strict UTF-8 terminal
    env.update(extra_env or {})
    env["PYTHONPATH"] = REPO
    if db_url:
        env["NBGRADER_DB_URL"] = db_url
    else:
        env.pop("NBGRADER_DB_URL", None)
    res = subprocess.run(
        [PY, "-m", "course_tools", *args], cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8"
    )
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
        self._run(os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "grader", "--auth=trust", "-E", "UTF8")
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


@contextlib.contextmanager
def cpu_load(n: int = 2):
    """n CPU-bound processes for the duration of the block: the grading must give the same grades."""
    procs = [subprocess.Popen([PY, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def report_section(stdout: str, assignment: str) -> list[str]:
    """The report lines of one assignment (all shards)."""
    out, inside = [], False
    for line in stdout.splitlines():
        if line.startswith("== "):
            inside = line.startswith(f"== {assignment}:")
            continue
        if inside:
            out.append(line)
    return out


def student_notes(lines: list[str], student: str) -> list[str] | None:
    """The student's line and its indented notes, or None."""
    from course_tools.validate import escape

    name = escape(student)
    for i, line in enumerate(lines):
        parts = line.split(None, 1)
        if len(parts) == 2 and (parts[1] == name or parts[1].startswith(name + ":")):
            notes = [line]
            for more in lines[i + 1 :]:
                if not more.startswith("      "):
                    break
                notes.append(more)
            return notes
    return None
