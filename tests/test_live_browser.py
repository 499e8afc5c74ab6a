"""The dashboard in a real browser (Debian's headless Chromium driven by Selenium) on the live
system: a replay with a shift flows through the worker; the page must show the shifted
stream's alert in the feed, open its chart from there, and show the count Redis holds.
A screenshot is kept in runs/test-artifacts/ (TECAFLOW_TEST_ARTIFACTS)."""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from stream.stack.embedded import redis_service
from tests.conftest import CLI, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ARTIFACTS = Path(os.environ.get("TECAFLOW_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"))


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("chromium and chromium-driver are not installed: run `make setup` (it installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", "--window-size=1400,1400"):
        options.add_argument(arg)
    # The system driver, not Selenium Manager: nothing may be downloaded here.
    browser = webdriver.Chrome(service=Service(driver), options=options)
    yield browser
    browser.quit()


@contextmanager
def running_dashboard(env: dict, workdir: Path):
    """`tecaflow dashboard` on a free port until the block ends; yields its URL."""
    from stream.stack.service import Service as Process
    from stream.stack.service import http_ok
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    dashboard = Process("dashboard", [*CLI, "dashboard", "--port", str(port)], workdir, cwd=workdir,
                        env=dict(env, TECAFLOW_DASHBOARD_REFRESH_S="1"), start_timeout=60,
                        health=lambda: http_ok(url + "/_stcore/health")).start()
    try:
        yield url
    finally:
        dashboard.stop()


def wait_for(browser, condition, what: str, timeout: float = 90):
    from selenium.common.exceptions import WebDriverException
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = condition()
            if found:
                return found
        except WebDriverException:  # the element was re-drawn under us: look again
            pass
        time.sleep(0.5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard-failure.png"))
    raise AssertionError(f"the page never showed {what}; it shows:\n{page_text(browser)[:3000]}")


def page_text(browser) -> str:
    from selenium.webdriver.common.by import By
    return browser.find_element(By.TAG_NAME, "body").text


def click_label(browser, text: str) -> None:
    """Click a choice once the page has drawn it (the sidebar can come after the main area)."""
    from selenium.webdriver.common.by import By
    def clicked() -> bool:
        labels = browser.find_elements(By.XPATH, f"//label[.//p[normalize-space()='{text}']]")
        if labels:
            labels[0].click()  # a label re-drawn under us raises, and wait_for looks again
        return bool(labels)
    wait_for(browser, clicked, f"the choice {text!r}")


def metric_value(browser, label: str) -> str | None:
    from selenium.webdriver.common.by import By
    for metric in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]'):
        lines = metric.text.splitlines()
        if lines and lines[0].strip() == label:
            return lines[1].strip()
    return None


def test_the_dashboard_shows_a_live_shift_and_its_alert(live, browser):
    with running_dashboard(live.env, live.root) as url:
        check_shift_and_alert(live, browser, url)


def check_shift_and_alert(live, browser, dashboard: str) -> None:
    from selenium.webdriver.common.by import By
    live.cli("replay", "--streams", "3", "--segments", "150", "--rate", "0", "--prefix", "web",
             "--score-shift", "1@90:-1.5", "--seed", "5")
    live.wait_for_total("web", 450)

    browser.get(dashboard)
    wait_for(browser, lambda: "web-001" in page_text(browser), "the streams in the overview")
    click_label(browser, "Alerts")
    wait_for(browser, lambda: "web-001  ▼ down" in page_text(browser), "web-001's alert in the feed")
    assert "web-000  ▼" not in page_text(browser) and "web-002  ▼" not in page_text(browser)

    # Open the alert: the stream view, centred on it, with its chart and Redis's numbers.
    feed_entry = browser.find_element(By.XPATH, "//div[@data-testid='stHorizontalBlock']"
                                                "[.//*[contains(text(), 'web-001  ▼ down')]]")
    feed_entry.find_element(By.XPATH, ".//button[.//p[text()='open']]").click()
    wait_for(browser, lambda: "Stream web-001" in page_text(browser) and "Centred on an alert" in page_text(browser),
             "web-001's detail opened from its alert")
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] canvas, '
                                                                     '[data-testid="stVegaLiteChart"] svg'),
             "the trend chart")
    expected = live.store.totals("web-001")["count"]
    wait_for(browser, lambda: metric_value(browser, "Segments") == str(expected), f"Segments = {expected}")
    assert metric_value(browser, "EWMA") == f"{live.store.totals('web-001')['ewma']:+.3f}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard-stream.png"))
    assert (ARTIFACTS / "dashboard-stream.png").stat().st_size > 10_000


def test_the_page_waits_out_a_redis_outage_without_showing_the_password(browser, tmp_path):
    from stream.store import TrendStore
    port = free_ports(1)[0]
    url = f"redis://:pw-s3cret@127.0.0.1:{port}/0"
    with running_dashboard(dict(os.environ, TECAFLOW_REDIS_URL=url), tmp_path) as page:
        browser.get(page)
        banner = f"Redis is not reachable at redis://:***@127.0.0.1:{port}/0"
        wait_for(browser, lambda: banner in page_text(browser), "the Redis-down banner")
        click_label(browser, "Stream")  # a view whose stream picker needs Redis before anything else
        wait_for(browser, lambda: banner in page_text(browser), "the banner on the stream view")
        assert "pw-s3cret" not in browser.page_source

        redis = redis_service(tmp_path, port, "pw-s3cret", durable=False).start(wait=False)
        try:
            store = TrendStore(url)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    store.ping()
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    time.sleep(0.1)
            for i in range(3):
                store.record("back-001", f"back-001/{i}", f"d{i}", time.time() - 10 + i, 0.5 * i, "back again")
            wait_for(browser, lambda: "Stream back-001" in page_text(browser) and metric_value(browser, "Segments") == "3",
                     "the stream once Redis is back", timeout=60)
            assert banner not in page_text(browser)
        finally:
            redis.stop()
