"""Debian's chromium, headless, driven by Selenium 4 through Debian's chromedriver.

The browser tests (tests/integration/test_web_browser.py) use the packages Debian ships
(`chromium`, `chromium-driver`; scripts/debian-packages.sh installs them for the tests), not a
browser Selenium Manager would download: that keeps the tests offline and on the browser
Debian's security updates reach. A fixed window size and scale factor make the screenshots
the same from run to run; the profile is a throwaway directory, so no cookie or cache of one
run leaks into the next.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "WINDOW",
    "Browser",
    "browser_missing",
    "open_browser",
    "save_screenshot",
    "status",
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1000, 700)
"""Width and height of the window, and so of every screenshot (small enough for the README)."""
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

Browser = webdriver.Chrome


def browser_missing() -> str | None:
    """Why the browser cannot run here (the package to install), or None."""
    missing = [f"{path} (Debian package {package})"
               for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver"))
               if not os.access(path, os.X_OK)]
    return ", ".join(missing) or None


@contextlib.contextmanager
def open_browser() -> Iterator[Browser]:
    """A headless chromium with a fresh profile, quit and removed afterwards."""
    profile = Path(tempfile.mkdtemp(prefix="lmtpf-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        # The tests run as root (CI, the daemons need it): chromium's sandbox refuses root.
        "--no-sandbox",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        # Containers often give /dev/shm 64 MB, where chromium's renderer crashes.
        "--disable-dev-shm-usage",
        "--disable-gpu",
        # Nothing from outside: no sync, no component updates, no first-run pages.
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-features=Translate,PasswordLeakDetection,AutofillServerCommunication",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    # A password manager prompt would sit on top of the page in the screenshots.
    options.add_experimental_option("prefs", {"credentials_enable_service": False,
                                              "profile.password_manager_enabled": False})
    try:
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        try:
            driver.set_page_load_timeout(30)
            # --window-size counts the (invisible) browser frame: grow the window until the
            # page itself, and so each screenshot, is WINDOW.
            inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
            driver.set_window_size(2 * WINDOW[0] - inner[0], 2 * WINDOW[1] - inner[1])
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def save_screenshot(driver: Browser, name: str, directory: Path) -> list[Path]:
    """The visible page as `name`.png in `directory`, and in docs/screenshots/ too when
    LMTPFILTER_SCREENSHOTS=1 (how the README's pictures are made); returns the files."""
    targets = [directory]
    if os.environ.get("LMTPFILTER_SCREENSHOTS") == "1":
        targets.append(SCREENSHOTS)
    png = driver.get_screenshot_as_png()
    written = []
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{name}.png"
        path.write_bytes(png)
        written.append(path)
    return written


def status(driver: Browser) -> int:
    """The HTTP status of the page shown (Navigation Timing's responseStatus): WebDriver itself
    has no status, and the tests must tell a 403 or 404 from a page that merely says so."""
    code = driver.execute_script(
        "const n = performance.getEntriesByType('navigation'); "
        "return n.length ? n[0].responseStatus : 0;")
    return int(code)
