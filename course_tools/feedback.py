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


_SCHEME = re.compile(r"(?i)\b(javascript|vbscript|data)(\s*):")
_SAFE_IMAGE = re.compile(r"(?i)data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]+")
_TAG = re.compile(r"<[A-Za-z][^<>]*>?")
_LINK_TARGET = re.compile(r"(\]\(\s*<?|^\s{0,3}\[[^\]]+\]:\s*<?)([^)\s>]*)", re.M)
# a safe subset of CSS in a student's inline style: colours, fonts, borders, spacing that is not negative.
# Nothing that positions, transforms, layers or sizes a box (no fake score table drawn over the real one).
_CSS_ALLOWED = {
    "color", "background-color", "font-weight", "font-style", "font-family", "font-size", "text-decoration",
    "text-align", "border", "border-color", "border-style", "border-width", "border-radius", "padding",
    "margin", "vertical-align",
}
_CSS_VALUE = re.compile(r"^[#\w\s.,%'\"()-]*$")


def safe_css(style: str) -> str:
    """Keep only the allowed declarations of an inline style (see ``_CSS_ALLOWED``); drop the rest."""
    kept = []
    for decl in html.unescape(style).split(";"):
        prop, sep, value = decl.partition(":")
        prop, value = prop.strip().lower(), value.strip()
        if not sep or prop not in _CSS_ALLOWED or not _CSS_VALUE.match(value) or not value:
            continue
        low = value.lower()
        if re.search(r"url|expression|var\(|calc\(|!|-\s*[\d.]", low):  # no loading, no negative spacing
            continue
        kept.append(f"{prop}: {value}")
    return "; ".join(kept)


def _block_schemes(text: str, allow_images: bool) -> str:
    def repl(m: re.Match) -> str:
        if allow_images and _SAFE_IMAGE.match(text, m.start()):
            return m.group(0)
        return f"{m.group(1)}-blocked{m.group(2)}:"

    return _SCHEME.sub(repl, text)


def _sanitize_tag(tag: str) -> str:
    """One HTML tag: event handlers and script URLs neutralised, inline style cut to the safe subset."""
    if re.search(r"(?i)\son\w+\s*=|(javascript|vbscript)\s*:", html.unescape(tag)) and not re.search(
        r"(?i)\son\w+\s*=|(javascript|vbscript)\s*:", tag
    ):
        return html.escape(tag)  # hidden behind character references: show it as text
    tag = re.sub(r"(?i)(\s)on\w+\s*=", r"\1data-removed=", tag)
    tag = _block_schemes(tag, allow_images=True)

    def style(m: re.Match) -> str:
        css = safe_css(m.group(2) if m.group(2) is not None else m.group(3))
        return f'{m.group(1)}style="{html.escape(css)}"' if css else m.group(1).rstrip() + " "

    return re.sub(r"""(?i)(\s)style\s*=\s*(?:"([^"]*)"|'([^']*)')""", style, tag)


def sanitize_markdown(text: str) -> str:
    """Neutralise what could run or cover the page in a markdown cell; leave the rest of the text as written.

    Dangerous tags are shown as text; inside the remaining HTML tags, event handlers become ``data-removed=``,
    ``javascript:``/``vbscript:``/``data:`` URLs are blocked (except inline images) and inline styles keep only
    a safe subset of CSS; markdown link targets get the same URL rule. Text outside tags and links (``one = 1``,
    ``data: the training set``) is not touched. The page's Content-Security-Policy stops anything missed."""
    text = re.sub(rf"<\s*/?\s*({_DANGEROUS_TAGS})\b[^>]*>", lambda m: html.escape(m.group(0)), text, flags=re.I)
    text = _TAG.sub(lambda m: _sanitize_tag(m.group(0)), text)
    return _LINK_TARGET.sub(lambda m: m.group(1) + _block_schemes(m.group(2), allow_images=True), text)


_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
MAX_ATTACHMENT_BYTES = 2 * 2**20


def inline_attachments(cell) -> None:
    """Pasted images (``attachment:name``) become ``data:`` URIs; any other reference to an attachment (missing,
    not an image, too large, malformed) is replaced by a note. nbconvert refuses a notebook whose markdown
    refers to an attachment the cell does not carry, so no reference may survive without one."""
    attachments = cell.get("attachments") or {}

    def uri(name: str) -> str | None:
        bundle = attachments.get(name) if isinstance(attachments, dict) else None
        if not isinstance(bundle, dict):
            return None
        for mime in _IMAGE_TYPES:
            data = bundle.get(mime)
            if isinstance(data, list):
                data = "".join(x for x in data if isinstance(x, str))
            if isinstance(data, str):
                data = re.sub(r"\s+", "", data)
                if len(data) <= MAX_ATTACHMENT_BYTES and re.fullmatch(r"[A-Za-z0-9+/=]*", data):
                    return f"data:{mime};base64,{data}"
        return None

    def image(m: re.Match) -> str:
        found = uri(m.group(2))
        return f"![{m.group(1)}]({found})" if found else f"*(attachment {html.escape(m.group(2))} not shown)*"

    text = re.sub(r"!\[([^\]]*)\]\(\s*<?attachment:([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", image, cell.source)
    text = re.sub(r"(?i)attachment:([^\s)\"'>]+)",
                  lambda m: uri(m.group(1)) or f"(attachment {html.escape(m.group(1))} not shown)", text)
    cell.source = text
    cell.pop("attachments", None)


class SanitizeMarkdown(NbGraderPreprocessor):
    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type in ("markdown", "raw"):
            cell.source = sanitize_markdown(cell.source)
            if cell.cell_type == "markdown":
                inline_attachments(cell)  # after sanitising: the data: URIs it writes are images by construction
            cell.pop("attachments", None)
        if cell.cell_type == "raw":
            cell.cell_type = "markdown"
            cell.source = "```\n" + cell.source.replace("```", "\'\'\'") + "\n```"
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
