"""Chromium and Playwright for the e2e tests: one browser for the whole session.

The fixtures live here, not in a test module: a module that imports a session fixture gets its own
copy of it, and a second sync_playwright() inside the first one's running loop fails.
Chromium comes from Debian (`apt-get install -y chromium`), never from `playwright install`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


def _apt_install_chromium() -> str:
    """Install Debian's chromium; returns '' on success, else the tail of apt's output."""
    if shutil.which("apt-get") is None:
        return "apt-get not found"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = ""
    for attempt in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "chromium"]):
        if attempt[1] == "update" and CHROMIUM.exists():
            break
        try:
            proc = subprocess.run(attempt, env=env, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            out = f"{' '.join(attempt)}: {exc}"
            continue
        out = (proc.stdout + proc.stderr)[-2000:]
        if proc.returncode == 0 and attempt[1] == "install" and CHROMIUM.exists():
            return ""
    return "" if CHROMIUM.exists() else out


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        problem = _apt_install_chromium()
        if not CHROMIUM.exists():
            _unavailable(f"{CHROMIUM} is missing and `apt-get install -y chromium` did not provide it: {problem.strip()[-500:]}")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium_path: Path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"playwright is not installed ({exc}); `make install` installs the dev extras")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
