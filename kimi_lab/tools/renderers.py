"""Real renderers for image-code pairs: resvg for SVG, headless Chromium for HTML.

Chromium is Debian's (``apt-get install -y chromium``), driven by Playwright with
``executable_path``: no browser download. Pages render offline: every request
other than ``data:`` and ``about:`` URLs is aborted, anything that slips past
(a WebSocket) meets a dead proxy, and Chromium runs with its background networking off.

Pages are captured on a virtual clock, so a page in motion gives the same pixels
at the same times on every run (a wall-clock screencast does not): Playwright's
clock drives ``Date``, timers and ``requestAnimationFrame``, and every CSS
animation or transition is paused and set to the clock's time, counted from when
it first appeared. Model-written code is rendered by ``render_worker`` (a
sandboxed, killable process), never in the caller's process.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from kimi_lab.errors import DataError

# A headless Chromium that makes no calls of its own on a closed network (the dashboard's browser
# test uses these to reach its local page).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Rendering pages that must reach nothing: requests route() cannot see (WebSockets) go to a proxy
# that is not there, loopback included.
OFFLINE_CHROMIUM_ARGS = [*CHROMIUM_ARGS, "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
# What a page shows at the end, for structure rewards: element counts by tag and the visible text.
PAGE_STRUCTURE = """() => {
  const tags = {};
  if (!document.body) return {tags, text: ""};
  for (const e of document.body.querySelectorAll('*')) {
    const t = e.tagName.toLowerCase();
    if (!NON_VISUAL.has(t)) tags[t] = (tags[t] || 0) + 1;
  }
  return {tags, text: String(document.body.innerText || "").slice(0, 20000)};
}""".replace("NON_VISUAL", "new Set(['script', 'style', 'noscript', 'template', 'meta', 'link', 'title'])")
CLOCK_START_MS = 60_000
# Sets each CSS animation / transition to the virtual time t (ms), from when it was first seen.
SYNC_ANIMATIONS = """t => {
  const born = window.__kimiAnimationBorn || (window.__kimiAnimationBorn = new WeakMap());
  for (const a of document.getAnimations()) {
    if (!born.has(a)) { born.set(a, t); a.pause(); }
    a.currentTime = t - born.get(a);
  }
}"""
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def render_svg(
    svg: str, background: str | None = "#ffffff", width: int | None = None, height: int | None = None
) -> bytes:
    """PNG bytes of an SVG program at its own width and height, or scaled to ``width`` x ``height``
    (what bounds the work of an SVG that declares a huge canvas)."""
    import resvg_py

    try:
        return bytes(resvg_py.svg_to_bytes(svg_string=svg, background=background, width=width, height=height))
    except ValueError as exn:
        raise DataError(f"resvg could not render the SVG: {exn}") from None


def resvg_version() -> str:
    from importlib.metadata import version

    return f"resvg-py {version('resvg-py')}"


def find_chromium() -> str:
    for path in CHROMIUM_CANDIDATES:
        if Path(path).is_file():
            return path
    found = shutil.which("chromium")
    if found:
        return found
    raise DataError(
        "HTML rendering needs Debian's chromium: run `apt-get install -y chromium` "
        "(no browser is downloaded by kimi_lab)"
    )


@dataclass
class PageCapture:
    frames: list[bytes]  # PNG per requested time
    structure: dict[str, Any]  # {"tags": {tag: count}, "text": visible text} after the last frame


def svg_structure(svg: str) -> dict[str, Any]:
    """An SVG's elements by tag (the root ``svg`` aside) and its text, read from the code."""
    from html.parser import HTMLParser

    tags: dict[str, int] = {}
    text: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: Any) -> None:
            if tag != "svg":
                tags[tag] = tags.get(tag, 0) + 1

        def handle_data(self, data: str) -> None:
            text.append(data)

    Parser().feed(svg[:200_000])
    return {"tags": tags, "text": " ".join(" ".join(text).split())}


class HtmlRenderer:
    """A headless Chromium kept open for many pages: ``with HtmlRenderer() as r: r.render(html, w, h)``.

    ``js_heap_mb`` caps each page's JavaScript heap (a page that allocates more crashes, alone).
    """

    def __init__(self, js_heap_mb: int | None = None) -> None:
        self.executable = find_chromium()
        self.args = [
            *OFFLINE_CHROMIUM_ARGS,
            *([f"--js-flags=--max-old-space-size={js_heap_mb}"] if js_heap_mb else []),
        ]
        self._pw: Any = None
        self._browser: Any = None
        self.version = ""

    def __enter__(self) -> HtmlRenderer:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=self.executable, headless=True, args=self.args
            )
        except Exception as exn:
            self._pw.stop()
            raise DataError(f"could not start {self.executable}: {str(exn).splitlines()[0]}") from None
        self.version = f"chromium {self._browser.version} via playwright"
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._pw is not None:
            self._pw.stop()

    @property
    def connected(self) -> bool:
        return self._browser is not None and self._browser.is_connected()

    def render(self, html: str, width: int, height: int, timeout_ms: int = 10_000) -> bytes:
        """PNG screenshot of the page's viewport (width x height CSS pixels, scale 1) at time 0."""
        return self.capture(html, width, height, [0], timeout_ms).frames[0]

    def capture(
        self, html: str, width: int, height: int, times_ms: Sequence[int], timeout_ms: int = 10_000
    ) -> PageCapture:
        """PNG screenshots of the page at each of ``times_ms`` (non-decreasing) on the virtual clock,
        and what it shows after the last."""
        from playwright.sync_api import Error as PlaywrightError

        if any(b < a for a, b in itertools.pairwise(times_ms)) or (times_ms and times_ms[0] < 0):
            raise ValueError(f"frame times must be non-negative and non-decreasing, got {list(times_ms)}")
        page = self._browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        try:
            page.set_default_timeout(timeout_ms)
            page.route("**/*", _offline)
            # Installed clocks run until paused: pause a minute ahead (no page is loaded yet, so
            # nothing happens in between); the page's time then starts there, at its load.
            page.clock.install(time=0)
            page.clock.pause_at(CLOCK_START_MS)
            page.set_content(html, timeout=timeout_ms, wait_until="load")
            frames, now = [], 0
            for t in times_ms:
                if t > now:
                    page.clock.run_for(int(t - now))
                    now = t
                page.evaluate(SYNC_ANIMATIONS, t)
                frames.append(page.screenshot(type="png", timeout=timeout_ms))
            return PageCapture(frames, page.evaluate(PAGE_STRUCTURE))
        except PlaywrightError as exn:
            raise DataError(f"chromium could not render the page: {str(exn).splitlines()[0]}") from None
        finally:
            with contextlib.suppress(PlaywrightError):
                page.close()


def _offline(route: Any) -> None:
    url = route.request.url
    if url.startswith(("data:", "about:")):
        route.continue_()
    else:
        route.abort()
