"""Run each autograded notebook's kernel in a sandbox that sees almost nothing of the grading machine.

nbgrader executes a student's notebook with the grader's own rights.  Here every kernel that ``autograde``
starts runs inside a [bubblewrap](https://github.com/containers/bubblewrap) sandbox built from an
**allow-list**, not from a list of things to hide:

* the filesystem is a fresh, empty root with only these put back, read-only: the system directories
  (``/usr`` and its ``/bin``, ``/lib`` links), a handful of ``/etc`` files that programs need to run
  (never ``/etc/shadow``; ``passwd``/``group`` are generated), the Python interpreter and the course
  environment (``sys.base_prefix``, ``sys.prefix``) and, from the repository, only ``flowlib``,
  ``course_tools`` (without the checks' hidden side) and ``pyproject.toml``.  Nothing else of the host
  exists in there: not the course working directory, the gradebook, the exchange, ``solutions/``, any other
  checkout of the course, home directories, wherever they are configured;
* ``/tmp`` is a private tmpfs of ``tmp_size_mb``; the kernel starts in ``/tmp/work``, a folder the grader
  makes, holding a read-only **private copy of the one notebook** and the assignment's own data files (from
  the student version in ``assignments/``): files shipped with a submission never reach the kernel, so
  they cannot shadow a module (``torch.py``, ``ipykernel_launcher.py``);
* as root, the kernel runs as an **unprivileged user** (``nobody`` by default, ``sandbox_user``), with no
  capabilities and ``no_new_privs``; as a normal user it runs as that user in a user namespace;
* no network (the kernel talks to the grader over Unix sockets in a private folder), own PID/IPC/UTS
  namespaces, a clean environment (no tokens or passwords), ``PYTHONSAFEPATH``;
* **limits per submission**: memory (``memory_limit_mb``, counted with ``/tmp`` through a cgroup when the
  machine offers one, and an address-space limit ``address_space_mb`` in any case), disk (``/tmp``'s size and
  ``file_size_limit_mb`` per file), processes (``max_processes``), and in :class:`SandboxedExecute` total
  time (``total_timeout``, besides nbgrader's per-cell timeout) and output bytes (``output_limit_kb``).  A
  submission that hits one is graded on what ran; the limit is recorded for the instructor
  (:mod:`course_tools.records`).

Wire it in with ``nbgrader_config.py`` (this repository does)::

    c.Autograde.autograde_preprocessors = [..., course_tools.sandbox.SandboxedExecute, ...]

Interrupts (cell timeouts) are delivered as Jupyter ``interrupt_request`` messages, because a SIGINT to
the process group would stop ``bwrap`` itself.  A kernel that dies (``os._exit``, segfault, memory limit) does
not abort the notebook: the cells from that point on get an error output and score 0, the cells before it
keep their grades.  A failure that is not the student's fault (the kernel does not start, or a locked
setup cell times out or kills the kernel) raises :class:`InfrastructureError`: nbgrader then saves nothing for
that submission and ``python -m course_tools autograde`` retries it with a longer budget, then reports it as
"needs regrading" (never as a graded 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import typing as t
import uuid

import nbformat
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbgrader import utils
from nbgrader.preprocessors import Execute
from traitlets import Bool, Integer, List, Unicode

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_EXPOSE = ["flowlib", "course_tools", "pyproject.toml"]
# course_tools files the kernel never needs (the grader side of the hidden checks stays out anyway: the
# checks themselves live in solutions/, which is never exposed)
NEVER_EXPOSE = ["course_tools/cli.py"]
SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
ETC_FILES = [
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/alternatives",
    "/etc/fonts",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/matplotlibrc",
]
# fresh /dev and /proc; every namespace but the user one unshared (no network).  As root the user namespace
# is not needed (the kernel drops to an unprivileged user instead); as a normal user bwrap creates one.
NAMESPACES = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
BASE_ARGS = ["--dev", "/dev", "--proc", "/proc", *NAMESPACES, "--die-with-parent", "--new-session"]
KERNEL_HOME = "/tmp/home"
PROBE_MIME = "application/x-course-probe+json"  # course_tools.hidden.MIME
KERNEL_CWD = "/tmp/work"
SOCKET_FOLDER_KB = 1024  # the kernel's socket folder (a tmpfs of its own when grading as root)


class InfrastructureError(RuntimeError):
    """Grading failed for a reason that is not the student's fault; the submission must be graded again."""


