"""The lectures must not print the graded answers: an assignment asks for what the reader has not been shown.

1. No line of a model answer (the solution regions of solutions/<a>/<a>.ipynb) appears in a lecture notebook's code
   cells **or in their committed outputs** (``inspect.getsource`` prints a library function as text or as
   highlighted HTML). Lines are compared by the detector of tests/test_visible_checks.py: token sequences in which
   every name that is not an attribute or a keyword is a placeholder and keyword-argument names are dropped, so a
   renamed copy is found too.
2. No written model answer (a graded markdown cell) shares a passage of ``MIN_WORDS`` consecutive words with the
   prose of a lecture cell (its text, and so the answers of its "check your understanding" dropdowns), nor is it a
   close paraphrase of one: at most ``MAX_SHARED`` of the answer's three-word phrases occur in a single lecture
   cell. Both are compared as lower-case words with markup, TeX commands and punctuation dropped. (Measured on the
   answers of 2026-12-06: the two that the course's review found answered in a dropdown share 21 and 22 % of their
   phrases with it, the others at most 13 %.)

Lectures keep their demos; when a lecture and an assignment touch the same idea, the assignment asks for a variation
the lecture does not print. ``python tests/test_lecture_overlap.py [assignment ...]`` lists every hit.
"""

from __future__ import annotations

import glob
import html
import json
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grading_helpers as H  # noqa: E402
import test_visible_checks as V  # noqa: E402

ASSIGNMENTS = H.assignments()
MIN_WORDS = 12  # a shared run of 12 words is a copied sentence, not a shared definition ("the log-det of the ...")
MAX_SHARED = 0.2  # the largest share of an answer's three-word phrases that one lecture cell may contain


# ------------------------------------------------------------------------------------------ the lectures
def lecture_notebooks() -> list[str]:
    paths = glob.glob(os.path.join(H.REPO, "chapters", "**", "*.ipynb"), recursive=True)
    return sorted(p for p in paths if ".ipynb_checkpoints" not in p and "_build" not in p)


def output_texts(cell: dict) -> list[str]:
    """The text a reader sees in a code cell's outputs: streams, plain text, and HTML with its tags removed (a
    highlighted listing is split into one tag per token)."""
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append("".join(o.get("text", "")))
        for mime, value in o.get("data", {}).items():
            text = "".join(value) if isinstance(value, list) else str(value)
            if mime == "text/plain" or mime == "text/markdown":
                out.append(text)
            elif mime == "text/html":
                out.append(html.unescape(re.sub(r"<[^>]+>", "", text)))
    return out


