"""Feedback students can trust and read offline.

nbgrader's default feedback page is the whole autograded notebook: every output of the grading kernel, raw
HTML/JavaScript from outputs and markdown, and MathJax 2 from a CDN.  Here (``nbgrader_config.py``)::

    c.GenerateFeedback.preprocessors = [GetGrades, OnlyVerdicts, SanitizeMarkdown, ScoreTable, CSSHTMLHeader...]
    c.GenerateFeedback.exporter_class = CourseFeedbackExporter

* :class:`OnlyVerdicts`: no output of the grading kernel reaches the student.  A test cell keeps only the
  verdict that the grader wrote (``course_tools.grading``: the kernel's outputs of test cells were already
  replaced), every other code cell loses all its outputs.  Whatever the student's code printed during grading
  (``In``, ``_ih``, globals, files, in any encoding) is not in the page.
* :class:`SanitizeMarkdown`: raw HTML that can run code (``<script>``, ``<iframe>``, event handlers,
  ``javascript:`` links, ...) in markdown cells is neutralised; on top of that the page carries a
  Content-Security-Policy that lets only the page's own MathJax scripts run (by hash), so anything missed is
  still inert.
* :class:`ScoreTable`: a table at the top naming each question (its markdown heading), each graded cell with
  what it checks, and the score.
* :class:`CourseFeedbackExporter`: MathJax 3 from the course's ``node_modules/mathjax`` inlined into the page
  (SVG output, no fonts to fetch: the file works offline, from the student's home folder), long lines wrap.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re

from nbconvert.exporters import HTMLExporter
from nbgrader import utils
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATHJAX = os.path.join(REPO_ROOT, "node_modules", "mathjax", "es5", "tex-svg.js")


def _is_test(cell) -> bool:
    return cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell)


class OnlyVerdicts(NbGraderPreprocessor):
    """Keep the grader's verdict in test cells (stream + error written by the grader); drop every other output."""

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type != "code":
            cell.pop("attachments", None) if cell.cell_type == "raw" else None
            return cell, resources
        if _is_test(cell):
            kept = []
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream" and out.get("name") == "stdout":
                    kept.append(out)
                elif out.get("output_type") == "error":
                    out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"]
                    kept.append(out)
            cell.outputs = kept
        else:
            cell.outputs = []
        cell.execution_count = None
        return cell, resources


_DANGEROUS_TAGS = r"script|iframe|frame|frameset|object|embed|applet|style|link|meta|base|form|input|button|" \
    r"textarea|select|svg|math|template|noscript|xml|portal"


def sanitize_markdown(text: str) -> str:
    text = re.sub(rf"<\s*/?\s*({_DANGEROUS_TAGS})\b[^>]*>", lambda m: html.escape(m.group(0)), text, flags=re.I)
    text = re.sub(r"\son\w+\s*=", " data-removed=", text, flags=re.I)
    text = re.sub(r"(?i)(javascript|vbscript|data)\s*:", r"\1-blocked:", text)
    return text


class SanitizeMarkdown(NbGraderPreprocessor):
    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type in ("markdown", "raw"):
            cell.source = sanitize_markdown(cell.source)
            cell.pop("attachments", None)
        if cell.cell_type == "raw":
            cell.cell_type = "markdown"
            cell.source = "```\n" + cell.source.replace("```", "'''") + "\n```"
        return cell, resources


class ScoreTable(NbGraderPreprocessor):
    """A markdown table at the top: question (heading above the cell), graded cell, what it checks, score."""

    def preprocess(self, nb, resources):
        import nbformat

        rows, question = [], ""
        for cell in nb.cells:
            if cell.cell_type == "markdown" and not utils.is_grade(cell):
                m = re.search(r"^#{1,4}\s+(.+)$", cell.source, re.M)
                if m:
                    question = m.group(1).strip()
            meta = cell.metadata.get("nbgrader", {})
            if not meta.get("grade"):
                continue
            what = "written answer (graded by a person)" if cell.cell_type == "markdown" else "hidden checks"
            if _is_test(cell):
                labels = []
                for out in cell.get("outputs", []):
                    for line in "".join(out.get("text", "")).splitlines():
                        m = re.match(r"\[(ok|FAIL)\]\s+([^:]+)", line.strip())
                        if m:
                            labels.append(m.group(2).strip())
                what = "; ".join(labels) or what
            score = meta.get("score")
            shown = "not graded yet" if score is None else f"{float(score):g} / {float(meta.get('points', 0)):g}"
            rows.append((question, meta.get("grade_id", ""), what, shown))
        if rows:
            esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines = ["**Scores**", "", "| question | graded cell | what it checks | score |", "|---|---|---|---|"]
            lines += [f"| {esc(q)} | `{esc(g)}` | {esc(w)} | {esc(s)} |" for q, g, w, s in rows]
            nb.cells.insert(0, nbformat.v4.new_markdown_cell("\n".join(lines)))
        return nb, resources


WRAP_CSS = """
<style>
div.output_area pre, div.output_text pre, div.output_subarea pre, .input_area pre, div.highlight pre {
  white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-word;
}
table { margin-bottom: 1em; }
</style>
"""
MATHJAX_CONFIG = (
    "window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], "
    "['\\\\[', '\\\\]']], processEscapes: true}, svg: {fontCache: 'global'}, "
    "options: {enableMenu: false}};"
)


def _sha256(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode() + "'"


class CourseFeedbackExporter(HTMLExporter):
    """nbgrader's feedback template, with local MathJax inlined, wrapping lines and a strict CSP."""

    mathjax_file = Unicode(MATHJAX, help="MathJax 3 bundle inlined into every feedback page").tag(config=True)

    def from_notebook_node(self, nb, resources=None, **kw):
        output, resources = super().from_notebook_node(nb, resources, **kw)
        return self.finish(output), resources

    def finish(self, page: str) -> str:
        # drop every script the template brings (MathJax 2 from a CDN, require.js, ...): the page needs none
        page = re.sub(r"<script\b[^>]*>.*?</script\s*>", "", page, flags=re.S | re.I)
        try:
            with open(self.mathjax_file, encoding="utf-8") as fh:
                mathjax = fh.read().replace("</script", "<\\/script")
        except OSError:
            mathjax = ""
        scripts = [MATHJAX_CONFIG] + ([mathjax] if mathjax else [])
        csp = (
            "default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
            "base-uri 'none'; form-action 'none'; script-src " + " ".join(_sha256(s) for s in scripts)
        )
        head = (
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
            + WRAP_CSS
            + "".join(f"<script>{s}</script>\n" for s in scripts)
        )
        m = re.search(r"<head[^>]*>", page, flags=re.I)
        if m:
            # the CSP must come before anything else in <head>
            page = page[: m.end()] + "\n" + head + page[m.end() :]
        else:
            page = head + page
        return page
