"""Helpers of the browser tests of the page (``GET /``): Debian's chromium, headless, driven by Selenium.

Selenium is given both the browser's and the driver's path, so Selenium Manager (which would download a
driver) never runs: nothing is downloaded. Without chromium the browser tests FAIL, naming what to install
(``scripts/demo.sh`` installs it when run as root, as on a fresh CI machine), so a CI run can never pass them by
skipping; ``$EMOSTYLE_SKIP_BROWSER=1`` makes them skip instead, for a developer who cannot install it. An
installed browser that cannot start always fails, with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

import numpy as np
import pytest

SKIP_ENV = "EMOSTYLE_SKIP_BROWSER"
WAIT = 120  # seconds any DOM condition may take (a loaded 2-core machine styles a 512 px photo in seconds)
#: As root on this machine: no sandbox, no GPU, no network of Chromium's own; a fake camera that needs no prompt.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900",
                  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) when both are installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium WebDriver with a fresh profile (skip or fail as the module docstring says)."""
    paths = browser_paths()
    if paths is None:
        why = ("Debian's chromium and chromium-driver are not installed (scripts/demo.sh installs them when run as "
               "root; else: sudo apt-get install chromium chromium-driver)")
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"{why}; ${SKIP_ENV}=1")
        pytest.fail(f"{why}. Set ${SKIP_ENV}=1 to skip the browser tests instead.")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="emostyle-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    except Exception as exc:  # noqa: BLE001 - the reason is the test's failure message
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"Chromium ({paths[0]}, driver {paths[1]}) did not start: {type(exc).__name__}: {exc}")
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def until(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    """Wait (up to ``WAIT`` s) for a DOM condition; the page's error message goes into the failure."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(condition)
    except Exception as exc:
        shown = driver.find_element("id", "error").get_attribute("textContent")
        raise AssertionError(f"waited {WAIT} s for {what}; the page's error: {shown!r}") from exc


def open_page(driver: Any, url: str) -> None:
    """Load the page at ``url`` and wait until it has its config (its controls are enabled then)."""
    driver.get(url)
    driver.get_log("browser")  # drop what came before this page
    until(driver, lambda d: d.find_element("id", "file").is_enabled(), "the page's config")


def text(driver: Any, id_: str) -> str:
    return driver.find_element("id", id_).text


def shown_image(driver: Any, id_: str) -> np.ndarray:
    """The RGB pixels an <img> of the page shows (drawn on a canvas in the page: its CSP lets nothing fetch
    the blob: URL, not even this test)."""
    w, h, b64 = driver.execute_script(
        "const img = document.getElementById(arguments[0]);"
        "const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;"
        "const g = c.getContext('2d'); g.drawImage(img, 0, 0);"
        "const px = g.getImageData(0, 0, c.width, c.height).data; let s = '';"
        "for (let i = 0; i < px.length; i += 8192) s += String.fromCharCode(...px.subarray(i, i + 8192));"
        "return [c.width, c.height, btoa(s)];", id_)
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w, 4)[..., :3]


def wait_styled(driver: Any, before: str | None) -> None:
    """Wait until the styled image is a new one (not ``before``) and the page is no longer working."""
    until(driver, lambda d: (d.find_element("id", "styled").get_attribute("src") or "") not in ("", before)
          and not d.find_element("id", "busy").is_displayed(), "the styled image")


def shown_scores(driver: Any) -> dict[str, str]:
    """label -> the score the page shows, as the API's text (data-score)."""
    return {li.get_attribute("data-label"): li.get_attribute("data-score")
            for li in driver.find_elements("css selector", "#scores li")}


def console_errors(driver: Any) -> list[str]:
    """What the browser's console got at level SEVERE (a CSP violation, a script error, a 4xx answer)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
