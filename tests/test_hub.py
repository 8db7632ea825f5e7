"""End to end on a real JupyterHub (hub/jupyterhub_config.py) with real Unix users, on 127.0.0.1.

The test starts configurable-http-proxy (npm) and JupyterHub 6.1.1 on free loopback ports with temporary Unix
users, homes, exchange and course folder, and removes all of them at the end, whatever happens.  The instructor
(root, as on the hub's grading account) releases ch01_probability; two students log in with passwords through
the login form, start their servers, fetch through nbgrader's server API; A writes the solution's answer cells
through the contents API, B submits the untouched notebook.  The hub restarts; the submissions are still there.
The instructor collects, autogrades and releases feedback; both fetch it.  Bad cases: a wrong password; B
reading, listing or overwriting A's submission, the inbound folder, the gradebook, solutions/ or the
instructor's files through the hub's REST and contents API and as B's Unix user.  In headless Chromium, A logs
in through the form, opens Nbgrader > Assignment List and sees the assignment, then follows the book's launch
link of a lecture (nbgitpuller, the student repository written by `publish-student` and served by `git daemon`)
and sees the pulled notebook rendered with MyST (jupyterlab-myst: a {cite} and an {eq} of the lecture render, no raw
role is left).  Screenshots go to artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grading_helpers as H  # noqa: E402

requests = pytest.importorskip("requests")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.grading,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the hub creates one Unix user per hub user"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd/userdel to create Unix users"),
]

REPO = H.REPO
A_ID = "ch01_probability"
NB = f"{A_ID}.ipynb"
COURSE = "dgm-flows"
VENV_BIN = os.path.join(REPO, ".venv", "bin")


LECTURE = "chapters/01_probability/01_probability_review"


def launch_link(hub_url: str, student_repo: str) -> str:
    """The book's launch link of LECTURE (from the built page when there is one, else made from _config.yml the
    way Jupyter Book makes it), pointed at this test's hub and at a local copy of the student repository."""
    from urllib.parse import parse_qs, urlencode, urlsplit

    import yaml

    page = os.path.join(REPO, "_build", "html", LECTURE + ".html")
    if os.path.exists(page):
        from html import unescape

        links = re.findall(r'href="([^"]*git-pull[^"]*)"', open(page, encoding="utf-8").read())
        assert links, f"{page}: no launch link"
        query = {k: v[0] for k, v in parse_qs(urlsplit(unescape(links[0])).query).items()}
    else:
        with open(os.path.join(REPO, "_config.yml"), encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh)
        name = cfg["repository"]["url"].rstrip("/").rsplit("/", 1)[-1]
        query = {"repo": cfg["repository"]["url"], "urlpath": f"lab/tree/{name}/{LECTURE}.ipynb",
                 "branch": cfg["repository"].get("branch", "main")}
    name = query["repo"].rstrip("/").rsplit("/", 1)[-1]
    assert student_repo.rstrip("/").rsplit("/", 1)[-1] == name, "the local student repository must keep its name"
    assert query["urlpath"] == f"lab/tree/{name}/{LECTURE}.ipynb", query
    query["repo"] = student_repo  # the same link, served from this machine instead of the public host
    return f"{hub_url}/hub/user-redirect/git-pull?{urlencode(query)}"


def first_heading(doc: str) -> str:
    """The text of the first markdown heading of a lecture notebook."""
    with open(os.path.join(REPO, doc + ".ipynb"), encoding="utf-8") as fh:
        cells = json.load(fh)["cells"]
    for c in cells:
        for line in "".join(c["source"]).splitlines():
            if c["cell_type"] == "markdown" and line.startswith("# "):
                return line[2:].split(":")[0].strip()
    raise AssertionError(f"{doc}: no heading")


def myst_roles(doc: str) -> tuple[str, str]:
    """The first ``{cite}`` key of a lecture notebook, and the first ``{eq}`` label it refers to that one of its
    own equations defines (``$$ ... $$ (label)``), so that the reference can be resolved on that page."""
    with open(os.path.join(REPO, doc + ".ipynb"), encoding="utf-8") as fh:
        text = "\n".join("".join(c["source"]) for c in json.load(fh)["cells"] if c["cell_type"] == "markdown")
    cites = re.findall(r"\{cite\}`([^`,]+)`", text)
    defined = set(re.findall(r"\$\$ \(([\w-]+)\)", text))
    eqs = [e for e in re.findall(r"\{eq\}`([\w-]+)`", text) if e in defined]
    assert cites and eqs, f"{doc}: needs a {{cite}} and an {{eq}} to one of its own equations"
    return cites[0], eqs[0]


