"""A small driver for a headless Chromium over the Chrome DevTools protocol (CDP).

Used to take the README's screenshot of a report (``scripts/make_screenshot.py``) and by the
browser tests: open a page, read the DOM through JavaScript, record every network request the
page makes, and capture a PNG. It needs a ``chromium`` binary (Debian: ``apt-get install
chromium``) and the ``websockets`` package; no browser is downloaded.

    with Chromium() as browser:
        browser.navigate(Path("report.html").resolve().as_uri())
        n = browser.evaluate("document.querySelectorAll('span.tok').length")
        browser.screenshot("report.png")
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tepo_agent.errors import TepoError


class BrowserError(TepoError):
    """Chromium is missing, did not start, or a page script failed."""


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) binary on ``PATH``, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless browser with one page (see the module docstring).

    Args:
        binary: The browser executable (default: :func:`find_chromium`).
        width, height: The viewport in CSS pixels.
        timeout_s: How long a start, a page load or a command may take.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        width: int = 1280,
        height: int = 900,
        timeout_s: float = 60.0,
    ) -> None:
        from websockets.sync.client import connect

        binary = binary or find_chromium()
        if binary is None:
            raise BrowserError(
                "no chromium on PATH; install it (Debian/Ubuntu: apt-get install chromium)"
            )
        self.timeout_s = timeout_s
        self.requests: list[str] = []
        self._loaded = False
        self._next_id = 0
        self._profile = tempfile.mkdtemp(prefix="tepo-chromium-")
        args = [
            binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-sync",
            "--disable-background-networking", "--disable-component-update",
            "--hide-scrollbars", "--remote-debugging-port=0", "--remote-allow-origins=*",
            f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank",
        ]  # fmt: skip
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port, path = self._devtools_address()
            url = f"ws://127.0.0.1:{port}{path}"
            self._ws = connect(url, max_size=None, open_timeout=timeout_s)
            target = self._send("Target.createTarget", {"url": "about:blank"}, session=None)
            attached = self._send(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, None
            )
            self._session = attached["sessionId"]
            for domain in ("Page", "Network", "Runtime"):
                self._send(f"{domain}.enable", {})
            self._send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
        except BaseException:
            self.close()
            raise

    def _devtools_address(self) -> tuple[str, str]:
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrowserError(f"chromium exited at start with code {self._proc.returncode}")
            if marker.is_file():
                lines = marker.read_text().split()
                if len(lines) >= 2:
                    return lines[0], lines[1]
            time.sleep(0.05)
        raise BrowserError(f"chromium did not open its DevTools port in {self.timeout_s:g} s")

    # -- protocol ------------------------------------------------------------------------------

    def _handle_event(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method == "Network.requestWillBeSent":
            self.requests.append(message["params"]["request"]["url"])
        elif method == "Page.loadEventFired":
            self._loaded = True

    def _recv(self, deadline: float) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrowserError(f"chromium did not answer in {self.timeout_s:g} s")
        try:
            return json.loads(self._ws.recv(timeout=remaining))
        except TimeoutError as exc:
            raise BrowserError(f"chromium did not answer in {self.timeout_s:g} s") from exc

    def _send(
        self, method: str, params: dict[str, Any], session: str | bool | None = True
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is True:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._recv(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._handle_event(reply)

    # -- page ----------------------------------------------------------------------------------

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait for its load event."""
        self._loaded = False
        result = self._send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        deadline = time.monotonic() + self.timeout_s
        while not self._loaded:
            self._handle_event(self._recv(deadline))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self._send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"page script failed: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float = 15.0, poll_s: float = 0.1) -> Any:
        """Evaluate ``expression`` until it is truthy; its value (BrowserError on timeout).

        A failing evaluation counts as falsy: the page may be between two documents.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression!r} stayed falsy for {timeout_s:g} s")
            time.sleep(poll_s)

    def screenshot(
        self,
        path: str | os.PathLike[str],
        *,
        full_page: bool = True,
        clip: tuple[float, float, float, float] | None = None,
    ) -> Path:
        """Save a PNG of the page: all of it, the viewport, or ``clip`` (x, y, width, height
        in page coordinates)."""
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            x, y, width, height = clip
            params.update(
                captureBeyondViewport=True,
                clip={"x": x, "y": y, "width": width, "height": height, "scale": 1},
            )
        elif full_page:
            size = self._send("Page.getLayoutMetrics", {})["cssContentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            )
        data = self._send("Page.captureScreenshot", params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
            self._ws = None
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
