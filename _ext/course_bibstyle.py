"""A pybtex style whose bibliography labels match the author-year citations in the text.

The text cites ``(Dinh et al., 2017)`` (``bibtex_reference_style: author_year``); with pybtex's ``plain`` style
the reference list would still be numbered [1]-[23]. This style labels each entry "Dinh et al., 2017" and sorts
by author, year and title. Loaded by Jupyter Book as a local Sphinx extension (``_config.yml``).
"""

from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting.author_year_title import SortingStyle


def _names(entry) -> str:
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    last = [" ".join(p.last_names).replace("{", "").replace("}", "") for p in persons]
    if not last:
        return entry.fields.get("organization", entry.key)
    if len(last) == 1:
        return last[0]
    if len(last) == 2:
        return f"{last[0]} and {last[1]}"
    return f"{last[0]} et al."


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        base = [f"{_names(e)}, {e.fields.get('year', 'n.d.')}" for e in entries]
        counts, seen = Counter(base), Counter()
        for label in base:
            if counts[label] > 1:  # two works by the same authors in one year: 2017a, 2017b
                seen[label] += 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
            else:
                yield label


class AuthorYearStyle(UnsrtStyle):
    default_label_style = "authoryear"
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels)
    register_plugin("pybtex.style.sorting", "author_year_title", SortingStyle, force=True)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
