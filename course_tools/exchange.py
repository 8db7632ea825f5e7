"""nbgrader's collect, minus the crash on a malformed entry in the exchange's ``inbound/``.

nbgrader 0.9.6 parses every ``<student>+<assignment>+<timestamp>+<random>`` name under ``inbound/`` and stops
the whole collect at the first one it cannot parse (a junk file, a folder with a bad timestamp).  Students can
write there, so one of them could stop everybody's submissions from being collected.  :class:`SafeCollect`
skips such entries with a warning (``Skipping malformed inbound entry: ...``, shown by
``python -m course_tools collect``) and collects the rest.  Wired in by ``nbgrader_config.py``::

    c.ExchangeFactory.collect = "course_tools.exchange.SafeCollect"
"""

from __future__ import annotations

import glob
import os
from itertools import groupby

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.exchange.default.collect import ExchangeCollect

from course_tools.validate import bad_name, escape


class SafeCollect(ExchangeCollect):
    def _record_or_none(self, path: str) -> dict | None:
        name = os.path.basename(path)
        why = None
        if os.path.islink(path):
            why = "a symbolic link"
        elif not os.path.isdir(path):
            why = "not a folder"
        elif any(
            os.path.islink(os.path.join(root, n)) for root, dirs, files in os.walk(path) for n in dirs + files
        ):
            why = "contains symbolic links (collect would copy what they point to with your rights)"
        else:
            parts = name.rsplit("+", 3)
            if len(parts) < 3:
                why = "not named <student>+<assignment>+<time>"
            elif bad_name(parts[0]):
                why = f"student id {bad_name(parts[0])}"
            else:
                try:
                    from nbgrader.utils import parse_utc

                    return {"username": parts[0], "filename": name, "timestamp": parse_utc(parts[2])}
                except Exception:
                    why = "its time stamp cannot be read"
        self.log.warning("Skipping malformed inbound entry: %s (%s)", escape(name), why)
        return None

    def init_src(self):
        if self.coursedir.course_id == "":
            self.fail("No course id specified. Re-run with --course flag.")
        self.course_path = os.path.join(self.root, self.coursedir.course_id)
        self.inbound_path = os.path.join(self.course_path, "inbound")
        if not os.path.isdir(self.inbound_path):
            self.fail(f"Course not found: {self.inbound_path}")
        student_id = self.coursedir.student_id or "*"  # nbgrader's default is "*" (every student)
        pattern = os.path.join(self.inbound_path, f"{student_id}+{self.coursedir.assignment_id}+*")
        records = [r for r in (self._record_or_none(f) for f in sorted(glob.glob(pattern))) if r]
        records.sort(key=lambda r: r["username"])
        groups = {k: list(v) for k, v in groupby(records, lambda r: r["username"])}
        with Gradebook(self.coursedir.db_url, self.coursedir.course_id) as gb:
            try:
                self.duedate = gb.find_assignment(self.coursedir.assignment_id).duedate
            except MissingEntry:
                self.duedate = None
        self.src_records = []
        for recs in groups.values():
            recs = self._sort_by_timestamp(recs)
            if self.duedate is not None and self.before_duedate:
                before = [r for r in recs if r["timestamp"] <= self.duedate]
                self.src_records.append(before[0] if before else recs[0])
            else:
                self.src_records.append(recs[0])
