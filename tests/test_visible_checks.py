"""The visible checks (course_tools/checks/) reach every student: they must teach without containing answers.

1. No line of a model answer (the solution regions of solutions/<a>/<a>.ipynb) occurs in a visible-check module,
   even with renamed variables, other keyword arguments or other spacing: lines are compared as token sequences
   in which every name that is not an attribute or a keyword is a placeholder (``code_lines``).
2. Every visible test passes on the model answers, and each designed partial answer of tests/grading_helpers.py
   fails at least one visible test of every question it gets wrong.

Run ``python tests/test_visible_checks.py chapters`` to list the answer lines that the lecture notebooks repeat.
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
from contextlib import redirect_stdout

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grading_helpers as H  # noqa: E402

sys.path.insert(0, H.REPO)
from course_tools.check import tests_for  # noqa: E402

ASSIGNMENTS = H.assignments()
CHECKS_DIR = os.path.join(H.REPO, "course_tools", "checks")
# A statement shorter than MIN_TOKENS (``return x``, ``n = x.shape[-1]``), one with fewer than MIN_CONTENT tokens
# that are neither placeholders nor brackets and commas (``f(x, w, mu, sd)``), or a loop header says nothing
# about an answer.
MIN_TOKENS = 8
MIN_CONTENT = 4
NAME = "_"  # the placeholder for every name that is not an attribute or a keyword
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
    attribute (after a dot) nor a keyword replaced by a placeholder, keyword-argument names (``dim=``) dropped."""
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
        if t.type == tokenize.NAME and not keyword.iskeyword(t.string) and not (prev and prev.string == "."):
            text = NAME
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
    # a string (an einsum equation, a message) weighs two tokens
    content = sum(2 if t.lstrip("rbfuRBFU")[:1] in "\"'" else 1 for t in body if t not in (NAME, "(", ")", "[", "]", ",", ":"))
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
