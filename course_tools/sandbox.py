"""Run each autograded notebook's kernel inside a bubblewrap (``bwrap``) sandbox.

nbgrader executes a student's notebook with the grader's own rights, with the working directory set to
``autograded/<student>/<assignment>``.  Without isolation a notebook can read ``solutions/``, rewrite the
gradebook or other students' files.  Here the kernel process sees:

* the whole filesystem **read-only**, except
* the course repository, which is replaced by an empty directory with only the paths in
  :attr:`SandboxKernelManager.expose` put back read-only (``.venv``, ``flowlib``, ``course_tools``, ...),
  so ``solutions/``, ``.git`` (which contains the solutions' history) and ``nbgrader_config.py`` are gone;
* the course working directory (submitted/, autograded/, feedback/, gradebook, exchange), home directories,
  ``/run`` and ``/tmp`` replaced by empty tmpfs;
* its own working directory, writable -- but it is a *scratch copy* of the autograded folder, not the folder
  itself, so nothing the notebook writes (or symlinks it plants) ever reaches files nbgrader later writes;
* no network (the kernel talks to the grader over Unix sockets in a private directory), its own PID, IPC and
  UTS namespaces, no capabilities, a clean environment.

The grader keeps working normally: nbgrader reads the results over the kernel's sockets and writes the
autograded notebook and the gradebook with its own rights, outside the sandbox.

Wire it in with ``nbgrader_config.py`` (this repository does)::

    c.Autograde.autograde_preprocessors = [course_tools.sandbox.SandboxedExecute, ...]

Interrupts (cell timeouts) are delivered as Jupyter ``interrupt_request`` messages, because a SIGINT to
the process group would stop ``bwrap`` itself.  A kernel that dies (``os._exit``, segfault, OOM-kill) no
longer aborts the whole notebook: the cells from that point on get an error output and score 0, the cells
before it keep their grades.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import typing as t

from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Bool, Integer, List, Unicode

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Default hidden paths besides the course working directory and the repository (see _hidden_paths).
DEFAULT_HIDE = [
    "/root",
    "/home",
    "/run",
    "/var/run",
    "/srv",
    "/mnt",
    "/media",
    "/var/lib/postgresql",
    "/var/tmp",
    "/dev/shm",
]
DEFAULT_EXPOSE = [".venv", "flowlib", "course_tools", "assignments", "data", "pyproject.toml"]
# Read-only root, fresh /dev and /proc, every namespace unshared (no network), no capabilities.
BASE_ARGS = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all", "--cap-drop", "ALL"]


def bwrap_available(bwrap: str = "bwrap") -> bool:
    """True when ``bwrap`` exists and can create the namespaces we need on this machine."""
    exe = shutil.which(bwrap)
    if not exe:
        return False
    try:
        res = subprocess.run([exe, *BASE_ARGS, "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def course_work_dir() -> str:
    """The course working directory (submitted/, autograded/, feedback/, gradebook): $COURSE_DIR/grading/."""
    return os.path.abspath(os.environ.get("COURSE_DIR") or os.path.join(REPO_ROOT, "grading"))


class SandboxKernelManager(AsyncKernelManager):
    """An AsyncKernelManager that launches the kernel under ``bwrap`` (see the module docstring)."""

    bwrap = Unicode("bwrap", help="bubblewrap executable").tag(config=True)
    repo_root = Unicode(REPO_ROOT, help="course repository; hidden except `expose`").tag(config=True)
    expose = List(Unicode(), DEFAULT_EXPOSE, help="paths relative to repo_root that the kernel may read").tag(
        config=True
    )
    hide = List(Unicode(), DEFAULT_HIDE, help="absolute paths replaced by an empty tmpfs").tag(config=True)
    extra_hide = List(
        Unicode(),
        [],
        help="more absolute paths to hide (e.g. the exchange, a gradebook file's folder on another disk)",
    ).tag(config=True)
    memory_limit_mb = Integer(
        4096,
        help="address-space limit of a student kernel in MiB (prlimit --as; torch needs ~1.5 GiB); 0: none",
    ).tag(config=True)
    file_size_limit_mb = Integer(
        512, help="largest file a student kernel may write, in MiB (prlimit --fsize); 0: none"
    ).tag(config=True)
    allow_unsandboxed = Bool(
        False,
        help="run kernels without isolation when bwrap cannot work (NOT safe for untrusted submissions)",
    ).tag(config=True)

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self._private_dir = tempfile.mkdtemp(prefix="nbg-kernel-")
        os.chmod(self._private_dir, 0o700)
        self._scratch: str | None = None
        # The kernel talks to us over Unix sockets in a private folder: no network namespace needed.
        self.transport = "ipc"
        self.connection_file = os.path.join(self._private_dir, "kernel.json")
        self.ip = os.path.join(self._private_dir, "k")

    # -- paths ---------------------------------------------------------------------------------------
    def _hidden_paths(self) -> list[str]:
        paths = [course_work_dir(), os.path.realpath(course_work_dir()), tempfile.gettempdir()]
        paths += list(self.hide) + list(self.extra_hide)
        env_hide = os.environ.get("COURSE_SANDBOX_HIDE", "")
        paths += [p for p in env_hide.split(os.pathsep) if p]
        out = []
        for p in paths:
            p = os.path.abspath(p)
            if os.path.isdir(p) and not os.path.islink(p) and p not in out and p != "/":
                out.append(p)
        # parents first: a tmpfs mounted on /tmp after one on /tmp/course would cover it again
        return sorted(out, key=lambda p: p.count(os.sep))

    def sandbox_command(self, kernel_cmd: list[str], cwd: str) -> list[str]:
        exe = shutil.which(self.bwrap) or self.bwrap
        repo = os.path.realpath(self.repo_root)
        cmd = [exe, *BASE_ARGS, "--die-with-parent", "--hostname", "grader"]
        for p in self._hidden_paths():
            cmd += ["--tmpfs", p]
        cmd += ["--tmpfs", repo]
        exposed = [os.path.join(repo, rel) for rel in self.expose]
        # the interpreter the kernel runs on (a venv's python is a symlink into e.g. ~/.pyenv)
        exposed += [os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)]
        for src in exposed:
            if os.path.exists(src):
                cmd += ["--ro-bind", src, src]
        cmd += ["--dir", "/tmp/home"]
        # The notebook's folder: a scratch copy, mounted where the notebook expects it.
        cmd += ["--bind", self._scratch, cwd, "--bind", self._private_dir, self._private_dir, "--chdir", cwd]
        # The empty stand-ins for hidden folders are read-only (writes fail instead of vanishing).
        tmp = os.path.realpath(tempfile.gettempdir())
        for p in self._hidden_paths() + [repo]:
            if os.path.realpath(p) != tmp:
                cmd += ["--remount-ro", p]
        env = {
            "HOME": "/tmp/home",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "MPLBACKEND": "Agg",
            "MPLCONFIGDIR": "/tmp/home/.mpl",
            "PYTHONDONTWRITEBYTECODE": "1",
            "NBGRADER_EXECUTION": "autograde",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "TQDM_DISABLE": "1",
            "PYTHONWARNINGS": "ignore",
        }
        for key in ("PYTHONPATH",):
            if key in os.environ:
                env[key] = os.environ[key]
        cmd += ["--clearenv"]
        for k, v in env.items():
            cmd += ["--setenv", k, v]
        return self._limits() + cmd + ["--"] + list(kernel_cmd)

    def _limits(self) -> list[str]:
        """``prlimit`` in front of ``bwrap``: a memory bomb gets a MemoryError in its own cell and a disk
        filler an error, instead of taking the grading machine (and the rest of the batch) down."""
        exe = shutil.which("prlimit")
        if exe is None or not (self.memory_limit_mb or self.file_size_limit_mb):
            return []
        out = [exe]
        if self.memory_limit_mb:
            out.append(f"--as={self.memory_limit_mb * 2**20}")
        if self.file_size_limit_mb:
            out.append(f"--fsize={self.file_size_limit_mb * 2**20}")
        return out + ["--"]

    # -- launching -----------------------------------------------------------------------------------
    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: t.Any) -> None:
        cwd = os.path.abspath(kw.get("cwd") or os.getcwd())
        if not bwrap_available(self.bwrap):
            if not self.allow_unsandboxed:
                raise RuntimeError(
                    "bubblewrap (bwrap) is missing or cannot create namespaces here, so student code "
                    "cannot be isolated. Install bubblewrap (apt-get install bubblewrap) and allow "
                    "unprivileged user namespaces, or set c.SandboxKernelManager.allow_unsandboxed = True "
                    "for trusted code only."
                )
            self.log.warning("Running the kernel WITHOUT a sandbox (allow_unsandboxed=True)")
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        self._scratch = tempfile.mkdtemp(prefix="nbg-scratch-")
        shutil.copytree(cwd, self._scratch, symlinks=True, dirs_exist_ok=True)
        kw["cwd"] = "/"
        kw.pop("env", None)
        wrapped = self.sandbox_command(kernel_cmd, cwd)
        self.log.debug("Sandboxed kernel: %s", " ".join(wrapped))
        return await super()._async_launch_kernel(wrapped, **kw)

    async def _async_interrupt_kernel(self) -> None:
        # A SIGINT to the process group would reach bwrap too; ask the kernel over its control channel.
        if self.has_kernel:
            msg = self.session.msg("interrupt_request", content={})
            self._connect_control_socket()
            self.session.send(self._control_socket, msg)
        else:
            await super()._async_interrupt_kernel()

    interrupt_kernel = _async_interrupt_kernel

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        for d in (self._scratch,) if restart else (self._scratch, self._private_dir):
            if d:
                shutil.rmtree(d, ignore_errors=True)
        self._scratch = None

    cleanup_resources = _async_cleanup_resources


class SandboxedExecute(Execute):
    """nbgrader's Execute preprocessor, with the kernel in a sandbox and kernel deaths contained."""

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        kwargs["kernel_manager_class"] = SandboxKernelManager
        super().__init__(*args, **kwargs)
        self._kernel_dead = False

    def preprocess(self, nb: NotebookNode, resources: t.Any = None, km: t.Any = None):  # type: ignore[override]
        self._kernel_dead = False
        return super().preprocess(nb, resources, km)

    def preprocess_cell(self, cell: NotebookNode, resources: t.Any, index: int):  # type: ignore[override]
        if cell.cell_type != "code" or not cell.source.strip():
            return super().preprocess_cell(cell, resources, index)
        if self._kernel_dead:
            cell.outputs = [_error_output("KernelDied", "not executed: the kernel died in an earlier cell")]
            return cell, resources
        try:
            return super().preprocess_cell(cell, resources, index)
        except CellTimeoutError:
            # interrupted after the cell timeout, but the kernel never went idle (SIGINT ignored, C loop)
            self._kernel_dead = True
            self.log.error(
                "The kernel ignored the interrupt in cell %d; killing it, the cells after it score 0", index
            )
            try:
                run_sync(self.km.shutdown_kernel)(now=True)
            except Exception as exc:  # already gone
                self.log.debug("shutdown after timeout: %s", exc)
            cell.outputs = list(cell.get("outputs", [])) + [
                _error_output(
                    "KernelDied",
                    "the cell timed out and the kernel ignored the interrupt; it was "
                    "killed and the cells after it were not executed",
                )
            ]
            return cell, resources
        except DeadKernelError:
            self._kernel_dead = True
            self.log.error(
                "The kernel died while executing cell %d; this cell and the ones after it score 0", index
            )
            cell.outputs = list(cell.get("outputs", [])) + [
                _error_output(
                    "KernelDied",
                    "the kernel died while running this cell (os._exit, crash or "
                    "out of memory); the cells after it were not executed",
                )
            ]
            return cell, resources


def _error_output(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(
        output_type="error", ename=ename, evalue=evalue, traceback=[f"\x1b[0;31m{ename}\x1b[0m: {evalue}"]
    )


def describe_sandbox() -> str:
    """Human-readable summary for `python -m course_tools status`."""
    km = SandboxKernelManager()
    km._scratch = "<scratch copy>"
    try:
        cmd = km.sandbox_command(["<kernel>"], "<autograded folder>")
    finally:
        shutil.rmtree(km._private_dir, ignore_errors=True)
    return json.dumps({"bwrap_available": bwrap_available(), "command": cmd}, indent=1)


if __name__ == "__main__":  # pragma: no cover
    print(describe_sandbox())
