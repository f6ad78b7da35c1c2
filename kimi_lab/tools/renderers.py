"""Real renderers for image-code pairs: resvg for SVG, headless Chromium for HTML.

Chromium is Debian's (``apt-get install -y chromium``), driven by Playwright with
``executable_path``: no browser download. Pages render offline: every request
other than ``data:`` and ``about:`` URLs is aborted, and Chromium runs with its
background networking off.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from kimi_lab.errors import DataError

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def render_svg(svg: str, background: str | None = "#ffffff") -> bytes:
    """PNG bytes of an SVG program at its own width and height."""
    import resvg_py

    try:
        return bytes(resvg_py.svg_to_bytes(svg_string=svg, background=background))
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


class HtmlRenderer:
    """A headless Chromium kept open for many pages: ``with HtmlRenderer() as r: r.render(html, w, h)``."""

    def __init__(self) -> None:
        self.executable = find_chromium()
        self._pw: Any = None
        self._browser: Any = None
        self.version = ""

    def __enter__(self) -> HtmlRenderer:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=self.executable, headless=True, args=CHROMIUM_ARGS
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

    def render(self, html: str, width: int, height: int, timeout_ms: int = 10_000) -> bytes:
        """PNG screenshot of the page's viewport (width x height CSS pixels, scale 1)."""
        page = self._browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        try:
            page.route("**/*", _offline)
            page.set_content(html, timeout=timeout_ms, wait_until="load")
            return page.screenshot(type="png", timeout=timeout_ms)
        finally:
            page.close()


def _offline(route: Any) -> None:
    url = route.request.url
    if url.startswith(("data:", "about:")):
        route.continue_()
    else:
        route.abort()
