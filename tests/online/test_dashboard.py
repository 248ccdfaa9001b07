"""The live dashboard in a real headless Chromium, against a running daemon on the real local broker."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from serving_support import PHISHING, Processes, daemon_config, free_port, produce, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1000",
]  # fmt: skip


def artifacts_dir(tmp_path) -> Path:
    """Where screenshots go: $RIVERBEAM_TEST_ARTIFACTS if set (CI keeps it), else the test's tmp dir."""
    path = Path(os.environ.get("RIVERBEAM_TEST_ARTIFACTS") or tmp_path / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing (.ci/run installs them)")
        pytest.skip("chromium / chromium-driver are not installed (apt-get install chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    session = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)
    yield session
    session.quit()


def test_the_dashboard_draws_the_learning_curve_of_a_running_daemon_and_updates_it(tmp_path, kafka_bootstrap, topic, browser):
    from selenium.webdriver.common.by import By

    processes = Processes()
    try:
        port = free_port()
        produce(kafka_bootstrap, topic, PHISHING[:400])
        processes.start(["consume", "--config", daemon_config(tmp_path, kafka_bootstrap, topic, port)], tmp_path / "daemon.log")
        wait_until(lambda: "riverbeam_events_learned_total 400.0" in _get(f"http://127.0.0.1:{port}/metrics"), timeout=60, what="the daemon to learn 400 events")

        browser.get(f"http://127.0.0.1:{port}/?interval=300")
        points = lambda: int(browser.find_element(By.ID, "curve").get_attribute("data-points") or 0)  # noqa: E731
        wait_until(lambda: points() > 0, timeout=20, what="the first points of the learning curve")
        first = points()
        circles = browser.find_elements(By.CSS_SELECTOR, "#curve circle.point")
        assert len(circles) == first and {c.get_attribute("data-metric") for c in circles} == {"Accuracy", "LogLoss"}
        assert browser.find_element(By.ID, "events").text == "400"
        assert browser.find_element(By.ID, "headline-name").text == "Accuracy"

        for start in (400, 700, 1000):  # the daemon learns more: new points appear on the curve
            produce(kafka_bootstrap, topic, PHISHING[start : start + 300])
            time.sleep(1.2)
        wait_until(lambda: browser.find_element(By.ID, "events").text == "1,250", timeout=30, what="the dashboard to show 1,250 events")
        wait_until(lambda: points() > first, timeout=10, what="new points on the curve")
        assert "cannot reach" not in browser.find_element(By.ID, "status").text
        xs = sorted({float(c.get_attribute("cx")) for c in browser.find_elements(By.CSS_SELECTOR, "#curve circle.point")})
        assert len(xs) >= 3  # several distinct event counts along the x axis
        screenshot = artifacts_dir(tmp_path) / "dashboard.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    finally:
        processes.close()


def _get(url: str) -> str:
    try:
        return httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return ""
