"""Open a page in Debian's headless Chromium and report what a reader's browser would see.

Dependency-free: Chromium's DevTools protocol over a pipe (``--remote-debugging-pipe``: the
browser reads JSON commands from file descriptor 3 and writes replies and events to 4, each
message ended by a NUL byte), so nothing listens on a port and nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-pipe",
)  # fmt: skip

#: What the images of a page are after it loaded: [src prefix, complete, naturalWidth].
_IMAGES_JS = """
Promise.all(Array.from(document.images).map(i => i.decode().then(() => null, e => String(e))))
  .then(errors => JSON.stringify(Array.from(document.images).map((i, k) =>
     [i.getAttribute('src').slice(0, 30), i.complete, i.naturalWidth, errors[k]])))
"""


def find_chromium() -> str | None:
    """Path of Debian's chromium (or another chromium / chrome on PATH), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    """What the browser saw: load, images, console errors, the page's text and title."""

    loaded: bool
    title: str
    images: list[list]
    errors: list[str] = field(default_factory=list)
    text: str = ""


class _Pipe:
    def __init__(self, binary: str, user_data_dir: str) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds() -> None:  # in the child: its fd 3 reads our commands, its fd 4 writes replies
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            preexec_fn=fds, pass_fds=(3, 4),  # kept open after preexec_fn
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)
        raise TimeoutError(f"no reply to {method} in {timeout} s")

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._read(deadline))
        raise TimeoutError(f"no {method} in {timeout} s")

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("the browser did not answer")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def close(self) -> None:
        try:
            os.write(self._to_browser, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)


def open_page(url: str, binary: str, timeout: float = 60) -> PageReport:
    """Load ``url`` in a fresh headless Chromium and report what happened."""
    with tempfile.TemporaryDirectory(prefix="otfparsl-chromium-") as profile:
        pipe = _Pipe(binary, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
            session = pipe.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            navigation = pipe.send("Page.navigate", {"url": url}, session=session)
            if navigation.get("errorText"):
                return PageReport(False, "", [], [f"navigation: {navigation['errorText']}"])
            pipe.wait_for("Page.loadEventFired", timeout)
            images = pipe.send("Runtime.evaluate", {"expression": _IMAGES_JS, "awaitPromise": True, "returnByValue": True},
                               session=session, timeout=timeout)  # fmt: skip
            page = pipe.send("Runtime.evaluate", {"expression": "JSON.stringify([document.title, document.body.innerText])",
                                                  "returnByValue": True}, session=session)  # fmt: skip
            title, text = json.loads(page["result"]["value"])
            time.sleep(0.2)  # late console messages
            pipe.send("Runtime.evaluate", {"expression": "1"}, session=session)  # drains pending events
            return PageReport(True, title, json.loads(images["result"]["value"]), _errors(pipe.events), text)
        finally:
            pipe.close()


def _errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among the DevTools events."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            found.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
    return found