def code_hits(answers: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    """'notebook cell K (code|output) line N: the line  <- answer line' for each answer line a lecture prints."""
    hits = []
    for path in lecture_notebooks():
        name = os.path.relpath(path, H.REPO)
        for k, cell in enumerate(H.load(path)["cells"]):
            if cell["cell_type"] != "code":
                continue
            sources = [("code", H.src(cell))] + [("output", t) for t in output_texts(cell)]
            for where, text in sources:
                for n, line, answer in V.find_answer_lines(text, answers):
                    hits.append(f"{name} cell {k} ({where}) line {n}: {line}  <- answer line: {answer}")
    return hits


# ------------------------------------------------------------------------------------------ written answers
def words(text: str) -> list[str]:
    """Lower-case words and numbers of a Markdown text: math, markup and punctuation reduced to their words."""
    text = re.sub(r"```\{dropdown\}|:::\{dropdown\}|\{[a-z-]+\}`[^`]*`", " ", text)
    text = re.sub(r"\\[a-zA-Z]+", " ", text)  # TeX commands (\mathbb, \frac) say nothing about the wording
    return re.findall(r"[a-z0-9]+", text.lower())


def runs(ws: list[str], n: int = MIN_WORDS) -> set[tuple[str, ...]]:
    return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def written_answers(assignment: str) -> list[tuple[str, str]]:
    """[(grade_id, model answer)] of the graded markdown cells of an assignment's source notebooks."""
    out = []
    for nb in H.notebooks(assignment):
        for cell in H.load(os.path.join(H.REPO, "solutions", assignment, nb))["cells"]:
            if cell["cell_type"] == "markdown" and H.nbg(cell).get("grade"):
                out.append((H.nbg(cell)["grade_id"], H.src(cell)))
    return out


def lecture_prose() -> list[tuple[str, int, str]]:
    return [
        (os.path.relpath(path, H.REPO), k, H.src(cell))
        for path in lecture_notebooks()
        for k, cell in enumerate(H.load(path)["cells"])
        if cell["cell_type"] == "markdown"
    ]


def prose_hits(answers: list[tuple[str, str]], prose: list[tuple[str, int, str]]) -> list[str]:
    hits = []
    for grade_id, answer in answers:
        mine, phrases = runs(words(answer)), runs(words(answer), 3)
        for name, k, text in prose:
            shared = mine & runs(words(text))
            if shared:
                hits.append(f"{grade_id} shares {len(shared)} runs of {MIN_WORDS} words with {name} cell {k}, "
                            f"e.g. '{' '.join(sorted(shared)[0])}'")
            elif phrases and len(phrases & runs(words(text), 3)) > MAX_SHARED * len(phrases):
                share = len(phrases & runs(words(text), 3)) / len(phrases)
                hits.append(f"{grade_id} paraphrases {name} cell {k}: {share:.0%} of its three-word phrases are there")
    return hits


# ------------------------------------------------------------------------------------------ the detectors
GETSOURCE_HTML = (
    '<div class="highlight"><pre><span></span><span class="k">def</span> <span class="nf">u_hat</span>'
    '<span class="p">(</span><span class="n">w</span><span class="p">,</span> <span class="n">u</span>'
    '<span class="p">):</span>\n    <span class="n">m</span> <span class="o">=</span> '
    '<span class="o">-</span><span class="mi">1</span> <span class="o">+</span> <span class="n">torch</span>'
    '<span class="o">.</span><span class="n">nn</span><span class="o">.</span><span class="n">functional</span>'
    '<span class="o">.</span><span class="n">softplus</span><span class="p">(</span><span class="n">w</span> '
    '<span class="o">@</span> <span class="n">u</span><span class="p">)</span>\n</pre></div>'
)


def test_detectors_find_a_printed_answer_and_a_copied_sentence(tmp_path):
    answer = (
        "def planar_u_hat(w, u):\n    ### BEGIN SOLUTION\n    m = -1 + torch.nn.functional.softplus(w @ u)\n"
        "    return m\n    ### END SOLUTION\n"
    )
    path = tmp_path / "a.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "source": answer}]}))
    lines = V.solution_lines(str(path))
    assert len(lines) == 1
    cell = {"outputs": [{"output_type": "display_data", "data": {"text/html": GETSOURCE_HTML}}]}
    assert [n for t in output_texts(cell) for n, _, _ in V.find_answer_lines(t, lines)] == [2]
    cell = {"outputs": [{"output_type": "stream", "name": "stdout", "text": ["    m = -1 + F.softplus(a @ b)\n"]}]}
    assert not [h for t in output_texts(cell) for h in V.find_answer_lines(t, lines)]  # `F.` is another attribute
    copied = "k = -1 + torch.nn.functional.softplus(a @ b)"
    cell = {"outputs": [{"output_type": "stream", "name": "stdout", "text": [copied]}]}
    assert [h for t in output_texts(cell) for h in V.find_answer_lines(t, lines)]

    model = ("The proposal has lighter tails than the target, so the weights grow without bound in the tails and "
             "the estimator has infinite variance.")
    lecture = ("```{dropdown} Answer\nBecause the proposal has **lighter tails** than the target, so the weights "
               "grow without bound in the tails, and the estimator ...\n```")
    assert prose_hits([("q", model)], [("l.ipynb", 3, lecture)])
    reworded = "Lighter proposal tails make w = p/q unbounded, so E_q[w^2] diverges: infinite variance."
    assert not prose_hits([("q", reworded)], [("l.ipynb", 3, lecture)])
    paraphrase = ("As the proposal has lighter tails than the target, weights grow unboundedly in tails: "
                  "infinite variance.")
    assert prose_hits([("q", paraphrase)], [("l.ipynb", 3, lecture)])  # no run of 12 words, 8 of 14 phrases


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_no_lecture_prints_an_answer_line(assignment):
    answers = [a for nb in H.notebooks(assignment)
               for a in V.solution_lines(os.path.join(H.REPO, "solutions", assignment, nb))]
    assert answers, f"{assignment} has no answer line long enough to compare"
    hits = code_hits(answers)
    assert not hits, (f"{len(hits)} model-answer lines of {assignment} are printed by a lecture (ask for a variation "
                      "the lecture does not show):\n" + "\n".join(hits))


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_written_answer_is_not_a_lecture_passage(assignment):
    answers = written_answers(assignment)
    assert len(answers) == 1, f"{assignment} has {len(answers)} written questions (one is the rule)"
    hits = prose_hits(answers, lecture_prose())
    assert not hits, f"the written question of {assignment} is answered in a lecture:\n" + "\n".join(hits)


if __name__ == "__main__":
    prose = lecture_prose()
    total = 0
    for a in sys.argv[1:] or ASSIGNMENTS:
        answers = [x for nb in H.notebooks(a) for x in V.solution_lines(os.path.join(H.REPO, "solutions", a, nb))]
        hits = code_hits(answers) + prose_hits(written_answers(a), prose)
        total += len(hits)
        print(f"== {a}: {len(hits)} hits")
        for h in hits:
            print("  " + h)
    print(f"total: {total}")
