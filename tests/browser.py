"""Headless Chromium for the tests of the offline pages (the explorer, the two-model view, the report page).

The ``driver`` fixture (tests/conftest.py) skips, saying why, only where Chromium, its driver or Selenium is
missing, and fails there under CI (``scripts/setup.sh`` installs them: apt ``chromium chromium-driver``, pip
``selenium`` from the dev extras).
"""

from __future__ import annotations

import shutil


def browser_paths() -> tuple[str | None, str | None]:
    """The Chromium binary and chromedriver on PATH (None where missing)."""
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    return browser, shutil.which("chromedriver")


def open_page(driver, path) -> None:
    """Open ``path`` from file:// and wait for the page to say it is ready."""
    driver.get(path.resolve().as_uri())
    assert driver.execute_script("return document.body.dataset.ready") == "1"


def console_errors(driver) -> list:
    """The browser console's errors since the last call."""
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def drawn_edges(driver) -> list[str]:
    """The names of the edges the explorer draws now."""
    return driver.execute_script("return window.circuitExplorer.drawnEdgeNames()")
