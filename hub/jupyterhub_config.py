"""The course hub (JupyterHub 6.1.1, nbgrader 0.9.6): `jupyterhub -f hub/jupyterhub_config.py`.

One Unix user per hub user (created on first login), per-user passwords (course_tools/hubauth.py), servers run
from the course's pinned environment (this repository's .venv) with umask 077 and resource limits, students'
nbgrader configuration from hub/student/, instructors' (formgrader, course list) from hub/instructor/.
See instructors.md, "The course hub".  Settings by environment variable (defaults for one server):

  COURSE_HUB_IP / COURSE_HUB_PORT     public address of the proxy      (127.0.0.1 / 8000; put TLS in front)
  COURSE_HUB_API_PORT                 the hub's internal port           (8081)
  COURSE_HUB_PROXY_API_PORT           the proxy's API port              (8001)
  COURSE_HUB_STATE                    hub database, cookie secret, passwords.json   (/srv/dgm-hub)
  COURSE_HUB_HOME_BASE                where new users' homes are made   (/home)
  COURSE_INSTRUCTORS                  comma-separated hub users in the group `instructors` (admins too)
  NBGRADER_EXCHANGE                   the exchange root                 (/srv/nbgrader/exchange)
  COURSE_HUB_EXTRA_CONFIG             an extra config file loaded last (optional)
"""

import os
import shutil
import sys

c = get_config()  # noqa: F821

HUB = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HUB)
sys.path.insert(0, REPO)
VENV_BIN = os.path.join(REPO, ".venv", "bin")
STATE = os.environ.get("COURSE_HUB_STATE", "/srv/dgm-hub")
EXCHANGE = os.environ.get("NBGRADER_EXCHANGE", "/srv/nbgrader/exchange")
HOME_BASE = os.environ.get("COURSE_HUB_HOME_BASE", "/home")
INSTRUCTORS = [u for u in os.environ.get("COURSE_INSTRUCTORS", "").split(",") if u]
os.makedirs(STATE, mode=0o700, exist_ok=True)

# ---- network: loopback by default; the proxy is npm's configurable-http-proxy (node_modules or PATH)
c.JupyterHub.ip = os.environ.get("COURSE_HUB_IP", "127.0.0.1")
c.JupyterHub.port = int(os.environ.get("COURSE_HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("COURSE_HUB_API_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:" + os.environ.get("COURSE_HUB_PROXY_API_PORT", "8001")
chp = os.path.join(REPO, "node_modules", ".bin", "configurable-http-proxy")
c.ConfigurableHTTPProxy.command = [chp if os.path.exists(chp) else shutil.which("configurable-http-proxy") or chp]
c.JupyterHub.db_url = "sqlite:///" + os.path.join(STATE, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(STATE, "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = os.path.join(STATE, "jupyterhub.pid")

# ---- who: per-user passwords, one Unix user each, created on first login with a private home
c.JupyterHub.authenticator_class = "course_tools.hubauth.CourseAuthenticator"
c.CourseAuthenticator.passwords_file = os.path.join(STATE, "passwords.json")
c.CourseAuthenticator.create_system_users = True
c.CourseAuthenticator.add_user_cmd = [
    "useradd", "--create-home", "--home-dir", os.path.join(HOME_BASE, "USERNAME"),
    "--shell", "/bin/bash", "-K", "HOME_MODE=0700",
]  # JupyterHub appends the user name
c.Authenticator.admin_users = set(INSTRUCTORS)
c.JupyterHub.load_groups = {"instructors": {"users": INSTRUCTORS}}

# ---- servers: the course environment, as the user, umask 077, limits; per-group Jupyter config
c.JupyterHub.spawner_class = "course_tools.hubauth.CourseSpawner"
c.Spawner.cmd = [os.path.join(VENV_BIN, "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
c.Spawner.environment = {"NBGRADER_EXCHANGE": EXCHANGE, "PATH": VENV_BIN + ":/usr/local/bin:/usr/bin:/bin"}
c.CourseSpawner.config_dirs = {"": os.path.join(HUB, "student"), "instructors": os.path.join(HUB, "instructor")}
c.CourseSpawner.umask = 0o077
c.CourseSpawner.rlimits = {"RLIMIT_AS": 8 * 2**30, "RLIMIT_NPROC": 512, "RLIMIT_FSIZE": 2 * 2**30}
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
c.JupyterHub.cleanup_servers = True  # stopping the hub stops every server

extra = os.environ.get("COURSE_HUB_EXTRA_CONFIG")
if extra:
    load_subconfig(extra)  # noqa: F821
