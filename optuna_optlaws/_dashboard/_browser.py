"""Run the real optuna-dashboard server and open it in headless Chromium (for tests and screenshots).

:func:`dashboard_server` starts ``optuna-dashboard <storage>`` on a free loopback port in
a subprocess and stops it on exit; :func:`headless_chromium` opens a Selenium-driven
headless Chromium with the flags this (closed-network) machine needs and a fresh profile.
Both clean up in ``finally`` blocks, with timeouts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
"""Chromium start flags (the network is closed: without the background-networking flags
Chromium hangs on refused connections)."""

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER_PATHS = ("/usr/bin/chromedriver",)


def find_browser() -> tuple[str, str] | None:
    """``(chromium, chromedriver)`` paths, or None when either is missing."""
    chromium = next((p for p in CHROMIUM_PATHS if os.access(p, os.X_OK)), shutil.which("chromium"))
    driver = next((p for p in CHROMEDRIVER_PATHS if os.access(p, os.X_OK)), shutil.which("chromedriver"))
    if chromium is None or driver is None:
        return None
    return chromium, driver


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def dashboard_server(storage_url: str, *, timeout: float = 60.0) -> Iterator[str]:
    """Run ``optuna-dashboard storage_url`` on a free loopback port; yields its base URL.

    Waits until the API answers (at most ``timeout`` seconds) and terminates the server
    (then kills it after 10 s) when the block ends."""
    port = free_port()
    cmd = [sys.executable, "-m", "optuna_dashboard._cli", storage_url, "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"optuna-dashboard exited with {proc.returncode}: {tail}")
                try:
                    with urllib.request.urlopen(base + "/api/studies", timeout=5) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"optuna-dashboard did not answer on {base} within {timeout:.0f} s")
                time.sleep(0.2)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def headless_chromium(*, width: int = 1400, height: int = 1800, page_timeout: float = 60.0) -> Iterator[Any]:
    """A Selenium WebDriver for headless Chromium with a fresh profile; quit on exit."""
    found = find_browser()
    if found is None:
        raise RuntimeError("chromium or chromedriver is not installed")
    chromium, driver_path = found
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="optlaws-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        driver.set_page_load_timeout(page_timeout)
        driver.set_script_timeout(page_timeout)
        yield driver
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def study_url(base: str, study_id: int) -> str:
    """The dashboard page of one study."""
    return f"{base}/dashboard/studies/{study_id}"


def wait_for(driver: Any, condition: Any, timeout: float = 60.0) -> Any:
    """Wait (at most ``timeout`` s) until ``condition(driver)`` is truthy; return its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)


def save_screenshot(driver: Any, path: str | Path) -> Path:
    """Screenshot of the whole current window to ``path`` (PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"could not save a screenshot to {path}")
    return path


def open_and_wait(driver: Any, url: str, texts: Sequence[str], *, min_plots: int = 0, timeout: float = 90.0) -> str:
    """Open ``url`` and wait until the page shows every string of ``texts`` and at least
    ``min_plots`` rendered plotly graphs; returns the page's visible text.

    On timeout, raises ``TimeoutError`` naming what was missing."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By

    driver.get(url)
    state: dict[str, Any] = {}

    def ready(d: Any) -> bool:
        body = d.find_element(By.TAG_NAME, "body").text
        plots = len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"))
        state.update(body=body, plots=plots, missing=[t for t in texts if t not in body])
        return not state["missing"] and plots >= min_plots

    try:
        wait_for(driver, ready, timeout)
    except TimeoutException:
        raise TimeoutError(
            f"{url}: after {timeout:.0f} s, missing texts {state.get('missing')} and "
            f"{state.get('plots')} plotly graphs (wanted {min_plots})"
        ) from None
    return str(state["body"])
