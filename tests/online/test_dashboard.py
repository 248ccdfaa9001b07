"""The live dashboard in a real headless Chromium, against a running daemon on the real local broker."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serving_support import MODEL, PHISHING, Processes, daemon_config, free_port, get_ok, produce, wait_until

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
        panels = curve_panels(browser)
        first = sum(panel["points"] for panel in panels.values())
        assert set(panels) == {"Accuracy", "LogLoss"}  # one axis per metric: LogLoss's scale no longer flattens Accuracy
        for metric, panel in panels.items():
            assert set(panel["metrics"]) == {metric} and len(panel["metrics"]) == panel["points"]
            # 400 events learned within a second or two: sampled by events (every 10), not once a second (two points)
            assert panel["points"] >= 30, metric
        wait_until(lambda: browser.find_element(By.ID, "events").text == "400", timeout=10, what="the header to show 400 events")
        assert browser.find_element(By.ID, "headline-name").text == "Accuracy"
        assert browser.find_element(By.ID, "lag-panel").is_displayed()  # the daemon has a consumer

        for start in (400, 700, 1000):  # the daemon learns more: new points appear on the curve
            produce(kafka_bootstrap, topic, PHISHING[start : start + 300])
            time.sleep(1.2)
        wait_until(lambda: browser.find_element(By.ID, "events").text == "1,250", timeout=30, what="the dashboard to show 1,250 events")
        wait_until(lambda: points() > first, timeout=10, what="new points on the curve")
        assert "cannot reach" not in browser.find_element(By.ID, "status").text
        assert len(set(curve_panels(browser)["Accuracy"]["cx"])) >= 3  # several distinct event counts along the x axis
        screenshot = artifacts_dir(tmp_path) / "dashboard.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    finally:
        processes.close()


def test_after_a_restore_the_dashboard_counts_what_the_model_learned_and_draws_its_curve_from_there(tmp_path, kafka_bootstrap, topic, browser):
    from selenium.webdriver.common.by import By

    processes = Processes()
    try:
        produce(kafka_bootstrap, topic, PHISHING[:300])
        first = processes.start(["consume", "--config", daemon_config(tmp_path, kafka_bootstrap, topic), "--until-caught-up"], tmp_path / "first.log")
        assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()[-3000:]
        produce(kafka_bootstrap, topic, PHISHING[300:500])
        port = free_port()
        processes.start(["consume", "--config", daemon_config(tmp_path, kafka_bootstrap, topic, port)], tmp_path / "daemon.log")
        wait_until(lambda: "riverbeam_events_learned_total 200.0" in _get(f"http://127.0.0.1:{port}/metrics"), timeout=60, what="the daemon to learn 200 more events")
        browser.get(f"http://127.0.0.1:{port}/?interval=300")
        # one count: the model's (300 restored + 200), as its checkpoints and /v1/model say; this run's counter is 200
        wait_until(lambda: browser.find_element(By.ID, "events").text == "500", timeout=20, what="the header to show the model's 500 events")
        accuracy = curve_panels(browser)["Accuracy"]
        assert accuracy["points"] >= 20  # the 200 new events, every 10, from the restored count on
        assert "300" in accuracy["ticks"] and "500" in accuracy["ticks"]  # the x axis runs over the model's events learned: 300 (restored) to 500
    finally:
        processes.close()


def test_serve_has_no_consumer_lag_panel_and_draws_its_model_metrics(tmp_path, browser):
    from selenium.webdriver.common.by import By

    (tmp_path / "p.jsonl").write_text("".join(json.dumps(e) + "\n" for e in PHISHING[:300]))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"model": MODEL, "events": {"target": "label"}, "checkpoint": {"uri": str(tmp_path / "ck")}}))
    processes = Processes()
    try:
        replay = processes.start(["replay", "--config", str(tmp_path / "job.yaml"), "--input", str(tmp_path / "p.jsonl"), "--no-progress"], tmp_path / "replay.log")
        assert replay.wait(timeout=120) == 0, (tmp_path / "replay.log").read_text()[-3000:]
        port = free_port()
        processes.start(["serve", "--checkpoint", str(tmp_path / "ck"), "--port", str(port)], tmp_path / "serve.log")
        wait_until(lambda: get_ok(f"http://127.0.0.1:{port}/readyz"), timeout=60, what="serve to be ready")
        browser.get(f"http://127.0.0.1:{port}/?interval=300")
        wait_until(lambda: browser.find_element(By.ID, "events").text == "300", timeout=20, what="the header to show the served model's 300 events")
        wait_until(lambda: set(curve_panels(browser)) == {"Accuracy", "LogLoss"}, timeout=20, what="a panel per metric")
        assert not browser.find_element(By.ID, "lag-panel").is_displayed()  # serve reads no Kafka topic: no panel waiting forever
        assert "Consumer lag" not in browser.find_element(By.TAG_NAME, "main").text
    finally:
        processes.close()


def curve_panels(browser) -> dict:
    """Each learning-curve panel, read at once in the page (it redraws on every poll): ``{metric: {points,
    metrics (of its circles), cx (their x), ticks (axis labels)}}``."""
    return browser.execute_script("""
        const out = {};
        for (const svg of document.querySelectorAll("#curve svg[data-metric]")) {
          const circles = [...svg.querySelectorAll("circle.point")];
          out[svg.getAttribute("data-metric")] = {points: Number(svg.getAttribute("data-points")), metrics: circles.map(c => c.getAttribute("data-metric")),
                                                  cx: circles.map(c => Number(c.getAttribute("cx"))), ticks: [...svg.querySelectorAll("text.tick")].map(t => t.textContent)};
        }
        return out;""")


def _get(url: str) -> str:
    try:
        return httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return ""
