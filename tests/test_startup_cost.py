"""What every process of the grading pipeline pays at start-up (the test suite starts well over a hundred:
nbgrader, ``python -m course_tools``, jupyter-book, nbval). Two imports used to cost more than the rest together:

* rfc3987-syntax (installed by jupyter-events through ``jsonschema[format-nongpl]``) builds an Earley parser when
  jsonschema imports it, i.e. in every process that imports nbformat: about 1.5 s of CPU.
  ``scripts/setup_env.sh`` removes it; jsonschema then skips the "iri" formats, which no schema here uses.
* ``nbgrader_config.py`` imports ``course_tools.grading`` in every nbgrader command; it imported the hidden checks
  and with them torch (another 1.5 s), which only ``autograde`` needs.
* ``import flowlib`` imported torchdiffeq and with it scipy (~0.7 s) in every lecture notebook's kernel.

Cost: six short interpreter starts (a few seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules_after(code: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return set(res.stdout.split())


def test_importing_nbformat_builds_no_rfc3987_parser():
    mods = _modules_after("import nbformat\nnbformat.validate(nbformat.v4.new_notebook())")
    assert "jsonschema" in mods, "nbformat validates with jsonschema: the test would prove nothing"
    assert "rfc3987_syntax" not in mods and "lark" not in mods, (
        "rfc3987-syntax is installed again (run scripts/setup_env.sh): 1.5 s of CPU in every nbgrader process"
    )


def test_nbgrader_configuration_imports_no_torch():
    code = (
        "from traitlets.config.loader import PyFileConfigLoader\n"
        f"cfg = PyFileConfigLoader('nbgrader_config.py', path={REPO!r}).load_config()\n"
        "names = [p.__name__ for p in cfg.Autograde.autograde_preprocessors]\n"
        "assert 'InstrumentHiddenChecks' in names and 'JudgeHiddenChecks' in names, names\n"
    )
    mods = _modules_after(code)
    assert "course_tools.grading" in mods and "course_tools.sandbox" in mods
    assert "torch" not in mods and "course_tools.hidden" not in mods


def test_the_hidden_checks_still_load_when_autograde_runs():
    """The preprocessor imports the hidden checks itself (here the released notebook, instrumented, no kernel)."""
    code = (
        "import nbformat\n"
        "from course_tools.grading import InstrumentHiddenChecks\n"
        "nb = nbformat.read('assignments/ch01_probability/ch01_probability.ipynb', as_version=4)\n"
        "nb, res = InstrumentHiddenChecks().preprocess(nb, {'nbgrader': {'assignment': 'ch01_probability'}})\n"
        "assert res['course_grading']['hidden_checks'] == 'outside the kernel', res\n"
    )
    mods = _modules_after(code)
    assert "course_tools.hidden" in mods and "torch" in mods


def test_importing_flowlib_leaves_the_ode_solver_for_later():
    """``import flowlib`` (every lecture notebook's kernel, twice in `make test`) without torchdiffeq, which
    imports scipy (~0.7 s of CPU); a CNF imports it when it first solves."""
    assert not {"torchdiffeq", "scipy"} & _modules_after("import flowlib")
    mods = _modules_after(
        "import torch, flowlib\n"
        "cnf = flowlib.transforms.cnf.CNF(2, hidden=(8,))\n"
        "z, logdet = cnf(torch.randn(3, 2))\n"
        "assert z.shape == (3, 2) and logdet.shape == (3,)\n"
    )
    assert "torchdiffeq" in mods
