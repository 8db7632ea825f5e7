"""Checks of the book as one PDF (``make pdf`` writes _build/pdf/dgm-flows.pdf; the test command builds it first).

What a reader of the PDF relies on: every chapter, lecture and assignment in the order of _toc.yml, each with a
bookmark and its page number in the printed contents; equations typeset (no raw TeX) and numbered as in the HTML
book; every figure of the lecture notebooks embedded at its own resolution; the landing page links the PDF.
A rendered page (the first page of the change-of-variables lecture) is written to artifacts/pdf_change_of_variables.png.
Cost: about 15 s on the loaded 2-core machine (poppler's pdftotext, pdfimages and pdftoppm, and pypdf for the
bookmarks); building the PDF (scripts/build_pdf.sh, run by the test command before pytest) about 2-4 min.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

from tests.test_book import toc_files

ROOT = Path(__file__).resolve().parents[1]
PDF = ROOT / "_build" / "pdf" / "dgm-flows.pdf"
HTML = ROOT / "_build" / "html"
ARTIFACTS = ROOT / "artifacts"

# The book had 296 A4 pages when this test was written (7 chapters, 2026-12-07). A chapter more, or a print
# style that drops half the content or doubles it, moves the count out of this range: look at the PDF then.
PAGES = (220, 420)

pytestmark = pytest.mark.book

# Raw TeX where typeset math belongs: Sphinx writes inline math as \( \), display math as \[ \] (or an
# environment), MyST's source as $$; MathJax replaces all of them when it runs.
RAW_TEX = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\\end\{|\\frac|\\mathbf|\\mathcal|\\sum_|\\log\b|\\tag\{")


def _norm(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u2013", "-").replace("\u2014", "-").replace("\u00a0", " ")
    return re.sub(r"\s+", " ", text).strip()


def _loose(text: str) -> str:
    return re.sub(r"[\s-]", "", _norm(text))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run `make system` (Debian's poppler-utils)")
    return path


@pytest.fixture(scope="module")
def pdf() -> Path:
    if not PDF.exists():
        pytest.fail("the PDF is not built: run `make pdf` (the test command builds it before this test)")
    return PDF


@lru_cache(maxsize=1)
def _pages_text(path: Path) -> tuple[str, ...]:
    out = subprocess.run([_tool("pdftotext"), "-enc", "UTF-8", str(path), "-"], capture_output=True, text=True,
                         check=True).stdout
    return tuple(out.split("\f"))[: _page_count(path)]


@lru_cache(maxsize=1)
def _page_count(path: Path) -> int:
    info = subprocess.run([_tool("pdfinfo"), str(path)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))


def _bookmarks(path: Path) -> list[tuple[int, str, int]]:
    """(level, title, 1-based page) of every bookmark, in order."""
    from pypdf import PdfReader

    reader = PdfReader(path)
    out = []

    def walk(items, level):
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
            else:
                out.append((level, item.title, reader.get_destination_page_number(item) + 1))

    walk(reader.outline, 1)
    return out


def _source_title(doc: str) -> str:
    """The first-level heading of a book page, from its source."""
    nb = ROOT / f"{doc}.ipynb"
    if nb.exists():
        cells = json.loads(nb.read_text())["cells"]
        source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        source = (ROOT / f"{doc}.md").read_text()
    return next(line[2:].strip() for line in source.splitlines() if line.startswith("# "))


def _toc_titles() -> list[tuple[str, str]]:
    """(document, title) for every page of _toc.yml after the landing page."""
    return [(doc, _source_title(doc)) for doc in toc_files()[1:]]


def _code_corpus() -> str:
    """Everything the book shows as code: code cells and their text outputs, fenced and inline code in the
    Markdown. TeX inside it (a matplotlib label, an authors' example) is code, not math that failed to render."""
    parts = []
    sources = [ROOT / f"{d}.ipynb" for d in toc_files()] + [ROOT / f"{d}.md" for d in toc_files()]
    for path in sources:
        if not path.exists():
            continue
        if path.suffix == ".ipynb":
            for cell in json.loads(path.read_text())["cells"]:
                src = "".join(cell["source"])
                if cell["cell_type"] == "code":
                    parts.append(src)
                    for o in cell.get("outputs", []):
                        parts.append("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")))
                else:
                    parts += re.findall(r"```.*?```|`[^`\n]+`", src, re.S)
        else:
            parts += re.findall(r"```.*?```|`[^`\n]+`", path.read_text(), re.S)
    return _skeleton("\n".join(parts))


