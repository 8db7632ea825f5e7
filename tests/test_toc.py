"""Fast static checks of the book's table of contents (before any build)."""

from pathlib import Path

from tests.test_book import ROOT, toc_files


def test_every_toc_entry_points_at_an_existing_file():
    missing = []
    for f in toc_files():
        if not any((ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb")) and not (ROOT / f).exists():
            missing.append(f)
    assert not missing, f"_toc.yml names files that do not exist: {missing}"


def test_no_solution_source_is_part_of_the_book():
    for f in toc_files():
        assert not Path(f).parts or Path(f).parts[0] != "solutions", f"_toc.yml includes a solution notebook: {f}"
