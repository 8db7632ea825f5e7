"""Student-side check: run the *visible* tests of one question and say, per test, what was expected.

In a notebook::

    from course_tools import check
    check("ch01.q1")          # all visible tests of question 1 of chapter 1
    check("ch01.q1.zeros")    # one of them

The tests read your functions from the notebook's namespace (or pass ``namespace=``).  The report ends with
"visible tests passed" -- the graded version also runs hidden tests, so passing here is necessary, not
sufficient.  If a test fails, ``check`` raises ``AssertionError`` (so a graded test cell fails too).
Output goes to stdout only.  It behaves the same on the hub and on your own machine: it only needs the
course repository installed (``pip install -e .``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class CheckFailure(AssertionError):
    """Raised by a visible test with a message that says what was expected."""


@dataclass
class VisibleTest:
    test_id: str
    description: str
    func: Callable[[dict], None]


_REGISTRY: dict[str, VisibleTest] = {}


def visible(test_id: str, description: str) -> Callable:
    """Register a visible test. ``test_id`` is ``<chapter>.<question>.<name>``, e.g. ``ch01.q1.basic``."""

    def deco(func: Callable[[dict], None]) -> Callable[[dict], None]:
        _REGISTRY[test_id] = VisibleTest(test_id, description, func)
        return func

    return deco


def expect(condition: bool, message: str) -> None:
    """Fail the current visible test with ``message`` (saying what was expected) unless ``condition``."""
    if not condition:
        raise CheckFailure(message)


def need(namespace: dict, name: str) -> Any:
    """The student's object ``name`` from the notebook namespace; a helpful message when it is missing."""
    if name not in namespace:
        raise CheckFailure(f"`{name}` is not defined: run the cell where you define it first")
    return namespace[name]


def _load_all() -> None:
    from course_tools import checks

    for mod in pkgutil.iter_modules(checks.__path__):
        if mod.name.startswith("_"):  # shared helpers, no tests
            continue
        importlib.import_module(f"course_tools.checks.{mod.name}")


def tests_for(prefix: str) -> list[VisibleTest]:
    _load_all()
    sel = [t for tid, t in _REGISTRY.items() if tid == prefix or tid.startswith(prefix + ".")]
    return sorted(sel, key=lambda t: t.test_id)


def check(question: str, namespace: dict | None = None, *, raise_on_failure: bool = True) -> bool:
    """Run the visible tests whose id is ``question`` or starts with ``question + '.'``; one line each."""
    if namespace is None:
        frame = inspect.currentframe()
        namespace = frame.f_back.f_globals if frame and frame.f_back else {}
    selected = tests_for(question)
    if not selected:
        known = sorted({".".join(tid.split(".")[:2]) for tid in _REGISTRY})
        raise ValueError(f"no visible tests for {question!r}; known questions: {', '.join(known)}")
    failed = []
    for test in selected:
        try:
            test.func(namespace)
        except NotImplementedError:
            failed.append(test.test_id)
            _say(f"[FAIL] {test.description}: not implemented yet (replace `raise NotImplementedError()`)")
        except CheckFailure as exc:
            failed.append(test.test_id)
            _say(f"[FAIL] {test.description}: {exc}")
        except Exception as exc:  # the student's code raised
            failed.append(test.test_id)
            where = traceback.extract_tb(exc.__traceback__)[-1]
            _say(
                f"[FAIL] {test.description}: your code raised {type(exc).__name__}: {exc} "
                f"(line {where.lineno} of {where.name})"
            )
        else:
            _say(f"[ok]   {test.description}")
    n = len(selected)
    if failed:
        _say(f"{question}: {n - len(failed)} of {n} visible tests passed.")
        if raise_on_failure:
            raise AssertionError(f"{len(failed)} visible test(s) failed for {question}: {', '.join(failed)}")
        return False
    _say(f"{question}: {n} of {n} visible tests passed. (Hidden tests also run when your work is graded.)")
    return True


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
