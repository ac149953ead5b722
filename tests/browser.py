"""A headless Chromium driven over the DevTools protocol (for tests/test_comfyui.py's frontend checks).

Just what the checks need: start Chromium with a throwaway profile, open a page, evaluate JavaScript (awaiting
promises, results by value), take a screenshot. Needs a ``chromium`` binary (Debian's package; ``SPACETIME_CHROMIUM``
names another) and the ``websocket-client`` package.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional


def find_chromium() -> Optional[str]:
    given = os.environ.get("SPACETIME_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    """One Chromium process with one page."""

    def __init__(self, binary: str, start_timeout: float = 60):
        import websocket
        self.profile = tempfile.mkdtemp(prefix="spacetime-chromium-")
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             "--window-size=1400,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline, port, seen = time.time() + start_timeout, None, []
        while port is None:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.close()
                    raise BrowserError("chromium did not start:\n" + "".join(seen[-20:]))
                continue
            seen.append(line)
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = m and int(m.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=120,
                                              suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list = []
        self.send("Runtime.enable")
        self.send("Page.enable")

    def send(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def goto(self, url: str):
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str, timeout: float = 120):
        """The value of a JavaScript expression (a promise is awaited); a thrown error raises BrowserError."""
        res = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True,
                        timeout=int(timeout * 1000))
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise BrowserError(d.get("exception", {}).get("description") or d.get("text") or str(d))
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 90) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self.evaluate(expression, timeout=10):
                    return True
            except BrowserError:
                pass
            time.sleep(0.25)
        return False

    def page_errors(self) -> list[str]:
        """Uncaught exceptions the page reported so far."""
        return [e["params"]["exceptionDetails"].get("exception", {}).get("description", "")[:600]
                for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self):
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            shutil.rmtree(self.profile, ignore_errors=True)
