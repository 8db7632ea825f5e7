"""Merge the speed rows of several ``flows.py --json`` files (finished or ``.speed.json`` of interrupted runs) into
one file for ``flows.py --from-json``: the first file's protocol (``args``, ``commands``), every later file's rows
replacing the same (dataset, architecture, threads) rows of the earlier ones.

    .venv-bench/bin/python benchmarks/merge_speed.py OUT.json BASE.json NEW.json [NEWER.json ...] --load "text"
"""

import argparse
import json

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("out")
p.add_argument("base")
p.add_argument("new", nargs="+")
p.add_argument("--load", default=None, help="the report's load line for the speed part")
args = p.parse_args()
with open(args.base) as fh:
    merged = json.load(fh)
for path in args.new:
    with open(path) as fh:
        part = json.load(fh)
    merged["speed"].update(part["speed"])
    print(f"{path}: {', '.join(sorted(part['speed']))}")
if args.load:
    merged.setdefault("load", {})["speed"] = args.load
with open(args.out, "w") as fh:
    json.dump(merged, fh)
