"""Feedback pages (issue 20), without a kernel or a gradebook (under a second): the markdown sanitiser keeps
honest text and a safe subset of CSS, pasted images are inlined, and ``feedback`` makes and releases every other
student's page when one cannot be made, naming it and why."""

from __future__ import annotations

import os
import subprocess
import sys

import nbformat
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from course_tools import cli  # noqa: E402
from course_tools.feedback import inline_attachments, safe_css, sanitize_markdown  # noqa: E402


@pytest.mark.parametrize(
    "text",
    ["one = 1, so = 2", "data: the training set", "javascript: a language", "a < b and c > d", "x onload = y"],
)
def test_honest_text_is_left_as_written(text):
    assert sanitize_markdown(text) == text


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ('<img src=x onerror="alert(1)">', "onerror"),
        ('<a href="javascript:alert(1)">x</a>', "javascript:"),
        ("[x](javascript:alert(1))", "javascript:"),
        ("[r]: vbscript:msgbox(1)", "vbscript:"),
        ('<a href="jav&#x61;script:alert(1)">x</a>', "<a href"),
        ('<iframe src="data:text/html,<script>alert(1)</script>">', "<iframe"),
    ],
)
def test_what_could_run_is_neutralised(text, gone):
    assert gone not in sanitize_markdown(text)


def test_only_a_safe_subset_of_css_is_kept():
    fake = '<div style="position: fixed; top: 0; left: 0; z-index: 9; width: 100%; color: green">100/100</div>'
    assert sanitize_markdown(fake) == '<div style="color: green">100/100</div>'
    assert safe_css("margin: -40px; padding: 2px; transform: scale(9); background: url(x); color: red") == (
        "padding: 2px; color: red"
    )
    assert safe_css("font-family: sans-serif; text-decoration: line-through") == (
        "font-family: sans-serif; text-decoration: line-through"
    )


def test_pasted_images_are_inlined_and_missing_ones_dropped():
    cell = nbformat.v4.new_markdown_cell("a ![image.png](attachment:image.png), b ![x](attachment:gone.png), "
                                         '<img src="attachment:image.png">')
    cell.attachments = {"image.png": {"image/png": "iVBORw0KGgo="}}
    inline_attachments(cell)
    assert "attachment:" not in cell.source and "attachments" not in cell
    assert cell.source.count("data:image/png;base64,iVBORw0KGgo=") == 2 and "gone.png not shown" in cell.source
    svg = nbformat.v4.new_markdown_cell("![s](attachment:s.svg)")
    svg.attachments = {"s.svg": {"image/svg+xml": "<svg onload=alert(1)/>"}}
    inline_attachments(svg)
    assert "svg" not in svg.source.replace("s.svg", "") and "not shown" in svg.source


def test_one_page_that_cannot_be_made_stops_no_other(monkeypatch, tmp_path, capsys):
    """nbgrader stops at the first failing student (simulated): everyone else still gets a page and its
    release, and the report names the page that was not made and why."""
    monkeypatch.setenv("COURSE_DIR", str(tmp_path))
    for s in ("ann", "bob", "cid"):
        os.makedirs(tmp_path / "autograded" / s / "hw")
    calls = []

    def fake_nbgrader(*args, check=True, quiet=False, env=None):
        calls.append(args)
        cmd = args[0]
        if cmd == "generate_feedback":
            who = args[args.index("--student") + 1] if "--student" in args else None
            # the batch makes ann's page, then stops at bob (a broken notebook); cid only alone
            targets = ["ann"] if who is None else [who]
            for s in targets:
                if s != "bob":
                    os.makedirs(tmp_path / "feedback" / s / "hw", exist_ok=True)
                    (tmp_path / "feedback" / s / "hw" / "hw.html").write_text("<html></html>")
            err = "[GenerateFeedback | ERROR] InvalidNotebook: missing attachment: image.png"
            return subprocess.CompletedProcess(args, 1 if (who in (None, "bob")) else 0, "", err)
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(cli, "nbgrader", fake_nbgrader)
    assert cli.cmd_feedback("hw", None) == 1
    out = capsys.readouterr().out
    assert "feedback ann/hw: released" in out and "feedback cid/hw: released" in out
    assert "feedback bob/hw: NOT MADE (" in out and "missing attachment" in out
    assert "NOT MADE for 1: bob" in out
    released = [c for c in calls if c[0] == "release_feedback"]
    assert [c[-1] for c in released] == ["ann", "cid"]
