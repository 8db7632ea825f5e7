"""Hidden checks decided outside the student's process.

Why: any check that runs in the student's kernel can be subverted by the student's code (rebinding builtins,
patching torch, ``sys.displayhook``, frame tricks, tracing, input transformers, ...). So a hidden check is split:

* **in the student's kernel** a *probe* only calls the student's functions on inputs that arrive as plain data
  (JSON: numbers, strings, tensors as dtype/shape/values, seeded generators) and displays the results as plain
  data (never code, never pickles). The probe is generic: it knows function names and inputs, no check and no
  reference value;
* **in the grader's process**, which never runs student code and which the kernel cannot reach, the author's
  check functions recompute the expected values and compare. Their verdict replaces every output of the test
  cell, so nbgrader's score comes from the verdict alone.

Authors write one module per assignment, ``solutions/<assignment>/hidden_checks.py``::

    import torch
    from course_tools.hidden import Checks, expect_close, expect_tensor

    checks = Checks("ch00_example")          # a made-up assignment: no real check is printed here

    @checks.cell("q1_softmax_test")          # the grade_id of the test cell it decides
    def q1_rows(student):
        gen = torch.Generator().manual_seed(2024)
        logits = 3 * torch.randn(4, 7, generator=gen, dtype=torch.float64)
        got = student.softmax(logits)         # 1. every call to the student's code first ...
        got = expect_tensor(got, "softmax(logits)", shape=(4, 7), dtype=torch.float64)
        ref = torch.exp(logits - torch.logsumexp(logits, -1, keepdim=True))  # 2. ... then the references
        expect_close(got, ref, "softmax of a batch of random logits is wrong")

How it runs. Each check function runs twice in the grader. First in *record* mode, before the kernel starts:
``student.<name>(...)`` records the call and returns a placeholder, and the function stops at the first use of a
placeholder; the recorded calls become the probe. After the kernel has executed the notebook, the function runs
again in *replay* mode: the same calls (they must be deterministic: seed every input) return the student's
results, decoded from the probe's output. Hence the one rule: **make every call to the student's code before
using any of its results** (pass a result on to another student call as ``student.g(out[0])``: that is allowed,
the probe resolves it in the kernel, and the check must be declared ``chaining="why"``).
``python -m course_tools.hidden selftest <assignment>`` runs a notebook this way (no sandbox) and prints each
cell's verdict; the grading tests do the same for every assignment.

What a call may take: tensors (any real dtype; up to 200,000 elements), Python numbers, bools, None, strings,
lists/tuples/dicts of those, ``Generator(seed)`` (a fresh ``torch.Generator().manual_seed(seed)`` in the kernel),
``Source("expression", seed=...)`` (a small input object built the same way on both sides, e.g.
``Source("lambda z: z[:, 0] * z[:, 1]")`` or ``Source("torch.nn.Linear(3, 4)", seed=0)``; ``.build()`` gives the
grader's copy) and the results of earlier calls. What comes back: the same plain types; anything else arrives as
an ``Opaque`` with its type name. A call that raised comes back as ``StudentRaised`` (uncaught, it fails the check
with the student's error message; catch an expected one with ``with raises(ValueError):``).

Two rules keep a result from being looked up or forged (issue 20; both are enforced, see below):

* **fresh inputs**: the kernel keeps its state between test cells, so a student's function can remember every
  value it saw. No call may receive a floating-point value (a tensor or one of its rows) that an earlier call of
  the assignment received or produced, unless its check is declared ``@checks.cell(gid, chaining="why")`` (a
  round trip, a sweep of one argument over the same input), and then only values of that check's own calls.
  ``instrument`` refuses a violation among the inputs (``AuthorError``); ``selftest`` of the solution also
  compares every input with every earlier output. A property check (round trip, log-det of the inverse,
  Jacobian pattern) always comes with a value check on fresh inputs.
* **nothing derived is computed by the student's kernel**: a Jacobian, log-det or other quantity a check uses is
  computed here, from the student's returned values (``central_differences`` / ``jacobian_from_differences``)
  or from the reference map. (``student.jacobian`` was removed: patched autograd in the kernel forged it.)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import secrets
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MIME = "application/x-course-probe+json"
MAX_ELEMENTS = 200_000  # per tensor, both directions
MAX_PAYLOAD = 8_000_000  # bytes of JSON the grader accepts from one cell
_FLOAT_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


# ================================================================ errors and verdicts
class CheckFailed(AssertionError):
    """A hidden check failed; the message is shown to the student (it must not reveal reference values)."""


class AuthorError(RuntimeError):
    """The hidden checks themselves are wrong (not the student's fault): grading must stop for this cell."""


class StudentRaised(Exception):
    """The student's function raised ``type_name: message`` in the kernel."""

    def __init__(self, function: str, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.function, self.type_name, self.message = function, type_name, message


@dataclass
class Verdict:
    grade_id: str
    passed: bool
    messages: list[str] = field(default_factory=list)
    author_error: bool = False  # True: the checks are broken; the instructor must fix and regrade
    malformed: str = ""  # why the cell's results could not be read (the cell fails; the instructor is told)


def fail(message: str) -> None:
    raise CheckFailed(message)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# ================================================================ inputs that are not plain values
@dataclass(frozen=True)
class Generator:
    """A ``torch.Generator().manual_seed(seed)`` created in the kernel (and by ``.build()`` in the grader)."""

    seed: int

    def build(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


@dataclass(frozen=True)
class Source:
    """A small input object given by an expression over ``torch``, ``math`` and ``nn``, built under ``seed``."""

    expression: str
    seed: int = 0

    def build(self) -> Any:
        return _build_source(self.expression, self.seed)


def _build_source(expression: str, seed: int) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        obj = eval(expression, {"torch": torch, "math": math, "nn": torch.nn, "__builtins__": __builtins__})
    if isinstance(obj, torch.nn.Module):
        obj = obj.double()
    return obj


@dataclass(frozen=True)
class Opaque:
    """A result that is not plain data (e.g. a module or a numpy array): only its type name arrives."""

    type_name: str

    def __repr__(self) -> str:
        return f"<{self.type_name}>"


# ================================================================ plain-data encoding (grader side)
def encode(obj: Any) -> Any:
    """Encode an input for the probe. Raises ``AuthorError`` for anything that is not plain data."""
    if isinstance(obj, _Pending):
        return {"$ref": [obj.index, *obj.path]}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": repr(obj)}
    if isinstance(obj, torch.Tensor):
        if obj.is_complex() or str(obj.dtype).replace("torch.", "") not in _FLOAT_DTYPES:
            raise AuthorError(f"unsupported tensor dtype {obj.dtype}")
        if obj.numel() > MAX_ELEMENTS:
            raise AuthorError(f"input tensor with {obj.numel()} elements is larger than {MAX_ELEMENTS}")
        flat = obj.detach().cpu().reshape(-1).tolist()
        flat = [v if not isinstance(v, float) or math.isfinite(v) else {"$float": repr(v)} for v in flat]
        return {"$tensor": {"dtype": str(obj.dtype).replace("torch.", ""), "shape": list(obj.shape), "data": flat}}
    if isinstance(obj, Generator):
        return {"$gen": int(obj.seed)}
    if isinstance(obj, Source):
        return {"$src": obj.expression, "seed": int(obj.seed)}
    if isinstance(obj, tuple):
        return {"$tuple": [encode(v) for v in obj]}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"$dict": {k: encode(v) for k, v in obj.items()}}
    raise AuthorError(f"cannot send a {type(obj).__name__} to the student's kernel: use plain data")


def decode(obj: Any, _depth: int = 0) -> Any:
    """Decode a result that came from the kernel. Strict: anything unexpected becomes an ``Opaque``."""
    if _depth > 20:
        return Opaque("deeply nested value")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [decode(v, _depth + 1) for v in obj]
    if isinstance(obj, dict) and len(obj) == 1:
        (key, val), = obj.items()
        if key == "$float" and val in ("nan", "inf", "-inf"):
            return float(val)
        if key == "$tuple" and isinstance(val, list):
            return tuple(decode(v, _depth + 1) for v in val)
        if key == "$dict" and isinstance(val, dict):
            return {str(k): decode(v, _depth + 1) for k, v in val.items()}
        if key == "$other" and isinstance(val, str):
            return Opaque(val[:100])
        if key == "$tensor" and isinstance(val, dict):
            return _decode_tensor(val)
    return Opaque("malformed result")


def _decode_tensor(val: dict) -> Any:
    dtype = _FLOAT_DTYPES.get(val.get("dtype"))
    shape, data = val.get("shape"), val.get("data")
    if dtype is None or not isinstance(shape, list) or not isinstance(data, list):
        return Opaque("malformed tensor")
    if not all(type(s) is int and s >= 0 for s in shape) or len(data) > MAX_ELEMENTS:
        return Opaque("malformed tensor")
    if math.prod(shape) != len(data):
        return Opaque("malformed tensor")
    values = []
    for v in data:
        if isinstance(v, dict) and v.get("$float") in ("nan", "inf", "-inf"):
            values.append(float(v["$float"]))
        elif type(v) in (int, float, bool):
            values.append(v)
        else:
            return Opaque("malformed tensor")
    try:
        return torch.tensor(values, dtype=dtype).reshape(shape)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        return Opaque("malformed tensor")


# ================================================================ the student proxy (record / replay)
class _NeedResults(Exception):
    """Record mode: a check used a result that only exists after the kernel ran."""


def _need(*_a: Any, **_k: Any) -> Any:
    raise _NeedResults


class _Pending:
    """Placeholder for a student result in record mode. Indexing gives a reference to a part of it."""

    def __init__(self, index: int, path: tuple = ()):
        self.index, self.path = index, path

    def __getitem__(self, key: Any) -> _Pending:
        if not isinstance(key, (int, str)):
            raise _NeedResults
        return _Pending(self.index, (*self.path, key))

    def __getattr__(self, name: str) -> Any:
        raise _NeedResults

    def __torch_function__(self, *a: Any, **k: Any) -> Any:
        raise _NeedResults


for _dunder in (
    "__iter__ __len__ __bool__ __float__ __int__ __index__ __complex__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ "
    "__add__ __radd__ __sub__ __rsub__ __mul__ __rmul__ __truediv__ __rtruediv__ __pow__ __rpow__ __neg__ "
    "__abs__ __matmul__ __rmatmul__ __contains__ __array__ __format__ __hash__"
).split():
    setattr(_Pending, _dunder, _need)


@dataclass
class _Call:
    op: str  # "call" (the only one: derived quantities such as Jacobians are computed in the grader)
    name: str
    args: list
    kwargs: dict
    out: int | None = None
    tensors: list = field(default_factory=list, repr=False, compare=False)  # floating-point inputs, for the rule
    chained: bool = field(default=False, compare=False)  # takes an earlier result (a ``$ref``)

    def spec(self) -> dict:
        return {"op": self.op, "name": self.name, "args": self.args, "kwargs": self.kwargs, "out": self.out}


def _collect_inputs(value: Any, call: _Call) -> None:
    """The floating-point tensors an input carries (nested in lists, tuples, dicts) and whether it chains."""
    if isinstance(value, _Pending):
        call.chained = True
    elif isinstance(value, torch.Tensor):
        if value.is_floating_point():
            call.tensors.append(value.detach().clone())
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect_inputs(v, call)
    elif isinstance(value, dict):
        for v in value.values():
            _collect_inputs(v, call)


class Student:
    """What a check function sees: ``student.f(*args)`` calls the student's ``f`` (recorded, then replayed)."""

    def __init__(self, mode: str, results: list | None = None, recorded: list[_Call] | None = None):
        self._mode, self._results, self._recorded = mode, results, recorded
        self._calls: list[_Call] = []
        # replay: {id(part of a returned value): (call index, path, the object)}, so that passing a result (or an
        # element of it) to a later call sends the same reference ($ref) as in record mode, not a copy
        self._returned: dict[int, tuple[int, tuple, Any]] = {}

    def _remember(self, value: Any, index: int, path: tuple = ()) -> None:
        # tensors and non-empty containers only: a number, a string or () may be the very object a check passes
        # on its own (small ints and interned strings are shared), and an input is never a reference by accident
        if isinstance(value, torch.Tensor) or (isinstance(value, (tuple, list, dict)) and value):
            self._returned[id(value)] = (index, path, value)
        if isinstance(value, (tuple, list)):
            for k, v in enumerate(value):
                self._remember(v, index, (*path, k))
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str):
                    self._remember(v, index, (*path, k))

    def _as_refs(self, value: Any) -> Any:
        """``value`` with every returned result (or part of one) replaced by its reference, as in record mode."""
        hit = self._returned.get(id(value))
        if hit is not None and hit[2] is value:
            return _Pending(hit[0], hit[1])
        if isinstance(value, tuple):
            return tuple(self._as_refs(v) for v in value)
        if isinstance(value, list):
            return [self._as_refs(v) for v in value]
        if isinstance(value, dict):
            return {k: self._as_refs(v) for k, v in value.items()}
        return value

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call("call", name, args, kwargs, None)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Same as ``student.<name>(...)``, for names that are not identifiers or start with ``_``."""
        return self._call("call", name, args, kwargs, None)

    def jacobian(self, *_a: Any, **_k: Any) -> Any:
        """Removed: a Jacobian computed in the student's kernel can be forged (patched autograd)."""
        raise AuthorError(
            "student.jacobian was removed: compute derived quantities in the grader, from the student's returned "
            "values (finite_difference_jacobian) or from the reference map"
        )

    def _call(self, op: str, name: str, args: tuple, kwargs: dict, out: int | None) -> Any:
        if self._returned:
            args, kwargs = self._as_refs(args), self._as_refs(kwargs)
        call = _Call(op, name, [encode(a) for a in args], {k: encode(v) for k, v in kwargs.items()}, out)
        call.tensors, call.chained = [], False
        for value in (*args, *kwargs.values()):
            _collect_inputs(value, call)
        index = len(self._calls)
        self._calls.append(call)
        if self._mode == "record":
            return _Pending(index)
        assert self._recorded is not None and self._results is not None
        if index >= len(self._recorded) or self._recorded[index].spec() != call.spec():
            raise AuthorError(
                f"call {index} ({name}) differs from the recorded one: inputs must be deterministic (seed them) "
                "and every call to the student's code must come before any use of a result"
            )
        if index >= len(self._results):
            raise CheckFailed("the grader did not receive the results of your code (did the cell finish?)")
        res = self._results[index]
        if not isinstance(res, dict):
            raise CheckFailed("the grader received a malformed result from the kernel")
        if "raised" in res:
            raise StudentRaised(name, str(res.get("raised"))[:100], str(res.get("message", ""))[:500])
        value = decode(res.get("value"))
        self._remember(value, index)
        return value


@contextlib.contextmanager
def raises(*type_names: type[BaseException] | str, message: str | None = None) -> Iterator[None]:
    """Expect the student call inside the block to raise one of these exception types (given by class or name)."""
    names = {t if isinstance(t, str) else t.__name__ for t in type_names}
    try:
        yield
    except StudentRaised as exc:
        if exc.type_name not in names:
            raise CheckFailed(
                message or f"expected {' or '.join(sorted(names))}, but your code raised {exc.type_name}"
            ) from None
        return
    except _NeedResults:
        raise
    raise CheckFailed(message or f"expected your code to raise {' or '.join(sorted(names))}, but it returned")


# ================================================================ comparisons for authors
def expect_tensor(x: Any, what: str, shape: tuple | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Check that ``x`` is a tensor (optionally of this shape and dtype); returns it. Says what was expected."""
    if isinstance(x, _Pending):
        raise _NeedResults
    if not isinstance(x, torch.Tensor):
        name = x.type_name if isinstance(x, Opaque) else type(x).__name__
        fail(f"{what} should be a torch.Tensor, got {name}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        fail(f"{what} should have shape {tuple(shape)}, got {tuple(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        want, got = str(dtype).replace("torch.", ""), str(x.dtype).replace("torch.", "")
        fail(f"{what} should keep the dtype {want}, got {got}")
    return x


def expect_float(x: Any, what: str) -> float:
    """A Python number or a one-element tensor, as a float."""
    if isinstance(x, _Pending):
        raise _NeedResults
    if isinstance(x, torch.Tensor) and x.numel() == 1 and x.is_floating_point():
        return float(x.reshape(()).item())
    if type(x) in (int, float):
        return float(x)
    name = x.type_name if isinstance(x, Opaque) else type(x).__name__
    fail(f"{what} should be a number or a one-element tensor, got {name}")
    return math.nan  # unreachable


def close(got: Any, want: Any, rtol: float = 1e-7, atol: float = 1e-9) -> bool:
    """Elementwise ``|got - want| <= atol + rtol |want|``; infinities must match exactly; NaN never matches."""
    if isinstance(got, _Pending):
        raise _NeedResults
    try:
        g = torch.as_tensor(got, dtype=torch.float64)
        w = torch.as_tensor(want, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return False
    if g.shape != w.shape:
        return False
    if torch.isnan(g).any() or torch.isnan(w).any():
        return False
    inf = torch.isinf(w)
    if not torch.equal(g[inf], w[inf]) or torch.isinf(g[~inf]).any():
        return False
    return bool(((g[~inf] - w[~inf]).abs() <= atol + rtol * w[~inf].abs()).all())


def expect_close(got: Any, want: Any, message: str, rtol: float = 1e-7, atol: float = 1e-9) -> None:
    """Fail with ``message`` unless ``got`` matches ``want`` (shape first, then values; NaN is named)."""
    if isinstance(got, _Pending):
        raise _NeedResults
    if isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor) and got.shape != want.shape:
        fail(f"{message} (expected shape {tuple(want.shape)}, got {tuple(got.shape)})")
    if isinstance(got, torch.Tensor) and got.is_floating_point() and torch.isnan(got).any():
        fail(f"{message} (your result contains nan)")
    if not close(got, want, rtol, atol):
        fail(message)


# ================================================================ an assignment's checks
@dataclass
class _Case:
    grade_id: str
    func: Callable[[Student], None]
    chaining: str | None = None  # why this check passes values between its own calls (None: it does not)


class Checks:
    """The hidden checks of one assignment: check functions registered per test cell (``grade_id``)."""

    def __init__(self, assignment: str):
        self.assignment = assignment
        self.cases: dict[str, list[_Case]] = {}

    def cell(self, grade_id: str, chaining: str | None = None) -> Callable:
        """Register a check function deciding the test cell ``grade_id`` (several per cell: all must pass).

        ``chaining="why"`` declares a check that is *about* chaining (a round trip, two calls that must agree):
        its calls may receive values its own earlier calls received or produced. Without it, no call may
        receive a value that any earlier call of the assignment received or produced (see ``fresh_inputs``).
        """
        if chaining is not None and not (isinstance(chaining, str) and chaining.strip()):
            raise AuthorError(f"{grade_id}: chaining= must say why the check reuses values (a sentence)")

        def deco(func: Callable[[Student], None]) -> Callable[[Student], None]:
            self.cases.setdefault(grade_id, []).append(_Case(grade_id, func, chaining))
            return func

        return deco

    # ---------------------------------------------------------------- record
    def record(self, grade_id: str) -> list[list[_Call]]:
        """The calls each check of this cell makes (run in record mode, in the grader)."""
        out = []
        for case in self.cases[grade_id]:
            student = Student("record")
            try:
                case.func(student)
            except _NeedResults:
                pass
            except (CheckFailed, StudentRaised):
                pass
            except Exception as exc:
                what = f"hidden check {case.func.__name__} of {grade_id}"
                raise AuthorError(f"{what} failed while recording: {exc!r}") from exc
            out.append(student._calls)
        return out

    # ---------------------------------------------------------------- replay
    def decide(self, grade_id: str, recorded: list[list[_Call]], results: list[list] | None,
               why: str = "no results") -> Verdict:
        if results is None and why == "no results":
            return Verdict(grade_id, False, ["the grader received no results from this cell: it did not run to the "
                                             "end (an error, a timeout, or a kernel that died earlier)"])
        if results is None:
            return Verdict(grade_id, False, [f"the grader received malformed results from this cell: {why}"],
                           malformed=why)
        if len(results) != len(recorded):
            return Verdict(grade_id, False, ["the grader received malformed results from this cell"])
        messages, passed = [], True
        for case, calls, res in zip(self.cases[grade_id], recorded, results):
            label = _label(case.func)
            student = Student("replay", results=res if isinstance(res, list) else [], recorded=calls)
            try:
                case.func(student)
                if len(student._calls) != len(calls):
                    raise AuthorError(f"{case.func.__name__} made {len(student._calls)} calls, {len(calls)} recorded")
            except CheckFailed as exc:
                passed = False
                messages.append(f"[FAIL] {label}: {exc}")
            except StudentRaised as exc:
                passed = False
                messages.append(f"[FAIL] {label}: your `{exc.function}` raised {exc.type_name}: {exc.message}")
            except AuthorError as exc:
                return Verdict(grade_id, False, [f"grader error (not your fault; the instructor will regrade): {exc}"],
                               author_error=True)
            except Exception as exc:  # a student result the check did not expect (e.g. an Opaque in arithmetic)
                passed = False
                messages.append(f"[FAIL] {label}: your result could not be checked ({type(exc).__name__}: {exc})")
            else:
                messages.append(f"[ok]   {label}")
        return Verdict(grade_id, passed, messages)


# ================================================================ the rule: no answer can be looked up
# The kernel keeps its state between test cells, so a student's function can remember every value it was given
# and every value it returned. If a later call received one of those values (say ``inverse(z)`` with ``z`` the
# reference of an earlier ``forward(x)``), a function that only looks values up would answer it without being
# implemented. Hence: no call receives a floating-point value (a whole tensor or one of its rows) that an earlier
# call of the assignment received or produced, except inside a check declared ``chaining="why"``, between its
# own calls. Integer-valued rows (masks, identity matrices, counts) and non-tensor parameters (numbers,
# ``Source``, ``Generator``) are not data and are not compared.
_FRESH_RTOL = 1e-6


def _informative_rows(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to(torch.float64)
    rows = t.reshape(1, -1) if t.ndim <= 1 else t.reshape(t.shape[0], -1)
    keep = torch.isfinite(rows).all(1) & (rows != rows.round()).any(1)
    return rows[keep]


class _Seen:
    """Every informative row seen so far, grouped by row width, with where it came from (one cdist per lookup)."""

    def __init__(self) -> None:
        self.rows: dict[int, list[torch.Tensor]] = {}
        self.owner: dict[int, list[int]] = {}
        self.labels: list[tuple[str, object]] = []
        self._cat: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def add(self, t: torch.Tensor, what: str, group: object) -> None:
        rows = _informative_rows(t)
        if rows.numel() == 0:
            return
        w = rows.shape[1]
        self.labels.append((what, group))
        self.rows.setdefault(w, []).append(rows)
        self.owner.setdefault(w, []).append(len(self.labels) - 1)
        self._cat.pop(w, None)

    def find(self, t: torch.Tensor, skip_group: object = None) -> str | None:
        """What earlier call received or produced a row of ``t`` (to ~1e-6), or None."""
        rows = _informative_rows(t)
        if rows.numel() == 0 or rows.shape[1] not in self.rows:
            return None
        w = rows.shape[1]
        if w not in self._cat:
            parts = self.rows[w]
            owner = torch.cat([torch.full((p.shape[0],), k) for p, k in zip(parts, self.owner[w])])
            every = torch.cat(parts)
            self._cat[w] = (every, owner, every.abs().amax(1))
        every, owner, scale = self._cat[w]
        tol = _FRESH_RTOL * (1.0 + torch.maximum(rows.abs().amax(1)[:, None], scale[None, :]))
        hit = torch.cdist(rows, every, p=float("inf")) <= tol
        for k in owner[hit.any(0)].unique().tolist():
            what, group = self.labels[k]
            if skip_group is None or group != skip_group:
                return what
        return None


def _float_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _float_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _float_tensors(v)]
    return []


def fresh_input_violations(checks: Checks, recorded: dict[str, list[list[_Call]]],
                           results: dict[str, list | None] | None = None) -> list[str]:
    """Where the hidden checks break the rule above, in the order the probes run (``recorded``'s order).

    Without ``results`` (at record time, before any kernel ran) only the inputs are compared; with the results
    of a correct notebook (``selftest`` of the solution) a later input is also compared with every earlier output.
    """
    seen = _Seen()
    problems = []
    for gid, per_case in recorded.items():
        for k, calls in enumerate(per_case):
            case = checks.cases[gid][k]
            group = (gid, k)
            where = f"{gid} / {case.func.__name__}"
            cell_results = (results or {}).get(gid)
            case_results = cell_results[k] if isinstance(cell_results, list) and k < len(cell_results) else None
            for i, call in enumerate(calls):
                if call.chained and case.chaining is None:
                    problems.append(f"{where}: call {i} ({call.name}) takes an earlier result; declare the check "
                                    "@checks.cell(..., chaining=\"why\") if it is about chaining")
                for t in call.tensors:
                    what = seen.find(t, skip_group=group if case.chaining is not None else None)
                    if what is not None:
                        problems.append(f"{where}: call {i} ({call.name}) receives a value that {what} "
                                        "(a memoising answer could look it up): use fresh inputs")
                        break
                for t in call.tensors:
                    seen.add(t, f"call {i} of {where} received", group)
                res = case_results[i] if isinstance(case_results, list) and i < len(case_results) else None
                if isinstance(res, dict) and "value" in res:
                    for t in _float_tensors(decode(res["value"])):
                        seen.add(t, f"call {i} ({call.name}) of {where} returned", group)
    return problems


def check_fresh_inputs(checks: Checks, recorded: dict[str, list[list[_Call]]],
                       results: dict[str, list | None] | None = None) -> None:
    """Raise ``AuthorError`` naming every call that breaks the rule (see ``fresh_input_violations``)."""
    problems = fresh_input_violations(checks, recorded, results)
    if problems:
        raise AuthorError(f"{checks.assignment}: hidden checks that feed a value to a later call:\n  "
                          + "\n  ".join(problems))


# ================================================================ derived quantities, computed in the grader
def central_differences(x0: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """A batch for a grader-side Jacobian: ``x0`` (one sample, shape ``(1, ...)``), then ``x0 + h e_i`` for every
    element ``i``, then ``x0 - h e_i``. Send it to the student's (per-sample) function in one call, and give
    what comes back to ``jacobian_from_differences``: the Jacobian is then computed here, from returned values
    only, so nothing in the kernel (a patched ``torch.autograd``) can forge it."""
    if x0.shape[0] != 1 or not x0.is_floating_point():
        raise AuthorError("central_differences takes one floating-point sample of shape (1, ...)")
    n = x0[0].numel()
    eye = torch.eye(n, dtype=x0.dtype).reshape(n, *x0.shape[1:])
    return torch.cat([x0, x0 + h * eye, x0 - h * eye])


def jacobian_from_differences(out: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """The ``(m, n)`` Jacobian at ``x0`` from the function's outputs on ``central_differences(x0, h)``."""
    n = (out.shape[0] - 1) // 2
    flat = out.reshape(out.shape[0], -1).to(torch.float64)
    return ((flat[1 : 1 + n] - flat[1 + n :]) / (2 * h)).T


def _label(func: Callable) -> str:
    doc = (func.__doc__ or "").strip().splitlines()
    return doc[0].strip() if doc else func.__name__.strip("_").replace("_", " ")


def load_checks(source_assignment_dir: str | Path) -> Checks | None:
    """Import ``<dir>/hidden_checks.py`` in this (the grader's) process; ``None`` when the file does not exist."""
    path = Path(source_assignment_dir) / "hidden_checks.py"
    if not path.is_file():
        return None
    name = f"_course_hidden_checks_{path.parent.name}_{secrets.token_hex(4)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    checks = getattr(module, "checks", None)
    if not isinstance(checks, Checks):
        raise AuthorError(f"{path} must define `checks = Checks(...)`")
    import hashlib

    checks.source_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    return checks


# ================================================================ notebook instrumentation
def graded_code_cells(nb: Any) -> Iterator[tuple[int, Any, str]]:
    for i, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") == "code" and meta.get("grade") and not meta.get("solution"):
            yield i, cell, str(meta.get("grade_id"))


def validate(nb: Any, checks: Checks) -> None:
    """Every graded code cell has checks and every check names a graded cell; raises ``AuthorError`` otherwise."""
    ids = [gid for _, _, gid in graded_code_cells(nb)]
    missing = [g for g in ids if g not in checks.cases]
    unknown = [g for g in checks.cases if g not in ids]
    if missing or unknown:
        raise AuthorError(f"{checks.assignment}: test cells without hidden checks {missing}; "
                          f"checks for cells that do not exist {unknown}")


_FRESH_CHECKED: set = set()


def instrument(nb: Any, checks: Checks, nonce: str) -> dict[str, list[list[_Call]]]:
    """Replace each graded code cell's source by a probe of the recorded calls. Returns what was recorded."""
    validate(nb, checks)
    recorded = {gid: checks.record(gid) for _, _, gid in graded_code_cells(nb)}
    key = (checks.assignment, getattr(checks, "source_hash", None), tuple(recorded))
    if key not in _FRESH_CHECKED:  # the rule depends on the checks only: once per process and version
        check_fresh_inputs(checks, recorded)
        if key[1] is not None:
            _FRESH_CHECKED.add(key)
    for _, cell, gid in graded_code_cells(nb):
        spec = {"nonce": nonce, "cell": gid, "cases": [[c.spec() for c in calls] for calls in recorded[gid]]}
        cell.source = probe_source(spec)
        cell.outputs = []
    return recorded


def probe_source(spec: dict) -> str:
    payload = json.dumps(spec, separators=(",", ":"))
    return f"# graded outside this kernel: your functions are called on the grader's inputs\n" \
           f"__import__('course_tools.probe', fromlist=['run']).run({payload!r})\n"


def _results_of(cell: Any, nonce: str) -> list | None:
    return _results_and_reason(cell, nonce)[0]


def _results_and_reason(cell: Any, nonce: str) -> tuple[list | None, str]:
    """The probe's results in a cell's outputs, or ``None`` and why. Never raises: anything malformed (too
    large, nested too deep, not JSON, the wrong types) fails this cell only."""
    found = []
    for out in cell.get("outputs", []):
        data = out.get("data", {}) if out.get("output_type") in ("display_data", "execute_result") else {}
        bundle = data.get(MIME) if isinstance(data, dict) else None
        if isinstance(bundle, dict) and bundle.get("nonce") == nonce:
            found.append(bundle.get("payload"))
    if not found:
        return None, "no results"
    if len(found) != 1:
        return None, f"{len(found)} result payloads instead of one"
    if not isinstance(found[0], str):
        return None, "a malformed result payload"
    if len(found[0]) > MAX_PAYLOAD:
        return None, f"a result payload larger than {MAX_PAYLOAD} bytes"
    if _nesting(found[0]) > MAX_NESTING:
        return None, f"a result payload nested deeper than {MAX_NESTING} levels"
    try:
        results = json.loads(found[0])
    except (ValueError, RecursionError, MemoryError) as exc:
        return None, f"a result payload that is not valid JSON ({type(exc).__name__})"
    return (results, "") if isinstance(results, list) else (None, "a malformed result payload")


MAX_NESTING = 64  # the probe's own results nest a few levels (cases, calls, $tuple, $dict, ...)


def _nesting(text: str) -> int:
    """The deepest bracket nesting of a JSON text, outside strings (no recursion, linear time)."""
    import re

    depth = deepest = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', text):
        ch = token.group()
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def judge(nb: Any, checks: Checks, nonce: str, recorded: dict[str, list[list[_Call]]] | None = None) -> dict:
    """Decide every graded code cell from the probe results in its outputs (grader process only)."""
    if recorded is None:
        recorded = {gid: checks.record(gid) for _, _, gid in graded_code_cells(nb)}
    verdicts = {}
    for _, cell, gid in graded_code_cells(nb):
        results, why = _results_and_reason(cell, nonce)
        try:
            verdicts[gid] = checks.decide(gid, recorded[gid], results, why)
        except RecursionError:  # a result nested in a way the decoder did not foresee: this cell only
            verdicts[gid] = Verdict(gid, False, ["the grader received malformed results from this cell (nested "
                                                 "too deep)"], malformed="results nested too deep")
    return verdicts


def apply_verdicts(nb: Any, verdicts: dict[str, Verdict]) -> None:
    """Replace ALL outputs of each graded code cell by its verdict (an error output when it failed)."""
    import nbformat

    for _, cell, gid in graded_code_cells(nb):
        v = verdicts.get(gid) or Verdict(gid, False, ["no verdict for this cell"], author_error=True)
        text = "\n".join(v.messages) + "\n"
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        if not v.passed:
            ename = "GraderError" if v.author_error else "HiddenTestFailed"
            summary = "needs regrading" if v.author_error else "hidden tests failed"
            cell.outputs.append(nbformat.v4.new_output("error", ename=ename, evalue=summary, traceback=[]))


def new_nonce() -> str:
    return secrets.token_hex(16)


# ================================================================ authors' self-test
def _execute(nb: Any, cwd: str, timeout: int) -> None:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": cwd}}).execute()


def selftest(assignment: str, notebook: str | None = None, root: str | Path = ".", timeout: int = 60) -> tuple:
    """Run ``notebook`` (default: the solution) instrumented, without a sandbox; returns (verdicts, points, max)."""
    import tempfile

    import nbformat

    root = Path(root)
    src = root / "solutions" / assignment
    checks = load_checks(src)
    if checks is None:
        raise SystemExit(f"{src}/hidden_checks.py does not exist")
    path = Path(notebook) if notebook else src / f"{assignment}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nonce = new_nonce()
    recorded = instrument(nb, checks, nonce)
    with tempfile.TemporaryDirectory() as tmp:
        _execute(nb, tmp, timeout)
    verdicts = judge(nb, checks, nonce, recorded)
    if notebook is None:  # the solution's outputs are the references: no later call may receive one
        results = {gid: _results_of(cell, nonce) for _, cell, gid in graded_code_cells(nb)}
        check_fresh_inputs(checks, recorded, results)
    points = {gid: float(c.metadata.nbgrader.get("points", 0)) for _, c, gid in graded_code_cells(nb)}
    got = sum(points[g] for g, v in verdicts.items() if v.passed)
    return verdicts, got, sum(points.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m course_tools.hidden", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("selftest", help="run a notebook (default: the solution) and decide its hidden checks")
    st.add_argument("assignment")
    st.add_argument("--notebook", help="another notebook, e.g. the student version (expect 0)")
    args = ap.parse_args(argv)
    verdicts, got, total = selftest(args.assignment, args.notebook)
    for gid, v in verdicts.items():
        print(f"{gid}: {'PASS' if v.passed else 'FAIL'}")
        print(textwrap.indent("\n".join(v.messages), "    "))
    print(f"score: {got:g} / {total:g}")
    return 0


if __name__ == "__main__":  # run through the package module, so hidden_checks.py and we share one `Checks`
    from course_tools import hidden as _hidden

    sys.exit(_hidden.main())
