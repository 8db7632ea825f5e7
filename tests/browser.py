"""A minimal headless-Chromium driver over the Chrome DevTools Protocol (CDP), for testing the built book.

It records every network request a page makes (so a test can prove nothing is fetched from outside the
site), evaluates JavaScript in the page and takes screenshots. Only the Python standard library and
``websocket-client`` (already a Jupyter dependency) are used; Chromium is Debian's ``chromium`` package.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import websocket

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,900",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_directory(root: str):
    """Serve ``root`` on a free loopback port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Browser:
    """One headless Chromium with one page, driven through CDP."""

    def __init__(self, executable: str | None = None, timeout: float = 30.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise RuntimeError("chromium not found: run `make system` (Debian package `chromium`)")
        self.timeout = timeout
        self._id = 0
        self.requests: list[str] = []

    def __enter__(self):
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        port = _free_port()
        self._proc = subprocess.Popen(
            [self.executable, *CHROMIUM_FLAGS, f"--remote-debugging-port={port}",
             f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + self.timeout
        targets = None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        if not targets:
            self.__exit__(None, None, None)
            raise RuntimeError("chromium did not start its DevTools endpoint")
        # Chromium >= 111 refuses a DevTools WebSocket whose handshake carries an Origin header (403 Forbidden,
        # "Rejected an incoming WebSocket connection from the http://127.0.0.1:PORT origin"); websocket-client
        # sends one unless told not to. Without an Origin the connection is accepted on every version.
        self._ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=self.timeout,
                                               suppress_origin=True)
        self.call("Page.enable")
        self.call("Network.enable")
        self.call("Runtime.enable")
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(Exception):
            self._ws.close()
        with contextlib.suppress(Exception):
            self._proc.terminate()
            self._proc.wait(timeout=10)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _handle_event(self, msg: dict):
        if msg.get("method") == "Network.requestWillBeSent":
            self.requests.append(msg["params"]["request"]["url"])
        elif msg.get("method") == "Page.loadEventFired":
            self._loaded = True

    def call(self, method: str, **params):
        self._id += 1
        my_id = self._id
        self._ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"CDP {method} failed: {msg['error']}")
                return msg.get("result", {})
            self._handle_event(msg)

    def goto(self, url: str, settle: float = 0.5):
        """Navigate and wait for the load event, then ``settle`` seconds for scripts."""
        self._loaded = False
        self.call("Page.navigate", url=url)
        self.pump(self.timeout, until=lambda: self._loaded)
        if not self._loaded:
            raise TimeoutError(f"page did not load: {url}")
        self.pump(settle)

    def pump(self, seconds: float, until=None):
        """Process events (network requests, load) for ``seconds``, or until ``until()`` is true."""
        end = time.time() + seconds
        self._ws.settimeout(0.1)
        try:
            while time.time() < end and not (until and until()):
                try:
                    self._handle_event(json.loads(self._ws.recv()))
                except websocket.WebSocketTimeoutException:
                    pass
        finally:
            self._ws.settimeout(self.timeout)

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error in {expression!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0):
        """Poll a JS expression until it is truthy; return its value (or the last falsy one on timeout)."""
        end = time.time() + timeout
        value = None
        while time.time() < end:
            value = self.evaluate(expression)
            if value:
                return value
            self.pump(0.2)
        return value

    def click(self, element_js: str) -> bool:
        """Click (real mouse events, as a user would) in the middle of the element that the JS expression
        ``element_js`` evaluates to; False when there is no such element or it is not visible."""
        rect = self.evaluate(
            f"(() => {{ const e = {element_js}; if (!e) return null; e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return r.width && r.height ? [r.x + r.width / 2,"
            " r.y + r.height / 2] : null; })()"
        )
        if not rect:
            return False
        x, y = rect
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        return True

    def print_pdf(self, path: str, **options) -> str:
        """Print the current page to a PDF file with Chromium's own print engine (``Page.printToPDF``; the
        options are its parameters, e.g. ``displayHeaderFooter``, ``footerTemplate``,
        ``generateDocumentOutline``). The PDF comes back as a stream, read in chunks, so a book of any size
        fits in the DevTools messages."""
        handle = self.call("Page.printToPDF", transferMode="ReturnAsStream", **options)["stream"]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            while True:
                chunk = self.call("IO.read", handle=handle, size=1 << 20)
                f.write(base64.b64decode(chunk["data"]) if chunk.get("base64Encoded") else chunk["data"].encode())
                if chunk.get("eof"):
                    break
        self.call("IO.close", handle=handle)
        return path

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by Chromium and all its processes (Linux /proc)."""
        import psutil

        try:
            root = psutil.Process(self._proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return float("nan")
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total

    def screenshot(self, path: str):
        data = self.call("Page.captureScreenshot", format="png")["data"]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path
