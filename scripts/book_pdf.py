"""Print the book to one PDF with headless Chromium (``make pdf``; ``scripts/build_pdf.sh`` builds its input).

Input: the single-page build of the book (``jupyter-book build --builder singlehtml``) in ``_build/singlehtml``,
served on loopback. Output: ``_build/pdf/dgm-flows.pdf``. Offline: the page, MathJax and its fonts, and the
figures all come from the build folder; Chromium is Debian's ``chromium``, driven over the DevTools protocol
by ``tests/browser.py`` (the same driver as the browser tests).

Steps, in the page before printing (``PREPARE_JS``): wait until MathJax has typeset every equation (nothing is
printed when one is left as TeX, MathJax reports an error, a figure did not load or the page asked for anything
outside the build) and every figure has loaded; replace each animation by a strip of four of its frames; add a
title page and the landing page to the printed table of contents (the theme's); start every page of the book on
a new sheet. The page is laid out for print (``_static/print.css``, A4) before MathJax and the fonts settle. Then:

1. print the whole book once, with "000" in the contents where the page numbers go, and read from that PDF the
   page on which every chapter and section starts (Chromium writes a named destination for every link target);
2. print the title page and the contents alone, now with those numbers (seconds, the rest is hidden), and put
   their text on the first pages of the book (``assemble``; the numbers take the same room as "000", so the
   contents keep their length and links, which is checked);
3. add PDF bookmarks (the landing page, chapters with their lectures and assignment, the course pages) with
   ``pypdf``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import Browser, find_chromium, serve_directory  # noqa: E402

# pypdf warns that Chromium's trailer under-counts the objects; the file reads correctly (poppler agrees).
logging.getLogger("pypdf").setLevel(logging.ERROR)

SITE = ROOT / "_build" / "singlehtml"
PDF = ROOT / "_build" / "pdf" / "dgm-flows.pdf"

# Wait for figures and math, then turn the interactive page into a printable one. Returns what it found, so the
# script can refuse to write a PDF with raw TeX or missing figures in it.
PREPARE_JS = r"""(async (meta) => {
  const report = {};
  // Figures: load every image now (lazy ones too), then wait for all of them.
  const imgs = [...document.querySelectorAll('img')];
  imgs.forEach(im => { im.loading = 'eager'; });
  await Promise.all(imgs.map(im => im.complete ? 0 : new Promise(r => { im.onload = im.onerror = r; })));
  report.images = imgs.length;
  report.broken_images = imgs.filter(im => !im.naturalWidth).map(im => im.getAttribute('src').slice(0, 80));

  // Math: MathJax typesets after load; its startup promise resolves when the first pass is done.
  if (!window.MathJax || !MathJax.startup) { report.mathjax = false; return report; }
  await MathJax.startup.promise;
  if (MathJax.typesetPromise) await MathJax.typesetPromise();
  report.mathjax = true;
  const math = [...document.querySelectorAll('.math')];
  report.math = math.length;
  report.untypeset = math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80));
  report.math_errors = [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 80));
  await document.fonts.ready;

  // Animations (matplotlib's to_jshtml): a strip of four frames instead of the player.
  report.animations = 0;
  document.querySelectorAll('img[id^="_anim_img"]').forEach(img => {
    const anim = window['anim' + img.id.slice('_anim_img'.length)];
    const box = img.closest('.animation') || img.parentElement;
    if (!anim || !anim.frames || !anim.frames.length) return;
    const n = anim.frames.length;
    const picks = [...new Set([0, Math.round((n - 1) / 3), Math.round(2 * (n - 1) / 3), n - 1])];
    const strip = document.createElement('figure');
    strip.className = 'print-animation-strip';
    const row = document.createElement('div');
    row.className = 'print-animation-frames';
    picks.forEach(i => {
      const still = document.createElement('img');
      still.src = anim.frames[i].src;
      still.alt = `frame ${i + 1} of ${n} of the animation`;
      row.appendChild(still);
    });
    const cap = document.createElement('figcaption');
    cap.textContent =
      `Frames ${picks.map(i => i + 1).join(', ')} of the ${n}-frame animation (the HTML book plays it).`;
    strip.append(row, cap);
    box.after(strip);
    box.classList.add('print-animation-player');
    report.animations += 1;
  });
  await Promise.all([...document.querySelectorAll('.print-animation-strip img')].map(im => im.decode()));

  // Every page of the book starts with an empty <span id="document-..."> before its section: move it into the
  // section, so that a link to it (the contents, the bookmarks) lands on the page where the section starts.
  document.querySelectorAll('span[id^="document-"]').forEach(span => {
    const next = span.nextElementSibling;
    if (next && next.tagName === 'SECTION') { next.prepend(span); next.classList.add('print-document'); }
  });

  // Title page, before the theme's printed table of contents.
  const body = document.querySelector('#jb-print-docs-body');
  report.print_toc = !!document.querySelector('#jb-print-toc');
  if (body) {
    const title = document.createElement('section');
    title.className = 'print-title-page';
    title.innerHTML = `<p class="print-title"></p><p class="print-subtitle"></p><p class="print-author"></p>
      <p class="print-edition"></p><p class="print-note"></p>`;
    title.querySelector('.print-title').textContent = meta.title;
    title.querySelector('.print-subtitle').textContent = meta.subtitle;
    title.querySelector('.print-author').textContent = meta.author;
    title.querySelector('.print-edition').textContent = meta.edition;
    title.querySelector('.print-note').textContent = meta.note;
    body.before(title);
  }
  // Table of contents: the landing page first (the theme lists only the chapters and course pages), then a
  // page-number slot after every entry (filled in after the first print).
  const landing = document.querySelector('article.bd-article section[id]');
  const nav = document.querySelector('#jb-print-toc nav');
  if (landing && nav) {
    const ul = document.createElement('ul');
    ul.className = 'nav section-nav flex-column';
    const li = document.createElement('li');
    li.className = 'toctree-l1';
    const a = document.createElement('a');
    a.href = '#' + landing.id;
    a.textContent = (landing.querySelector('h1') || {}).textContent.replace(/#$/, '') || 'Introduction';
    li.appendChild(a);
    ul.appendChild(li);
    nav.prepend(ul);
  }
  report.toc_entries = [];
  document.querySelectorAll('#jb-print-toc a[href^="#"]').forEach(a => {
    const slot = document.createElement('span');
    slot.className = 'print-page-number';
    slot.textContent = '000';
    a.after(slot);
    const li = a.closest('li');
    report.toc_entries.push({id: decodeURIComponent(a.getAttribute('href').slice(1)), title: a.textContent.trim(),
                             level: li && li.classList.contains('toctree-l1') ? 1 : 2});
  });
  report.print_css = [...document.styleSheets].some(s => s.href && new URL(s.href).pathname.endsWith('/print.css'));
  // The landing page's link to this PDF means nothing inside it.
  document.querySelectorAll('a.book-pdf-link').forEach(a => a.replaceWith(...a.childNodes));
  document.documentElement.classList.add('printing-book');
  return report;
})"""

FILL_PAGES_JS = r"""((pages) => {
  let filled = 0;
  document.querySelectorAll('#jb-print-toc a[href^="#"]').forEach(a => {
    const n = pages[decodeURIComponent(a.getAttribute('href').slice(1))];
    if (n) { a.nextElementSibling.textContent = String(n); filled += 1; }
  });
  return filled;
})"""

# A4 (210 mm) less print.css's 16 mm margins on either side, in CSS pixels (96 per inch).
PAGE_WIDTH_PX = round((210 - 32) / 25.4 * 96)

# The second print: the title page and the contents only (the book's text is hidden, so it is fast).
CONTENTS_ONLY_JS = """(() => {
  const style = document.createElement('style');
  style.textContent = 'article.bd-article { display: none !important; } '
    + 'html.printing-book #jb-print-docs-body { break-after: auto !important; }';
  document.head.appendChild(style);
})()"""

PRINT_OPTIONS = dict(
    printBackground=True,
    preferCSSPageSize=True,  # A4 and the margins come from print.css (@page), page numbers from its margin boxes
    displayHeaderFooter=False,
    generateTaggedPDF=False,  # the structure tree doubles the printing time; bookmarks and links do the navigation
)


def book_meta() -> dict:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    title = config["title"]
    main, _, sub = title.partition(": ")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "title": main,
        "subtitle": sub,
        "author": config.get("author", ""),
        "edition": f"Printed {datetime.date.today().isoformat()} from commit {commit}",
        "note": "The HTML book holds the same text, with runnable notebooks and animated figures.",
    }


def named_destination_pages(pdf: Path) -> dict[str, int]:
    """Page number (1-based) of every named destination in the PDF."""
    from pypdf import PdfReader

    reader = PdfReader(pdf)
    pages = {}
    for name, dest in reader.named_destinations.items():
        try:
            pages[name.lstrip("/")] = reader.get_destination_page_number(dest) + 1
        except Exception:  # a destination without a page
            continue
    return pages


def assemble(book: Path, contents: Path, front: int, entries: list[dict], pages: dict[str, int], out: Path) -> int:
    """Write ``out``: the book, whose first ``front`` pages (title page and contents, printed with "000" for the
    page numbers) take the text of the same pages printed again with the numbers; the book's own page objects
    stay, so the contents' links keep working. Then bookmarks: chapters at the top, their sections under them.
    Returns the number of bookmarks written."""
    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import NameObject

    reader, numbered = PdfReader(book), PdfReader(contents)
    if len(numbered.pages) != front:
        raise ValueError(f"the contents with page numbers take {len(numbered.pages)} pages, without them {front}: "
                         "the page numbers would be wrong")
    writer = PdfWriter(clone_from=reader)
    for i, page in enumerate(numbered.pages):
        target = writer.pages[i]
        for key in ("/Contents", "/Resources"):
            target[NameObject(key)] = page.raw_get(key).clone(writer)
    writer.add_outline_item(title="Contents", page_number=1)  # the page after the title page
    parent, count = None, 0
    for e in entries:
        page = pages.get(e["id"])
        if page is None:
            continue
        if e["level"] == 1:
            parent = writer.add_outline_item(title=e["title"], page_number=page - 1)
        else:
            writer.add_outline_item(title=e["title"], page_number=page - 1, parent=parent)
        count += 1
    if count != len(entries):
        raise ValueError(f"only {count} of {len(entries)} contents entries have a page for their bookmark")
    writer.page_mode = "/UseOutlines"
    meta = book_meta()
    writer.add_metadata({"/Title": meta["title"] + ": " + meta["subtitle"], "/Author": meta["author"]})
    with open(out, "wb") as f:
        writer.write(f)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=SITE, help="the singlehtml build (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=PDF, help="the PDF to write (default: %(default)s)")
    args = parser.parse_args(argv)
    page = args.site / "intro.html"
    if not page.exists():
        print(f"no single-page build at {page}: run scripts/build_pdf.sh (make pdf)", file=sys.stderr)
        return 2
    if find_chromium() is None:
        print("chromium is missing: run `make system` (Debian's chromium)", file=sys.stderr)
        return 2
    start = time.time()
    timings = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with serve_directory(str(args.site)) as base, Browser(timeout=600) as browser:
        browser.requests.clear()
        browser.goto(f"{base}/intro.html", settle=0.5)
        # Lay the page out as it will be printed (print.css, the A4 text width) before MathJax measures it and
        # before waiting for fonts, so the print has every font it needs.
        browser.call("Emulation.setEmulatedMedia", media="print")
        browser.call("Emulation.setDeviceMetricsOverride", width=PAGE_WIDTH_PX, height=1100, deviceScaleFactor=1,
                     mobile=False)
        report = browser.evaluate(f"{PREPARE_JS}({json.dumps(book_meta())})")
        timings["prepare"] = time.time() - start
        outside = [u for u in browser.requests if not u.startswith((base, "data:", "blob:", "about:"))]
        problems = []
        if not report.get("mathjax"):
            problems.append("MathJax did not load")
        if report.get("untypeset"):
            problems.append(f"equations left as TeX: {report['untypeset'][:5]}")
        if report.get("math_errors"):
            problems.append(f"MathJax errors: {report['math_errors'][:5]}")
        if report.get("broken_images"):
            problems.append(f"figures that did not load: {report['broken_images'][:5]}")
        if not report.get("print_css"):
            problems.append("the page does not load _static/print.css (rebuild: scripts/build_pdf.sh)")
        if not report.get("toc_entries"):
            problems.append("the page has no printed table of contents (#jb-print-toc)")
        if outside:
            problems.append(f"the page fetched from outside the build: {outside[:5]}")
        if problems:
            print("not printing:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        print(f"[pdf] page ready in {time.time() - start:.0f} s: {report['math']} equations, {report['images']} "
              f"images, {report['animations']} animations as frame strips, {len(report['toc_entries'])} "
              "contents entries")

        # 1. The whole book, with "000" where the contents will give page numbers.
        book = args.out.with_suffix(".book.pdf")
        contents = args.out.with_suffix(".contents.pdf")
        t = time.time()
        browser.print_pdf(str(book), **PRINT_OPTIONS)
        timings["print"] = time.time() - t
        pages = named_destination_pages(book)
        missing = [e["id"] for e in report["toc_entries"] if e["id"] not in pages]
        if missing:
            print(f"no page found for these contents entries: {missing[:5]}", file=sys.stderr)
            return 1
        # 2. The title page and the contents again, now with the page numbers of that print, and nothing else.
        browser.evaluate(f"{FILL_PAGES_JS}({json.dumps(pages)})")
        browser.evaluate(CONTENTS_ONLY_JS)
        t = time.time()
        browser.print_pdf(str(contents), **PRINT_OPTIONS)
        timings["contents"] = time.time() - t
        timings["chromium CPU"] = browser.cpu_seconds()
    # 3. Those pages replace the first pages of the book; then the bookmarks.
    t = time.time()
    front = min(pages[e["id"]] for e in report["toc_entries"]) - 1  # title page and contents: before the first entry
    try:
        marks = assemble(book, contents, front, report["toc_entries"], pages, args.out)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 1
    timings["bookmarks"] = time.time() - t
    book.unlink()
    contents.unlink()
    print(f"[pdf] {marks} bookmarks; the contents give the page of every chapter and section")
    print(f"[pdf] wrote {args.out.relative_to(ROOT)} in {time.time() - start:.0f} s ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