def _system_binds() -> list[str]:
    out: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            out += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            out += ["--ro-bind", d, d]
    for f in ETC_FILES:
        if os.path.exists(f):
            out += ["--ro-bind", f, f]
    return out


def bwrap_available(bwrap: str = "bwrap") -> bool:
    """True when ``bwrap`` exists and can build the sandbox on this machine."""
    exe = shutil.which(bwrap)
    if not exe:
        return False
    try:
        res = subprocess.run(
            [exe, *_system_binds(), *BASE_ARGS, "--", "/bin/true"], capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def course_work_dir() -> str:
    """The course working directory (submitted/, autograded/, feedback/, gradebook): $COURSE_DIR or grading/."""
    return os.path.abspath(os.environ.get("COURSE_DIR") or os.path.join(REPO_ROOT, "grading"))


# ------------------------------------------------------------------------------------------------ cgroups
def _cgroup_roots() -> dict[str, str]:
    """Writable cgroup folders for memory and pids: {"memory": path, "pids": path} (empty if none)."""
    roots: dict[str, str] = {}
    base = "/sys/fs/cgroup"
    if os.path.exists(os.path.join(base, "cgroup.controllers")):  # cgroup v2
        ctrl = open(os.path.join(base, "cgroup.controllers")).read().split()
        for c in ("memory", "pids"):
            if c in ctrl and os.access(base, os.W_OK):
                roots[c] = base
    else:
        for c in ("memory", "pids"):
            d = os.path.join(base, c)
            if os.path.isdir(d) and os.access(d, os.W_OK):
                roots[c] = d
    return roots


class _Cgroup:
    """One memory (and pids) cgroup per kernel; joined by the launch wrapper, removed afterwards."""

    def __init__(self, memory_bytes: int, max_pids: int):
        self.paths: dict[str, str] = {}
        name = "course-grader-" + uuid.uuid4().hex[:12]
        for ctrl, root in _cgroup_roots().items():
            path = os.path.join(root, name)
            try:
                os.mkdir(path)
                if ctrl == "memory" and memory_bytes:
                    v2 = os.path.exists(os.path.join(path, "memory.max"))
                    _write(path, "memory.max" if v2 else "memory.limit_in_bytes", memory_bytes)
                    if v2:
                        _write(path, "memory.swap.max", 0, quiet=True)
                    else:
                        _write(path, "memory.memsw.limit_in_bytes", memory_bytes, quiet=True)
                if ctrl == "pids" and max_pids:
                    _write(path, "pids.max", max_pids)
                self.paths[ctrl] = path
            except OSError:
                shutil.rmtree(path, ignore_errors=True)
                try:
                    os.rmdir(path)
                except OSError:
                    pass
        self._mem_base = self._read_memory_events()

    def procs_files(self) -> list[str]:
        return [os.path.join(p, "cgroup.procs") for p in self.paths.values()]

    def _read_memory_events(self) -> int:
        path = self.paths.get("memory")
        if not path:
            return 0
        for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
            try:
                for line in open(os.path.join(path, name)):
                    k, _, v = line.partition(" ")
                    if k == key:
                        return int(v)
            except OSError:
                continue
        try:
            return int(open(os.path.join(path, "memory.failcnt")).read())
        except OSError:
            return 0

    def memory_hit(self) -> bool:
        return self._read_memory_events() > self._mem_base

    def pids_hit(self) -> bool:
        path = self.paths.get("pids")
        try:
            for line in open(os.path.join(path, "pids.events")) if path else []:
                if line.startswith("max ") and int(line.split()[1]) > 0:
                    return True
        except OSError:
            pass
        return False

    def remove(self) -> None:
        for path in self.paths.values():
            for _ in range(20):
                try:
                    pids = [int(p) for p in open(os.path.join(path, "cgroup.procs")).read().split()]
                except OSError:
                    pids = []
                for pid in pids:
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    time.sleep(0.05)
        self.paths = {}


def _write(path: str, name: str, value: int, quiet: bool = False) -> None:
    try:
        with open(os.path.join(path, name), "w") as fh:
            fh.write(str(value))
    except OSError:
        if not quiet:
            raise


# ------------------------------------------------------------------------------------------------ kernel
class SandboxKernelManager(AsyncKernelManager):
    """An AsyncKernelManager that launches the kernel in the sandbox (see the module docstring)."""

    bwrap = Unicode("bwrap", help="bubblewrap executable").tag(config=True)
    repo_root = Unicode(REPO_ROOT, help="course repository; only `expose` of it is visible").tag(config=True)
    expose = List(Unicode(), DEFAULT_EXPOSE, help="paths relative to repo_root that the kernel may read").tag(
        config=True
    )
    extra_ro_paths = List(
        Unicode(), [], help="more absolute paths the kernel may read (e.g. a data set outside the repository)"
    ).tag(config=True)
    sandbox_user = Unicode("nobody", help="Unix user the kernel runs as when grading as root").tag(config=True)
    memory_limit_mb = Integer(
        2048, help="memory of one kernel, /tmp included (cgroup, when available); 0: none"
    ).tag(config=True)
    address_space_mb = Integer(
        8192, help="address-space limit of a kernel in MiB (prlimit --as; torch needs ~1.5 GiB); 0: none"
    ).tag(config=True)
    tmp_size_mb = Integer(64, help="size of the kernel's private /tmp (its only writable disk)").tag(config=True)
    file_size_limit_mb = Integer(64, help="largest file a kernel may write, in MiB (prlimit --fsize)").tag(
        config=True
    )
    max_processes = Integer(64, help="processes and threads of one kernel (cgroup pids, else RLIMIT_NPROC)").tag(
        config=True
    )
    allow_unsandboxed = Bool(
        False,
        help="run kernels without isolation when bwrap cannot work (NOT safe for untrusted submissions)",
    ).tag(config=True)

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self._private_dir = tempfile.mkdtemp(prefix="nbg-kernel-")
        os.chmod(self._private_dir, 0o700)
        # The only folder the kernel can write outside its /tmp: its sockets. As root it is a tmpfs of its own,
        # SOCKET_FOLDER_KB large (the kernel can fill no host disk); the rest of the private folder (the
        # connection file, passwd/group, the notebook copy) is read-only in the sandbox.
        self._sock_dir = os.path.join(self._private_dir, "sock")
        os.mkdir(self._sock_dir, 0o700)
        self._sock_mounted = False
        self._args_file: str | None = None
        self._files: dict[str, bytes] = {}  # name -> content, put read-only into the kernel's folder
        self._cgroup: _Cgroup | None = None
        self.on_limits: t.Callable[[str], None] | None = None  # told which limits the kernel hit, at the end
        # The kernel talks to us over Unix sockets in a private folder: no network namespace needed.
        self.transport = "ipc"
        self.connection_file = os.path.join(self._private_dir, "kernel.json")
        self.ip = os.path.join(self._sock_dir, "k")

    # -- identity ------------------------------------------------------------------------------------
    def _user(self) -> tuple[int, int] | None:
        """(uid, gid) to run the kernel as, when grading as root; None otherwise."""
        if os.geteuid() != 0:
            return None
        try:
            pw = pwd.getpwnam(self.sandbox_user)
        except KeyError as exc:
            raise RuntimeError(f"sandbox user {self.sandbox_user!r} does not exist (useradd it)") from exc
        if pw.pw_uid == 0:
            raise RuntimeError("the sandbox user must not be root")
        return pw.pw_uid, pw.pw_gid

    def set_files(self, files: dict[str, bytes]) -> None:
        """The files the kernel's folder holds (a private copy of the notebook, the assignment's data)."""
        self._files = dict(files)

    # -- command -------------------------------------------------------------------------------------
    def sandbox_command(self, kernel_cmd: list[str]) -> list[str]:
        exe = shutil.which(self.bwrap) or self.bwrap
        user = self._user()
        cmd = [exe, "--perms", "0755", "--dir", "/etc", *_system_binds(), *BASE_ARGS]
        if user is None:
            cmd += ["--unshare-user", "--cap-drop", "ALL"]
        made: set[str] = {"/", "/tmp", "/dev", "/proc", "/etc", *SYSTEM_DIRS}

        def parents(path: str) -> list[str]:
            out, p = [], os.path.dirname(path)
            while p not in made and p != "/":
                out.append(p)
                p = os.path.dirname(p)
            for d in reversed(out):
                made.add(d)
            return [a for d in reversed(out) for a in ("--perms", "0755", "--dir", d)]

        # /etc: only the files above, plus generated passwd/group naming the kernel's user
        self._write_identity(user)
        for name in ("passwd", "group"):
            cmd += ["--ro-bind", os.path.join(self._private_dir, name), f"/etc/{name}"]
        # a private /tmp with a size limit: the only writable place.  Mounted before the read-only binds, so
        # that an environment or a checkout that lives under the host's /tmp stays visible (bound on top of it)
        cmd += ["--size", str(self.tmp_size_mb * 2**20), "--perms", "1777", "--tmpfs", "/tmp"]
        # the interpreter (a venv's python is a symlink into e.g. ~/.pyenv) and the environment
        ro = [os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), os.path.abspath(sys.prefix)]
        repo = os.path.realpath(self.repo_root)
        ro += [os.path.join(repo, rel) for rel in self.expose] + list(self.extra_ro_paths)
        seen: list[str] = []
        for src in ro:
            if src in seen or not os.path.exists(src) or any(src.startswith(s + os.sep) for s in seen):
                continue
            if src.startswith(tuple(d + os.sep for d in SYSTEM_DIRS)):
                continue  # already there
            seen.append(src)
            cmd += parents(src) + ["--ro-bind", src, src]
        for rel in NEVER_EXPOSE:
            if os.path.exists(os.path.join(repo, rel)) and any(
                os.path.join(repo, rel).startswith(s + os.sep) for s in seen
            ):
                cmd += ["--ro-bind", "/dev/null", os.path.join(repo, rel)]
        # the kernel's home and working folder: writable by the kernel's user (and inside the size-limited /tmp)
        cmd += ["--perms", "1777", "--dir", KERNEL_HOME, "--perms", "1777", "--dir", KERNEL_CWD]
        for name in self._files:
            cmd += ["--ro-bind", os.path.join(self._private_dir, "files", name), os.path.join(KERNEL_CWD, name)]
        cmd += parents(self._private_dir) + ["--ro-bind", self._private_dir, self._private_dir]
        cmd += ["--bind", self._sock_dir, self._sock_dir]
        cmd += ["--chdir", KERNEL_CWD]
        env = {
            "HOME": KERNEL_HOME,
            "USER": self.sandbox_user if user else os.environ.get("USER", "student"),
            "PATH": os.path.dirname(sys.executable) + ":/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "MPLBACKEND": "Agg",
            "MPLCONFIGDIR": KERNEL_HOME + "/.mpl",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONSAFEPATH": "1",
            "PYTHONNOUSERSITE": "1",
            "PYTHONPATH": repo,
            "NBGRADER_EXECUTION": "autograde",
            "OMP_NUM_THREADS": "1",
            "TQDM_DISABLE": "1",
            "PYTHONWARNINGS": "ignore",
            "TMPDIR": "/tmp",
        }
        cmd += ["--clearenv"]
        for k, v in env.items():
            cmd += ["--setenv", k, v]
        cmd += ["--"]
        if user is not None:
            uid, gid = user
            cmd += [
                "/usr/bin/setpriv",
                f"--reuid={uid}",
                f"--regid={gid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
            ]
        kernel_cmd = list(kernel_cmd)
        if any("ipykernel" in os.path.basename(a) for a in kernel_cmd):
            # every message copied: a large one (a probe's results) sent without copying makes pyzmq start a
            # garbage-collector thread, which a student who already holds every allowed thread turns into a
            # kernel error, so correct work would not be graded
            kernel_cmd.append(f"--Session.copy_threshold={2**62}")
        return self._wrappers() + cmd + kernel_cmd

    def _write_identity(self, user: tuple[int, int] | None) -> None:
        uid, gid = user or (os.getuid(), os.getgid())
        name = self.sandbox_user if user else "student"
        with open(os.path.join(self._private_dir, "passwd"), "w") as fh:
            fh.write(f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n{name}:x:{uid}:{gid}::{KERNEL_HOME}:/bin/sh\n")
        with open(os.path.join(self._private_dir, "group"), "w") as fh:
            fh.write(f"root:x:0:\n{name}:x:{gid}:\n")

    def _wrappers(self) -> list[str]:
        """Join this kernel's cgroup (memory with /tmp, processes), then ``prlimit``, in front of ``bwrap``."""
        out: list[str] = []
        if self._cgroup is not None and self._cgroup.paths:
            script = 'for f in "$@"; do case "$f" in --) break;; esac; echo $$ > "$f"; shift; done; shift; exec "$@"'
            out += ["/bin/sh", "-c", script, "sh", *self._cgroup.procs_files(), "--"]
        limits = []
        if self.address_space_mb:
            limits.append(f"--as={self.address_space_mb * 2**20}")
        if self.file_size_limit_mb:
            limits.append(f"--fsize={self.file_size_limit_mb * 2**20}")
        has_pids_cgroup = self._cgroup is not None and "pids" in self._cgroup.paths
        if self.max_processes and not has_pids_cgroup and self._user() is not None:
            limits.append(f"--nproc={self.max_processes}")  # counts the sandbox user's processes
        exe = shutil.which("prlimit")
        if exe and limits:
            out += [exe, *limits, "--"]
        return out

    def limits_hit(self) -> list[str]:
        """Which resource limits this kernel ran into (memory, processes), as far as the machine can tell."""
        out = []
        if self._sock_mounted:
            try:
                st = os.statvfs(self._sock_dir)
                if st.f_bavail * st.f_frsize < 64 * 1024 or st.f_favail < 8:
                    out.append(f"kernel folder ({SOCKET_FOLDER_KB} KiB)")
            except OSError:
                pass
        if self._cgroup is not None:
            if self._cgroup.memory_hit():
                out.append(f"memory ({self.memory_limit_mb} MiB including /tmp)")
            if self._cgroup.pids_hit():
                out.append(f"processes ({self.max_processes})")
        return out

    def limits_summary(self) -> dict:
        roots = _cgroup_roots()
        return {
            "memory_mb": self.memory_limit_mb if "memory" in roots else None,
            "address_space_mb": self.address_space_mb,
            "tmp_mb": self.tmp_size_mb,
            "file_size_mb": self.file_size_limit_mb,
            "processes": self.max_processes,
            "cgroup": sorted(roots),
        }

    # -- launching -----------------------------------------------------------------------------------
    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: t.Any) -> None:
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
        files_dir = os.path.join(self._private_dir, "files")
        os.makedirs(files_dir, exist_ok=True)
        for name, data in self._files.items():
            with open(os.path.join(files_dir, name), "wb") as fh:
                fh.write(data)
        user = self._user()
        if user is not None:  # the kernel (unprivileged) creates its sockets in sock/ and reads the key
            os.chmod(self._private_dir, 0o711)
            self._mount_socket_folder(user)
            if not self._sock_mounted:
                os.chown(self._sock_dir, *user)
            if os.path.exists(self.connection_file):
                os.chown(self.connection_file, *user)
        self._cgroup = _Cgroup(self.memory_limit_mb * 2**20, self.max_processes)
        kw["cwd"] = "/"
        kw.pop("env", None)
        wrapped = self._hide_options(self.sandbox_command(kernel_cmd))
        self.log.debug("Sandboxed kernel: %s", " ".join(wrapped))
        return await super()._async_launch_kernel(wrapped, **kw)

    def _mount_socket_folder(self, user: tuple[int, int]) -> None:
        """As root: a tmpfs of SOCKET_FOLDER_KB on the socket folder, owned by the kernel's user."""
        opts = f"size={SOCKET_FOLDER_KB}k,nr_inodes=64,mode=0700,uid={user[0]},gid={user[1]},noexec,nosuid,nodev"
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", self._sock_dir], capture_output=True)
        self._sock_mounted = res.returncode == 0
        if not self._sock_mounted:
            self.log.warning("could not mount a tmpfs for the kernel's sockets (%s): the folder is on the host's "
                             "disk", res.stderr.decode(errors="replace").strip())

    def _hide_options(self, wrapped: list[str]) -> list[str]:
        """bwrap reads its options from a file the kernel cannot see (``--args``): its command line inside the
        sandbox (``/proc/1/cmdline``) shows no host path, no mount and no limit, only the kernel's command."""
        exe = shutil.which(self.bwrap) or self.bwrap
        try:
            start = wrapped.index(exe)
            end = wrapped.index("--", start + 1)
        except ValueError:
            return wrapped
        fd, self._args_file = tempfile.mkstemp(prefix="nbg-bwrap-args-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"".join(a.encode() + b"\0" for a in wrapped[start + 1 : end]))
        script = 'f="$1"; b="$2"; shift 2; exec "$b" --args 3 -- "$@" 3<"$f"'
        return wrapped[:start] + ["/bin/sh", "-c", script, "sh", self._args_file, exe] + wrapped[end + 1 :]

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
        if not restart:
            if self._cgroup is not None:
                if self.on_limits is not None:
                    for hit in self.limits_hit():
                        self.on_limits(hit)
                self._cgroup.remove()
            if self._sock_mounted:
                subprocess.run(["umount", "-l", self._sock_dir], capture_output=True)
                self._sock_mounted = False
            if self._args_file:
                with contextlib.suppress(OSError):
                    os.unlink(self._args_file)
                self._args_file = None
            shutil.rmtree(self._private_dir, ignore_errors=True)

    cleanup_resources = _async_cleanup_resources


# ------------------------------------------------------------------------------------------------ executor
class SandboxedExecute(Execute):
    """nbgrader's Execute preprocessor, with the kernel in the sandbox, per-submission limits (total time,
    output bytes) and kernel deaths contained.  What happened is recorded in ``resources["course_grading"]``
    (written out by :class:`course_tools.records.WriteGradingRecord`)."""

    total_timeout = Integer(
        int(os.environ.get("COURSE_TOTAL_TIMEOUT", "180")),
        help="seconds for all cells of one notebook together (besides the per-cell timeout)",
    ).tag(config=True)
    output_limit_kb = Integer(
        int(os.environ.get("COURSE_OUTPUT_LIMIT_KB", "1024")),
        help="bytes of output (all cells of one notebook) kept; the rest is dropped and reported",
    ).tag(config=True)
    setup_timeout = Integer(
        int(os.environ.get("COURSE_SETUP_TIMEOUT", "120")),
        help="seconds for each locked setup cell that runs before any student code (imports): the author's "
        "code, so a busy machine must not turn it into the student's zero; not counted in total_timeout",
    ).tag(config=True)
    infrastructure_factor = Integer(
        int(os.environ.get("COURSE_RETRY_FACTOR", "1")),
        help="multiplies every time budget (the CLI sets it when it grades a submission again)",
    ).tag(config=True)

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        kwargs["kernel_manager_class"] = SandboxKernelManager
        super().__init__(*args, **kwargs)
        self._kernel_dead = False
        self._record: dict = {}
        self._deadline = 0.0
        self._out_bytes = 0
        self._files: dict[str, bytes] = {}

    # -- per notebook --------------------------------------------------------------------------------
    def preprocess(self, nb: NotebookNode, resources: t.Any = None, km: t.Any = None):  # type: ignore[override]
        self._kernel_dead = False
        self._student_code_ran = False
        self._out_bytes = 0
        self._probe_bytes = 0
        self._dropped = False
        f = max(1, self.infrastructure_factor)
        if not hasattr(self, "_base_timeouts"):
            self._base_timeouts = (self.timeout or 30, self.startup_timeout or 60)
        self.timeout, self.startup_timeout = (t * f for t in self._base_timeouts)
        self._deadline = time.monotonic() + self.total_timeout * f
        rec = resources.setdefault("course_grading", {})
        rec.setdefault("limits", [])
        rec.setdefault("timeouts", [])
        rec.setdefault("kernel_died", [])
        rec.setdefault("interrupted", [])
        rec["factor"] = f
        self._record = rec
        self._files = self._kernel_files(nb, resources)
        try:
            return super().preprocess(nb, resources, km)
        except InfrastructureError as exc:
            rec["infrastructure"] = str(exc)
            _record_failure(resources)
            raise
        except (RuntimeError, TimeoutError) as exc:  # kernel did not start / did not answer
            if "Kernel" in str(exc) or "kernel" in str(exc) or isinstance(exc, TimeoutError):
                rec["infrastructure"] = f"the kernel did not start: {exc}"
                _record_failure(resources)
                raise InfrastructureError(rec["infrastructure"]) from exc
            raise

    def _kernel_files(self, nb: NotebookNode, resources: dict) -> dict[str, bytes]:
        """A private copy of the notebook (as submitted, before any grading rewrite) and the assignment's data
        files from its student version."""
        original = resources.get("course_original_notebook") or nb
        info = resources.get("nbgrader", {})
        name = (info.get("notebook") or "notebook") + ".ipynb"
        files = {name: nbformat.writes(original).encode("utf-8")}
        release = os.path.join(REPO_ROOT, "assignments", info.get("assignment", ""))
        if info.get("assignment") and os.path.isdir(release):
            for f in sorted(os.listdir(release)):
                p = os.path.join(release, f)
                if os.path.isfile(p) and not f.endswith(".ipynb") and not f.startswith("."):
                    with open(p, "rb") as fh:
                        files[f] = fh.read()
        return files

    def create_kernel_manager(self):  # type: ignore[override]
        km = super().create_kernel_manager()
        if isinstance(km, SandboxKernelManager):
            km.set_files(self._files)
            km.on_limits = self._add_limit
        return km

    # -- limits --------------------------------------------------------------------------------------
    def _is_setup(self, cell: NotebookNode) -> bool:
        return (
            utils.is_locked(cell) and not utils.is_grade(cell) and not utils.is_solution(cell)
            and not self._student_code_ran
        )

    def _get_timeout(self, cell: NotebookNode | None) -> int | None:  # type: ignore[override]
        if cell is not None and self._is_setup(cell):
            return self.setup_timeout * max(1, self.infrastructure_factor)
        per_cell = super()._get_timeout(cell)
        remaining = max(1, int(self._deadline - time.monotonic()))
        return min(per_cell, remaining) if per_cell else remaining

    async def _async_handle_timeout(self, timeout: int, cell: NotebookNode | None = None):  # type: ignore[override]
        if cell is not None:
            gid = _gid(cell, self._index)
            self._record["timeouts"].append(gid)
            if time.monotonic() >= self._deadline - 1:
                self._add_limit(f"total time ({self.total_timeout * max(1, self.infrastructure_factor)} s)")
                # the total budget is spent: no later cell runs, not even one that would fit in the last
                # fraction of a second that int() rounding left over
                self._deadline = min(self._deadline, time.monotonic())
            if self._is_setup(cell):
                self._infra = f"the locked cell {gid} timed out ({timeout} s)"
        return await super()._async_handle_timeout(timeout, cell)

    def _add_limit(self, what: str) -> None:
        if what not in self._record["limits"]:
            self._record["limits"].append(what)

    def output(self, outs, msg, display_id, cell_index):  # type: ignore[override]
        content = msg.get("content", {})
        if _deeper_than(content, MAX_OUTPUT_DEPTH):
            # nbclient and nbformat convert outputs recursively: a payload nested ~900 levels deep would raise
            # RecursionError there and make the whole submission ungradeable. Only this output is dropped.
            self._add_limit(f"output nesting ({MAX_OUTPUT_DEPTH} levels)")
            note = f"\n... an output nested deeper than {MAX_OUTPUT_DEPTH} levels was dropped ...\n"
            outs.append(NotebookNode(output_type="stream", name="stdout", text=note))
            return None
        size = len(json.dumps(content, default=str))
        data = content.get("data") or {}
        if PROBE_MIME in data and self._is_probe_cell(cell_index) and not any(
            PROBE_MIME in (o.get("data") or {}) for o in outs
        ):
            # the probe's own single output is not counted against the output limit (the grader bounds it),
            # but a notebook cannot send more than 64 MiB of them; the probe MIME type anywhere else counts
            self._probe_bytes = getattr(self, "_probe_bytes", 0) + size
            if self._probe_bytes <= 64 * 2**20:
                return super().output(outs, msg, display_id, cell_index)
            return None
        self._out_bytes += size
        if self._out_bytes > self.output_limit_kb * 1024:
            if not self._dropped:
                self._dropped = True
                self._add_limit(f"output ({self.output_limit_kb} KiB)")
                outs.append(
                    NotebookNode(
                        output_type="stream",
                        name="stdout",
                        text=f"\n... output limit ({self.output_limit_kb} KiB) reached: the rest was dropped ...\n",
                    )
                )
            return None
        return super().output(outs, msg, display_id, cell_index)

    def _is_probe_cell(self, cell_index: int) -> bool:
        try:
            cell = self.nb.cells[cell_index]
        except (AttributeError, IndexError, TypeError):
            return False
        return utils.is_grade(cell) and not utils.is_solution(cell) and cell.cell_type == "code"

    # -- cells ---------------------------------------------------------------------------------------
    def preprocess_cell(self, cell: NotebookNode, resources: t.Any, index: int):  # type: ignore[override]
        self._index = index
        self._infra = None
        if cell.cell_type != "code" or not cell.source.strip():
            return super().preprocess_cell(cell, resources, index)
        gid = _gid(cell, index)
        if self._kernel_dead:
            cell.outputs = [_error_output("KernelDied", "not executed: the kernel died in an earlier cell")]
            return cell, resources
        if time.monotonic() >= self._deadline:
            self._add_limit(f"total time ({self.total_timeout * max(1, self.infrastructure_factor)} s)")
            cell.outputs = [_error_output("TimeLimit", "not executed: the submission's total time limit was reached")]
            return cell, resources
        # a locked setup cell that fails before any student code ran is the machine's fault, not the student's
        locked_setup = self._is_setup(cell)
        if locked_setup and self._inject_fault(resources):
            raise InfrastructureError(f"the locked cell {gid} timed out (injected fault, COURSE_FAULT_INJECT)")
        if not utils.is_locked(cell) and not utils.is_grade(cell):
            self._student_code_ran = True
        t0 = time.monotonic()
        try:
            out = super().preprocess_cell(cell, resources, index)
        except RecursionError:
            # an output nbclient could not convert, past the depth check in ``output``: this cell only
            self._add_limit(f"output nesting ({MAX_OUTPUT_DEPTH} levels)")
            cell.outputs = [_error_output("OutputDropped", "an output of this cell was nested too deep to keep")]
            return cell, resources
        except CellTimeoutError:
            # interrupted after the cell timeout, but the kernel never went idle (SIGINT ignored, C loop)
            self._kernel_dead = True
            if gid not in self._record["timeouts"]:
                self._record["timeouts"].append(gid)
            self._record["kernel_died"].append(gid)
            if locked_setup:
                raise InfrastructureError(f"the locked cell {gid} timed out and the kernel hung") from None
            self.log.error("The kernel ignored the interrupt in cell %d; killing it, the cells after it score 0", index)
            self._shutdown_now()
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
            self._record["kernel_died"].append(gid)
            hit = self.km.limits_hit() if isinstance(self.km, SandboxKernelManager) else []
            for h in hit:
                self._add_limit(h)
            if locked_setup and not hit:
                raise InfrastructureError(f"the kernel died in the locked cell {gid}") from None
            self.log.error("The kernel died while executing cell %d; this cell and the ones after it score 0", index)
            why = "the " + " and ".join(hit) + " limit" if hit else "os._exit, crash or out of memory"
            cell.outputs = list(cell.get("outputs", [])) + [
                _error_output(
                    "KernelDied",
                    f"the kernel died while running this cell ({why}); the cells after it were not executed",
                )
            ]
            return cell, resources
        if self._infra and locked_setup:
            raise InfrastructureError(self._infra)
        if locked_setup:  # the author's setup does not eat the student's total time
            self._deadline += time.monotonic() - t0
        cell = out[0]
        for o in cell.get("outputs", []):
            own = gid not in self._record["timeouts"]
            if o.get("output_type") == "error" and o.get("ename") == "KeyboardInterrupt" and own:
                self._record["interrupted"].append(gid)  # raised by the student's own code, not a timeout
        return out

    def _inject_fault(self, resources: dict) -> bool:
        """Tests only: ``COURSE_FAULT_INJECT=infra:<student>`` (every try) or ``infra-once:<student>`` (first
        try only) makes that student's setup cell fail like a machine too busy to import torch in time."""
        spec = os.environ.get("COURSE_FAULT_INJECT", "")
        student = resources.get("nbgrader", {}).get("student")
        for item in filter(None, spec.split(",")):
            kind, _, who = item.partition(":")
            if who == student and (kind == "infra" or (kind == "infra-once" and self.infrastructure_factor == 1)):
                return True
        return False

    def _shutdown_now(self) -> None:
        try:
            run_sync(self.km.shutdown_kernel)(now=True)
        except Exception as exc:  # already gone
            self.log.debug("shutdown after timeout: %s", exc)


def _record_failure(resources: dict) -> None:
    from course_tools.records import write_record

    try:
        write_record(resources, "infrastructure")
    except OSError:
        pass


MAX_OUTPUT_DEPTH = 64  # levels of nesting in one output message that nbclient is given


def _deeper_than(obj: t.Any, limit: int) -> bool:
    """Whether ``obj`` (parsed JSON) nests deeper than ``limit`` levels; iterative, so it cannot recurse."""
    stack = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)
    return False


def _gid(cell: NotebookNode, index: int) -> str:
    return cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {index}"


def _error_output(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(
        output_type="error", ename=ename, evalue=evalue, traceback=[f"\x1b[0;31m{ename}\x1b[0m: {evalue}"]
    )


def describe_sandbox() -> str:
    """Human-readable summary for `python -m course_tools status`."""
    km = SandboxKernelManager()
    try:
        cmd = km.sandbox_command(["<kernel>"])
        limits = km.limits_summary()
    finally:
        shutil.rmtree(km._private_dir, ignore_errors=True)
    return json.dumps({"bwrap_available": bwrap_available(), "limits": limits, "command": cmd}, indent=1)


if __name__ == "__main__":  # pragma: no cover
    print(describe_sandbox())
