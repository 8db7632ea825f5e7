"""The course hub's authenticator, spawner and password file (used by hub/jupyterhub_config.py).

Passwords: one JSON file, ``{"alice": "scrypt$16384$8$1$<salt b64>$<hash b64>", ...}``, readable by root only.
The instructor manages it with

    python -m course_tools.hubauth set-password FILE USER      (reads the password from stdin or asks)
    python -m course_tools.hubauth remove FILE USER
    python -m course_tools.hubauth list FILE

Every hub user listed in the file may log in; each is one Unix user (created on first login with
``useradd``, private home), and their server runs as that user with a private umask and resource limits.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import json
import os
import resource
import secrets
import sys

N, R, P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    h = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return f"scrypt${N}${R}${P}${base64.b64encode(salt).decode()}${base64.b64encode(h).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, h = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
        return hmac.compare_digest(got, base64.b64decode(h))
    except (ValueError, TypeError):
        return False


def load(path: str) -> dict[str, str]:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def save(path: str, users: dict[str, str]) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(users, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def set_password(path: str, user: str, password: str) -> None:
    users = load(path)
    users[user] = hash_password(password)
    save(path, users)


def secure_exchange(exchange: str, course: str = "dgm-flows") -> list[tuple[str, int]]:
    """Tighten nbgrader's exchange after ``release`` (which resets the root to 0777 and inbound to 2733).

    root 1777 (sticky: nobody renames or removes the course folder), inbound 3733 (students can create their
    submission there but not list it, and the sticky bit stops them renaming or removing anyone else's).
    nbgrader only compares the 0777 bits, so later releases keep these modes.
    """
    out = []
    for path, mode in (
        (exchange, 0o1777),
        (os.path.join(exchange, course), 0o755),
        (os.path.join(exchange, course, "inbound"), 0o3733),
    ):
        if os.path.isdir(path):
            os.chmod(path, mode)
            out.append((path, mode))
    return out


# ------------------------------------------------------------------------------------------ JupyterHub parts
try:
    from jupyterhub.auth import LocalAuthenticator
    from jupyterhub.spawner import LocalProcessSpawner
    from traitlets import Dict, Integer, List, Unicode
except ImportError:  # the CLI works without JupyterHub
    LocalAuthenticator = LocalProcessSpawner = None

if LocalAuthenticator is not None:

    class CourseAuthenticator(LocalAuthenticator):
        """Per-user passwords from a JSON file of scrypt hashes; one Unix user per hub user."""

        passwords_file = Unicode("/srv/dgm-hub/passwords.json", config=True, help="JSON file of password hashes")

        async def authenticate(self, handler, data):
            name = self.normalize_username(data.get("username", ""))
            stored = load(self.passwords_file).get(name)
            if stored and verify_password(data.get("password", ""), stored):
                return name
            return None

        def check_allowed(self, username, authentication=None):
            return username in load(self.passwords_file)

    class CourseSpawner(LocalProcessSpawner):
        """LocalProcessSpawner + private umask + per-user rlimits + per-group Jupyter configuration."""

        umask = Integer(0o077, config=True)
        rlimits = Dict(
            {"RLIMIT_AS": 8 * 2**30, "RLIMIT_NPROC": 512, "RLIMIT_FSIZE": 2 * 2**30},
            config=True,
            help="resource limits (name -> bytes/count) applied to the user's server and its kernels",
        )
        config_dirs = Dict(
            {}, config=True, help="JupyterHub group -> JUPYTER_CONFIG_PATH; key '' for everybody else"
        )
        instructor_groups = List(["instructors"], config=True)

        def make_preexec_fn(self, name):
            setuid = super().make_preexec_fn(name)
            limits = dict(self.rlimits)
            umask = self.umask

            def preexec():
                setuid()
                os.umask(umask)
                for key, value in limits.items():
                    lim = getattr(resource, key)
                    hard = resource.getrlimit(lim)[1]
                    v = value if hard == resource.RLIM_INFINITY else min(value, hard)
                    resource.setrlimit(lim, (v, v))

            return preexec

        def get_env(self):
            env = super().get_env()
            groups = {g.name for g in self.user.groups}
            path = self.config_dirs.get("")
            for g in self.instructor_groups:
                if g in groups and g in self.config_dirs:
                    path = self.config_dirs[g]
            if path:
                env["JUPYTER_CONFIG_PATH"] = path
            return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_tools.hubauth", description="manage hub passwords")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("set-password")
    s.add_argument("file")
    s.add_argument("user")
    r = sub.add_parser("remove")
    r.add_argument("file")
    r.add_argument("user")
    ls = sub.add_parser("list")
    ls.add_argument("file")
    se = sub.add_parser("secure-exchange", help="after each release: sticky exchange root, inbound 3733")
    se.add_argument("exchange")
    se.add_argument("--course", default="dgm-flows")
    ns = p.parse_args(argv)
    if ns.cmd == "secure-exchange":
        for path, mode in secure_exchange(ns.exchange, ns.course):
            print(f"{oct(mode)[2:]:>5s} {path}")
        return 0
    if ns.cmd == "set-password":
        pw = getpass.getpass(f"password for {ns.user}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if len(pw) < 8:
            raise SystemExit("password too short (8 characters at least)")
        set_password(ns.file, ns.user, pw)
        print(f"password set for {ns.user} in {ns.file}")
    elif ns.cmd == "remove":
        users = load(ns.file)
        users.pop(ns.user, None)
        save(ns.file, users)
    else:
        print("\n".join(sorted(load(ns.file))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
