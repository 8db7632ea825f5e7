"""Kernel side of the hidden checks (see ``course_tools.hidden``): call, record, display. Nothing else.

At grading time each test cell becomes ``course_tools.probe.run(spec)``, where ``spec`` lists function names
and their inputs as plain data. ``run`` calls the student's functions from the notebook's namespace and displays
their results as plain data (JSON) for the grader, which decides outside this process. There is no check and no
reference value here, so there is nothing to read or to patch: a result is right or wrong by itself.
"""

from __future__ import annotations

import json
import math
from typing import Any

MIME = "application/x-course-probe+json"
MAX_ELEMENTS = 200_000
_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")


def _float(v: float) -> Any:
    return v if math.isfinite(v) else {"$float": repr(float(v))}


def _encode(obj: Any, depth: int = 0) -> Any:
    import torch

    if depth > 20:
        return {"$other": "deeply nested value"}
    if obj is None or isinstance(obj, (str,)):
        return obj if obj is None or len(obj) <= 10_000 else obj[:10_000]
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _float(float(obj))
    if isinstance(obj, torch.Tensor):
        dtype = str(obj.dtype).replace("torch.", "")
        if dtype not in _DTYPES:
            return {"$other": f"tensor of dtype {dtype}"}
        if obj.numel() > MAX_ELEMENTS:
            return {"$other": f"tensor with {obj.numel()} elements"}
        flat = obj.detach().cpu().reshape(-1).tolist()
        if obj.is_floating_point():
            flat = [_float(v) for v in flat]
        return {"$tensor": {"dtype": dtype, "shape": list(obj.shape), "data": flat}}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, depth + 1) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, depth + 1) for v in obj]
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"$dict": {k: _encode(v, depth + 1) for k, v in obj.items()}}
    return {"$other": type(obj).__name__}


def _decode(obj: Any, earlier: list) -> Any:
    import torch

    if isinstance(obj, list):
        return [_decode(v, earlier) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$float" in obj:
        return float(obj["$float"])
    if "$tensor" in obj:
        t = obj["$tensor"]
        data = [float(v["$float"]) if isinstance(v, dict) else v for v in t["data"]]
        return torch.tensor(data, dtype=getattr(torch, t["dtype"])).reshape(t["shape"])
    if "$tuple" in obj:
        return tuple(_decode(v, earlier) for v in obj["$tuple"])
    if "$dict" in obj:
        return {k: _decode(v, earlier) for k, v in obj["$dict"].items()}
    if "$gen" in obj:
        return torch.Generator().manual_seed(int(obj["$gen"]))
    if "$src" in obj:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(obj["seed"]))
            value = eval(obj["$src"], {"torch": torch, "math": math, "nn": torch.nn})
        return value.double() if isinstance(value, torch.nn.Module) else value
    if "$ref" in obj:
        index, *path = obj["$ref"]
        value = earlier[index]
        if isinstance(value, BaseException):
            raise value
        for key in path:
            value = value[key]
        return value
    raise ValueError("malformed probe input")


def _one(call: dict, namespace: dict, earlier: list) -> tuple[Any, dict]:
    name = call["name"]
    try:
        fn = namespace[name]
    except KeyError:
        exc = NameError(f"name '{name}' is not defined (run the cell that defines it)")
        return exc, {"raised": "NameError", "message": str(exc)}
    try:
        args = [_decode(a, earlier) for a in call["args"]]
        kwargs = {k: _decode(v, earlier) for k, v in call["kwargs"].items()}
        if call["op"] != "call":
            raise ValueError("malformed probe input")
        value = fn(*args, **kwargs)
    except (Exception, SystemExit) as exc:  # the student's code raised: report its type and message only
        return exc, {"raised": type(exc).__name__, "message": str(exc)[:500]}
    return value, {"value": _encode(value)}


def run(spec_json: str) -> None:
    """Run the calls of one test cell and display their results as plain data."""
    from IPython import get_ipython
    from IPython.display import display

    spec = json.loads(spec_json)
    shell = get_ipython()
    namespace = shell.user_ns if shell is not None else {}
    results = []
    for calls in spec["cases"]:
        earlier: list = []
        case = []
        for call in calls:
            value, encoded = _one(call, namespace, earlier)
            earlier.append(value)
            case.append(encoded)
        results.append(case)
    payload = json.dumps(results, separators=(",", ":"))
    display({MIME: {"nonce": spec["nonce"], "payload": payload}}, raw=True)
    print(f"{sum(len(c) for c in results)} calls recorded for the grader.")
