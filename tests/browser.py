"""A headless Chromium driven over the DevTools protocol on a pipe (no network, no extra
packages): open a local page, wait for its load event (every image loaded or failed), evaluate
JavaScript in it, and take a full-page screenshot.

    with HeadlessChromium(exe, profile_dir) as browser:
        browser.open(path)                        # returns once the page's load event fired
        info = browser.evaluate("document.images.length")
        png = browser.screenshot()                # PNG bytes of the whole page

Chromium is started with --remote-debugging-pipe: it reads protocol messages from fd 3 and
writes to fd 4, each a JSON object ended by a NUL byte.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


class BrowserError(RuntimeError):
    pass


class HeadlessChromium:
    def __init__(self, executable: str, profile_dir: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # bash moves the two pipe ends onto fds 3 and 4, where Chromium expects them
        cmd = [
            "bash", "-c", f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}', "chromium",
            executable, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank",
        ]  # fmt: skip
        # Chromium logs a lot (D-Bus, GPU): to a file, never a pipe that could fill and block it
        self.log_path = Path(profile_dir).with_suffix(".log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            cmd, pass_fds=(to_chrome_r, from_chrome_w), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=self._log,
        )  # fmt: skip
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.session: str | None = None

    # -- protocol ---------------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                log = self.log_path.read_bytes().decode(errors="replace")
                raise BrowserError(f"Chromium closed the pipe; its log ends: {log[-2000:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False):
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if not browser and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev["method"] == method and ev.get("sessionId") == self.session:
                    return self._events.pop(i)
            msg = self._read_message(deadline)
            if "method" in msg:
                self._events.append(msg)

    # -- page -------------------------------------------------------------------------------

    def open(self, path: Path, width: int = 1280, height: int = 900) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)
        attached = self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
            browser=True,
        )  # fmt: skip
        self.session = attached["sessionId"]
        self.send("Page.enable")
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics)
        self._events.clear()
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True})  # fmt: skip
        if "exceptionDetails" in res:
            raise BrowserError(f"JavaScript error: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self) -> bytes:
        res = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        return base64.b64decode(res["data"])

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("Browser.close", browser=True)
        except (BrowserError, OSError):
            pass
        finally:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for fd in (self._to_chrome, self._from_chrome):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._log.close()

    def __enter__(self) -> HeadlessChromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
