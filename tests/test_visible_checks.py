"""The visible checks (course_tools/checks/) reach every student: they must teach without containing answers.

1. No line of a model answer (the solution regions of solutions/<a>/<a>.ipynb) occurs in a visible-check module,
   even with renamed variables, other keyword arguments or other spacing: lines are compared as token sequences
   in which every name that is not an attribute or a keyword is a placeholder (``code_lines``).
2. Every visible test passes on the model answers, and each designed partial answer of tests/grading_helpers.py
   fails at least one visible test of every question it gets wrong.

Run ``python tests/test_visible_checks.py`` to list the answer lines that the lecture notebooks repeat.
"""

from __future__ import annotations

import glob
import io
import json
import keyword
import os
import re
import sys
import textwrap
import tokenize
import warnings
from contextlib import redirect_stdout

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grading_helpers as H  # noqa: E402

sys.path.insert(0, H.REPO)
from course_tools.check import tests_for as visible_tests  # noqa: E402

ASSIGNMENTS = H.assignments()
CHECKS_DIR = os.path.join(H.REPO, "course_tools", "checks")
# A statement shorter than MIN_TOKENS (``return x``, ``n = x.shape[-1]``), one with fewer than MIN_CONTENT tokens
# that are neither placeholders nor brackets and commas (``f(x, w, mu, sd)``, ``x.to(y.dtype)``), or a loop header
# says nothing about an answer.
MIN_TOKENS = 8
MIN_CONTENT = 5
NAME = "_"  # the placeholder for every name that is not an attribute or a keyword
NUMBER = "0"  # the placeholder for every number (a unary minus before it dropped)
_PUNCTUATION = (NAME, "(", ")", "[", "]", ",", ":")
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


# ------------------------------------------------------------------------------------------ the detector
def _tokens(source: str) -> list[tokenize.TokenInfo]:
    """The tokens of ``source``; a source that does not tokenise (an IPython magic) is read line by line."""
    try:
        return list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        out = []
        for i, line in enumerate(source.splitlines(), 1):
            try:
                toks = list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
            except (tokenize.TokenError, IndentationError, SyntaxError):
                continue
            out += [t._replace(start=(i, t.start[1]), end=(i, t.end[1])) for t in toks]
        return out


def code_lines(source: str) -> dict[int, tuple[str, ...]]:
    """{line number: normalised tokens} of ``source``: comments and whitespace dropped, a name that is neither an
    attribute (after a dot) nor a keyword replaced by a placeholder, every number by another (a unary minus before
    it dropped), keyword-argument names (``dim=``) dropped."""
    toks = [t for t in _tokens(source) if t.type not in _SKIP]
    lines: dict[int, list[str]] = {}
    depth = 0
    for i, t in enumerate(toks):
        if t.type == tokenize.OP and t.string in "([{":
            depth += 1
        elif t.type == tokenize.OP and t.string in ")]}":
            depth = max(depth - 1, 0)
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        prev = toks[i - 1] if i else None
        if t.type == tokenize.NAME and depth and nxt is not None and nxt.string == "=":
            continue  # a keyword argument's name: `dim=1` and `1` are the same
        if t.type == tokenize.OP and t.string == "=" and depth and prev is not None and prev.type == tokenize.NAME:
            continue
        if t.type == tokenize.OP and t.string == "-" and nxt is not None and nxt.type == tokenize.NUMBER and (
            prev is None or (prev.type == tokenize.OP and prev.string not in ")]}") or keyword.iskeyword(prev.string)
        ):
            continue  # a unary minus before a number: `.sum(-1)` and `.sum(1)` are the same reduction
        if t.type == tokenize.NAME and not keyword.iskeyword(t.string) and not (prev and prev.string == "."):
            text = NAME
        elif t.type == tokenize.NUMBER:
            text = NUMBER  # `dim=1` or `dim=2`, `0.5 * x` or `0.25 * x`: the same line of code
        else:
            text = t.string
        lines.setdefault(t.start[0], []).append(text)
    return {n: tuple(v) for n, v in lines.items()}


