"""The authoring rules of the hidden checks (issue 20), in this process, without a kernel (about 15 s).

* no call of a hidden check receives a value that an earlier call received or produced, unless the check is
  declared ``chaining="why"`` (a memoising student could look the answer up), and every assignment keeps it;
* Jacobians are computed in the grader (``student.jacobian`` is gone; central differences of returned values);
* a malformed probe payload (nested too deep, huge, not JSON) fails that cell only, with the reason.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grading_helpers as H  # noqa: E402

sys.path.insert(0, H.REPO)
from course_tools import hidden, probe  # noqa: E402
from course_tools.hidden import AuthorError, Checks, expect_close  # noqa: E402
from course_tools.sandbox import _deeper_than  # noqa: E402

F64 = torch.float64


def _x(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _record_all(checks):
    return {gid: checks.record(gid) for gid in checks.cases}


# ------------------------------------------------------------------------------------------ the recorder's rule
def test_an_input_given_to_an_earlier_call_is_refused():
    checks = Checks("toy")

    @checks.cell("q1")
    def forward(student):
        student.forward(_x(1, 4, 3))

    @checks.cell("q2")
    def logdet(student):
        student.logdet(_x(1, 4, 3)[1:3])  # two rows of q1's input: a lookup by rows would find them

    with pytest.raises(AuthorError, match=r"q2 / logdet: call 0 \(logdet\) receives a value that call 0 of q1"):
        hidden.check_fresh_inputs(checks, _record_all(checks))


def test_an_input_equal_to_an_earlier_output_is_refused_once_the_outputs_are_known():
    checks = Checks("toy")
    x = _x(2, 5, 3)

    @checks.cell("q1")
    def forward(student):
        student.forward(x)

    @checks.cell("q2")
    def inverse(student):
        student.inverse(2 * x)  # the reference forward of q1's input

    recorded = _record_all(checks)
    hidden.check_fresh_inputs(checks, recorded)  # inputs alone are fresh
    results = {"q1": [[{"value": hidden.encode(2 * x)}]], "q2": [[{"value": hidden.encode(x)}]]}
    with pytest.raises(AuthorError, match=r"q2 / inverse: call 0 \(inverse\) receives a value that call 0 "
                                          r"\(forward\) of q1 / forward returned"):
        hidden.check_fresh_inputs(checks, recorded, results)


def test_chaining_must_be_declared_and_only_covers_the_check_itself():
    checks = Checks("toy")

    @checks.cell("q1")
    def round_trip(student):
        out = student.forward(_x(3, 4, 2))
        student.inverse(out[0])

    with pytest.raises(AuthorError, match=r"takes an earlier result; declare the check"):
        hidden.check_fresh_inputs(checks, _record_all(checks))

    declared = Checks("toy")

    @declared.cell("q1", chaining="a round trip: inverse of your own forward")
    def round_trip2(student):
        x = _x(3, 4, 2)
        out = student.forward(x)
        student.inverse(out[0])
        student.forward(x, reverse=True)  # its own input again: allowed inside a declared check

    @declared.cell("q2")
    def later(student):
        student.inverse(_x(3, 4, 2))  # ... but not in another check

    problems = hidden.fresh_input_violations(declared, _record_all(declared))
    assert len(problems) == 1 and problems[0].startswith("q2 / later"), problems
    with pytest.raises(AuthorError, match="chaining= must say why"):
        declared.cell("q3", chaining="")


def test_a_declared_chained_check_replays_with_the_earlier_result():
    """`student.inverse(out[0])` sends a reference ($ref) when recording; the replay must send the same reference
    (not the decoded tensor), or every chained check ends as a grader error."""
    checks = Checks("toy")

    @checks.cell("q1", chaining="a round trip: the inverse of your own forward")
    def round_trip(student):
        x = _x(3, 4, 2)
        out = student.forward(x)
        back = student.inverse(out[0], scale=[out[1], 2.0])
        hidden.expect_close(back, x, "the round trip does not give x back")

    (calls,) = _record_all(checks)["q1"]
    assert calls[1].args[0] == {"$ref": [0, 0]} and calls[1].chained
    x = _x(3, 4, 2)
    good = [[{"value": hidden.encode((2 * x, torch.zeros(3, dtype=F64)))}, {"value": hidden.encode(x)}]]
    verdict = checks.decide("q1", [calls], good)
    assert verdict.passed and not verdict.author_error, verdict.messages
    wrong = [[{"value": hidden.encode((2 * x, torch.zeros(3, dtype=F64)))}, {"value": hidden.encode(x + 1)}]]
    verdict = checks.decide("q1", [calls], wrong)
    assert not verdict.passed and not verdict.author_error, verdict.messages


def test_parameters_and_integer_valued_rows_are_not_data():
    checks = Checks("toy")
    mask = torch.tensor([1.0, 0.0, 1.0])

    @checks.cell("q1")
    def first(student):
        student.f(_x(4, 3, 3), mask, torch.eye(3, dtype=F64), 0.5)

    @checks.cell("q2")
    def second(student):
        student.g(_x(5, 3, 3), mask, torch.eye(3, dtype=F64), 0.5)

    assert hidden.fresh_input_violations(checks, _record_all(checks)) == []


@pytest.mark.parametrize("assignment", H.assignments())
def test_every_assignment_keeps_the_rule_with_the_solutions_outputs(assignment):
    """Record every check, run the solution's functions on the recorded calls here (the probe's own code, in
    this process), and compare every input with every earlier input and output."""
    import nbformat

    checks = hidden.load_checks(os.path.join(H.REPO, "solutions", assignment))
    nb = nbformat.read(os.path.join(H.REPO, "solutions", assignment, f"{assignment}.ipynb"), as_version=4)
    graded = {id(c) for _, c, _ in hidden.graded_code_cells(nb)}
    ns: dict = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and id(cell) not in graded:
            exec(cell.source, ns)
    recorded = {gid: checks.record(gid) for _, _, gid in hidden.graded_code_cells(nb)}
    results = {}
    for gid, per_case in recorded.items():
        results[gid] = []
        for calls in per_case:
            earlier, case = [], []
            for call in calls:
                value, encoded = probe._one(json.loads(json.dumps(call.spec())), ns, earlier)
                earlier.append(value)
                case.append(json.loads(json.dumps(encoded)))
            results[gid].append(case)
    assert hidden.fresh_input_violations(checks, recorded, results) == []
    # and the solution passes every check on these results (the rule did not cost correct work anything)
    verdicts = {gid: checks.decide(gid, recorded[gid], results[gid]) for gid in recorded}
    assert all(v.passed for v in verdicts.values()), {g: v.messages for g, v in verdicts.items() if not v.passed}


# ------------------------------------------------------------------------------------------ Jacobians in the grader
def test_student_jacobian_is_gone():
    checks = Checks("toy")

    @checks.cell("q1")
    def uses_it(student):
        student.jacobian("f", _x(6, 1, 3))

    with pytest.raises(AuthorError, match="student.jacobian was removed"):
        checks.record("q1")


def test_the_probe_runs_no_jacobian():
    spec = {"op": "jacobian", "name": "f", "args": [1.0], "kwargs": {}, "out": None}
    _, encoded = probe._one(spec, {"f": lambda v: v}, [])
    assert encoded["raised"] == "ValueError"


def test_central_differences_give_the_jacobian_of_returned_values():
    W = _x(7, 4, 4)

    def f(x):  # a smooth per-sample map
        return torch.tanh(x @ W) + x

    x0 = _x(8, 1, 4)
    J = hidden.jacobian_from_differences(f(hidden.central_differences(x0)))
    want = torch.autograd.functional.jacobian(f, x0)[0, :, 0, :]
    expect_close(J, want, "central differences", rtol=1e-7, atol=1e-8)
    with pytest.raises(AuthorError):
        hidden.central_differences(_x(9, 2, 4))


# ------------------------------------------------------------------------------------------ malformed results
def _cell_with(payload, nonce="n0"):
    return {"outputs": [{"output_type": "display_data", "data": {hidden.MIME: {"nonce": nonce, "payload": payload}}}]}


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ("[" * 200_000 + "]" * 200_000, "nested deeper than"),
        ('[{"$tuple":' * 900 + "1" + "}]" * 900, "nested deeper than"),
        ("[1, 2", "not valid JSON"),
        ("x" * (hidden.MAX_PAYLOAD + 1), "larger than"),
        (["not a string"], "malformed"),
    ],
)
def test_a_malformed_payload_fails_its_cell_only_and_says_why(payload, why):
    checks = Checks("toy")

    @checks.cell("q1")
    def one(student):
        student.f(1.0)

    results, reason = hidden._results_and_reason(_cell_with(payload), "n0")
    assert results is None and why in reason
    verdict = checks.decide("q1", checks.record("q1"), results, reason)
    assert not verdict.passed and not verdict.author_error and why in verdict.messages[0]


def test_a_deep_value_inside_a_valid_payload_is_opaque():
    deep: object = 1.0
    for _ in range(60):
        deep = {"$tuple": [deep]}
    value = hidden.decode(deep)
    for _ in range(21):
        (value,) = value
    assert isinstance(value, hidden.Opaque)


def test_output_depth_is_measured_without_recursion():
    deep: object = []
    for _ in range(100_000):
        deep = [deep]
    assert _deeper_than(deep, 64) and not _deeper_than({"a": [[1, 2], {"b": "c"}]}, 64)


def test_instrument_refuses_checks_that_feed_an_earlier_value():
    """What the grader runs on every submission: an assignment whose checks break the rule is not graded."""
    import nbformat

    checks = Checks("toy_instrument")
    x = _x(10, 4, 3)

    @checks.cell("q1")
    def forward(student):
        student.forward(x)

    @checks.cell("q2")
    def again(student):
        student.inverse(x.clone())

    nb = nbformat.v4.new_notebook()
    for gid in ("q1", "q2"):
        cell = nbformat.v4.new_code_cell(f'check("{gid}")')
        cell.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": gid, "points": 1}
        nb.cells.append(cell)
    with pytest.raises(AuthorError, match=r"toy_instrument: hidden checks that feed a value to a later call"):
        hidden.instrument(nb, checks, "n0")