def check_myst_rendered(br, doc: str) -> None:
    """In the JupyterLab page that shows lecture ``doc``, the lecture's first ``{cite}`` renders as a citation
    (jupyterlab-myst shows its key in a span; plain JupyterLab shows the role's source text) and its first ``{eq}``
    to one of its own equations renders as a link with the equation's number; no rendered cell shows a raw role."""
    cite_key, eq_label = myst_roles(doc)
    myst = "[...document.querySelectorAll('.jp-NotebookPanel .jp-MarkdownCell .myst')]"
    key = json.dumps(cite_key)
    cite = f"{myst}.some(m => [...m.querySelectorAll('span')].some(s => s.textContent.trim() === {key}))"
    if not br.wait_for(cite, timeout=30):
        shown_text = br.evaluate("document.querySelector('.jp-NotebookPanel .jp-MarkdownCell').innerText")
        raise AssertionError(f"{{cite}}`{cite_key}` is not rendered as a citation (is jupyterlab-myst installed?); "
                             f"the first markdown cell shows: {shown_text[:600]!r}")
    for i in range(12):  # the notebook renders cells as they scroll into view
        if br.evaluate(f"{myst}.some(m => !!m.querySelector('a[href=\"#{eq_label}\"]'))"):
            break
        br.evaluate(f"[...document.querySelectorAll('.jp-NotebookPanel .jp-Cell')][{i}].scrollIntoView()")
        br.pump(1.0)
    link = br.evaluate(f"(() => {{ const a = {myst}.map(m => m.querySelector('a[href=\"#{eq_label}\"]'))"
                       ".find(a => a); return a ? a.textContent : null; })()")
    assert link and re.fullmatch(r"\(\d+\)", link.strip()), (
        f"{{eq}}`{eq_label}` is not rendered as a numbered equation link: {link!r}"
    )
    raw = br.evaluate(f"{myst}.filter(m => /\\{{(eq|cite|ref|doc)\\}}`/.test(m.textContent)).length")
    assert raw == 0, f"{raw} rendered markdown cells still show a raw MyST role"


