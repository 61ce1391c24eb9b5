"""A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`): no driver
download, no websocket package, nothing but the standard library and Debian's `chromium`.

    with Browser(width=1280) as b:
        b.open(Path("page.html"))
        b.eval("document.title")
        b.key("Enter")

Chromium reads commands from fd 3 and writes replies to fd 4, each message JSON terminated by a NUL byte.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]
KEYS = {"Enter": {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r"},
        " ": {"key": " ", "code": "Space", "windowsVirtualKeyCode": 32, "text": " "},
        "Tab": {"key": "Tab", "code": "Tab", "windowsVirtualKeyCode": 9}}


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    def __init__(self, width: int = 1280, height: int = 900, mobile: bool = False, timeout: float = 30.0):
        self.width, self.height, self.mobile, self.timeout = width, height, mobile, timeout
        self._id, self._buf, self.session, self.events = 0, b"", None, []

    # ------------------------------------------------------------------ process
    def __enter__(self) -> "Browser":
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("no chromium on PATH")
        self._profile = tempfile.TemporaryDirectory(prefix="ddbench-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds():  # the child's fd 3 reads our commands, its fd 4 writes the replies
            r, w = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)   # via fds >= 10: the pipe ends may themselves be fds 3 or 4
            os.dup2(w, 4)

        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self._profile.name}",
                                      f"--window-size={self.width},{self.height}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=fds, close_fds=False)  # close_fds would close 3 and 4
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        try:
            target = self.send("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.send("Page.enable")
            self.resize(self.width, self.mobile)
        except BaseException:
            self.__exit__()
            raise
        return self

    def resize(self, width: int, mobile: bool = False) -> None:
        """The viewport width (CSS px) and whether it is a phone's (reloading a page applies it everywhere)."""
        self.width, self.mobile = width, mobile
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=self.height, deviceScaleFactor=1,
                  mobile=mobile)

    def __exit__(self, *exc) -> None:
        try:
            self.send("Browser.close", _session=False)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        self._profile.cleanup()

    # ------------------------------------------------------------------ protocol
    def send(self, method: str, _session: bool = True, **params) -> dict:
        """One command; returns its result (events that arrive meanwhile are kept in `self.events`)."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if _session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_chrome], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def wait_event(self, method: str) -> dict:
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read())

    # ------------------------------------------------------------------ page
    def open(self, path: Path) -> None:
        self.events = []
        self.send("Page.navigate", url=Path(path).resolve().as_uri())
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def key(self, name: str) -> None:
        """A key press on the focused element, as a keyboard sends it (keyDown with its text, then keyUp)."""
        spec = KEYS[name]
        self.send("Input.dispatchKeyEvent", type="keyDown", **spec)
        self.send("Input.dispatchKeyEvent", type="keyUp", **{k: v for k, v in spec.items() if k != "text"})

    def screenshot(self, output: Path, full: bool = True) -> None:
        params = {"format": "png"}
        if full:
            w, h = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params |= {"captureBeyondViewport": True,
                       "clip": {"x": 0, "y": 0, "width": w, "height": min(h, 16000), "scale": 1}}
        Path(output).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))