def _statement(tokens: tuple[str, ...]) -> tuple[str, ...]:
    """A line without what makes it a statement: ``x = <e>``, ``a, b = <e>``, ``x += <e>``, ``return <e>``."""
    if tokens[:1] in (("return",), ("yield",)):
        return tokens[1:]
    for k, tok in enumerate(tokens):
        if tok in ("=", "+=", "-=", "*=", "/=") and all(t in (NAME, ",", ".", "[", "]", "(", ")") for t in tokens[:k]):
            return tokens[k + 1:]
    return tokens


def _distinctive(body: tuple[str, ...]) -> bool:
    # a string (an einsum equation, a message) weighs three tokens
    content = sum(3 if t.lstrip("rbfuRBFU")[:1] in "\"'" else 1 for t in body if t not in _PUNCTUATION)
    loop_header = body[:1] in (("for",), ("while",)) and body[-1:] == (":",)
    return len(body) >= MIN_TOKENS and content >= MIN_CONTENT and not loop_header


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def solution_lines(notebook: str) -> list[tuple[str, tuple[str, ...]]]:
    """[(original line, normalised statement)] of every code line inside a solution region of ``notebook``
    long enough to matter."""
    out = []
    for cell in H.load(notebook)["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = H.src(cell)
        for region in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", src, re.S):
            lines = region.splitlines()
            for n, toks in code_lines(textwrap.dedent(region)).items():
                body = _statement(toks)
                if _distinctive(body):
                    out.append((lines[n - 1].strip(), body))
    return out


def find_answer_lines(source: str, answers: list[tuple[str, tuple[str, ...]]]) -> list[tuple[int, str, str]]:
    """[(line number, line of ``source``, answer line)] for each line of ``source`` that contains an answer line."""
    text = source.splitlines()
    hits = []
    for n, toks in code_lines(source).items():
        for original, body in answers:
            if _contains(toks, body):
                hits.append((n, text[n - 1].strip() if n <= len(text) else "", original))
    return hits


def all_solution_lines() -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for a in ASSIGNMENTS:
        for nb in H.notebooks(a):
            out += solution_lines(os.path.join(H.REPO, "solutions", a, nb))
    return out


def check_modules() -> list[str]:
    return sorted(glob.glob(os.path.join(CHECKS_DIR, "*.py")))


def visible_ids(assignment: str) -> dict[str, list[str]]:
    """{answer cell's grade_id: the ids passed to check(...) by the test cells that follow it}."""
    out: dict[str, list[str]] = {}
    for nb in H.notebooks(assignment):
        current = None
        for cell in H.load(os.path.join(H.REPO, "solutions", assignment, nb))["cells"]:
            if H.is_answer(cell) and cell["cell_type"] == "code":
                current = H.nbg(cell)["grade_id"]
                out[current] = []
            elif H.is_test(cell) and current is not None:
                out[current] += re.findall(r"""check\(["']([\w.]+)["']""", H.src(cell))
    return out


def namespace(assignment: str, overrides: dict[str, str] | None = None) -> dict:
    """A notebook's namespace after its setup cells and its answer cells (the model answers unless overridden)."""
    ns: dict = {"__name__": "__main__"}
    for nb in H.notebooks(assignment):
        lay = H.layout(assignment, nb)
        for cell in H.load(os.path.join(H.REPO, "solutions", assignment, nb))["cells"]:
            if cell["cell_type"] == "code" and not H.is_answer(cell) and not H.is_test(cell):
                exec(H.src(cell), ns)  # the locked setup: imports, given helpers (ch02's mixture_log_prob)
        for a in lay.answers:
            exec((overrides or {}).get(a, lay.solution_src[a]), ns)
    return ns


def failures(ids: list[str], ns: dict) -> dict[str, str]:
    """{visible test id: why it failed} over every visible test selected by ``ids``."""
    out = {}
    for test in {t.test_id: t for i in ids for t in visible_tests(i)}.values():
        try:
            with redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a partial answer's deprecation warning
                test.func(ns)
        except Exception as exc:  # a failed expectation, or the answer raised
            out[test.test_id] = f"{type(exc).__name__}: {exc}"
    return out


# ------------------------------------------------------------------------------------------ tests
LEAKY_CHECK = """
def _hutch_ref(A, n, seed):
    eps = torch.randint(0, 2, (n, A.shape[0]), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    values = ((eps @ A) * eps).sum(dim=1)
    return values.mean()
"""


def test_student_check_detector_finds_a_renamed_answer_line(tmp_path):
    answer = (
        "def f(eps, A):\n    ### BEGIN SOLUTION\n    v = ((eps @ A) * eps).sum(1)\n    return v.mean()\n"
        "    ### END SOLUTION\n"
    )
    path = tmp_path / "answer.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "source": answer}]}))
    lines = solution_lines(str(path))
    assert [line for line, _ in lines] == ["v = ((eps @ A) * eps).sum(1)"]  # `return v.mean()` is too short to count
    hits = find_answer_lines(LEAKY_CHECK, lines)
    assert [(n, line) for n, line, _ in hits] == [(4, "values = ((eps @ A) * eps).sum(dim=1)")]
    # other names, spacing and keyword arguments, as a return value: found too
    assert find_answer_lines("def f(P, M):\n    return ((P@M)*P).sum(dim = 1)\n", lines)
    # a different computation is not
    assert not find_answer_lines("w = ((eps @ A) + eps).sum(1)\n", lines)


def test_student_checks_contain_no_answer_line():
    answers = all_solution_lines()
    assert len(answers) > 60, "found too few answer lines to make this test meaningful"
    hits = [
        f"{os.path.relpath(f, H.REPO)}:{n}: {line}  <- answer line: {answer}"
        for f in check_modules()
        for n, line, answer in find_answer_lines(open(f, encoding="utf-8").read(), answers)
    ]
    assert not hits, "visible checks repeat model-answer lines (write the expected values instead):\n" + "\n".join(hits)


def test_student_check_helpers_register_no_test():
    from course_tools.check import _REGISTRY, _load_all

    _load_all()
    before = dict(_REGISTRY)
    import course_tools.checks._common  # noqa: F401

    assert _REGISTRY == before


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_student_checks_pass_on_the_solution(assignment):
    chapter = assignment.split("_")[0]
    registered = [t.test_id for t in visible_tests(chapter)]
    called = {t.test_id for ids in visible_ids(assignment).values() for i in ids for t in visible_tests(i)}
    assert registered and set(registered) == called, "every visible test is called by a test cell, and only those"
    assert failures([chapter], namespace(assignment)) == {}


@pytest.mark.parametrize("assignment", sorted(H.DESIGNED_PARTIALS))
def test_student_checks_fail_on_the_designed_partial(assignment):
    overrides, _points = H.DESIGNED_PARTIALS[assignment]
    ids = visible_ids(assignment)
    ns = namespace(assignment, overrides)
    for answer in overrides:
        assert ids[answer], f"no visible test follows {answer}"
        assert failures(ids[answer], ns), f"the designed partial {answer} of {assignment} passes {ids[answer]}"


# ------------------------------------------------------------------------------------------ lecture report
def lecture_hits(pattern: str = "chapters/**/*.ipynb") -> list[tuple[str, int, int, str, str]]:
    """[(notebook, cell index, line, the line, the answer line)] for every answer line in a lecture's code cell."""
    answers = all_solution_lines()
    out = []
    for path in sorted(glob.glob(os.path.join(H.REPO, pattern), recursive=True)):
        if ".ipynb_checkpoints" in path or "_build" in path:
            continue
        for k, cell in enumerate(H.load(path)["cells"]):
            if cell["cell_type"] == "code":
                for n, line, answer in find_answer_lines(H.src(cell), answers):
                    out.append((os.path.relpath(path, H.REPO), k, n, line, answer))
    return out


if __name__ == "__main__":  # python tests/test_visible_checks.py: the lecture notebooks' answer lines
    for nb, cell, n, line, answer in lecture_hits():
        print(f"{nb} cell {cell} line {n}: {line}\n    answer line: {answer}")
