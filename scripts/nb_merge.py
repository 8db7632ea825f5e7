#!/usr/bin/env python3
"""Git merge driver for .ipynb: a cell-wise three-way merge by cell id.

    scripts/nb_merge.py BASE OURS THEIRS PATH   (result written to OURS; exit 1 on a conflict)

Sources (and tags) are merged per cell: a side that changed a cell wins; both changed it: `git merge-file` on the
cell's source, and only overlapping line changes are a conflict (the cell gets git-style markers in its source).
Outputs come from OURS' cells or from the side whose source is taken; a notebook whose code changed on THEIRS is
listed in /tmp/nb_reexec.txt (re-execute it with `make refresh NB=...`), one with conflicts in
/tmp/nb_conflicts.txt. New cells of either side are kept in order.

Enable it in a checkout (local settings, not committed):

    git config merge.nbcell.driver "python3 scripts/nb_merge.py %O %A %B %P"
    echo "*.ipynb merge=nbcell" >> "$(git rev-parse --git-common-dir)/info/attributes"
"""
import json
import os
import subprocess
import sys
import tempfile


def merge_text(o, b, t):
    """git merge-file on three texts; None on a conflict."""
    with tempfile.TemporaryDirectory() as d:
        fs = []
        for name, text in (("o", o), ("b", b), ("t", t)):
            f = os.path.join(d, name)
            with open(f, "w", encoding="utf-8") as fh:
                fh.write(text)
            fs.append(f)
        r = subprocess.run(["git", "merge-file", "-p", *fs], capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else None


def load(p):
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def src(c):
    s = c.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def key(c):
    # what an author changes: the type, the source and the tags (execution metadata differs on every run)
    return (c["cell_type"], src(c), json.dumps(c.get("metadata", {}).get("tags", []), sort_keys=True))


def main(base_p, ours_p, theirs_p, path):
    base, ours, theirs = load(base_p), load(ours_p), load(theirs_p)
    b = {c.get("id"): c for c in base["cells"]}
    o = {c.get("id"): c for c in ours["cells"]}
    t = {c.get("id"): c for c in theirs["cells"]}
    conflict = False
    reexec = False
    out = []
    # order: ours, with theirs' new cells inserted after their predecessor
    order = [c.get("id") for c in ours["cells"]]
    tids = [c.get("id") for c in theirs["cells"]]
    for i, cid in enumerate(tids):
        if cid not in o and cid not in b:
            prev = tids[i - 1] if i else None
            pos = order.index(prev) + 1 if prev in order else len(order)
            order.insert(pos, cid)
    for cid in order:
        oc, tc, bc = o.get(cid), t.get(cid), b.get(cid)
        if oc is None:  # new in theirs (or deleted in ours)
            if bc is not None:  # deleted in ours
                if key(tc) != key(bc):
                    conflict = True
                    out.append(tc)
                continue
            out.append(tc)
            if tc["cell_type"] == "code":
                reexec = True
            continue
        if tc is None:  # new in ours, or deleted in theirs
            if bc is not None:  # deleted in theirs
                if key(oc) != key(bc):
                    conflict = True
                    out.append(oc)
                continue
            out.append(oc)
            continue
        if bc is None or key(tc) == key(bc) or key(tc) == key(oc):
            out.append(oc)
        elif key(oc) == key(bc):
            cell = dict(tc)
            if tc["cell_type"] == "code" and src(tc) != src(oc):
                # theirs changed the code; ours' outputs may be newer for other cells
                reexec = True
            out.append(cell)
        else:
            merged = merge_text(src(oc), src(bc), src(tc)) if oc["cell_type"] == tc["cell_type"] else None
            if merged is not None:
                cell = dict(oc)
                cell["source"] = merged.splitlines(keepends=True)
                if oc["cell_type"] == "code":
                    reexec = True
                out.append(cell)
                continue
            conflict = True
            cell = dict(oc)
            cell["source"] = ("<<<<<<< ours\n" + src(oc) + "\n=======\n" + src(tc) + "\n>>>>>>> theirs\n")
            out.append(cell)
    ours["cells"] = out
    with open(ours_p, "w", encoding="utf-8") as f:
        f.write(json.dumps(ours, sort_keys=True, indent=1, ensure_ascii=False) + "\n")
    if reexec:
        with open("/tmp/nb_reexec.txt", "a") as f:
            f.write(path + "\n")
    if conflict:
        with open("/tmp/nb_conflicts.txt", "a") as f:
            f.write(path + "\n")
    return 1 if conflict else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