def _skeleton(text: str) -> str:
    """Letters, digits and TeX's backslashes and dollars only: a code line as pdftotext gives it back (a minus
    sign may come back as another dash, or not at all) still matches its source."""
    return re.sub(r"[^A-Za-z0-9\\$]", "", text)


def raw_tex_outside_code(text: str, code: str) -> list[str]:
    """Lines of ``text`` holding raw TeX that is not part of the book's code (see RAW_TEX); ``code`` is the
    skeleton of the book's code (see _skeleton)."""
    bad = []
    for line in text.splitlines():
        if RAW_TEX.search(line) and _skeleton(line) not in code:
            bad.append(line.strip()[:120])
    return bad


# ------------------------------------------------------------------------------------------------ the checks
def test_page_count_is_in_the_expected_range(pdf):
    n = _page_count(pdf)
    assert PAGES[0] <= n <= PAGES[1], f"the PDF has {n} pages, expected {PAGES[0]}-{PAGES[1]}"


def test_title_page_and_printed_contents_with_page_numbers(pdf):
    pages = _pages_text(pdf)
    title = _norm(pages[0])
    assert "Deep Generative Models" in title and "normalizing flows" in title, f"no title page: {title[:200]}"
    marks = _bookmarks(pdf)
    assert marks[0][1:] == ("Contents", 2), f"the first bookmark should be the contents on page 2: {marks[0]}"
    landing = marks[1][2]  # the contents fill the pages between the title page and the landing page
    layout = subprocess.run([_tool("pdftotext"), "-layout", "-enc", "UTF-8", "-f", "2", "-l", str(landing - 1),
                             str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    lines = [_norm(line) for line in layout.splitlines() if line.strip()]
    assert lines[0] == "Contents", f"page 2 is not the table of contents: {lines[:3]}"
    for _, title, page in marks[1:]:
        # "5. Normalizing flows    157": each entry names its chapter or section and the page it starts on
        # (a long title wraps; its page number stands on its first line)
        start = _norm(title)[:40]
        assert any(line.startswith(start) and line.endswith(f" {page}") for line in lines), \
            f"the contents do not give page {page} for {title!r}"


def test_every_chapter_lecture_and_assignment_in_order_with_a_bookmark(pdf):
    pages = _pages_text(pdf)
    marks = _bookmarks(pdf)
    expected = _toc_titles()
    by_title = {re.sub(r"^\d+(\.\d+)*\. ", "", _norm(t)): (level, p) for level, t, p in marks}
    last_page = 0
    for doc, title in expected:
        key = _norm(title)
        assert key in by_title, f"no bookmark for {doc} ({title!r}); bookmarks: {[t for _, t, _ in marks][:50]}"
        level, page = by_title[key]
        chapter = doc.endswith("/index") or "/" not in doc
        assert level == (1 if chapter else 2), f"{title!r}: bookmark at level {level}"
        assert page > last_page, f"{title!r} starts on page {page}, not after the page before it ({last_page})"
        # pdftotext joins a word hyphenated at a line end without its hyphen: compare without hyphens and spaces
        assert _loose(key) in _loose(pages[page - 1]), f"page {page} (the bookmark of {doc}) does not show {title!r}"
        last_page = page


def test_equations_are_typeset_and_numbered_as_in_the_html_book(pdf):
    text = "\n".join(_pages_text(pdf))
    bad = raw_tex_outside_code(text, _code_corpus())
    assert not bad, "raw TeX in the PDF where math belongs:\n" + "\n".join(bad[:20])
    # typeset math leaves its symbols in the text (MathJax's fonts map their glyphs to Unicode); raw TeX would
    # leave \sum and \int (235 and 37 of them when written)
    symbols = {c: text.count(c) for c in "\u2211\u222b\u2202"}  # sum, integral, partial
    assert symbols["\u2211"] >= 50 and symbols["\u222b"] >= 10 and symbols["\u2202"] >= 20, \
        f"too few typeset math symbols in the PDF: {symbols}"
    # Equation numbers: every number the HTML book shows (span.eqno), e.g. (5.1.3), is in the PDF's text.
    source = HTML if (HTML / "intro.html").exists() else ROOT / "_build" / "singlehtml"
    numbers = set()
    for page in source.rglob("*.html"):
        numbers |= set(re.findall(r'<span class="eqno">(\(\d+(?:\.\d+)*\))', page.read_text(errors="replace")))
    assert len(numbers) > 100, f"found only {len(numbers)} equation numbers in {source}"
    flat = _norm(text)
    missing = sorted(n for n in numbers if n not in flat)
    assert not missing, f"equation numbers of the HTML book missing from the PDF: {missing[:20]}"
    # References to equations, as the prose writes them, resolve to the same numbers.
    for phrase in ["Equation (0.1) is the whole course in one line"]:
        assert phrase in flat, f"{phrase!r} is not in the PDF"
    # each number once beside its equation, every other time in a reference ("by (5.1.3)"): 350 when written
    references = len(re.findall(r"\(\d\.\d\.\d+\)", flat)) - len(numbers)
    assert references >= 100, f"only {references} references to numbered equations in the PDF"


def test_every_figure_of_the_lectures_is_embedded_at_its_own_resolution(pdf):
    import base64
    import io

    from PIL import Image

    figures = []
    for nb in sorted((ROOT / "chapters").glob("*/*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            for o in cell.get("outputs", []):
                png = o.get("data", {}).get("image/png")
                if png:
                    figures.append((nb.stem, Image.open(io.BytesIO(base64.b64decode("".join(png)))).size))
    assert len(figures) > 40, f"found only {len(figures)} figures in the lecture notebooks"
    listing = subprocess.run([_tool("pdfimages"), "-list", str(pdf)], capture_output=True, text=True,
                             check=True).stdout.splitlines()[2:]
    images = [row.split() for row in listing if row.split()[2] == "image"]
    assert len(images) >= len(figures), f"{len(images)} images in the PDF, {len(figures)} figures in the lectures"
    sizes = {(int(r[3]), int(r[4])) for r in images}
    scaled = [(nb, size) for nb, size in figures if size not in sizes]
    assert not scaled, f"figures not embedded at their own pixel size (resampled or missing): {scaled[:10]}"
    # the animations: a strip of frames in place of the player
    strips = re.findall(r"Frames [\d, ]+ of the \d+-frame animation", _norm("\n".join(_pages_text(pdf))))
    assert len(strips) == 2, f"expected a frame strip for each of the 2 animations, found {strips}"


def test_a_rendered_page_is_kept_as_an_artifact(pdf):
    marks = _bookmarks(pdf)
    page = next(p for _, t, p in marks if "change of variables: densities" in t)
    ARTIFACTS.mkdir(exist_ok=True)
    stem = ARTIFACTS / "pdf_change_of_variables"
    subprocess.run([_tool("pdftoppm"), "-png", "-r", "100", "-singlefile", "-f", str(page), "-l", str(page),
                    str(pdf), str(stem)], check=True)
    from PIL import Image

    with Image.open(f"{stem}.png") as im:
        assert im.size[0] > 700 and im.size[1] > 1000, im.size
        gray = im.convert("L")
        dark = sum(gray.histogram()[:128]) / (im.size[0] * im.size[1])
    assert 0.005 < dark < 0.5, f"the rendered page is blank or black ({dark:.1%} dark pixels)"


def test_the_pdf_holds_no_solution_or_hidden_test(pdf, tmp_path):
    from course_tools.leaks import find_leaks, leak_patterns

    text = tmp_path / "book.txt"
    text.write_text("\n".join(_pages_text(pdf)))
    leaks = find_leaks([text], leak_patterns())
    assert not leaks, f"solution code or hidden tests in the PDF: {[p[:80] for _, p in leaks[:10]]}"


def test_the_landing_page_links_the_pdf():
    intro = (ROOT / "intro.md").read_text()
    assert 'href="dgm-flows.pdf"' in intro, "intro.md does not link the PDF"
    if not (HTML / "intro.html").exists():
        pytest.skip("the HTML book is not built")
    assert 'href="dgm-flows.pdf"' in (HTML / "intro.html").read_text()
    if PDF.exists():
        copy = HTML / "dgm-flows.pdf"
        assert copy.exists(), "the HTML book does not hold the PDF its landing page links (run make pdf or make book)"
        assert copy.read_bytes() == PDF.read_bytes(), "the HTML book holds an older PDF than _build/pdf"


def test_the_raw_tex_check_finds_unrendered_math():
    """The raw-TeX check itself: math that MathJax did not typeset is found, TeX inside code is not."""
    code = _skeleton('ax.set_title(r"$\\mathbf{x}$")')
    assert raw_tex_outside_code("the density \\(p_X(\\mathbf{x})\\) of the data", code)
    assert raw_tex_outside_code("$$\n\\log p(x) = 0\n$$", code)
    assert not raw_tex_outside_code('ax.set_title(r"$\\mathbf{x}$")', code)
    assert not raw_tex_outside_code("the density p X (x) of the data", code)