def _by_text(selector: str, text: str) -> str:
    """JS expression: the first element matching ``selector`` whose visible text is ``text``."""
    return (f"[...document.querySelectorAll({json.dumps(selector)})]"
            f".find(e => e.innerText.trim() === {json.dumps(text)})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    def __init__(self, base: str, students: dict[str, str]):
        self.base = base
        self.state = os.path.join(base, "state")
        self.home = os.path.join(base, "home")
        self.exchange = os.path.join(base, "exchange")
        self.course = os.path.join(base, "course")  # $COURSE_DIR of the graders: root only
        for d, mode in ((self.state, 0o700), (self.home, 0o755), (self.exchange, 0o755), (self.course, 0o700)):
            os.makedirs(d)
            os.chmod(d, mode)
        self.students = students
        self.port, api, proxy_api = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_hex(32)
        extra = os.path.join(self.state, "test_extra_config.py")
        with open(extra, "w", encoding="utf-8") as fh:
            fh.write(
                "c = get_config()  # noqa\n"
                f"c.JupyterHub.services = [{{'name': 'test-admin', 'api_token': {self.admin_token!r}}}]\n"
                "c.JupyterHub.load_roles = [{'name': 'test-admin', 'services': ['test-admin'], "
                "'scopes': ['admin:users', 'admin:servers', 'tokens', 'list:users', 'read:users']}]\n"
            )
        from course_tools.hubauth import set_password

        for name, pw in students.items():
            set_password(os.path.join(self.state, "passwords.json"), name, pw)
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "NBGRADER", "COURSE_"))
        }
        self.env.update(
            COURSE_HUB_PORT=str(self.port),
            COURSE_HUB_API_PORT=str(api),
            COURSE_HUB_PROXY_API_PORT=str(proxy_api),
            COURSE_HUB_STATE=self.state,
            COURSE_HUB_HOME_BASE=self.home,
            COURSE_HUB_EXTRA_CONFIG=extra,
            NBGRADER_EXCHANGE=self.exchange,
        )
        self.proc = None
        self.log = os.path.join(base, "hub.log")

    # ---- process
    def start(self) -> None:
        logf = open(self.log, "a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [os.path.join(VENV_BIN, "jupyterhub"), "-f", os.path.join(REPO, "hub", "jupyterhub_config.py")],
            cwd=self.state,
            env=self.env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, "the hub exited:\n" + self.tail()
            try:
                if requests.get(self.url + "/hub/api/", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise AssertionError("the hub did not come up:\n" + self.tail())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # cleanup_servers: the hub stops every server and the proxy
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self, n: int = 4000) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as fh:
            return fh.read()[-n:]

    # ---- hub API
    def api(self, method: str, path: str, token: str | None = None, **kw):
        headers = {"Authorization": f"token {token or self.admin_token}"}
        return requests.request(method, self.url + "/hub/api" + path, headers=headers, timeout=30, **kw)

    def login(self, name: str, password: str) -> requests.Session:
        s = requests.Session()
        r = s.get(self.url + "/hub/login", timeout=10)
        m = re.search(r'name="_xsrf"\s+value="([^"]+)"', r.text)
        assert m, "no _xsrf in the login form"
        r = s.post(
            self.url + "/hub/login",
            data={"username": name, "password": password, "_xsrf": m.group(1)},
            allow_redirects=False,
            timeout=30,
        )
        s.login_status = r.status_code
        return s

    def user_token(self, name: str) -> str:
        r = self.api("POST", f"/users/{name}/tokens", json={"note": "test", "expires_in": 900})
        assert r.status_code in (200, 201), r.text
        return r.json()["token"]

    def start_servers(self, tokens: dict[str, str]) -> None:
        """Each user starts their own server (with their own token); wait until all are ready."""
        for name, token in tokens.items():
            r = self.api("POST", f"/users/{name}/server", token=token)
            assert r.status_code in (201, 202), f"{r.status_code} {r.text}\n{self.tail()}"
        deadline = time.time() + 90
        waiting = set(tokens)
        while waiting and time.time() < deadline:
            for name in list(waiting):
                if self.api("GET", f"/users/{name}").json().get("servers", {}).get("", {}).get("ready"):
                    waiting.discard(name)
            time.sleep(0.3)
        assert not waiting, f"servers of {waiting} not ready:\n{self.tail()}"

    def user(self, method: str, name: str, path: str, token: str, **kw):
        headers = {"Authorization": f"token {token}"}
        return requests.request(method, f"{self.url}/user/{name}/{path}", headers=headers, timeout=120, **kw)

    def nbgrader(self, name: str, token: str, action: str):
        r = self.user("POST", name, f"assignments/{action}", token, data={"assignment_id": A_ID, "course_id": COURSE})
        assert r.status_code == 200, f"{action} as {name}: {r.status_code} {r.text[:2000]}\n{self.tail()}"
        body = r.json()
        assert not (isinstance(body, dict) and body.get("success") is False), f"{action} as {name}: {body}"
        return body


def as_user(name: str, code: str) -> dict:
    """Run python code as this Unix user (as their kernel would run), return its JSON output."""
    res = subprocess.run(
        ["runuser", "-u", name, "--", os.path.join(VENV_BIN, "python"), "-c", code],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


PROBE = r"""
import json, os, sys
out = {}
def t(key, fn):
    try:
        fn(); out[key] = "ALLOWED"
    except OSError as e:
        out[key] = type(e).__name__
a_sub, inbound, course, sol, a_home = sys.argv[1:6]
t("list_inbound", lambda: os.listdir(inbound))
t("list_a_submission", lambda: os.listdir(a_sub))
t("read_a_notebook", lambda: open(os.path.join(a_sub, "ch01_probability.ipynb")).read())
t("overwrite_a_notebook", lambda: open(os.path.join(a_sub, "ch01_probability.ipynb"), "w").write("{}"))
t("add_file_to_a_submission", lambda: open(os.path.join(a_sub, "x.ipynb"), "w").write("{}"))
t("rename_a_submission", lambda: os.rename(a_sub, a_sub + "-moved"))
t("list_course_dir", lambda: os.listdir(course))
t("read_gradebook", lambda: open(os.path.join(course, "gradebook.db"), "rb").read())
t("list_solutions", lambda: os.listdir(sol))
t("read_solution", lambda: open(os.path.join(sol, "ch01_probability", "ch01_probability.ipynb")).read())
t("list_a_home", lambda: os.listdir(a_home))
print(json.dumps(out))
"""


@pytest.fixture
def hub():
    base = tempfile.mkdtemp(prefix="dgm-hub-", dir="/tmp")
    os.chmod(base, 0o755)
    suffix = secrets.token_hex(3)
    students = {f"dgma{suffix}": secrets.token_urlsafe(12), f"dgmb{suffix}": secrets.token_urlsafe(12)}
    solutions = os.path.join(REPO, "solutions")
    sol_mode = os.stat(solutions).st_mode & 0o7777
    h = Hub(base, students)
    # the students' servers run the course's interpreter: every folder above it must be traversable by them
    # (here the venv's base Python can sit under /root, mode 0700; TLJH's /opt/tljh/user is world-readable)
    opened = []
    for target in (os.path.realpath(os.path.join(VENV_BIN, "python")), REPO):
        d = os.path.dirname(target)
        while d != "/":
            mode = os.stat(d).st_mode & 0o7777
            if not mode & 0o001 and d not in [p for p, _ in opened]:
                opened.append((d, mode))
            d = os.path.dirname(d)
    try:
        for d, mode in opened:
            os.chmod(d, mode | 0o001)  # traverse only (no listing), put back below
        os.chmod(solutions, 0o700)  # on the hub the repository's solutions/ is the graders' only
        h.start()
        yield h
    finally:
        try:
            h.stop()
        finally:
            os.chmod(solutions, sol_mode)
            for d, mode in opened:
                os.chmod(d, mode)
            for name in students:
                subprocess.run(["userdel", "-r", "-f", name], capture_output=True)
            shutil.rmtree(base, ignore_errors=True)


def test_course_on_a_real_hub(hub, monkeypatch, request):
    from concurrent.futures import ThreadPoolExecutor

    from course_tools.hubauth import secure_exchange

    t0 = time.time()
    print()

    def stage(what):
        print(f"  [{time.time() - t0:6.1f} s] {what}", flush=True)

    a, b = list(hub.students)
    lay = H.layout(A_ID, NB)
    monkeypatch.setenv("NBGRADER_EXCHANGE", hub.exchange)  # the instructor's commands use the hub's exchange
    pool = ThreadPoolExecutor(2)

    def instructor(*args):
        res = H.cli(hub.course, *args, timeout_s=30)
        assert res.returncode == 0, f"course_tools {' '.join(args)}:\n{res.stdout}\n{res.stderr[-3000:]}"
        return res.stdout

    # ---- the instructor releases (while the students log in); the exchange is tightened (root 1777, inbound 3733)
    release = pool.submit(instructor, "release", A_ID)
    # the student repository, as `publish-student` writes it, for the launch link (served from this machine)
    student_repo = os.path.join(hub.base, "dgm-flows-student")
    published = pool.submit(instructor, "publish-student", student_repo)

    # ---- login: wrong password refused, right ones accepted (form with _xsrf); Unix users made on first login
    bad = hub.login(a, "wrong-password")
    assert bad.login_status != 302, bad.login_status
    assert bad.get(hub.url + f"/hub/api/users/{a}", timeout=10).status_code == 403
    assert hub.login("nobody-at-all", "x" * 12).login_status != 302
    for name, pw in hub.students.items():
        s = hub.login(name, pw)
        assert s.login_status == 302, f"login of {name}: {s.login_status}\n{hub.tail()}"
        assert subprocess.run(["id", name], capture_output=True).returncode == 0
        assert os.stat(os.path.join(hub.home, name)).st_mode & 0o777 == 0o700
    tokens = {name: hub.user_token(name) for name in hub.students}
    hub.start_servers(tokens)
    stage("logged in, servers started")
    release.result()
    secure_exchange(hub.exchange)
    inbound = os.path.join(hub.exchange, COURSE, "inbound")
    assert os.stat(inbound).st_mode & 0o7777 == 0o3733
    stage("released")
    # ---- students' servers: assignment list yes, formgrader no; umask and limits applied
    assert hub.user("GET", b, "formgrader", tokens[b]).status_code == 404
    listed = hub.user("GET", b, f"assignments?course_id={COURSE}", tokens[b]).json()
    assert any(x["assignment_id"] == A_ID and x["status"] == "released" for x in listed["value"]), listed

    # ---- fetch; A writes the solution's answer cells through the contents API; both submit
    nb_path = f"api/contents/{COURSE}/{A_ID}/{NB}"
    for name in (a, b):
        hub.nbgrader(name, tokens[name], "fetch")
        r = hub.user("GET", name, nb_path, tokens[name])
        assert r.status_code == 200, r.text
    model = hub.user("GET", a, nb_path, tokens[a]).json()
    for cell in model["content"]["cells"]:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid in lay.solution_src:
            cell["source"] = lay.solution_src[gid]
    r = hub.user("PUT", a, nb_path, tokens[a], json={"type": "notebook", "content": model["content"]})
    assert r.status_code == 200, r.text
    # new files are private (umask 077), owned by the student's Unix user
    r = hub.user("PUT", a, "api/contents/notes.txt", tokens[a], json={"type": "file", "format": "text", "content": "x"})
    assert r.status_code in (200, 201), r.text
    st = os.stat(os.path.join(hub.home, a, "notes.txt"))
    assert st.st_uid == int(subprocess.check_output(["id", "-u", a])) and st.st_mode & 0o077 == 0, oct(st.st_mode)
    for name in (a, b):
        hub.nbgrader(name, tokens[name], "submit")
    subs = {n: [d for d in os.listdir(inbound) if d.startswith(n + "+")] for n in (a, b)}
    assert all(len(v) == 1 for v in subs.values()), subs
    a_sub = os.path.join(inbound, subs[a][0])
    assert os.stat(a_sub).st_mode & 0o777 == 0o700

    stage("fetched, written, submitted")
    # ---- B against A: as B's Unix user (what B's kernel can do) ...
    targets = [a_sub, inbound, hub.course, os.path.join(REPO, "solutions"), os.path.join(hub.home, a)]
    probe = as_user(b, PROBE.replace("sys.argv[1:6]", repr(targets)))
    assert probe and all(v == "PermissionError" for v in probe.values()), probe
    # ... and through the hub: B's token on A's server, B's contents API outside B's home
    assert hub.user("GET", a, nb_path, tokens[b]).status_code in (403, 404)
    put = {"type": "file", "format": "text", "content": "x"}
    assert hub.user("PUT", a, nb_path, tokens[b], json=put).status_code in (403, 404)
    assert hub.api("GET", f"/users/{a}", token=tokens[b]).status_code in (403, 404)
    for path in (f"api/contents/..%2F{a}", "api/contents/..%2F..", "api/contents/%2Fetc"):
        r = hub.user("GET", b, path, tokens[b])
        assert r.status_code in (400, 403, 404), (path, r.status_code, r.text[:300])

    stage("isolation probed")
    # ---- the hub restarts (while the instructor grades): submissions are still there, students log in again
    def restart():
        hub.stop()
        hub.start()
        assert os.path.isdir(a_sub) and os.path.exists(os.path.join(a_sub, NB))
        for name, pw in hub.students.items():
            assert hub.login(name, pw).login_status == 302

    restarted = pool.submit(restart)

    # ---- collect, autograde, feedback
    out = instructor("collect", A_ID)
    assert f"{a}/{A_ID}" in out and f"{b}/{A_ID}" in out, out
    t_grade = time.time()
    out = instructor("autograde", A_ID)
    t_grade = time.time() - t_grade
    scores = H.code_scores(H.db_url_for(hub.course), A_ID)
    assert scores[a] == lay.total and scores[b] == 0, (scores, out)
    out = instructor("feedback", A_ID)
    assert f"feedback {a}/{A_ID}: released" in out and f"feedback {b}/{A_ID}: released" in out, out
    stage("collected, autograded, feedback released")
    restarted.result()
    stage("hub restarted")

    # ---- both fetch their feedback through their servers (started again after the restart)
    hub.start_servers(tokens)
    for name in hub.students:
        hub.nbgrader(name, tokens[name], "fetch_feedback")
        fb = os.path.join(hub.home, name, COURSE, A_ID, "feedback")
        pages = [os.path.join(r, f) for r, _, fs in os.walk(fb) for f in fs if f.endswith(".html")]
        assert pages, f"no feedback for {name}"
        html = open(pages[0], encoding="utf-8").read()
        assert f"{lay.total:g}" in html
    stage("feedback fetched")
    pool.shutdown()

    # ---- headless Chromium: A logs in through the form and lands in JupyterLab (screenshot in artifacts/)
    import browser

    if browser.find_chromium() is None:
        print("  (no chromium: browser check skipped)")
        return
    published.result()
    # served read-only by `git daemon` (git://, shallow clones work as over https), as the public host would
    git_port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={hub.base}", "--listen=127.0.0.1",
         f"--port={git_port}", student_repo],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    request.addfinalizer(daemon.kill)
    artifacts = os.path.join(REPO, "artifacts")
    os.makedirs(artifacts, exist_ok=True)
    with browser.Browser() as br:
        br.goto(hub.url + "/hub/login")
        assert br.wait_for("!!document.querySelector('input[name=username]')", timeout=30)
        br.evaluate(
            f"document.querySelector('input[name=username]').value = {json.dumps(a)};"
            f"document.querySelector('input[name=password]').value = {json.dumps(hub.students[a])};"
            "document.querySelector('input[name=username]').form.submit(); true"
        )
        assert br.wait_for(f"location.pathname.startsWith('/user/{a}/')", timeout=60), "browser login failed"
        # after the OAuth redirects: JupyterLab of A's server (the assignment list is checked above via the API)
        assert br.wait_for("!!document.querySelector('#jp-main-dock-panel')", timeout=90), "JupyterLab not shown"
        br.wait_for("!document.querySelector('#jupyterlab-splash')", timeout=60)  # not asserted: screenshot anyway
        br.screenshot(os.path.join(artifacts, "hub_student_lab.png"))
        # the student opens Nbgrader > Assignment List, as the students' page says, and sees assignment 1
        menu = _by_text(".lm-MenuBar-item", "Nbgrader")
        assert br.wait_for(f"!!{menu}", timeout=30), "no Nbgrader menu in the student's JupyterLab"
        assert br.click(menu)
        item = _by_text(".lm-Menu-item", "Assignment List")
        assert br.wait_for(f"!!{item}", timeout=10) and br.click(item), "no Assignment List in the Nbgrader menu"
        listed = br.wait_for(
            "(document.querySelector('#nbgrader-assignment-list') || {}).innerText", timeout=60
        )
        assert br.wait_for(
            f"(document.querySelector('#nbgrader-assignment-list').innerText || '').includes({json.dumps(A_ID)})",
            timeout=60,
        ), f"the assignment list does not show {A_ID}: {listed!r}"
        br.screenshot(os.path.join(artifacts, "hub_student_assignment_list.png"))
        stage("browser: logged in through the form, assignment list shows the assignment")
        # a launch link of the book (nbgitpuller) pulls the student repository and opens the lecture notebook
        link = launch_link(hub.url, f"git://127.0.0.1:{git_port}/dgm-flows-student")
        br.goto(link, settle=0)
        doc = LECTURE + ".ipynb"
        pulled = os.path.join(hub.home, a, "dgm-flows-student", doc)
        assert br.wait_for(
            f"location.pathname.endsWith({json.dumps('/lab/tree/dgm-flows-student/' + doc)})", timeout=90
        ), f"the launch link did not open the notebook: {br.evaluate('location.href')}\n{hub.tail()}"
        assert os.path.isfile(pulled), "nbgitpuller did not pull the lecture notebook into the student's home"
        assert os.stat(pulled).st_uid == int(subprocess.check_output(["id", "-u", a]))
        title = json.dumps(first_heading(LECTURE))
        shown = br.wait_for(
            "[...document.querySelectorAll('.jp-NotebookPanel .jp-MarkdownCell h1')]"
            f".some(h => h.innerText.includes({title}))", timeout=60,
        )
        assert shown, "the pulled lecture notebook was not rendered in JupyterLab"
        # MyST in the students' JupyterLab (jupyterlab-myst): {cite} and {eq} render, not their source text
        check_myst_rendered(br, LECTURE)
        br.screenshot(os.path.join(artifacts, "hub_lecture_myst.png"))
        # students are not asked about Jupyter's news feed (the hub may have no internet; page_config.json)
        assert not br.evaluate("document.body.innerText.includes('notified about official Jupyter news')")
        br.screenshot(os.path.join(artifacts, "hub_launch_link.png"))
    stage("browser: launch link pulled the student repository and opened the lecture; screenshots in artifacts/")
    print(f"\nhub end-to-end: {time.time() - t0:.1f} s (autograde {t_grade:.1f} s)")
