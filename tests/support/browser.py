"""A real browser for tests: Debian's headless Chromium driven by chromedriver over the W3C
WebDriver HTTP protocol (https://www.w3.org/TR/webdriver2/), with nothing but urllib.

    b = Browser(procs, tmp_path).start()         # chromedriver on a free port, one session
    b.get("http://127.0.0.1:8080/")
    b.find("#token").type("secret"); b.find("#login").click()
    b.wait(lambda: b.find_all("#live-calls tbody tr[data-call-id]"), 10, "a live call")
    b.find("h1").text; b.js("return document.title")
    b.screenshot(path)                            # PNG
    b.close()                                     # or let procs stop chromedriver

Chromium runs with --headless --no-sandbox --disable-gpu --disable-background-networking
--disable-component-update --disable-sync --no-first-run and a fresh --user-data-dir (the test
machine has no internet and no display). Install: apt-get install chromium chromium-driver.
"""
from __future__ import annotations

import base64
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from .ports import free_port
from .procs import ProcessManager, wait_port

__all__ = ["Browser", "Element", "WebDriverError", "chromium_binary", "chromedriver_binary"]

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"   # W3C WebDriver 12.1: the web element identifier
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", "--disable-default-apps", "--disable-extensions",
                 "--password-store=basic", "--use-mock-keychain", "--lang=en-US"]


class WebDriverError(AssertionError):
    def __init__(self, error: str, message: str):
        super().__init__(f"{error}: {message}")
        self.error = error


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("chromium not found (apt-get install chromium chromium-driver)")


def chromedriver_binary() -> str:
    path = shutil.which("chromedriver")
    if not path:
        raise FileNotFoundError("chromedriver not found (apt-get install chromium-driver)")
    return path


class Element:
    def __init__(self, browser: "Browser", eid: str, css: str):
        self.b, self.id, self.css = browser, eid, css

    def _p(self, suffix: str) -> str:
        return f"/element/{self.id}/{suffix}"

    @property
    def text(self) -> str:
        """The rendered text (what a person reads: hidden elements give '')."""
        return self.b.cmd("GET", self._p("text"))

    def attr(self, name: str) -> str | None:
        return self.b.cmd("GET", self._p(f"attribute/{name}"))

    def prop(self, name: str) -> Any:
        return self.b.cmd("GET", self._p(f"property/{name}"))

    @property
    def displayed(self) -> bool:
        return bool(self.b.cmd("GET", self._p("displayed")))

    def click(self) -> None:
        self.b.cmd("POST", self._p("click"), {})

    def type(self, text: str) -> None:
        self.b.cmd("POST", self._p("value"), {"text": text})

    def clear(self) -> None:
        self.b.cmd("POST", self._p("clear"), {})

    def find_all(self, css: str) -> list["Element"]:
        found = self.b.cmd("POST", self._p("elements"), {"using": "css selector", "value": css})
        return [Element(self.b, e[ELEMENT], css) for e in found]

    def __repr__(self) -> str:
        return f"<Element {self.css} {self.id[:8]}>"


class Browser:
    def __init__(self, procs: ProcessManager, tmp_path: Path, *, width: int = 1400, height: int = 1000,
                 name: str = "chromium"):
        self.procs = procs
        self.dir = Path(tmp_path) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.profile = self.dir / "profile"          # a fresh --user-data-dir for every browser
        self.width, self.height = width, height
        self.name = name
        self.port = free_port("tcp")
        self.session: str | None = None
        self.driver = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> "Browser":
        argv = [chromedriver_binary(), f"--port={self.port}", "--allowed-ips=127.0.0.1",
                f"--log-path={self.dir / 'chromedriver.log'}"]
        self.driver = self.procs.start(f"{self.name}-driver", argv, logdir=self.dir,
                                       env={"HOME": str(self.dir)})
        wait_port("127.0.0.1", self.port, "tcp", timeout=timeout, process=self.driver)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": chromium_binary(),
                "args": [*CHROMIUM_ARGS, f"--user-data-dir={self.profile}",
                         f"--window-size={self.width},{self.height}"],
            },
        }}}
        value = self._request("POST", "/session", caps, timeout=timeout)
        self.session = value["sessionId"]
        self.cmd("POST", "/timeouts", {"pageLoad": 30_000, "script": 10_000, "implicit": 0})
        return self

    def close(self) -> None:
        if self.session is not None:
            try:
                self._request("DELETE", f"/session/{self.session}", None, timeout=15)
            except (OSError, WebDriverError):
                pass
            self.session = None
        if self.driver is not None:
            self.driver.stop()

    # ------------------------------------------------------------------ protocol
    def _request(self, method: str, path: str, body: Any, timeout: float = 30.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json; charset=utf-8"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                reply = json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            reply = json.loads(e.read() or b"{}")
        value = reply.get("value")
        if isinstance(value, dict) and "error" in value:
            raise WebDriverError(value["error"], value.get("message", ""))
        return value

    def cmd(self, method: str, path: str, body: Any = None) -> Any:
        assert self.session is not None, "browser not started"
        return self._request(method, f"/session/{self.session}{path}", body)

    # ------------------------------------------------------------------ pages
    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    @property
    def url(self) -> str:
        return self.cmd("GET", "/url")

    @property
    def title(self) -> str:
        return self.cmd("GET", "/title")

    def refresh(self) -> None:
        self.cmd("POST", "/refresh", {})

    def source(self) -> str:
        return self.cmd("GET", "/source")

    def find(self, css: str) -> Element:
        found = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        return Element(self, found[ELEMENT], css)

    def find_all(self, css: str) -> list[Element]:
        found = self.cmd("POST", "/elements", {"using": "css selector", "value": css})
        return [Element(self, e[ELEMENT], css) for e in found]

    def wait_find(self, css: str, timeout: float = 10.0) -> Element:
        """The first element matching `css` once there is one (after a navigation)."""
        return self.wait(lambda: (self.find_all(css) or [None])[0], timeout, f"element {css}")

    def wait_text(self, css: str, text: str, timeout: float = 10.0) -> Element:
        """The first element matching `css` whose text contains `text`."""
        def found():
            return next((e for e in self.find_all(css) if text in e.text), None)
        return self.wait(found, timeout, f"{text!r} in {css}")

    def js(self, script: str, *args: Any) -> Any:
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def cookies(self) -> list[dict]:
        return self.cmd("GET", "/cookie")

    def accept_alert(self) -> str:
        text = self.cmd("GET", "/alert/text")
        self.cmd("POST", "/alert/accept", {})
        return text

    def screenshot(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.cmd("GET", "/screenshot")))
        return path

    def full_screenshot(self, path: Path) -> Path:
        """The whole page: the window grown to the document's height first, then put back."""
        h = int(self.js("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"))
        self.cmd("POST", "/window/rect", {"width": self.width, "height": min(max(h + 140, self.height), 6000)})
        try:
            return self.screenshot(path)
        finally:
            self.cmd("POST", "/window/rect", {"width": self.width, "height": self.height})

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll `predicate` (WebDriver errors count as 'not yet') until it returns a true value."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                value = predicate()
            except WebDriverError as e:
                value, last = None, e
            if value:
                return value
            if time.monotonic() >= deadline:
                try:
                    page = self.js("return document.body ? document.body.innerText : ''")[:3000]
                except WebDriverError as e:
                    page = f"(page unreadable: {e})"
                raise AssertionError(f"no {what} within {timeout:g} s (url {self.url})"
                                     + (f"; last error {last}" if last else "") + f"\n--- page ---\n{page}")
            time.sleep(0.05)
