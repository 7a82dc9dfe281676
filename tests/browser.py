"""Open a local HTML file in headless Chromium (Debian's `chromium`) and report what a reader's browser would see.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: file descriptors 3 and 4,
messages separated by NUL bytes), so no port is opened. A test gets the console messages and uncaught exceptions
of the page, every network request it tried, values computed in the page, and a full-page PNG screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageVisit:
    """What happened while a page was open."""

    console: list[tuple[str, str]] = field(default_factory=list)  # (level, text)
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, itself included

    @property
    def errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and failed loads: what a clean page has none of."""
        return [f"{level}: {text}" for level, text in self.console if level in ("error", "warning")] + self.exceptions


class Browser:
    """One headless Chromium with one page, used as a context manager."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0) -> None:
        executable = chromium_path()
        if executable is None:
            raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
        self.width, self.height, self.timeout = width, height, timeout
        self._profile = tempfile.mkdtemp(prefix="seqshard-chromium-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def give_pipes() -> None:
            # Runs in the child: DevTools reads fd 3 and writes fd 4. Copy both ends out of the way first, as
            # either may itself be 3 or 4.
            reading, writing = os.dup(to_browser_read), os.dup(from_browser_write)
            os.dup2(reading, 3)
            os.dup2(writing, 4)

        self._process = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=give_pipes,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        self._session: str | None = None

    def __enter__(self) -> Browser:
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self._call(f"{domain}.enable")
        self._call("Emulation.setDeviceMetricsOverride",
                   {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})  # fmt: skip
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self._call("Browser.close", session=False)
            self._process.wait(timeout=10)
        except Exception:
            self._process.kill()
            self._process.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            shutil.rmtree(self._profile, ignore_errors=True)

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the DevTools pipe (exit status {self._process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _call(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._next_id += 1
        message: dict[str, object] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session is not None:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def open(self, path: Path) -> PageVisit:
        """Load a file and wait for its load event; return what the page logged and requested."""
        self._events.clear()
        self._call("Page.navigate", {"url": path.resolve().as_uri()})
        deadline = time.monotonic() + self.timeout
        while not any(event.get("method") == "Page.loadEventFired" for event in self._events):
            self._events.append(self._receive(deadline))
        self.evaluate("1")  # collects the events that arrived with the load
        visit = PageVisit()
        for event in self._events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
                visit.console.append((params.get("type", "log"), text))
            elif method == "Log.entryAdded":
                visit.console.append((params["entry"].get("level", "info"), params["entry"].get("text", "")))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                visit.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Network.requestWillBeSent":
                visit.requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                visit.exceptions.append(f"failed to load: {params.get('errorText')}")
        return visit

    def evaluate(self, expression: str) -> object:
        """The value of a JavaScript expression in the page (JSON-serialisable values)."""
        result = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, out: Path) -> Path:
        """A PNG of the whole page at the window's width."""
        size = self._call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": self.width, "height": min(size["height"], 16_000), "scale": 1}
        shot = self._call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        return out


def require_chromium() -> None:
    """Skip on a developer machine without Chromium; fail in CI (CI=true), where a skip would hide a broken job."""
    import pytest

    if chromium_path() is not None:
        return
    reason = "chromium is not installed: run tests/setup-system as root (Debian: apt-get install chromium)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class ReportView:
    """What a reader of a resource report page gets, measured in the browser."""

    visit: PageVisit
    ready: bool  # the page's script ran to its end
    job_rows: int
    timeline_width: int  # the timeline image's decoded width in pixels (0: not shown)
    broken_images: int
    page_width: int  # the document's scroll width; above the window's width the page scrolls sideways
    warnings: list[str]
    sections: list[str]
    screenshot: Path


def view_report(path: Path, screenshot: Path, width: int = 1280) -> ReportView:
    """Open a resource report page at `width` pixels, read what it shows and write a full-page screenshot."""
    with Browser(width=width) as browser:
        visit = browser.open(path)
        facts = browser.evaluate(
            """({
              ready: document.documentElement.getAttribute("data-report-ready") === "true",
              jobRows: document.querySelectorAll("#job-table tbody tr").length,
              timelineWidth: document.querySelector("#timeline img").naturalWidth,
              broken: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length,
              pageWidth: document.documentElement.scrollWidth,
              warnings: Array.from(document.querySelectorAll("ul.warnings li")).map(li => li.textContent.trim()),
              sections: Array.from(document.querySelectorAll("section")).map(s => s.id),
            })"""
        )
        browser.screenshot(screenshot)
    return ReportView(visit, facts["ready"], facts["jobRows"], facts["timelineWidth"], facts["broken"],
                      facts["pageWidth"], facts["warnings"], facts["sections"], screenshot)  # fmt: skip
